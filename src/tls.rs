//! TLS termination: the certificate, replaceable while serving, and the
//! rustls server configuration (ALPN `h2`, then `http/1.1`).
//!
//! The certificate is read from PEM files at start and again when they
//! change (certbot and its kind renew in place); a pair that does not load
//! is refused and the running one stays. Handshakes read the current
//! certificate through an `ArcSwap`: no lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} with {}: {source}", key.display(), cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Config(#[source] rustls::Error),
}

/// The crypto the service uses (ring: builds without cmake, and is what
/// the probe client uses too), with the SHA-256 cipher suites first.
///
/// Clients (OpenSSL, Go) list AES-256-GCM-SHA384 first, and a TLS 1.3
/// handshake derives its keys with the suite's hash some twenty times:
/// under new-connection load ring's SHA-512 took 13% of the server's time.
/// AES-128-GCM-SHA256 is as safe for this purpose and cheaper, so the
/// server's order decides (`ignore_client_order`).
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // A stable sort: ring's order otherwise, the SHA-384 suites last.
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as S;
        matches!(
            s.suite(),
            S::TLS13_AES_256_GCM_SHA384
                | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    Arc::new(p)
}

/// Reads a certificate chain and its private key, and checks they match.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|source| TlsError::Key {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// The certificate handshakes use now.
#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
}

impl Certs {
    pub fn new(first: CertifiedKey) -> Arc<Certs> {
        Arc::new(Certs {
            current: ArcSwap::from_pointee(first),
        })
    }

    /// New handshakes use `next`; connections already open keep theirs.
    pub fn replace(&self, next: CertifiedKey) {
        self.current.store(Arc::new(next));
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server configuration: TLS 1.2 and 1.3, HTTP/2 preferred by ALPN,
/// session tickets so returning clients skip the full handshake.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_matching_pair_loads_and_a_mismatched_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "a");
        let (_, k2) = pair(dir.path(), "b");
        assert!(load(&c1, &k1).is_ok());
        let err = load(&c1, &k2).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        std::fs::write(&c1, "not pem").unwrap();
        let err = load(&c1, &k1).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = load(&dir.path().join("missing.crt"), &k1).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }
}
