//! The `son1k` package: the gRPC / grpc-web server (service, auth, the error -> status
//! mapping, the transport's limits, the page) and the command-line interface over the engine.

pub mod auth;
pub mod cli;
pub mod proto;
pub mod serve;
pub mod service;
pub mod status;
pub mod transport;
mod web;
