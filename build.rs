//! Compiles the minimal Envoy ext_authz protos in proto/ with a vendored protoc,
//! so building needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    let includes = [
        std::path::PathBuf::from("proto"),
        protoc_bin_vendored::include_path()?,
    ];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[std::path::PathBuf::from(
                "proto/envoy/service/auth/v3/external_auth.proto",
            )],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
