//! TLS configurations for the WAN, built on rustls with the ring provider
//! (chosen explicitly, so no process-wide default provider is needed and
//! aws-lc never enters the build).
//!
//! - [`client_config`]: a store's edge (or the hub, towards an external
//!   broker) trusting only the chain CA and presenting its certificate.
//! - [`server_config`]: the embedded broker's gate, requiring a client
//!   certificate issued by the chain CA.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM text holds no certificate.
    #[error("{what}: no certificate in the PEM text")]
    NoCertificate {
        /// Which one.
        what: &'static str,
    },
    /// PEM text holds no usable private key.
    #[error("{what}: no private key in the PEM text ({message})")]
    NoKey {
        /// Which one.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// Which configuration.
        what: &'static str,
        /// Why.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every storegate TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem`.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::NoKey {
        what,
        message: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "CA certificate",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// A client that trusts only `ca_pem` and presents `cert_pem`/`key_pem`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let rustls = |source| TlsError::Rustls {
        what: "TLS client",
        source,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            certs(cert_pem, "client certificate")?,
            key(key_pem, "client key")?,
        )
        .map_err(rustls)?;
    Ok(Arc::new(config))
}

/// A server presenting `cert_pem`/`key_pem` that requires every client to
/// present a certificate issued by `ca_pem`.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let rustls = |source| TlsError::Rustls {
        what: "TLS server",
        source,
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(cert_pem, "server certificate")?,
            key(key_pem, "server key")?,
        )
        .map_err(rustls)?;
    Ok(Arc::new(config))
}
