//! The `twofa-authz` binary: see `twofa_authz::cli`.

fn main() {
    std::process::exit(twofa_authz::cli::main());
}
