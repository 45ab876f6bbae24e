//! Generates the gRPC code from `proto/` with protox (a pure-Rust protobuf compiler), so
//! building weft never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        [
            "weft/discovery/v1/discovery.proto",
            "grpc/health/v1/health.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(files)?;
    Ok(())
}
