//! Credentials for simulators and tests, issued the way `hub store
//! provision` issues them.
//!
//! - [`TestChain`]: a chain CA and hub key held in memory, for runs
//!   without a hub (the [`crate::responder::Responder`] stands in for it):
//!   it issues store bundles on demand and knows their keys.
//! - [`provision_at_hub`]: a store credential from a real hub's CA,
//!   recorded in that hub's database, as an operator would make it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use storegate_edge::trust::EdgeTrust;
use storegate_hub::pki::{self, Ca, PkiDir};
use storegate_protocol::StoreId;
use storegate_protocol::bundle::StoreBundle;
use storegate_protocol::seal::{KeyId, KeyStatus, Keyring, Party, PublicKey, Sealer, SigningKey};

/// A chain CA and a hub key in memory (see the module docs).
#[derive(Debug)]
pub struct TestChain {
    /// The CA.
    ca: Ca,
    /// The stand-in hub's signing key.
    hub: Arc<SigningKey>,
    /// Store keys issued so far.
    stores: Mutex<HashMap<KeyId, (StoreId, PublicKey)>>,
}

impl TestChain {
    /// A new chain.
    pub fn new() -> anyhow::Result<Arc<TestChain>> {
        let ca = Ca::generate("storegate test chain")?;
        let (hub, _) = SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(TestChain {
            ca,
            hub: Arc::new(hub),
            stores: Mutex::default(),
        }))
    }

    /// Signs as the hub.
    pub fn hub_sealer(&self) -> Sealer {
        Sealer::signing(self.hub.clone())
    }

    /// The hub's public key.
    pub fn hub_key(&self) -> PublicKey {
        self.hub.public()
    }

    /// The CA certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Issues a credential for `store`, whose edge connects to `broker`.
    pub fn issue(&self, store: &StoreId, broker: &str) -> anyhow::Result<StoreBundle> {
        let (bundle, facts) = pki::issue_store(&self.ca, &[self.hub.public()], store, broker, 30)?;
        self.stores
            .lock()
            .map_err(|_| anyhow::anyhow!("test chain lock poisoned"))?
            .insert(facts.signing_key.kid(), (store.clone(), facts.signing_key));
        Ok(bundle)
    }

    /// Issues a credential and writes its bundle into `dir`.
    pub fn write_bundle(&self, store: &StoreId, broker: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        write_bundle(&self.issue(store, broker)?, dir)
    }

    /// Issues a credential and returns what a virtual store signs and
    /// checks with.
    pub fn edge_trust(&self, store: &StoreId, broker: &str) -> anyhow::Result<Arc<EdgeTrust>> {
        Ok(Arc::new(EdgeTrust::from_bundle(&self.issue(store, broker)?)?))
    }
}

impl Keyring for TestChain {
    fn lookup(&self, kid: &KeyId) -> KeyStatus {
        if *kid == self.hub.kid() {
            return KeyStatus::Active(Party::Hub, self.hub.public());
        }
        match self.stores.lock().ok().and_then(|s| s.get(kid).cloned()) {
            Some((store, key)) => KeyStatus::Active(Party::Store(store), key),
            None => KeyStatus::Unknown,
        }
    }
}

/// Writes `bundle` as `{dir}/{store}.bundle.toml` (owner-only).
pub fn write_bundle(bundle: &StoreBundle, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.bundle.toml", bundle.store_id));
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    pki::write_secret(&path, &storegate_hub::credentials::bundle_text(bundle))?;
    Ok(path)
}

/// Provisions `store` at a hub running in this process and writes its
/// bundle into `dir`; returns the bundle's path.
pub async fn bundle_at_hub(
    hub: &storegate_hub::Hub,
    store: &StoreId,
    broker: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    write_bundle(
        &provision_at_hub(&hub.db, &hub.pki_dir, store, broker).await?,
        dir,
    )
}

/// Provisions `store` at a real hub: issued by the CA in `pki_dir`, signed
/// for by the hub key there, recorded in `db`.
pub async fn provision_at_hub(
    db: &storegate_hub::db::Db,
    pki_dir: &Path,
    store: &StoreId,
    broker: &str,
) -> anyhow::Result<StoreBundle> {
    let dir = PkiDir(pki_dir.to_path_buf());
    let ca = Ca::load(&dir)?;
    let hub = pki::load_signing_key(&dir.hub_signing_key())?;
    let (bundle, _) =
        storegate_hub::credentials::provision(db, &ca, &[hub.public()], store, broker, 30).await?;
    Ok(bundle)
}
