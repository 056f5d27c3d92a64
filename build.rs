//! Compiles the wire contract in proto/ into Rust with protox (a pure-Rust protobuf
//! compiler, so no system protoc is needed) and tonic's code generator, and writes the
//! encoded descriptor set that server reflection serves.

use prost::Message;

fn main() -> anyhow::Result<()> {
    let files = ["proto/son1k/v1/son1k.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("son1k_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
