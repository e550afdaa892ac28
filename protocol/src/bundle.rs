//! A store bundle: everything one store's edge agent needs to join the
//! chain, written by `hub store provision` as one TOML file and loaded by
//! the edge (`upstream.bundle`).
//!
//! It holds secrets (the store's TLS private key and message signing key):
//! the file is written readable by its owner only, and [`StoreBundle`]'s
//! `Debug` shows no key material.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::StoreId;
use crate::seal::{KeyError, KeyId, PublicKey, SigningKey, pkcs8_from_pem};

/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;

/// One store's credentials and the chain's public facts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreBundle {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// The store.
    pub store_id: String,
    /// The hub's broker: `mqtts://host:port` (or `mqtt://` on loopback).
    pub broker: String,
    /// Key id of this credential's signing key (what `hub store list` shows).
    pub credential: String,
    /// When it was issued, ms since the epoch.
    pub issued_at_ms: i64,
    /// When its certificate expires, ms since the epoch.
    pub not_after_ms: i64,
    /// The chain CA certificate (PEM): the only root the edge trusts for
    /// the broker's TLS certificate.
    pub ca_pem: String,
    /// The store's TLS client certificate (PEM), issued by the chain CA.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM). Secret.
    pub key_pem: String,
    /// The store's Ed25519 message signing key (PKCS#8 PEM). Secret.
    pub signing_key_pem: String,
    /// The hub's message signing public keys (base64); more than one while
    /// the hub's key is being replaced.
    pub hub_keys: Vec<String>,
}

impl fmt::Debug for StoreBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBundle")
            .field("store_id", &self.store_id)
            .field("broker", &self.broker)
            .field("credential", &self.credential)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// Why a bundle is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Written by a newer hub.
    #[error("bundle format {0} is not supported (this build reads {BUNDLE_FORMAT})")]
    Format(u32),
    /// The store id is invalid.
    #[error("bundle store_id: {0}")]
    Store(String),
    /// A key is unusable.
    #[error("bundle key: {0}")]
    Key(#[from] KeyError),
    /// The signing key is not the credential the bundle names.
    #[error("bundle credential {named} does not match its signing key ({actual})")]
    CredentialMismatch {
        /// What the bundle says.
        named: String,
        /// The signing key's id.
        actual: KeyId,
    },
    /// No hub key to trust.
    #[error("bundle has no hub key")]
    NoHubKey,
}

/// A bundle's keys, parsed.
#[derive(Debug)]
pub struct BundleKeys {
    /// The store.
    pub store: StoreId,
    /// The store's signing key.
    pub signing: SigningKey,
    /// The hub keys it trusts.
    pub hub_keys: Vec<PublicKey>,
}

impl StoreBundle {
    /// Checks the bundle and parses its message keys (TLS material is
    /// checked by whoever builds the TLS configuration).
    pub fn keys(&self) -> Result<BundleKeys, BundleError> {
        if self.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(self.format));
        }
        let store = StoreId::parse(&self.store_id).map_err(|e| BundleError::Store(e.to_string()))?;
        let signing = SigningKey::from_pkcs8(&pkcs8_from_pem(&self.signing_key_pem)?)?;
        if signing.kid().to_string() != self.credential {
            return Err(BundleError::CredentialMismatch {
                named: self.credential.clone(),
                actual: signing.kid(),
            });
        }
        let hub_keys = self
            .hub_keys
            .iter()
            .map(|k| PublicKey::from_base64(k))
            .collect::<Result<Vec<_>, _>>()?;
        if hub_keys.is_empty() {
            return Err(BundleError::NoHubKey);
        }
        Ok(BundleKeys {
            store,
            signing,
            hub_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::pkcs8_to_pem;

    fn bundle() -> StoreBundle {
        let (k, der) = SigningKey::generate().unwrap();
        let hub = SigningKey::from_seed_for_tests(&[9; 32]);
        StoreBundle {
            format: BUNDLE_FORMAT,
            store_id: "store-0001".into(),
            broker: "mqtts://hub.example:8883".into(),
            credential: k.kid().to_string(),
            issued_at_ms: 1,
            not_after_ms: 2,
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "SECRET-TLS".into(),
            signing_key_pem: pkcs8_to_pem(&der),
            hub_keys: vec![hub.public().to_base64()],
        }
    }

    #[test]
    fn a_bundle_parses_and_its_debug_shows_no_secret() {
        let b = bundle();
        let keys = b.keys().unwrap();
        assert_eq!(keys.store.as_str(), "store-0001");
        assert_eq!(keys.hub_keys.len(), 1);
        let shown = format!("{b:?}");
        assert!(!shown.contains("SECRET") && !shown.contains("PRIVATE"), "{shown}");
    }

    #[test]
    fn a_mismatched_or_incomplete_bundle_is_refused() {
        let mut b = bundle();
        b.credential = "0000000000000000".into();
        assert!(matches!(b.keys(), Err(BundleError::CredentialMismatch { .. })));
        let mut b = bundle();
        b.hub_keys.clear();
        assert_eq!(b.keys().err(), Some(BundleError::NoHubKey));
        let mut b = bundle();
        b.format = 2;
        assert_eq!(b.keys().err(), Some(BundleError::Format(2)));
    }
}
