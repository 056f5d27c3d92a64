//! Compiles the wire contract in proto/ into Rust with protox (a pure-Rust protobuf
//! compiler, so no system protoc is needed) and tonic's code generator.

fn main() -> anyhow::Result<()> {
    let files = ["proto/son1k/v1/son1k.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
