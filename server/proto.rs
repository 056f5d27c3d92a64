//! The generated types and service stubs of the wire contract (`proto/son1k/v1`).

/// Package `son1k.v1`.
pub mod v1 {
    #![allow(missing_docs)]
    tonic::include_proto!("son1k.v1");
}
