//! `Idempotency-Key` (IETF httpapi draft): the first request with a key
//! is processed and its response kept; a retry with the same key and the
//! same body gets that response again; the same key with another body is
//! refused (422); a retry while the first is still running gets 409.
//!
//! Keys are scoped by principal and route. A first request that failed
//! with a server error leaves no record, so it can be retried. A request
//! that died with the hub (in flight forever) is settled from the
//! resource it created, if any (orders: the saga finishes on restart and
//! the retry gets the order), or taken over after [`STALE_MS`].

use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;

use crate::db::{Db, now_ms};

/// After this long an in-flight record without a resource is abandoned.
pub const STALE_MS: i64 = 60_000;

/// Where a request stands with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First time: process it, then [`finish`].
    Fresh,
    /// Already answered: send this again.
    Replay {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// Same key, different request body.
    Mismatch,
    /// The first request is still running (`resource` is what it created
    /// so far, if anything).
    InFlight {
        /// E.g. the order id.
        resource: Option<String>,
    },
}

/// Identifies a key: the key, who sent it, and where.
#[derive(Debug, Clone)]
pub struct KeyRef {
    /// The header's value.
    pub key: String,
    /// `user:ID` or `api_key:ID`.
    pub principal: String,
    /// `POST /api/v1/orders`.
    pub route: String,
}

/// Fingerprint of a request body.
pub fn fingerprint(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a key header value: 1 to 255 visible ASCII characters.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())
}

crate::sql::row! {
    /// A key as stored.
    struct Stored {
        request_hash: String,
        status: Option<i64>,
        body: Option<String>,
        resource: Option<String>,
        created_ms: i64,
    }
}

/// Claims the key for this request, or says what to do instead.
pub async fn begin(db: &Db, k: &KeyRef, hash: &str) -> Result<Begin, sqlx::Error> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO idempotency (key, principal, route, request_hash, created_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(k.key.as_str())
    .bind(k.principal.as_str())
    .bind(k.route.as_str())
    .bind(hash)
    .bind(now)
    .execute(&db.relaxed)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(Begin::Fresh);
    }
    let row: Option<Stored> = sqlx::query_as(
        "SELECT request_hash, status, body, resource, created_ms FROM idempotency \
         WHERE key = $1 AND principal = $2 AND route = $3",
    )
    .bind(k.key.as_str())
    .bind(k.principal.as_str())
    .bind(k.route.as_str())
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else {
        // Deleted between the two statements (a failed first request): retry.
        return Box::pin(begin(db, k, hash)).await;
    };
    if row.request_hash != hash {
        return Ok(Begin::Mismatch);
    }
    let Stored {
        status,
        body,
        resource,
        created_ms: created,
        ..
    } = row;
    if let Some(s) = status {
        return Ok(Begin::Replay {
            status: s as u16,
            body: body.unwrap_or_default(),
        });
    }
    if resource.is_none() && now - created > STALE_MS {
        // Abandoned by a crashed request: take it over (one taker wins).
        let took = sqlx::query(AssertSqlSafe(
            "UPDATE idempotency SET created_ms = $4 WHERE key = $1 AND principal = $2 AND route = $3 \
             AND created_ms = $5 AND status IS NULL",
        ))
        .bind(k.key.as_str())
        .bind(k.principal.as_str())
        .bind(k.route.as_str())
        .bind(now)
        .bind(created)
        .execute(&db.pool)
        .await?
        .rows_affected()
            == 1;
        if took {
            return Ok(Begin::Fresh);
        }
    }
    Ok(Begin::InFlight { resource })
}

/// Records the resource each request created, inside their transaction
/// (one statement for all).
pub async fn set_resources(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    done: &[(&KeyRef, &str)],
) -> Result<(), sqlx::Error> {
    for chunk in done.chunks(crate::sql::CHUNK) {
        let pairs = crate::sql::placeholders(
            1,
            chunk.len(),
            &[" AS k", " AS p", " AS r", " AS res"],
            "SELECT ",
            "",
            " UNION ALL ",
        );
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "UPDATE idempotency SET resource = v.res FROM ({pairs}) AS v \
             WHERE idempotency.key = v.k AND idempotency.principal = v.p AND idempotency.route = v.r"
        )));
        for (k, resource) in chunk {
            q = q
                .bind(k.key.as_str())
                .bind(k.principal.as_str())
                .bind(k.route.as_str())
                .bind(*resource);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Keeps the response (or, for a server error, forgets the key so the
/// client may retry).
pub async fn finish(db: &Db, k: &KeyRef, status: u16, body: &str) -> Result<(), sqlx::Error> {
    if status >= 500 {
        sqlx::query(
            "DELETE FROM idempotency WHERE key = $1 AND principal = $2 AND route = $3 AND status IS NULL",
        )
        .bind(k.key.as_str())
        .bind(k.principal.as_str())
        .bind(k.route.as_str())
        .execute(&db.relaxed)
        .await?;
        return Ok(());
    }
    sqlx::query(
        "UPDATE idempotency SET status = $4, body = $5 WHERE key = $1 AND principal = $2 AND route = $3 AND status IS NULL",
    )
    .bind(k.key.as_str())
    .bind(k.principal.as_str())
    .bind(k.route.as_str())
    .bind(i64::from(status))
    .bind(body)
    .execute(&db.relaxed)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fingerprints() {
        assert!(valid_key("order-1"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert_eq!(fingerprint(b"{}"), fingerprint(b"{}"));
        assert_ne!(fingerprint(b"{}"), fingerprint(b"{ }"));
    }
}
