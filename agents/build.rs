//! Compiles proto/debian_service.proto with protox (no protoc binary needed)
//! and tonic's prost code generator. The server side is generated too: the
//! crate's tests run the real agents against an in-process fake of the app.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest.join("../proto");
    let proto = proto_dir.join("debian_service.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])
        .map_err(|e| format!("compiling {}: {e}", proto.display()))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
