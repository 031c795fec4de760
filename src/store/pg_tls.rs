//! PostgreSQL over TLS: `sslmode` in `storage.database_url` with libpq's
//! meaning, `storage.database_ca_path`, and a rustls connector for
//! tokio-postgres.
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (also when absent: libpq's default) | when the server offers it | the chain, only when `database_ca_path` is set |
//! | `require` | always | the chain, only when `database_ca_path` is set |
//! | `verify-ca` | always | the chain (`database_ca_path`, else the system roots) |
//! | `verify-full` | always | the chain and the host name |
//!
//! tokio-postgres parses only `disable`, `prefer` and `require`, so `sslmode`
//! is taken out of the URL here and mapped onto its mode plus a verifier of
//! our own. Once the server has agreed to TLS, a handshake or certificate
//! failure fails the connection: nothing falls back to plaintext (libpq's
//! `prefer` would retry without TLS; this does not).
//!
//! The stream offers SCRAM channel binding (`tls-server-end-point`, RFC 5929)
//! so that, with SCRAM authentication, even an unverified `require`
//! connection cannot be relayed by a man in the middle without failing the
//! login.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<Self> {
        match v {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What the certificate of the server is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encrypted, not authenticated (`prefer`/`require` without a CA path).
    Nothing,
    /// Signed by a trusted root, for server authentication; any host name.
    Chain,
    /// Also issued for the host name of the URL.
    ChainAndName,
}

fn check_for(mode: SslMode, has_ca: bool) -> Check {
    match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require if !has_ca => Check::Nothing,
        SslMode::Disable | SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Check::Chain,
        SslMode::VerifyFull => Check::ChainAndName,
    }
}

/// A parsed `storage.database_url` with its TLS settings.
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl PgTarget {
    /// Parses the URL and builds the connector its `sslmode` and the CA
    /// bundle call for. Errors never repeat the URL (it holds the password).
    pub fn new(url: &str, ca_path: Option<&Path>) -> Result<Self, String> {
        let (rest, mode) = split_sslmode(url)?;
        let mode = mode.unwrap_or(SslMode::Prefer);
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| format!("storage.database_url: {}", error_chain(&e)))?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let check = check_for(mode, ca_path.is_some());
        let roots = match check {
            Check::Nothing => None,
            Check::Chain | Check::ChainAndName => Some(Arc::new(
                crate::tls::roots(ca_path).map_err(|e| format!("storage.database_ca_path: {e}"))?,
            )),
        };
        let provider = crate::tls::provider();
        let verifier = Arc::new(PgVerifier {
            roots,
            check_name: check == Check::ChainAndName,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17 requires this ALPN for direct TLS negotiation and
        // accepts it for the classic SSLRequest handshake; older servers
        // ignore it.
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config,
            tls: MakeRustlsConnect {
                config: Arc::new(tls),
                check_name: check == Check::ChainAndName,
            },
            mode,
        })
    }

    /// One line for `check-config` and the start-up log.
    pub fn describe(&self, ca_path: Option<&Path>) -> String {
        let ca = match ca_path {
            Some(p) => format!("the CA bundle {}", p.display()),
            None => "the system roots".into(),
        };
        let what = match (self.mode, check_for(self.mode, ca_path.is_some())) {
            (SslMode::Disable, _) => "plaintext, never TLS".to_string(),
            (SslMode::Prefer, Check::Nothing) => {
                "TLS when the server offers it, else plaintext; the certificate is not verified"
                    .to_string()
            }
            (SslMode::Prefer, _) => format!(
                "TLS when the server offers it, else plaintext; a TLS certificate must be signed by {ca}"
            ),
            (_, Check::Nothing) => "TLS required; the certificate is not verified".to_string(),
            (_, Check::Chain) => {
                format!("TLS required; the certificate must be signed by {ca} (any host name)")
            }
            (_, Check::ChainAndName) => format!(
                "TLS required; the certificate must be signed by {ca} and name the host"
            ),
        };
        format!("sslmode={}: {what}", self.mode.as_str())
    }
}

/// Takes `sslmode` out of a `postgres://` URL: tokio-postgres would reject
/// `verify-ca` and `verify-full`. The query starts at the first `?` after the
/// credentials, as tokio-postgres reads it (a password may hold a `?`).
pub fn split_sslmode(url: &str) -> Result<(String, Option<SslMode>), String> {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let host_start = url[after_scheme..]
        .find('@')
        .map(|i| after_scheme + i + 1)
        .unwrap_or(after_scheme);
    let Some(q) = url[host_start..].find('?').map(|i| host_start + i) else {
        return Ok((url.to_string(), None));
    };
    let mut mode = None;
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        match k.as_ref() {
            "sslmode" => {
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                let m = SslMode::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                    format!(
                        "storage.database_url: sslmode `{}` is not one of disable, prefer, require, verify-ca, verify-full",
                        v.chars().take(32).collect::<String>()
                    )
                })?;
                if mode.replace(m).is_some() {
                    return Err("storage.database_url: sslmode is given twice".into());
                }
            }
            "sslrootcert" => {
                return Err(
                    "storage.database_url: sslrootcert is not read; set storage.database_ca_path to the CA bundle"
                        .into(),
                )
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(format!(
                    "storage.database_url: {k}: client certificates are not supported; use password (SCRAM) authentication"
                ))
            }
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..q].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, mode))
}

/// An error with its causes: tokio-postgres' own `Display` names only the
/// kind ("error performing TLS handshake"), never the reason.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Whether a connection failed in its TLS handshake (a certificate that does
/// not verify, a server that refuses TLS under `require`): a configuration
/// problem, never an outage to wait out.
pub fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string().starts_with("error performing TLS handshake")
}

#[derive(Debug)]
struct PgVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake signatures are checked in every mode: they prove that
    // the server holds the key of the certificate it sent (which the channel
    // binding then ties the SCRAM login to).
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres' `MakeTlsConnect` over tokio-rustls.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    check_name: bool,
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, io::Error> {
        let name = match ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(_) if self.check_name => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("sslmode=verify-full: `{host}` is not a DNS name or IP address a certificate can name"),
                ))
            }
            // Unix sockets (never TLS) and odd names under modes that do
            // not check the name: SNI is not sent for an IP address.
            Err(_) => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
        };
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type ConnectFuture<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = ConnectFuture<S>;

    fn connect(self, stream: S) -> ConnectFuture<S> {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with the hash of
/// its signature algorithm, SHA-256 for MD5 and SHA-1. None for algorithms
/// without a single hash (Ed25519, RSASSA-PSS): the login then goes without
/// channel binding rather than failing.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    #[derive(Clone, Copy)]
    enum H {
        Sha256,
        Sha384,
        Sha512,
    }
    // DER: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE,
    //   signatureAlgorithm SEQUENCE { algorithm OID, ... }, signature }
    let (tag, body, _) = der(cert)?;
    let (tbs_tag, _, rest) = der(body)?;
    let (alg_tag, alg, _) = der(rest)?;
    let (oid_tag, oid, _) = der(alg)?;
    if tag != 0x30 || tbs_tag != 0x30 || alg_tag != 0x30 || oid_tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let h = match oid {
        [p @ .., last] if p == RSA => match last {
            0x04 | 0x05 | 0x0b | 0x0e => H::Sha256, // md5, sha1, sha256, sha224
            0x0c => H::Sha384,
            0x0d => H::Sha512,
            _ => return None,
        },
        [p @ .., 0x01] if p == ECDSA => H::Sha256, // ecdsa-with-SHA1
        [p @ .., 0x03, last] if p == ECDSA => match last {
            0x01 | 0x02 => H::Sha256, // SHA224, SHA256
            0x03 => H::Sha384,
            0x04 => H::Sha512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match h {
        H::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        H::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        H::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// One DER TLV: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url() {
        let (rest, m) =
            split_sslmode("postgres://u:p%3Fw@db:5432/twofa?sslmode=verify-full").unwrap();
        assert_eq!(rest, "postgres://u:p%3Fw@db:5432/twofa");
        assert_eq!(m, Some(SslMode::VerifyFull));
        let (rest, m) = split_sslmode(
            "postgres://db/twofa?application_name=x&sslmode=verify-ca&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://db/twofa?application_name=x&connect_timeout=3"
        );
        assert_eq!(m, Some(SslMode::VerifyCa));
        // A `?` inside the credentials is not the query.
        let (rest, m) = split_sslmode("postgres://u:a?b@db/twofa").unwrap();
        assert_eq!((rest.as_str(), m), ("postgres://u:a?b@db/twofa", None));
        assert_eq!(
            split_sslmode("postgres://db/x?sslmode=REQUIRE").unwrap().1,
            Some(SslMode::Require)
        );
    }

    #[test]
    fn bad_sslmodes_are_named_without_the_url() {
        for (url, says) in [
            ("postgres://u:secret@db/x?sslmode=allow", "sslmode `allow`"),
            (
                "postgres://u:secret@db/x?sslmode=require&sslmode=disable",
                "twice",
            ),
            (
                "postgres://u:secret@db/x?sslrootcert=/ca.pem",
                "storage.database_ca_path",
            ),
            (
                "postgres://u:secret@db/x?sslkey=/k.pem",
                "client certificates",
            ),
        ] {
            let e = split_sslmode(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let e = PgTarget::new("postgres://u:secret@db/x?nonsense=1", None)
            .err()
            .unwrap();
        assert!(e.contains("nonsense") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn modes_map_onto_checks_as_libpq_does() {
        assert_eq!(check_for(SslMode::Require, false), Check::Nothing);
        assert_eq!(check_for(SslMode::Require, true), Check::Chain);
        assert_eq!(check_for(SslMode::Prefer, false), Check::Nothing);
        assert_eq!(check_for(SslMode::Prefer, true), Check::Chain);
        assert_eq!(check_for(SslMode::VerifyCa, false), Check::Chain);
        assert_eq!(check_for(SslMode::VerifyFull, false), Check::ChainAndName);
        let t = PgTarget::new("postgres://db/x", None).unwrap();
        assert_eq!(t.mode, SslMode::Prefer, "absent sslmode is libpq's prefer");
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let t = PgTarget::new("postgres://db/x?sslmode=verify-ca", None);
        // verify-ca without a CA path uses the system roots (present on the
        // build machines and in the image).
        if let Ok(t) = t {
            assert_eq!(
                t.config.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
        }
    }

    #[test]
    fn channel_binding_hashes_with_the_signature_hash() {
        for (alg, len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
            (&rcgen::PKCS_RSA_SHA512, 64),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["db.test".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = cert.der().as_ref();
            let h = server_end_point(der).expect("a known algorithm");
            assert_eq!(h.len(), len);
            let want = match len {
                32 => sha2::Sha256::digest(der).to_vec(),
                48 => sha2::Sha384::digest(der).to_vec(),
                _ => sha2::Sha512::digest(der).to_vec(),
            };
            assert_eq!(h, want);
        }
        assert_eq!(server_end_point(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(server_end_point(b""), None);
    }
}
