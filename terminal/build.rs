//! Compiles the shared DebianService proto with protox (pure Rust, no protoc
//! binary on the host) and tonic's prost code generator.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest.join("../proto");
    let proto = proto_dir.join("debian_service.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        // Field 1 of the port report has two wire forms, read per release
        // (src/wire.rs), so the host keeps it undecoded.
        .extern_path(
            ".com.android.virtualization.terminal.proto.ReportVmActivePortsRequest",
            "crate::wire::RawPortReport",
        )
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
