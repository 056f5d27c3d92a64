//! The `son1k` package: the gRPC / grpc-web server (service, auth, the error -> status
//! mapping, the transport's limits, the page) and the command-line interface over the engine.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod service;
pub mod status;
pub mod transport;
pub mod web;
