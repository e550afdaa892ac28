//! Users, roles, passwords, access tokens and API keys.
//!
//! - Passwords are hashed with argon2id (PHC strings).
//! - Access tokens are HS256 JWTs (`sub`, `role`, `kind`, `jti`, `iat`,
//!   `exp`, `ep`) with a key id (`kid`) in the header. The keys are kept
//!   in the database (`hub token-keys rotate` adds one, `retire` removes
//!   one), so every replica verifies every token; `auth.jwt_secret` instead
//!   pins one static secret.
//! - Every request reads the caller's role and state from the database: a
//!   demoted admin is an operator at once; a disabled user, a password
//!   change or reset, or a role change (the user's `token_epoch` moves)
//!   refuses every token issued before.
//! - Logout revokes a token's `jti` until it would have expired.
//! - argon2 runs on blocking threads, never on the async workers.
//! - API keys (`sgk_<id>_<secret>`) are for integrations: sent as
//!   `X-API-Key` or as a bearer token, or exchanged for an access token with
//!   the OAuth2 `client_credentials` grant. Only a SHA-256 of the secret is
//!   stored (the secret has 160 random bits, so a fast hash is enough).
//! - Login attempts are counted per account in the database (every replica
//!   sees them) before the password is checked, in one statement, so
//!   concurrent guesses get no more than `auth.max_failed_logins` in
//!   `auth.failed_login_window_secs`; past it the token endpoint answers
//!   429. A success clears the account's count. Client addresses count
//!   failures only (four times the limit), so an office behind one address
//!   is not throttled by its own logins.
//!
//! Roles are ordered: `admin` > `operator` > `client`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use storegate_protocol::ids::EventIdGenerator;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::settings::AuthSettings;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A customer: their own orders and favourites.
    Client,
    /// Back office: stores, stock, orders, payments.
    Operator,
    /// Everything, including users and keys.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Role::Client),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (admin, operator or client)")),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Principal {
    /// User id or API key id.
    pub subject: String,
    /// Their role.
    pub role: Role,
    /// `user` or `api_key`.
    pub kind: String,
    /// The token's id, for logout (access tokens only).
    pub jti: Option<String>,
    /// When the token expires (ms), for access tokens.
    pub expires_ms: Option<i64>,
}

/// JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The role when issued; requests use the role the database holds now.
    role: Role,
    kind: String,
    jti: String,
    iat: i64,
    exp: i64,
    /// The user's token epoch when issued (see `users.token_epoch`).
    #[serde(default)]
    ep: i64,
}

/// Why authentication failed (all map to 401 except `Db`).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials on the request.
    #[error("missing credentials")]
    Missing,
    /// Malformed, badly signed or unknown credentials.
    #[error("invalid credentials")]
    Invalid,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token was revoked (logout) or its user disabled.
    #[error("token revoked")]
    Revoked,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Keys and settings for issuing and checking credentials.
#[derive(Clone)]
pub struct Auth {
    /// The signing keys, by key id (`kid`).
    keys: Arc<std::sync::RwLock<Keys>>,
    /// Where the keys live (`None`: the one static `auth.jwt_secret`).
    keys_db: Option<Db>,
    /// Token lifetime, seconds.
    pub ttl_secs: i64,
    /// Login throttle.
    pub max_failed: i64,
    /// Login throttle window, ms.
    pub window_ms: i64,
}

/// Token keys: the newest signs, every one still in the database verifies.
struct Keys {
    /// The key id that signs.
    signing_kid: String,
    /// Its key.
    signing: EncodingKey,
    /// Every usable key by id.
    verifying: std::collections::HashMap<String, DecodingKey>,
    /// When they were read.
    loaded: std::time::Instant,
    /// When they were last read for a key id they did not have.
    missed: Option<std::time::Instant>,
}

/// How long a replica trusts its copy of the keys (a retired key stops
/// working everywhere within this).
const KEYS_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// The key id of the first, generated key (kept under its old name).
const FIRST_KID: &str = "jwt";

/// The key id of `auth.jwt_secret`.
const STATIC_KID: &str = "static";

impl Keys {
    fn from_rows(rows: Vec<(String, Vec<u8>)>) -> Option<Keys> {
        let (kid, secret) = rows.iter().max_by(|a, b| a.0.cmp(&b.0))?;
        Some(Keys {
            signing_kid: kid.clone(),
            signing: EncodingKey::from_secret(secret),
            verifying: rows
                .iter()
                .map(|(k, s)| (k.clone(), DecodingKey::from_secret(s)))
                .collect(),
            loaded: std::time::Instant::now(),
            missed: None,
        })
    }
}

/// The token keys in the database (`hub_secrets` rows named `jwt` and
/// `jwt-<ms>`): (kid, secret).
async fn load_keys(db: &Db) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT name, value FROM hub_secrets WHERE name = 'jwt' OR name LIKE 'jwt-%'")
        .fetch_all(&db.pool)
        .await
}

/// Adds a new token signing key; every replica signs with it once it has
/// read it (within 30 s, or at once when it sees a token signed with it).
/// Tokens signed with older keys stay valid until those are retired.
/// Returns the new key id.
pub async fn rotate_key(db: &Db) -> Result<String, sqlx::Error> {
    let kid = format!("jwt-{:015}", now_ms());
    sqlx::query("INSERT INTO hub_secrets (name, value) VALUES ($1, $2)")
        .bind(kid.as_str())
        .bind(random_bytes::<32>().to_vec())
        .execute(&db.pool)
        .await?;
    Ok(kid)
}

/// Retires a token key: tokens signed with it stop working on every
/// replica within 30 s. Refused for the newest key (rotate first).
/// Returns whether it was retired.
pub async fn retire_key(db: &Db, kid: &str) -> Result<Result<(), String>, sqlx::Error> {
    let keys = load_keys(db).await?;
    let newest = keys.iter().map(|(k, _)| k.as_str()).max();
    if newest == Some(kid) {
        return Ok(Err(format!("{kid} is the key that signs: rotate first")));
    }
    if !keys.iter().any(|(k, _)| k == kid) {
        return Ok(Err(format!("no token key {kid}")));
    }
    sqlx::query("DELETE FROM hub_secrets WHERE name = $1")
        .bind(kid)
        .execute(&db.pool)
        .await?;
    Ok(Ok(()))
}

/// The token keys' ids, oldest first (the last one signs).
pub async fn key_ids(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let mut ids: Vec<String> = load_keys(db).await?.into_iter().map(|(k, _)| k).collect();
    ids.sort();
    Ok(ids)
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random id (time-ordered ULID text).
pub fn new_id() -> String {
    EventIdGenerator::new()
        .next(now_ms().max(0) as u64, rand::random::<u128>)
        .to_string()
}

impl Auth {
    /// Loads (or creates) the token keys.
    pub async fn init(db: &Db, settings: &AuthSettings) -> Result<Auth, sqlx::Error> {
        let (keys, keys_db) = if settings.jwt_secret.is_empty() {
            let mut rows = load_keys(db).await?;
            if rows.is_empty() {
                // The first start (a retired first key is not made again).
                sqlx::query("INSERT INTO hub_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(FIRST_KID)
                    .bind(random_bytes::<32>().to_vec())
                    .execute(&db.pool)
                    .await?;
                rows = load_keys(db).await?;
            }
            let keys = Keys::from_rows(rows).ok_or(sqlx::Error::RowNotFound)?;
            (keys, Some(db.clone()))
        } else {
            let rows = vec![(STATIC_KID.to_owned(), settings.jwt_secret.as_bytes().to_vec())];
            (Keys::from_rows(rows).ok_or(sqlx::Error::RowNotFound)?, None)
        };
        Ok(Auth {
            keys: Arc::new(std::sync::RwLock::new(keys)),
            keys_db,
            ttl_secs: settings.token_ttl_secs as i64,
            max_failed: i64::from(settings.max_failed_logins.max(1)),
            window_ms: settings.failed_login_window_secs as i64 * 1000,
        })
    }

    /// Rereads the keys if they are stale or `kid` is unknown.
    async fn refresh_keys(&self, kid: &str) -> Result<(), sqlx::Error> {
        let Some(db) = &self.keys_db else {
            return Ok(());
        };
        // Stale keys are reread; an unknown key id at most once a second
        // (anyone can send a token naming any key id).
        let (stale, unknown) = self
            .keys
            .read()
            .map(|k| {
                let unknown = !k.verifying.contains_key(kid)
                    && k.missed
                        .is_none_or(|m| m.elapsed() > std::time::Duration::from_secs(1));
                (k.loaded.elapsed() > KEYS_FRESH, unknown)
            })
            .unwrap_or((true, false));
        if (stale || unknown)
            && let Some(mut fresh) = Keys::from_rows(load_keys(db).await?)
            && let Ok(mut k) = self.keys.write()
        {
            fresh.missed = if unknown {
                Some(std::time::Instant::now())
            } else {
                k.missed
            };
            *k = fresh;
        }
        Ok(())
    }

    /// Issues an access token; returns it with its lifetime in seconds.
    /// `epoch` is the user's token epoch (0 for API keys).
    pub fn issue(&self, subject: &str, role: Role, kind: &str, epoch: i64) -> (String, i64) {
        self.issue_with_ttl(subject, role, kind, epoch, self.ttl_secs)
    }

    /// Issues a token with an explicit lifetime (negative: already expired,
    /// for tests of expiry).
    pub fn issue_with_ttl(
        &self,
        subject: &str,
        role: Role,
        kind: &str,
        epoch: i64,
        ttl_secs: i64,
    ) -> (String, i64) {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            kind: kind.to_owned(),
            jti: new_id(),
            iat: now,
            exp: now + ttl_secs,
            ep: epoch,
        };
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &keys.signing)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, ttl_secs)
    }

    /// Checks a bearer token or API key and returns who it is, with the
    /// role the database holds now (not the one in the token).
    pub async fn authenticate(&self, db: &Db, credential: &str) -> Result<Principal, AuthError> {
        if credential.starts_with("sgk_") {
            return api_key_principal(db, credential).await;
        }
        let header = jsonwebtoken::decode_header(credential).map_err(|_| AuthError::Invalid)?;
        // Tokens from before key ids were signed with the first key (or
        // the static secret).
        let kid = header.kid.unwrap_or_else(|| {
            if self.keys_db.is_some() {
                FIRST_KID
            } else {
                STATIC_KID
            }
            .to_owned()
        });
        self.refresh_keys(&kid).await?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let decoded = {
            let keys = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = keys.verifying.get(&kid).ok_or(AuthError::Invalid)?;
            jsonwebtoken::decode::<Claims>(credential, key, &validation)
        };
        let data = decoded.map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let c = data.claims;
        // One read: the principal as it is now, and whether this token
        // was revoked (logged out).
        let role: Option<String> = match c.kind.as_str() {
            "user" => sqlx::query_as::<_, (i64, String, i64, i64)>(
                "SELECT disabled, role, token_epoch, \
                 (SELECT COUNT(*) FROM revoked_tokens r WHERE r.jti = $2) AS revoked FROM users WHERE id = $1",
            )
            .bind(c.sub.as_str())
            .bind(c.jti.as_str())
            .fetch_optional(&db.pool)
            .await?
            .filter(|(disabled, _, epoch, revoked)| *disabled == 0 && *epoch == c.ep && *revoked == 0)
            .map(|(_, role, ..)| role),
            "api_key" => sqlx::query_as::<_, (Option<i64>, String, i64)>(
                "SELECT revoked_ms, role, \
                 (SELECT COUNT(*) FROM revoked_tokens r WHERE r.jti = $2) AS revoked FROM api_keys WHERE id = $1",
            )
            .bind(c.sub.as_str())
            .bind(c.jti.as_str())
            .fetch_optional(&db.pool)
            .await?
            .filter(|(key_revoked, _, revoked)| key_revoked.is_none() && *revoked == 0)
            .map(|(_, role, _)| role),
            _ => None,
        };
        let role: Role = role
            .ok_or(AuthError::Revoked)?
            .parse()
            .map_err(|_| AuthError::Invalid)?;
        Ok(Principal {
            subject: c.sub,
            role,
            kind: c.kind,
            jti: Some(c.jti),
            expires_ms: Some(c.exp * 1000),
        })
    }

    /// Revokes a token until it would have expired.
    pub async fn revoke(&self, db: &Db, jti: &str, expires_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(jti)
            .bind(expires_ms)
            .execute(&db.pool)
            .await?;
        // Expired revocations are no longer needed.
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_ms < $1")
            .bind(now_ms())
            .execute(&db.pool)
            .await?;
        Ok(())
    }

    /// Counts an attempt against each of `keys` (key, most tries per
    /// window) before the credential is checked, in one statement per key,
    /// so concurrent guesses cannot all pass a check made before any was
    /// counted. Returns the seconds to wait if any key is past its limit:
    /// the attempt must then not be made. A success gives its count back
    /// ([`Auth::attempt_succeeded`]).
    pub async fn begin_attempt(&self, db: &Db, keys: &[(&str, i64)]) -> Result<Option<i64>, sqlx::Error> {
        let now = now_ms();
        let mut wait = None;
        for (key, max) in keys {
            let (start, tries): (i64, i64) = sqlx::query_as(
                "INSERT INTO login_failures (key, window_start_ms, failures) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE WHEN login_failures.window_start_ms < $3 THEN 1 ELSE login_failures.failures + 1 END, \
                 window_start_ms = CASE WHEN login_failures.window_start_ms < $3 THEN $2 ELSE login_failures.window_start_ms END \
                 RETURNING window_start_ms, failures",
            )
            .bind(*key)
            .bind(now)
            .bind(now - self.window_ms)
            .fetch_one(&db.pool)
            .await?;
            if tries > *max {
                let secs = ((start + self.window_ms - now + 999) / 1000).max(1);
                wait = Some(wait.map_or(secs, |w: i64| w.max(secs)));
            }
        }
        Ok(wait)
    }

    /// Seconds until `key` (a client address) may try again, if it has
    /// failed `max` times in the window. Addresses count failures only
    /// ([`Auth::failed`]), so an office behind one address is not
    /// throttled by its own successful logins; the exact bound on guesses
    /// is the account's ([`Auth::begin_attempt`]).
    pub async fn address_throttled(&self, db: &Db, key: &str, max: i64) -> Result<Option<i64>, sqlx::Error> {
        let now = now_ms();
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT window_start_ms, failures FROM login_failures WHERE key = $1")
                .bind(key)
                .fetch_optional(&db.pool)
                .await?;
        Ok(row
            .filter(|(start, failures)| *failures >= max && now < start + self.window_ms)
            .map(|(start, _)| ((start + self.window_ms - now + 999) / 1000).max(1)))
    }

    /// Counts a failed attempt against `key` (a client address).
    pub async fn failed(&self, db: &Db, key: &str) -> Result<(), sqlx::Error> {
        self.begin_attempt(db, &[(key, i64::MAX)]).await.map(|_| ())
    }

    /// After a successful attempt: the account's count is forgotten.
    pub async fn attempt_succeeded(&self, db: &Db, account: &str) -> Result<(), sqlx::Error> {
        self.clear_failures(db, account).await
    }

    /// Forgets failures after a success.
    pub async fn clear_failures(&self, db: &Db, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&db.pool)
            .await?;
        Ok(())
    }
}

/// Hashes a password on a blocking thread (argon2 takes tens of
/// milliseconds of CPU: never on the async workers).
pub async fn hash_password_blocking(password: &str) -> String {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .expect("argon2 hashing does not panic")
}

/// Checks a password on a blocking thread (see [`hash_password_blocking`])
/// against `hash`, or against a hash no password matches when there is no
/// account (the answer takes as long either way).
pub async fn verify_password_blocking(password: &str, hash: Option<&str>) -> bool {
    let (password, hash) = (password.to_owned(), hash.map(str::to_owned));
    tokio::task::spawn_blocking(move || match &hash {
        Some(h) => verify_password(&password, h),
        None => verify_password(&password, dummy_hash()),
    })
    .await
    .unwrap_or(false)
}

/// Hashes a password (argon2id, random salt).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .expect("argon2 with default parameters hashes any password")
}

/// Checks a password against a stored hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash that no password matches, checked when the account does not
/// exist so that timing does not reveal which emails are registered.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&hex(&random_bytes::<16>())))
}

/// Rules for new passwords.
pub fn check_password_rules(password: &str) -> Result<(), String> {
    if password.chars().count() < 10 {
        return Err("passwords need at least 10 characters".into());
    }
    if password.len() > 1024 {
        return Err("passwords are at most 1024 bytes".into());
    }
    Ok(())
}

/// A user as stored.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Id.
    pub id: String,
    /// Email (login name).
    pub email: String,
    /// Display name.
    pub name: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Cannot log in.
    pub disabled: bool,
    /// Created, ms.
    pub created_ms: i64,
    /// Tokens carry it; bumped to revoke them all.
    pub token_epoch: i64,
}

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for UserRow {
    fn from_row(r: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let role: String = r.try_get("role")?;
        Ok(UserRow {
            id: r.try_get("id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            password_hash: r.try_get("password_hash")?,
            role: role.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            disabled: r.try_get::<i64, _>("disabled")? != 0,
            created_ms: r.try_get("created_ms")?,
            token_epoch: r.try_get("token_epoch")?,
        })
    }
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, disabled, created_ms, token_epoch";

/// Finds a user by email (case-insensitive).
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
    )))
    .bind(email.trim().to_lowercase())
    .fetch_optional(&db.pool)
    .await
}

/// Finds a user by id.
pub async fn user_by_id(db: &Db, id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

/// Users after `after` (by id).
pub async fn list_users(db: &Db, after: Option<&str>, limit: i64) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// The email is taken.
    #[error("a user with this email exists")]
    Exists,
    /// The input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Creates a user.
pub async fn create_user(
    db: &Db,
    email: &str,
    name: &str,
    password: &str,
    role: Role,
) -> Result<UserRow, CreateUserError> {
    let email = email.trim().to_lowercase();
    if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err(CreateUserError::Invalid(format!(
            "{email:?} is not an email address"
        )));
    }
    check_password_rules(password).map_err(CreateUserError::Invalid)?;
    if user_by_email(db, &email).await?.is_some() {
        return Err(CreateUserError::Exists);
    }
    let row = UserRow {
        id: new_id(),
        email,
        name: crate::sql::text(name),
        password_hash: hash_password_blocking(password).await,
        role,
        disabled: false,
        created_ms: now_ms(),
        token_epoch: 0,
    };
    let done = sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role, created_ms, disabled) VALUES ($1, $2, $3, $4, $5, $6, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(row.id.as_str())
    .bind(row.email.as_str())
    .bind(row.name.as_str())
    .bind(row.password_hash.as_str())
    .bind(row.role.as_str())
    .bind(row.created_ms)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(CreateUserError::Exists);
    }
    Ok(row)
}

/// Creates the bootstrap admin if no admin exists yet.
pub async fn bootstrap_admin(db: &Db, email: &str, password: &str) -> Result<bool, CreateUserError> {
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
        .fetch_one(&db.pool)
        .await?;
    if admins > 0 {
        return Ok(false);
    }
    create_user(db, email, "Administrator", password, Role::Admin).await?;
    Ok(true)
}

/// A new API key: its id and the full key text (shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewApiKey {
    /// Key id (public).
    pub id: String,
    /// The key, `sgk_<id>_<secret>`. Shown once; only a hash is kept.
    pub key: String,
    /// Its role.
    pub role: Role,
}

const KEY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_token(len: usize) -> String {
    (0..len)
        .map(|_| KEY_ALPHABET[(rand::random::<u8>() & 31) as usize] as char)
        .collect()
}

/// Creates an API key.
pub async fn create_api_key(
    db: &Db,
    name: &str,
    role: Role,
    created_by: &str,
) -> Result<NewApiKey, sqlx::Error> {
    let id = random_token(12);
    let secret = random_token(32);
    sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, role, created_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(crate::sql::text(name))
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .bind(role.as_str())
    .bind(created_by)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(NewApiKey {
        key: format!("sgk_{id}_{secret}"),
        id,
        role,
    })
}

/// Splits `sgk_<id>_<secret>`.
pub fn split_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("sgk_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Checks an API key id and secret; returns its role if valid and active.
pub async fn check_api_key(db: &Db, id: &str, secret: &str) -> Result<Option<Role>, sqlx::Error> {
    let row: Option<(Vec<u8>, String, Option<i64>)> =
        sqlx::query_as("SELECT secret_hash, role, revoked_ms FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?;
    let Some((stored, role, revoked)) = row else {
        return Ok(None);
    };
    let given = Sha256::digest(secret.as_bytes());
    // Constant-time comparison of the two digests.
    let same = stored.len() == given.len()
        && stored
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || revoked.is_some() {
        return Ok(None);
    }
    sqlx::query("UPDATE api_keys SET last_used_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    Ok(role.parse().ok())
}

async fn api_key_principal(db: &Db, key: &str) -> Result<Principal, AuthError> {
    let (id, secret) = split_api_key(key).ok_or(AuthError::Invalid)?;
    let role = check_api_key(db, id, secret).await?.ok_or(AuthError::Invalid)?;
    Ok(Principal {
        subject: id.to_owned(),
        role,
        kind: "api_key".into(),
        jti: None,
        expires_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(!verify_password("anything", dummy_hash()));
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Client);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn api_keys_split() {
        assert_eq!(split_api_key("sgk_abc_def"), Some(("abc", "def")));
        assert_eq!(split_api_key("sgk__def"), None);
        assert_eq!(split_api_key("Bearer x"), None);
    }
}

/// Writes a user's name, role, disabled flag and password hash (audited
/// as `user_updated` with `detail`); with `revoke_tokens` (a new password,
/// role or disabled state), every token issued before is refused.
#[allow(clippy::too_many_arguments)]
pub async fn update_user(
    db: &Db,
    actor: &str,
    id: &str,
    name: &str,
    role: Role,
    disabled: bool,
    password_hash: &str,
    revoke_tokens: bool,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE users SET name = $2, role = $3, disabled = $4, password_hash = $5, token_epoch = token_epoch + $6 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(crate::sql::text(name))
    .bind(role.as_str())
    .bind(i64::from(disabled))
    .bind(password_hash)
    .bind(i64::from(revoke_tokens))
        .execute(&mut *tx)
        .await?;
    crate::audit::record(&mut tx, actor, "user_updated", "user", id, detail).await?;
    tx.commit().await
}

/// Sets a user's password (checked by the caller against the rules),
/// audited as `password_changed`.
pub async fn set_password(db: &Db, actor: &str, id: &str, password: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    // A new epoch: every token issued before is refused from now on.
    sqlx::query("UPDATE users SET password_hash = $2, token_epoch = token_epoch + 1 WHERE id = $1")
        .bind(id)
        .bind(hash_password_blocking(password).await)
        .execute(&mut *tx)
        .await?;
    crate::audit::record(
        &mut tx,
        actor,
        "password_changed",
        "user",
        id,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await
}

crate::sql::row! {
    /// An API key, as listed (never the secret).
    #[derive(Debug, Serialize, ToSchema)]
    pub struct KeyView {
        /// Key id.
        pub id: String,
        /// What it is for.
        pub name: String,
        /// Role.
        pub role: String,
        /// Who created it.
        pub created_by: String,
        /// Created, ms.
        pub created_ms: i64,
        /// Revoked, ms.
        pub revoked_ms: Option<i64>,
        /// Last used, ms.
        pub last_used_ms: Option<i64>,
    }
}

/// API keys by id, after `after`.
pub async fn api_keys(db: &Db, after: &str, limit: i64) -> Result<Vec<KeyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, role, created_by, created_ms, revoked_ms, last_used_ms FROM api_keys \
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// Revokes an active API key (audited); returns whether there was one.
pub async fn revoke_api_key(db: &Db, actor: &str, id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
        .bind(id)
        .bind(crate::db::now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if done {
        crate::audit::record(
            &mut tx,
            actor,
            "api_key_revoked",
            "api_key",
            id,
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(done)
}
