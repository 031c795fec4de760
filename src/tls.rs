//! Trust for the TLS connections this service opens to its data tier: the CA
//! bundle a `storage.*_ca_path` key names, else the system roots, and the one
//! rustls crypto provider (aws-lc-rs) they are used with.
//!
//! A `_path` key names a file that is read as it is (PEM, one or more
//! `CERTIFICATE` blocks). It is not the `_file` form of a secret: a CA bundle
//! is public, and its content is checked here, at configuration time, so that
//! `check-config` and `serve` name a bad file before anything connects.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// CA bundles are small (the RDS global bundle is ~160 KiB); anything bigger
/// is a mistake.
const MAX_CA_FILE: u64 = 1 << 20;

/// The crypto provider of every data-tier TLS connection. Named explicitly:
/// the dependency tree compiles both aws-lc-rs and ring into rustls, so
/// rustls cannot pick a process default by itself.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes [`provider`] the process default, for libraries that build their
/// rustls configuration with it (redis-rs does). Idempotent; a default set
/// earlier stays.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM CA bundle. Every `CERTIFICATE` block must be a certificate
/// that can serve as a trust anchor; the error says which one is not.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.len() > MAX_CA_FILE {
        return Err(format!("{shown} is larger than 1 MiB"));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM CA bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut store = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{shown}: certificate {} of {} is not a valid CA certificate: {e}",
                i + 1,
                certs.len()
            )
        })?;
    }
    Ok(certs)
}

/// The roots that verify a server: the bundle of `ca_path` when set, else
/// the system's (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the platform store;
/// the distroless image ships Debian's).
pub fn roots(ca_path: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_path {
        Some(p) => {
            for c in read_ca_bundle(p)? {
                store.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system CA certificates found{why}: set the CA bundle path explicitly"
                ));
            }
        }
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn a_ca_bundle_is_read_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = write(&dir, "ca.pem", &ca.cert.pem());
        assert_eq!(read_ca_bundle(&good).unwrap().len(), 1);
        assert_eq!(roots(Some(&good)).unwrap().len(), 1);

        let empty = write(&dir, "empty.pem", "just text\n");
        let e = read_ca_bundle(&empty).unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");

        let garbage = write(
            &dir,
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = read_ca_bundle(&garbage).unwrap_err();
        assert!(e.contains("certificate 1 of 1 is not a valid CA"), "{e}");

        let e = read_ca_bundle(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
