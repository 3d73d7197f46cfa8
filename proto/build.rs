//! Compiles the `.proto` files with `protox`, a protobuf compiler written in Rust, so that a
//! fresh machine needs only `cargo` (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["sluice/sync/v1/sync.proto", "sluice/admin/v1/admin.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Hand-written (src/table_contributions.rs): it stays encoded between the table and the wire.
    tonic_prost_build::configure()
        .extern_path(
            ".sluice.sync.v1.TableContributions",
            "crate::sync::v1::TableContributions",
        )
        .compile_fds(fds)?;
    Ok(())
}
