//! Compiles the `.proto` files with `protox`, a protobuf compiler written in Rust, so that a
//! fresh machine needs only `cargo` (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["sluice/sync/v1/sync.proto", "sluice/admin/v1/admin.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
