//! Store credentials: who may speak for a store on the WAN.
//!
//! A credential is issued by `hub store provision` (or `rotate`): a TLS
//! client certificate and an Ed25519 signing key, both in the store's
//! bundle. The database keeps only the public facts (`store_credentials`):
//! the signing public key, the certificate's fingerprint and serial, expiry
//! and revocation. A store may hold several valid credentials while it is
//! being rotated; `hub store revoke` ends one or all of them.
//!
//! [`Registry`] is every replica's in-memory view of that table, read on
//! every message and connection. It is refreshed every `wan.refresh_secs`
//! (so a revocation takes effect everywhere within that time, without a
//! restart). A key or certificate it does not know (a store provisioned a
//! moment ago) is looked up in the database by itself (a point query by
//! primary key), at most [`MISS_LOOKUPS_PER_SEC`] times a second in all
//! and once per [`MISS_TTL`] for the same value (whoever asks meanwhile
//! waits for that one query), so a flood of forged key ids costs the
//! database little and holds a worker up for one query at most. Past the
//! budget an unknown key is refused at once; a store's genuine batch
//! refused that way comes back with its next batch's gap or its ack
//! timeout. A
//! refresh that finds a credential newly revoked or expired cancels its
//! connection token, which closes its connections at the embedded
//! broker's gate.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::Row;
use storegate_protocol::StoreId;
use storegate_protocol::seal::{KeyId, KeyStatus, Keyring, Party, PublicKey};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, now_ms};
use crate::pki::CredentialFacts;

/// Most database lookups of unknown keys or certificates per second.
pub const MISS_LOOKUPS_PER_SEC: u32 = 200;
/// How long an unknown key or certificate is remembered as unknown.
pub const MISS_TTL: Duration = Duration::from_secs(2);
/// Most unknown values remembered.
const MISS_CACHE: usize = 10_000;

const COLUMNS: &str = "kid, store_id, signing_key, cert_sha256, cert_serial, not_after_ms, created_ms, revoked_ms, revoked_reason";

/// One credential as the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Key id of its signing key.
    pub kid: KeyId,
    /// The store.
    pub store: StoreId,
    /// The signing public key.
    pub signing_key: PublicKey,
    /// SHA-256 of the TLS certificate, hex.
    pub cert_sha256: String,
    /// Certificate serial, hex.
    pub cert_serial: String,
    /// Expiry, ms.
    pub not_after_ms: i64,
    /// Issued, ms.
    pub created_ms: i64,
    /// Revoked at, ms.
    pub revoked_ms: Option<i64>,
    /// Why.
    pub revoked_reason: Option<String>,
}

impl Credential {
    /// Valid at `now`: not revoked, not expired.
    pub fn valid_at(&self, now: i64) -> bool {
        self.revoked_ms.is_none() && self.not_after_ms > now
    }
}

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row is unreadable.
    #[error("credential row {kid}: {message}")]
    Corrupt {
        /// The row.
        kid: String,
        /// What is wrong.
        message: String,
    },
}

/// Issues a credential for `store` with `ca` and records it: the returned
/// bundle is everything the store's edge needs (write it with
/// [`bundle_text`] to a file only its owner can read).
pub async fn provision(
    db: &Db,
    ca: &crate::pki::Ca,
    hub_keys: &[PublicKey],
    store: &StoreId,
    broker: &str,
    days: i64,
) -> Result<(storegate_protocol::bundle::StoreBundle, Credential), ProvisionError> {
    let (bundle, facts) = crate::pki::issue_store(ca, hub_keys, store, broker, days)?;
    let credential = register(db, &facts).await?;
    Ok((bundle, credential))
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Issuing failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// Recording failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// The text of a bundle file.
pub fn bundle_text(bundle: &storegate_protocol::bundle::StoreBundle) -> String {
    format!(
        "# storegate store bundle for {}: the store's private keys. Keep it on that store's edge only,\n\
         # readable by the agent alone; load it with `edge-agent --bundle <file>`.\n{}",
        bundle.store_id,
        toml::to_string(bundle).unwrap_or_default()
    )
}

/// Records a newly issued credential.
pub async fn register(db: &Db, facts: &CredentialFacts) -> Result<Credential, CredentialError> {
    let c = Credential {
        kid: facts.signing_key.kid(),
        store: facts.store.clone(),
        signing_key: facts.signing_key,
        cert_sha256: facts.cert_sha256.clone(),
        cert_serial: facts.cert_serial.clone(),
        not_after_ms: facts.not_after_ms,
        created_ms: now_ms(),
        revoked_ms: None,
        revoked_reason: None,
    };
    sqlx::query(
        "INSERT INTO store_credentials (kid, store_id, signing_key, cert_sha256, cert_serial, not_after_ms, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(c.kid.to_string())
    .bind(c.store.as_str())
    .bind(c.signing_key.to_base64())
    .bind(c.cert_sha256.as_str())
    .bind(c.cert_serial.as_str())
    .bind(c.not_after_ms)
    .bind(c.created_ms)
    .execute(&db.pool)
    .await?;
    Ok(c)
}

fn row_to_credential(r: &sqlx::any::AnyRow) -> Result<Credential, CredentialError> {
    let kid: String = r.try_get("kid")?;
    let corrupt = |message: String| CredentialError::Corrupt {
        kid: kid.clone(),
        message,
    };
    Ok(Credential {
        kid: KeyId::parse(&kid).map_err(|e| corrupt(e.to_string()))?,
        store: StoreId::parse(r.try_get::<String, _>("store_id")?).map_err(|e| corrupt(e.to_string()))?,
        signing_key: PublicKey::from_base64(&r.try_get::<String, _>("signing_key")?)
            .map_err(|e| corrupt(e.to_string()))?,
        cert_sha256: r.try_get("cert_sha256")?,
        cert_serial: r.try_get("cert_serial")?,
        not_after_ms: r.try_get("not_after_ms")?,
        created_ms: r.try_get("created_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
        revoked_reason: r.try_get("revoked_reason")?,
    })
}

/// Every credential, or `store`'s, newest first.
pub async fn list(db: &Db, store: Option<&StoreId>) -> Result<Vec<Credential>, CredentialError> {
    let rows =
        match store {
            Some(s) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM store_credentials WHERE store_id = $1 ORDER BY created_ms DESC, kid"
            )))
            .bind(s.as_str())
            .fetch_all(&db.pool)
            .await?,
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM store_credentials ORDER BY store_id, created_ms DESC, kid"
                )))
                .fetch_all(&db.pool)
                .await?
            }
        };
    rows.iter().map(row_to_credential).collect()
}

/// Revokes `store`'s credential `kid`, or all of its credentials; returns
/// how many were revoked now (already revoked ones are left as they are).
pub async fn revoke(
    db: &Db,
    store: &StoreId,
    kid: Option<KeyId>,
    reason: &str,
) -> Result<u64, CredentialError> {
    let done = match kid {
        Some(k) => {
            sqlx::query(
                "UPDATE store_credentials SET revoked_ms = $3, revoked_reason = $4 \
                 WHERE store_id = $1 AND kid = $2 AND revoked_ms IS NULL",
            )
            .bind(store.as_str())
            .bind(k.to_string())
            .bind(now_ms())
            .bind(reason)
            .execute(&db.pool)
            .await?
        }
        None => {
            sqlx::query(
                "UPDATE store_credentials SET revoked_ms = $2, revoked_reason = $3 \
                 WHERE store_id = $1 AND revoked_ms IS NULL",
            )
            .bind(store.as_str())
            .bind(now_ms())
            .bind(reason)
            .execute(&db.pool)
            .await?
        }
    };
    Ok(done.rows_affected())
}

/// One credential in the registry.
#[derive(Debug, Clone)]
struct Entry {
    /// The store.
    store: StoreId,
    /// Its signing key.
    key: PublicKey,
    /// Still valid.
    valid: bool,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Every credential by key id.
    by_kid: HashMap<KeyId, Entry>,
    /// Certificate fingerprint -> key id.
    by_cert: HashMap<String, KeyId>,
    /// Cancelled when the credential stops being valid.
    tokens: HashMap<KeyId, CancellationToken>,
}

/// The in-memory view of `store_credentials` (see the module docs).
#[derive(Debug, Clone)]
pub struct Registry {
    /// The database.
    db: Db,
    /// The view.
    inner: Arc<RwLock<Snapshot>>,
    /// Lookups of unknown values: recent ones (shared: two messages
    /// signed by the same new key wait for one query) and the budget.
    misses: Arc<std::sync::Mutex<Misses>>,
}

/// One lookup of an unknown value, shared by whoever asks meanwhile.
type Lookup = Arc<tokio::sync::OnceCell<bool>>;

/// Recent lookups and the budget.
#[derive(Debug, Default)]
struct Misses {
    /// Value -> when its lookup started, and its outcome.
    recent: HashMap<String, (Instant, Lookup)>,
    /// Start of the current one-second window.
    window: Option<Instant>,
    /// Lookups started in it.
    used: u32,
}

impl Misses {
    /// The lookup to wait for: the one under way (or just done) for `key`,
    /// a new one if the budget allows, or none.
    fn lookup_for(&mut self, key: &str, now: Instant) -> Option<Lookup> {
        if let Some((t, cell)) = self.recent.get(key)
            && now.duration_since(*t) < MISS_TTL
        {
            return Some(cell.clone());
        }
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= MISS_LOOKUPS_PER_SEC {
            return None;
        }
        self.used += 1;
        if self.recent.len() >= MISS_CACHE {
            self.recent.retain(|_, (t, _)| now.duration_since(*t) < MISS_TTL);
            if self.recent.len() >= MISS_CACHE {
                self.recent.clear();
            }
        }
        let cell = Lookup::default();
        self.recent.insert(key.to_owned(), (now, cell.clone()));
        Some(cell)
    }
}

impl Registry {
    /// Loads the view from the database.
    pub async fn load(db: Db) -> Result<Registry, CredentialError> {
        let r = Registry {
            db,
            inner: Arc::default(),
            misses: Arc::default(),
        };
        r.refresh().await?;
        Ok(r)
    }

    /// Reads the table again; cancels the tokens of credentials that are no
    /// longer valid. Returns how many were cut off now.
    pub async fn refresh(&self) -> Result<usize, CredentialError> {
        let all = list(&self.db, None).await?;
        let now = now_ms();
        let mut cut = 0;
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut by_kid = HashMap::with_capacity(all.len());
        let mut by_cert = HashMap::with_capacity(all.len());
        for c in all {
            let valid = c.valid_at(now);
            if !valid && let Some(t) = inner.tokens.remove(&c.kid) {
                t.cancel();
                cut += 1;
                tracing::warn!(store = %c.store, credential = %c.kid, "credential revoked or expired: its connections are closed and its messages refused");
            }
            by_cert.insert(c.cert_sha256.clone(), c.kid);
            by_kid.insert(
                c.kid,
                Entry {
                    store: c.store,
                    key: c.signing_key,
                    valid,
                },
            );
        }
        // A credential deleted from the table is as good as revoked.
        let gone: Vec<KeyId> = inner
            .tokens
            .keys()
            .filter(|k| !by_kid.contains_key(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(t) = inner.tokens.remove(&k) {
                t.cancel();
                cut += 1;
            }
        }
        inner.by_kid = by_kid;
        inner.by_cert = by_cert;
        Ok(cut)
    }

    /// Looks an unknown key id up in the database (within the miss budget,
    /// see the module docs); adds what it finds to the view. Returns
    /// whether the view knows the key now.
    pub async fn look_up_key(&self, kid: &KeyId) -> bool {
        if self.lookup(kid) != KeyStatus::Unknown {
            return true;
        }
        self.look_up("kid", &kid.to_string()).await
    }

    /// Like [`Registry::look_up_key`], for a certificate fingerprint.
    pub async fn look_up_certificate(&self, sha256: &str) -> bool {
        if self.knows_certificate(sha256) {
            return true;
        }
        self.look_up("cert_sha256", sha256).await
    }

    async fn look_up(&self, column: &'static str, value: &str) -> bool {
        let cell = self
            .misses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup_for(value, Instant::now());
        let Some(cell) = cell else {
            return false;
        };
        *cell.get_or_init(|| self.query(column, value)).await
    }

    /// One point query; adds what it finds to the view.
    async fn query(&self, column: &'static str, value: &str) -> bool {
        let sql = format!("SELECT {COLUMNS} FROM store_credentials WHERE {column} = $1");
        let row = match sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(&self.db.pool)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "credential lookup failed");
                return false;
            }
        };
        let Some(Ok(c)) = row.as_ref().map(row_to_credential) else {
            return false;
        };
        let valid = c.valid_at(now_ms());
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.by_cert.insert(c.cert_sha256.clone(), c.kid);
        inner.by_kid.insert(
            c.kid,
            Entry {
                store: c.store,
                key: c.signing_key,
                valid,
            },
        );
        true
    }

    /// Refreshes every `every` until `shutdown`.
    pub async fn run_refresher(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "credential refresh failed; the previous view stays in force");
            }
        }
    }

    /// The valid credential a TLS certificate (SHA-256, hex) belongs to:
    /// its store, key id and a token cancelled when it stops being valid.
    pub fn by_certificate(&self, sha256: &str) -> Option<(StoreId, KeyId, CancellationToken)> {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let kid = *inner.by_cert.get(sha256)?;
        let entry = inner.by_kid.get(&kid)?.clone();
        if !entry.valid {
            return None;
        }
        let token = inner.tokens.entry(kid).or_default().child_token();
        Some((entry.store, kid, token))
    }

    /// Whether the certificate is known at all (valid or not).
    pub fn knows_certificate(&self, sha256: &str) -> bool {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_cert
            .contains_key(sha256)
    }
}

impl Keyring for Registry {
    fn lookup(&self, kid: &KeyId) -> KeyStatus {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.by_kid.get(kid) {
            Some(e) if e.valid => KeyStatus::Active(Party::Store(e.store.clone()), e.key),
            Some(e) => KeyStatus::Revoked(Party::Store(e.store.clone())),
            None => KeyStatus::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_looked_up_once_per_ttl_and_within_the_budget() {
        let mut m = Misses::default();
        let t0 = Instant::now();
        let first = m.lookup_for("a", t0).unwrap();
        let again = m.lookup_for("a", t0 + Duration::from_millis(100)).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one query for a value, shared");
        let later = m
            .lookup_for("a", t0 + MISS_TTL + Duration::from_millis(1))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &later), "looked up again after the TTL");
        let t1 = t0 + Duration::from_secs(10);
        let allowed = (0..1000)
            .filter(|i| m.lookup_for(&format!("k{i}"), t1).is_some())
            .count();
        assert_eq!(
            allowed, MISS_LOOKUPS_PER_SEC as usize,
            "a flood gets the budget only"
        );
        assert!(
            m.lookup_for("fresh", t1 + Duration::from_secs(1)).is_some(),
            "the next second has budget again"
        );
    }
}
