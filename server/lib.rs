//! The `son1k` package: the command-line interface (and, later, the gRPC server) over the
//! engine.

pub mod cli;
pub mod proto;
