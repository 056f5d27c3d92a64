//! The `son1k` package's end-to-end tests, one binary (one link, one file on disk): the
//! command line, and the gRPC / grpc-web service. Service tests run the server inside this
//! process on a port the test binds; the few where the process itself is the point (signals,
//! SIGKILL and restart, a lowered file limit, a process's memory peak, the CLI) run
//! `son1k serve` as a child.

mod common;

mod cli_errors;
mod cli_generate;
mod cli_remote;
mod formats;
mod hub_download;
mod service;
mod service_access;
mod service_cluster;
mod service_cluster_faults;
mod service_covers;
mod service_disk;
mod service_hardening;
mod service_load;
mod service_metrics;
mod service_quotas;
mod service_web;
mod studio_browser;
