//! Compiles the minimal Envoy ext_authz protos in proto/ with a vendored protoc,
//! so building needs no system protobuf compiler, and records the commit the
//! binary is built from for `twofa_build_info` (src/metrics.rs).

use std::process::Command;

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
        // bytes fields as `bytes::Bytes`: tonic decodes from one buffer, and
        // prost's `copy_to_bytes` on it shares that buffer instead of copying
        // each header into its own Vec (proto/.../attribute_context.proto).
        .bytes(".")
        .compile_protos(
            &[std::path::PathBuf::from(
                "proto/envoy/service/auth/v3/external_auth.proto",
            )],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto");
    build_commit();
    Ok(())
}

/// `TWOFA_BUILD_COMMIT` for the binary: a value given to the build (a
/// container build has no `.git`: `--build-arg`), else `git rev-parse --short
/// HEAD`, else "unknown". Never fails the build: git may be missing, the
/// source may be a tarball.
fn build_commit() {
    println!("cargo:rerun-if-env-changed=TWOFA_BUILD_COMMIT");
    let given = std::env::var("TWOFA_BUILD_COMMIT")
        .ok()
        .filter(|c| is_commit(c));
    let commit = given
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TWOFA_BUILD_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout). In a worktree `.git`
    // is a file naming the real git dir; asking git covers both layouts.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(refs) = git(&["rev-parse", "--symbolic-full-name", "HEAD"])
        .filter(|r| r.starts_with("refs/"))
        .and_then(|r| git(&["rev-parse", "--git-path", &r]))
    {
        println!("cargo:rerun-if-changed={refs}");
    }
}

fn git_commit() -> Option<String> {
    git(&["rev-parse", "--short", "HEAD"]).filter(|c| is_commit(c))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// A label value we are willing to export: a (short) hex object name.
fn is_commit(c: &str) -> bool {
    (4..=40).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}
