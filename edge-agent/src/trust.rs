//! The edge's side of WAN trust, from its store bundle (`upstream.bundle`,
//! written by `hub store provision`): the TLS client certificate it
//! presents to the hub's broker, the chain CA it trusts for the broker's
//! certificate, the key it signs every message with, and the hub keys it
//! accepts messages from. Without a bundle the agent runs only in the
//! explicitly insecure unsigned mode (`upstream.insecure_unsigned`).

use std::path::Path;
use std::sync::Arc;

use storegate_protocol::StoreId;
use storegate_protocol::bundle::StoreBundle;
use storegate_protocol::seal::{KeyId, Party, Sealer, StaticKeys};

/// Everything the sync engine needs to sign, check and connect.
#[derive(Debug, Clone)]
pub struct EdgeTrust {
    /// The store the credential belongs to.
    pub store: StoreId,
    /// Signs every message the edge sends.
    pub sealer: Sealer,
    /// The hub keys messages from the hub must be signed by.
    pub hub_keys: StaticKeys,
    /// Accept version 1 (unsigned) messages: the insecure mode only.
    pub accept_unsigned: bool,
    /// TLS towards an `mqtts://` broker.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The credential's key id (status, logs).
    pub credential: Option<KeyId>,
    /// The broker address the bundle names.
    pub broker: Option<String>,
}

/// Why the bundle is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("store bundle {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read (or write) the file.
    #[error(
        "store bundle {path} is open to other users (mode {mode:o}); it holds this store's private keys: chmod 600 it"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a bundle.
    #[error("store bundle {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Its keys are unusable.
    #[error("store bundle {path}: {source}")]
    Keys {
        /// The file.
        path: String,
        /// Why.
        source: storegate_protocol::bundle::BundleError,
    },
    /// Its TLS material is unusable.
    #[error("store bundle {path}: {source}")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        source: storegate_broker::tls::TlsError,
    },
}

impl EdgeTrust {
    /// Loads and checks the bundle at `path`.
    pub fn from_bundle_file(path: &Path) -> Result<EdgeTrust, TrustError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            path: shown.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o077 != 0
            {
                return Err(TrustError::Exposed {
                    path: shown,
                    mode: m.permissions().mode() & 0o777,
                });
            }
        }
        let bundle: StoreBundle = toml::from_str(&text).map_err(|e| TrustError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::from_bundle(&bundle).map_err(|e| match e {
            BundleProblem::Keys(source) => TrustError::Keys { path: shown, source },
            BundleProblem::Tls(source) => TrustError::Tls { path: shown, source },
        })
    }

    /// Checks a bundle already read.
    pub fn from_bundle(bundle: &StoreBundle) -> Result<EdgeTrust, BundleProblem> {
        let keys = bundle.keys().map_err(BundleProblem::Keys)?;
        let tls = storegate_broker::tls::client_config(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem)
            .map_err(BundleProblem::Tls)?;
        Ok(EdgeTrust {
            store: keys.store,
            credential: Some(keys.signing.kid()),
            sealer: Sealer::signing(Arc::new(keys.signing)),
            hub_keys: StaticKeys {
                party: Party::Hub,
                keys: keys.hub_keys,
            },
            accept_unsigned: false,
            tls: Some(tls),
            broker: Some(bundle.broker.clone()),
        })
    }

    /// The insecure mode: unsigned messages both ways, no TLS.
    pub fn unsigned(store: StoreId) -> EdgeTrust {
        EdgeTrust {
            store,
            sealer: Sealer::unsigned(),
            hub_keys: StaticKeys {
                party: Party::Hub,
                keys: Vec::new(),
            },
            accept_unsigned: true,
            tls: None,
            credential: None,
            broker: None,
        }
    }
}

/// What is wrong with a bundle's contents.
#[derive(Debug, thiserror::Error)]
pub enum BundleProblem {
    /// Its keys.
    #[error(transparent)]
    Keys(storegate_protocol::bundle::BundleError),
    /// Its TLS material.
    #[error(transparent)]
    Tls(storegate_broker::tls::TlsError),
}
