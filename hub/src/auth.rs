//! Users, roles, passwords, access tokens and API keys.
//!
//! - Passwords are hashed with argon2id (PHC strings).
//! - Access tokens are HS256 JWTs (`sub`, `role`, `kind`, `jti`, `iat`,
//!   `exp`). The HMAC secret comes from `auth.jwt_secret` or is generated
//!   once and kept in the database, so every replica verifies every token.
//! - Logout revokes a token's `jti` until it would have expired.
//! - API keys (`sgk_<id>_<secret>`) are for integrations: sent as
//!   `X-API-Key` or as a bearer token, or exchanged for an access token with
//!   the OAuth2 `client_credentials` grant. Only a SHA-256 of the secret is
//!   stored (the secret has 160 random bits, so a fast hash is enough).
//! - Failed logins are counted per account and per client address in the
//!   database (every replica sees them); past `auth.max_failed_logins` in
//!   `auth.failed_login_window_secs`, the token endpoint answers 429.
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
    role: Role,
    kind: String,
    jti: String,
    iat: i64,
    exp: i64,
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
    /// Signs tokens.
    encoding: Arc<EncodingKey>,
    /// Verifies tokens.
    decoding: Arc<DecodingKey>,
    /// Token lifetime, seconds.
    pub ttl_secs: i64,
    /// Login throttle.
    pub max_failed: i64,
    /// Login throttle window, ms.
    pub window_ms: i64,
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
    /// Loads (or creates) the token secret and builds the keys.
    pub async fn init(db: &Db, settings: &AuthSettings) -> Result<Auth, sqlx::Error> {
        let secret = if settings.jwt_secret.is_empty() {
            let fresh = random_bytes::<32>().to_vec();
            sqlx::query("INSERT INTO hub_secrets (name, value) VALUES ('jwt', $1) ON CONFLICT DO NOTHING")
                .bind(fresh)
                .execute(&db.pool)
                .await?;
            sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM hub_secrets WHERE name = 'jwt'")
                .fetch_one(&db.pool)
                .await?
        } else {
            settings.jwt_secret.as_bytes().to_vec()
        };
        Ok(Auth {
            encoding: Arc::new(EncodingKey::from_secret(&secret)),
            decoding: Arc::new(DecodingKey::from_secret(&secret)),
            ttl_secs: settings.token_ttl_secs as i64,
            max_failed: i64::from(settings.max_failed_logins.max(1)),
            window_ms: settings.failed_login_window_secs as i64 * 1000,
        })
    }

    /// Issues an access token; returns it with its lifetime in seconds.
    pub fn issue(&self, subject: &str, role: Role, kind: &str) -> (String, i64) {
        self.issue_with_ttl(subject, role, kind, self.ttl_secs)
    }

    /// Issues a token with an explicit lifetime (negative: already expired,
    /// for tests of expiry).
    pub fn issue_with_ttl(&self, subject: &str, role: Role, kind: &str, ttl_secs: i64) -> (String, i64) {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            kind: kind.to_owned(),
            jti: new_id(),
            iat: now,
            exp: now + ttl_secs,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, ttl_secs)
    }

    /// Checks a bearer token or API key and returns who it is.
    pub async fn authenticate(&self, db: &Db, credential: &str) -> Result<Principal, AuthError> {
        if credential.starts_with("sgk_") {
            return api_key_principal(db, credential).await;
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(credential, &self.decoding, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            }
        })?;
        let c = data.claims;
        let revoked: Option<i64> = sqlx::query_scalar("SELECT expires_ms FROM revoked_tokens WHERE jti = $1")
            .bind(c.jti.as_str())
            .fetch_optional(&db.pool)
            .await?;
        if revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        let active = match c.kind.as_str() {
            "user" => sqlx::query_scalar::<_, i64>("SELECT disabled FROM users WHERE id = $1")
                .bind(c.sub.as_str())
                .fetch_optional(&db.pool)
                .await?
                .is_some_and(|d| d == 0),
            "api_key" => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT revoked_ms FROM api_keys WHERE id = $1")
                    .bind(c.sub.as_str())
                    .fetch_optional(&db.pool)
                    .await?
                    .is_some_and(|r| r.is_none())
            }
            _ => false,
        };
        if !active {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            subject: c.sub,
            role: c.role,
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

    /// Seconds until `keys` may try again, if any of them is throttled.
    pub async fn throttled(&self, db: &Db, keys: &[(&str, i64)]) -> Result<Option<i64>, sqlx::Error> {
        let now = now_ms();
        let mut wait = None;
        for (key, max) in keys {
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT window_start_ms, failures FROM login_failures WHERE key = $1")
                    .bind(*key)
                    .fetch_optional(&db.pool)
                    .await?;
            if let Some((start, failures)) = row
                && failures >= *max
                && now < start + self.window_ms
            {
                let secs = (start + self.window_ms - now + 999) / 1000;
                wait = Some(wait.map_or(secs, |w: i64| w.max(secs)));
            }
        }
        Ok(wait)
    }

    /// Counts a failed attempt against each key.
    pub async fn record_failure(&self, db: &Db, keys: &[(&str, i64)]) -> Result<(), sqlx::Error> {
        let now = now_ms();
        for (key, _) in keys {
            sqlx::query(
                "INSERT INTO login_failures (key, window_start_ms, failures) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE WHEN login_failures.window_start_ms < $3 THEN 1 ELSE login_failures.failures + 1 END, \
                 window_start_ms = CASE WHEN login_failures.window_start_ms < $3 THEN $2 ELSE login_failures.window_start_ms END",
            )
            .bind(*key)
            .bind(now)
            .bind(now - self.window_ms)
            .execute(&db.pool)
            .await?;
        }
        Ok(())
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
        })
    }
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, disabled, created_ms";

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
        password_hash: hash_password(password),
        role,
        disabled: false,
        created_ms: now_ms(),
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
/// as `user_updated` with `detail`).
#[allow(clippy::too_many_arguments)]
pub async fn update_user(
    db: &Db,
    actor: &str,
    id: &str,
    name: &str,
    role: Role,
    disabled: bool,
    password_hash: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE users SET name = $2, role = $3, disabled = $4, password_hash = $5 WHERE id = $1")
        .bind(id)
        .bind(crate::sql::text(name))
        .bind(role.as_str())
        .bind(i64::from(disabled))
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    crate::audit::record(&mut tx, actor, "user_updated", "user", id, detail).await?;
    tx.commit().await
}

/// Sets a user's password (checked by the caller against the rules),
/// audited as `password_changed`.
pub async fn set_password(db: &Db, actor: &str, id: &str, password: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(hash_password(password))
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
