// Generates the Rust bindings for every .aidl under aidl/ into one module.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=aidl");
    rsbinder_aidl::Builder::new()
        .source(PathBuf::from("aidl"))
        .include_dir(PathBuf::from("aidl"))
        .output(PathBuf::from("avf_aidl.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("aidl/aidl: {e:?}"));
}
