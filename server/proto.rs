//! The generated types and service stubs of the wire contract (`proto/son1k/v1`).

/// Package `son1k.v1`.
pub mod v1 {
    #![allow(missing_docs)]
    tonic::include_proto!("son1k.v1");
}

/// The encoded descriptor set of the contract, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/son1k_descriptor.bin"));
