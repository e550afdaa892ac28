//! Global stock: per location and SKU, `on_hand` and `reserved`, each the
//! sum of its rows in the append-only `stock_movements` ledger.
//!
//! - On-hand movements: `sale`, `void`, `return`, `receipt`, `adjustment`,
//!   `count`, `transfer_out`, `transfer_in`, `fulfilment` (goods of an
//!   online order leaving), `other`.
//! - Reservation movements: `reservation` (+) and `release` (-) move
//!   `reserved` only. `available = on_hand - reserved`.
//!
//! Every function here writes the ledger row and the level in the caller's
//! transaction, and marks the (location, SKU) dirty so that
//! [`push_dirty`] sends the new level down to the store's edge with the
//! edge seq it includes (DESIGN.md §4).
//!
//! Reservations never oversell: [`reserve`] is one conditional `UPDATE ...
//! WHERE on_hand - reserved >= qty`, atomic on both databases.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Transaction};
use storegate_protocol::downlink::{DownBody, StockLevel};
use storegate_protocol::{Seq, Sku, StoreId};
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
pub use crate::domain::stock::MovementKind;
use crate::sql;

/// An on-hand movement to book.
#[derive(Debug, Clone)]
pub struct Booking {
    /// Location (store or warehouse id).
    pub location: String,
    /// The product.
    pub sku: String,
    /// Signed base units.
    pub delta: i64,
    /// Why it moved.
    pub kind: MovementKind,
    /// Free reference (order id, receipt number, transfer id...).
    pub reference: Option<String>,
}

async fn ledger(
    conn: &mut AnyConnection,
    location: &str,
    sku: &str,
    delta: i64,
    kind: MovementKind,
    reference: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stock_movements (location, sku, delta, kind, reference, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(location)
    .bind(sku)
    .bind(delta)
    .bind(kind.as_str())
    .bind(reference.map(sql::text))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Books on-hand movements: ledger rows, levels, dirty marks.
pub async fn book(conn: &mut AnyConnection, bookings: &[Booking]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    for b in bookings.iter().filter(|b| b.delta != 0) {
        ledger(
            conn,
            &b.location,
            &b.sku,
            b.delta,
            b.kind,
            b.reference.as_deref(),
            now,
        )
        .await?;
        sqlx::query(
            "INSERT INTO stock_levels (location, sku, on_hand, reserved, updated_ms) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (location, sku) DO UPDATE SET on_hand = stock_levels.on_hand + excluded.on_hand, \
             updated_ms = excluded.updated_ms",
        )
        .bind(b.location.as_str())
        .bind(b.sku.as_str())
        .bind(b.delta)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let pairs: Vec<(&str, &str)> = bookings
        .iter()
        .filter(|b| b.delta != 0)
        .map(|b| (b.location.as_str(), b.sku.as_str()))
        .collect();
    mark_dirty(conn, &pairs).await
}

/// Reserves `qty` of `sku` at `location` if that much is available.
/// Returns false (and changes nothing) otherwise.
pub async fn reserve(
    conn: &mut AnyConnection,
    location: &str,
    sku: &str,
    qty: i64,
    reference: &str,
) -> Result<bool, sqlx::Error> {
    if qty <= 0 {
        return Ok(qty == 0);
    }
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE stock_levels SET reserved = reserved + $3, updated_ms = $4 \
         WHERE location = $1 AND sku = $2 AND on_hand - reserved >= $3",
    )
    .bind(location)
    .bind(sku)
    .bind(qty)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if done {
        ledger(
            conn,
            location,
            sku,
            qty,
            MovementKind::Reservation,
            Some(reference),
            now,
        )
        .await?;
        mark_dirty(conn, &[(location, sku)]).await?;
    }
    Ok(done)
}

/// Reserves lines (location, SKU, quantity, reference: the order) for
/// one or many orders: one conditional update per location and SKU (the
/// lines' quantities summed), then one ledger row per line and one dirty
/// mark per level. Returns false (having changed nothing worth keeping:
/// the caller rolls back) as soon as one level is short.
pub async fn reserve_many(
    conn: &mut AnyConnection,
    lines: &[(&str, &str, i64, &str)],
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let mut want: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (location, sku, qty, _) in lines {
        let w = want.entry((*location, *sku)).or_insert(0);
        *w = w.saturating_add(*qty);
    }
    if conn.backend_name() == "PostgreSQL" {
        return reserve_many_pg(conn, &want, lines, now).await;
    }
    for ((location, sku), qty) in &want {
        let done = sqlx::query(
            "UPDATE stock_levels SET reserved = reserved + $3, updated_ms = $4 \
             WHERE location = $1 AND sku = $2 AND on_hand - reserved >= $3",
        )
        .bind(*location)
        .bind(*sku)
        .bind(*qty)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return Ok(false);
        }
    }
    for chunk in lines.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO stock_movements (location, sku, delta, kind, reference, created_ms)",
            chunk.len(),
            6,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (location, sku, qty, reference) in chunk {
            q = q
                .bind(*location)
                .bind(*sku)
                .bind(*qty)
                .bind(MovementKind::Reservation.as_str())
                .bind(*reference)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    let pairs: Vec<(&str, &str)> = want.keys().copied().collect();
    mark_dirty(conn, &pairs).await?;
    Ok(true)
}

/// [`reserve_many`] on PostgreSQL: one statement (conditional updates,
/// ledger rows, dirty marks), so the contended level rows are locked for one
/// round trip and the commit, not for four. Rows are locked in (location,
/// SKU) order; a deadlock with another order's statement anyway counts as a
/// lost race (the caller rolls back and plans again).
async fn reserve_many_pg(
    conn: &mut AnyConnection,
    want: &BTreeMap<(&str, &str), i64>,
    lines: &[(&str, &str, i64, &str)],
    now: i64,
) -> Result<bool, sqlx::Error> {
    let mut text = format!(
        "WITH want (location, sku, qty, ord) AS (VALUES {}), line (location, sku, qty, reference) AS (VALUES {}",
        sql::placeholders(
            2,
            want.len(),
            &["::text", "::text", "::bigint", "::bigint"],
            "(",
            ")",
            ", "
        ),
        sql::placeholders(
            2 + 4 * want.len(),
            lines.len(),
            &["::text", "::text", "::bigint", "::text"],
            "(",
            ")",
            ", "
        )
    );
    text.push_str(
        "), locked AS (SELECT l.location, l.sku, w.qty FROM want w JOIN stock_levels l \
         ON l.location = w.location AND l.sku = w.sku ORDER BY w.ord FOR UPDATE OF l), \
         upd AS (UPDATE stock_levels l SET reserved = l.reserved + k.qty, updated_ms = $1 FROM locked k \
         WHERE l.location = k.location AND l.sku = k.sku AND l.on_hand - l.reserved >= k.qty \
         RETURNING l.location, l.sku), \
         mov AS (INSERT INTO stock_movements (location, sku, delta, kind, reference, created_ms) \
         SELECT n.location, n.sku, n.qty, 'reservation', n.reference, $1 FROM line n \
         JOIN upd u ON u.location = n.location AND u.sku = n.sku), \
         dirty AS (INSERT INTO stock_dirty (location, sku) SELECT location, sku FROM upd ON CONFLICT DO NOTHING) \
         SELECT COUNT(*) FROM upd",
    );
    let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(text)).bind(now);
    for (ord, ((location, sku), qty)) in want.iter().enumerate() {
        q = q.bind(*location).bind(*sku).bind(*qty).bind(ord as i64);
    }
    for (location, sku, qty, reference) in lines {
        q = q.bind(*location).bind(*sku).bind(*qty).bind(*reference);
    }
    match q.fetch_one(&mut *conn).await {
        Ok(n) => Ok(n == want.len() as i64),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => {
            metrics::counter!("hub_stock_reserve_deadlocks_total").increment(1);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Releases a reservation made by [`reserve`].
pub async fn release(
    conn: &mut AnyConnection,
    location: &str,
    sku: &str,
    qty: i64,
    reference: &str,
) -> Result<(), sqlx::Error> {
    if qty == 0 {
        return Ok(());
    }
    let now = now_ms();
    sqlx::query(
        "UPDATE stock_levels SET reserved = reserved - $3, updated_ms = $4 WHERE location = $1 AND sku = $2",
    )
    .bind(location)
    .bind(sku)
    .bind(qty)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    ledger(
        conn,
        location,
        sku,
        -qty,
        MovementKind::Release,
        Some(reference),
        now,
    )
    .await?;
    mark_dirty(conn, &[(location, sku)]).await
}

crate::sql::row! {
    /// What a reference still holds reserved at a location.
    #[derive(Debug, Clone)]
    pub struct Held {
        /// The location.
        pub location: String,
        /// The product.
        pub sku: String,
        /// Reserved minus released.
        pub held: i64,
    }
}

/// What `reference` (an order) still holds reserved, per location and
/// SKU, from the ledger.
pub async fn held_by(conn: &mut AnyConnection, reference: &str) -> Result<Vec<Held>, sqlx::Error> {
    sqlx::query_as(
        "SELECT location, sku, CAST(SUM(delta) AS BIGINT) AS held FROM stock_movements \
         WHERE reference = $1 AND kind IN ($2, $3) GROUP BY location, sku",
    )
    .bind(reference)
    .bind(MovementKind::Reservation.as_str())
    .bind(MovementKind::Release.as_str())
    .fetch_all(conn)
    .await
}

crate::sql::row! {
    /// Where a product is available.
    #[derive(Debug, Serialize, ToSchema)]
    pub struct Availability {
        /// Location.
        pub location: String,
        /// store or warehouse.
        pub kind: String,
        /// Its region.
        pub region: Option<String>,
        /// Available units.
        pub available: i64,
    }
}

/// Where `sku` is available now, by location.
pub async fn availability(db: &Db, sku: &str) -> Result<Vec<Availability>, sqlx::Error> {
    sqlx::query_as(
        "SELECT l.location AS location, s.kind AS kind, s.region AS region, l.on_hand - l.reserved AS available \
         FROM stock_levels l JOIN stores s ON s.store_id = l.location \
         WHERE l.sku = $1 AND l.on_hand - l.reserved > 0 ORDER BY l.location",
    )
    .bind(sku)
    .fetch_all(&db.pool)
    .await
}

/// Reserved goods leave: the reservation is released and on-hand drops.
pub async fn fulfil(
    conn: &mut AnyConnection,
    location: &str,
    sku: &str,
    qty: i64,
    reference: &str,
) -> Result<(), sqlx::Error> {
    release(conn, location, sku, qty, reference).await?;
    book(
        conn,
        &[Booking {
            location: location.into(),
            sku: sku.into(),
            delta: -qty,
            kind: MovementKind::Fulfilment,
            reference: Some(reference.into()),
        }],
    )
    .await
}

/// Marks levels as changed, for [`push_dirty`].
pub async fn mark_dirty(conn: &mut AnyConnection, pairs: &[(&str, &str)]) -> Result<(), sqlx::Error> {
    let unique: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in unique.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO stock_dirty (location, sku)",
            chunk.len(),
            2,
            "ON CONFLICT DO NOTHING",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for (l, s) in chunk {
            q = q.bind(*l).bind(*s);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Current on-hand of one SKU at one location (0 if never stocked).
pub async fn on_hand(conn: &mut AnyConnection, location: &str, sku: &str) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT on_hand FROM stock_levels WHERE location = $1 AND sku = $2")
            .bind(location)
            .bind(sku)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0),
    )
}

crate::sql::row! {
    struct LevelRow {
        sku: String,
        on_hand: i64,
        reserved: i64,
    }
}

crate::sql::row! {
    struct SyncMark {
        hwm: i64,
        snapshot_ms: Option<i64>,
    }
}

/// Levels of one location as `StockLevel` items, with the edge seq they
/// include. Call inside a transaction that holds the store's `store_sync`
/// row (so the mark and the levels belong together).
pub async fn level_items(
    tx: &mut Transaction<'static, Any>,
    location: &str,
    skus: Option<&[String]>,
    hwm: i64,
) -> Result<Vec<DownBody>, sqlx::Error> {
    let rows = match skus {
        Some(skus) => {
            let mut rows = Vec::new();
            for chunk in skus.chunks(sql::CHUNK) {
                let mut q = sqlx::query_as::<_, LevelRow>(AssertSqlSafe(format!(
                    "SELECT sku, on_hand, reserved FROM stock_levels WHERE location = $1 AND sku IN {}",
                    sql::list(2, chunk.len())
                )))
                .bind(location);
                for s in chunk {
                    q = q.bind(s.as_str());
                }
                rows.extend(q.fetch_all(&mut **tx).await?);
            }
            rows
        }
        None => {
            sqlx::query_as::<_, LevelRow>(
                "SELECT sku, on_hand, reserved FROM stock_levels WHERE location = $1 ORDER BY sku",
            )
            .bind(location)
            .fetch_all(&mut **tx)
            .await?
        }
    };
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let Ok(sku) = Sku::parse(r.sku) else { continue };
        items.push(DownBody::StockLevel(StockLevel {
            sku,
            on_hand: r.on_hand,
            reserved: r.reserved,
            as_of_edge_seq: Seq(hwm.max(0) as u64),
        }));
    }
    Ok(items)
}

/// Sends changed levels down: for each location with dirty rows whose edge
/// has had its catalog snapshot, enqueues `StockLevel` items. Returns the
/// stores with new downlink. Several replicas may run this; each location
/// is handled under its `store_sync` row lock.
pub async fn push_dirty(db: &Db) -> Result<Vec<StoreId>, sqlx::Error> {
    let locations: Vec<String> = sqlx::query_scalar("SELECT DISTINCT location FROM stock_dirty LIMIT 200")
        .fetch_all(&db.pool)
        .await?;
    let mut pushed = Vec::new();
    for location in locations {
        let mut tx = db.begin().await?;
        let sync: Option<SyncMark> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT hwm, snapshot_ms FROM store_sync WHERE store_id = $1{}",
            db.for_update()
        )))
        .bind(location.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let skus: Vec<String> =
            sqlx::query_scalar("DELETE FROM stock_dirty WHERE location = $1 RETURNING sku")
                .bind(location.as_str())
                .fetch_all(&mut *tx)
                .await?;
        if let Some(SyncMark {
            hwm,
            snapshot_ms: Some(_),
        }) = sync
            && !skus.is_empty()
        {
            let items = level_items(&mut tx, &location, Some(&skus), hwm).await?;
            crate::downlink::enqueue(&mut tx, db, &location, &items).await?;
            if let Ok(id) = StoreId::parse(location.as_str()) {
                pushed.push(id);
            }
        }
        tx.commit().await?;
    }
    if !pushed.is_empty() {
        metrics::counter!("hub_stock_pushes_total").increment(pushed.len() as u64);
    }
    Ok(pushed)
}

/// Pushes changed levels every `interval` until `shutdown`.
pub async fn pusher(
    db: Db,
    kick: crate::downlink::Kick,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match push_dirty(&db).await {
            Ok(stores) => {
                for s in stores {
                    kick.send(&s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "stock push failed"),
        }
    }
}

/// One location's stock of one SKU.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LevelView {
    /// Store or warehouse.
    pub location: String,
    /// The product.
    pub sku: String,
    /// On hand, base units (items or grams).
    pub on_hand: i64,
    /// Reserved for online orders.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// Low-stock threshold, if set.
    pub min_level: Option<i64>,
    /// True when `available` is below `min_level`.
    pub low: bool,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
}

crate::sql::row! {
    struct LevelViewRow {
        location: String,
        sku: String,
        on_hand: i64,
        reserved: i64,
        updated_ms: i64,
        min_level: Option<i64>,
    }
}

impl LevelViewRow {
    fn view(self) -> LevelView {
        let available = self.on_hand.saturating_sub(self.reserved);
        LevelView {
            location: self.location,
            sku: self.sku,
            on_hand: self.on_hand,
            reserved: self.reserved,
            available,
            min_level: self.min_level,
            low: self.min_level.is_some_and(|m| available < m),
            updated_ms: self.updated_ms,
        }
    }
}

const LEVEL_SELECT: &str = "SELECT l.location AS location, l.sku AS sku, l.on_hand AS on_hand, l.reserved AS reserved, \
     l.updated_ms AS updated_ms, t.min_level AS min_level \
     FROM stock_levels l LEFT JOIN stock_thresholds t ON t.location = l.location AND t.sku = l.sku";

/// Levels, filtered, in (location, sku) order after `after` (`location/sku`).
pub async fn levels(
    db: &Db,
    location: Option<&str>,
    sku: Option<&str>,
    low_only: bool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<LevelView>, sqlx::Error> {
    let (after_loc, after_sku) = after
        .and_then(|a| a.split_once('/'))
        .map(|(l, s)| (l.to_owned(), s.to_owned()))
        .unwrap_or_default();
    let low = if low_only {
        " AND t.min_level IS NOT NULL AND l.on_hand - l.reserved < t.min_level"
    } else {
        ""
    };
    let rows: Vec<LevelViewRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{LEVEL_SELECT} WHERE ($1 = '' OR l.location = $1) AND ($2 = '' OR l.sku = $2) \
         AND (l.location > $3 OR (l.location = $3 AND l.sku > $4)){low} ORDER BY l.location, l.sku LIMIT $5"
    )))
    .bind(location.unwrap_or(""))
    .bind(sku.unwrap_or(""))
    .bind(after_loc)
    .bind(after_sku)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(LevelViewRow::view).collect())
}

crate::sql::row! {
/// One ledger row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MovementView {
    /// Ledger id (increasing).
    pub id: i64,
    /// Location.
    pub location: String,
    /// Product.
    pub sku: String,
    /// Signed base units.
    pub delta: i64,
    /// Kind (sale, receipt, reservation...).
    pub kind: String,
    /// The edge whose events caused it, if any.
    pub store_id: Option<String>,
    /// First edge seq behind it (edge movements are booked per sync batch).
    pub seq_from: Option<i64>,
    /// Last edge seq behind it.
    pub seq_to: Option<i64>,
    /// Order id, transfer id, receipt number...
    pub reference: Option<String>,
    /// When booked, ms.
    pub created_ms: i64,
}
}

/// Ledger rows of one location and SKU, oldest first, after id `after`.
pub async fn movements(
    db: &Db,
    location: &str,
    sku: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<MovementView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, location, sku, delta, kind, store_id, seq_from, seq_to, reference, created_ms \
         FROM stock_movements WHERE location = $1 AND sku = $2 AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(location)
    .bind(sku)
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await
}

/// A level that disagrees with its ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Mismatch {
    /// Location.
    pub location: String,
    /// Product.
    pub sku: String,
    /// The stored level `(on_hand, reserved)`.
    pub level: (i64, i64),
    /// The ledger's sums `(on_hand, reserved)`.
    pub ledger: (i64, i64),
}

crate::sql::row! {
    struct Sums {
        location: String,
        sku: String,
        on_hand: i64,
        reserved: i64,
    }
}

/// Compares every level with the sum of its ledger rows; returns the ones
/// that differ (there should be none).
pub async fn verify(db: &Db) -> Result<Vec<Mismatch>, sqlx::Error> {
    let sums: BTreeMap<(String, String), (i64, i64)> = sqlx::query_as::<_, Sums>(
        "SELECT location, sku, \
         CAST(SUM(CASE WHEN kind IN ('reservation', 'release') THEN 0 ELSE delta END) AS BIGINT) AS on_hand, \
         CAST(SUM(CASE WHEN kind IN ('reservation', 'release') THEN delta ELSE 0 END) AS BIGINT) AS reserved \
         FROM stock_movements GROUP BY location, sku",
    )
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .map(|r| ((r.location, r.sku), (r.on_hand, r.reserved)))
    .collect();
    let levels: HashMap<(String, String), (i64, i64)> =
        sqlx::query_as::<_, Sums>("SELECT location, sku, on_hand, reserved FROM stock_levels")
            .fetch_all(&db.pool)
            .await?
            .into_iter()
            .map(|r| ((r.location, r.sku), (r.on_hand, r.reserved)))
            .collect();
    let keys: BTreeSet<(String, String)> = sums.keys().chain(levels.keys()).cloned().collect();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let level = levels.get(&k).copied().unwrap_or((0, 0));
            let ledger = sums.get(&k).copied().unwrap_or((0, 0));
            (level != ledger).then_some(Mismatch {
                location: k.0,
                sku: k.1,
                level,
                ledger,
            })
        })
        .collect())
}

/// Stock operations from back office: adjustments, receipts, transfers and
/// counts, each one transaction. Lines are merged per SKU first
/// ([`crate::domain::lines`]), so two lines of one SKU are checked and
/// booked as their sum.
pub mod ops {
    use std::collections::HashMap;

    use sqlx::{Any, AssertSqlSafe, Transaction};
    use storegate_protocol::Sku;

    use super::{Booking, MovementKind, book};
    use crate::db::Db;
    use crate::domain::lines::{LineError, QtyRule, merge};
    use crate::domain::stock::{Shortage, check_transfer, count_deltas};

    /// Why an operation was refused.
    #[derive(Debug, thiserror::Error)]
    pub enum OpError {
        /// The lines are unusable.
        #[error(transparent)]
        Lines(#[from] LineError),
        /// A location nobody registered.
        #[error("location {0} does not exist (register it with PUT /api/v1/stores/{0})")]
        UnknownLocation(String),
        /// A product not in the catalog.
        #[error("product {0} does not exist")]
        UnknownProduct(Sku),
        /// Anything else wrong with the request.
        #[error("{0}")]
        Invalid(String),
        /// Not enough available at a transfer's source.
        #[error("{location} has {shortage}")]
        Shortage {
            /// The source.
            location: String,
            /// What is short.
            shortage: Shortage,
        },
        /// The database failed.
        #[error("database: {0}")]
        Db(#[from] sqlx::Error),
    }

    /// What an operation booked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Booked {
        /// The ledger rows' reference.
        pub reference: String,
        /// Rows booked (lines that moved nothing book none).
        pub movements: usize,
    }

    /// An adjustment: signed deltas with a reason.
    #[derive(Debug, Clone)]
    pub struct Adjust {
        /// Location.
        pub location: String,
        /// Why.
        pub reason: String,
        /// (SKU, delta).
        pub lines: Vec<(String, i64)>,
    }

    /// A delivery from a supplier.
    #[derive(Debug, Clone)]
    pub struct Receive {
        /// Receiving location.
        pub location: String,
        /// Supplier id.
        pub supplier: Option<String>,
        /// Delivery note number (default: a new id).
        pub reference: Option<String>,
        /// (SKU, quantity).
        pub lines: Vec<(String, i64)>,
    }

    /// Goods moved between locations.
    #[derive(Debug, Clone)]
    pub struct Transfer {
        /// From.
        pub from: String,
        /// To.
        pub to: String,
        /// (SKU, quantity).
        pub lines: Vec<(String, i64)>,
    }

    /// A count: what is on the shelf.
    #[derive(Debug, Clone)]
    pub struct Count {
        /// Location.
        pub location: String,
        /// (SKU, counted).
        pub lines: Vec<(String, i64)>,
    }

    fn lines_json(lines: &[(Sku, i64)], field: &str) -> serde_json::Value {
        lines
            .iter()
            .map(|(s, q)| serde_json::json!({"sku": s.as_str(), field: q}))
            .collect()
    }

    /// Books an adjustment.
    pub async fn adjust(db: &Db, actor: &str, a: Adjust) -> Result<Booked, OpError> {
        if a.reason.trim().is_empty() {
            return Err(OpError::Invalid("an adjustment needs a reason".into()));
        }
        let lines = merge(a.lines.iter().map(|(s, q)| (s.as_str(), *q)), QtyRule::Any)?;
        let mut tx = db.begin().await?;
        must_exist(&mut tx, &[&a.location], &lines).await?;
        let reference = crate::auth::new_id();
        let bookings = lines
            .iter()
            .map(|(sku, delta)| Booking {
                location: a.location.clone(),
                sku: sku.to_string(),
                delta: *delta,
                kind: MovementKind::Adjustment,
                reference: Some(format!("{}: {}", reference, a.reason)),
            })
            .collect();
        let detail = serde_json::json!({"reason": a.reason, "lines": lines_json(&lines, "delta"), "reference": reference});
        commit(tx, actor, "stock_adjusted", bookings, detail, reference).await
    }

    /// Books a delivery.
    pub async fn receive(db: &Db, actor: &str, r: Receive) -> Result<Booked, OpError> {
        let lines = merge(r.lines.iter().map(|(s, q)| (s.as_str(), *q)), QtyRule::Positive)?;
        let mut tx = db.begin().await?;
        must_exist(&mut tx, &[&r.location], &lines).await?;
        let reference = r.reference.clone().unwrap_or_else(crate::auth::new_id);
        let bookings = lines
            .iter()
            .map(|(sku, qty)| Booking {
                location: r.location.clone(),
                sku: sku.to_string(),
                delta: *qty,
                kind: MovementKind::Receipt,
                reference: Some(reference.clone()),
            })
            .collect();
        let detail = serde_json::json!({"supplier": r.supplier, "lines": lines_json(&lines, "qty"), "reference": reference});
        commit(tx, actor, "goods_received", bookings, detail, reference).await
    }

    /// Moves goods (out and in at once); only available stock can leave,
    /// checked per SKU against the sum of its lines.
    pub async fn transfer(db: &Db, actor: &str, t: Transfer) -> Result<Booked, OpError> {
        if t.from == t.to {
            return Err(OpError::Invalid("from and to must differ".into()));
        }
        let lines = merge(t.lines.iter().map(|(s, q)| (s.as_str(), *q)), QtyRule::Positive)?;
        let mut tx = db.begin().await?;
        must_exist(&mut tx, &[&t.from, &t.to], &lines).await?;
        let available = levels_for_update(&mut tx, db, &t.from, &lines, "on_hand - reserved").await?;
        check_transfer(&lines, &available).map_err(|shortage| OpError::Shortage {
            location: t.from.clone(),
            shortage,
        })?;
        let reference = crate::auth::new_id();
        let mut bookings = Vec::with_capacity(lines.len() * 2);
        for (sku, qty) in &lines {
            for (location, delta, kind) in [
                (&t.from, -qty, MovementKind::TransferOut),
                (&t.to, *qty, MovementKind::TransferIn),
            ] {
                bookings.push(Booking {
                    location: location.clone(),
                    sku: sku.to_string(),
                    delta,
                    kind,
                    reference: Some(reference.clone()),
                });
            }
        }
        let detail = serde_json::json!({"from": t.from, "to": t.to, "lines": lines_json(&lines, "qty"), "reference": reference});
        commit(tx, actor, "stock_transferred", bookings, detail, reference).await
    }

    /// Books a count: counted minus on hand, once per SKU.
    pub async fn count(db: &Db, actor: &str, c: Count) -> Result<Booked, OpError> {
        let lines = merge(
            c.lines.iter().map(|(s, q)| (s.as_str(), *q)),
            QtyRule::NonNegative,
        )?;
        let mut tx = db.begin().await?;
        must_exist(&mut tx, &[&c.location], &lines).await?;
        let on_hand = levels_for_update(&mut tx, db, &c.location, &lines, "on_hand").await?;
        let deltas = count_deltas(&lines, &on_hand)
            .ok_or_else(|| OpError::Invalid("a count difference overflows".into()))?;
        let reference = crate::auth::new_id();
        let bookings = deltas
            .iter()
            .map(|(sku, delta)| Booking {
                location: c.location.clone(),
                sku: sku.to_string(),
                delta: *delta,
                kind: MovementKind::Count,
                reference: Some(reference.clone()),
            })
            .collect();
        let detail = serde_json::json!({"lines": lines_json(&deltas, "delta"), "reference": reference});
        commit(tx, actor, "stock_counted", bookings, detail, reference).await
    }

    /// Sets (or, with `None`, removes) the low-stock threshold of `sku`
    /// at `location`.
    pub async fn set_threshold(
        db: &Db,
        actor: &str,
        location: &str,
        sku: &str,
        min_level: Option<i64>,
    ) -> Result<(), OpError> {
        let sku = Sku::parse(sku).map_err(|e| LineError::BadSku {
            sku: sku.to_owned(),
            message: e.to_string(),
        })?;
        if min_level.is_some_and(|m| m < 0) {
            return Err(OpError::Invalid("min_level cannot be negative".into()));
        }
        let mut tx = db.begin().await?;
        must_exist(&mut tx, &[location], &[(sku.clone(), 0)]).await?;
        match min_level {
            Some(m) => {
                sqlx::query(
                    "INSERT INTO stock_thresholds (location, sku, min_level) VALUES ($1, $2, $3) \
                     ON CONFLICT (location, sku) DO UPDATE SET min_level = excluded.min_level",
                )
                .bind(location)
                .bind(sku.as_str())
                .bind(m)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM stock_thresholds WHERE location = $1 AND sku = $2")
                    .bind(location)
                    .bind(sku.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let detail = serde_json::json!({"location": location, "sku": sku.as_str(), "min_level": min_level});
        crate::audit::record(&mut tx, actor, "threshold_saved", "location", location, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn must_exist(
        tx: &mut Transaction<'static, Any>,
        locations: &[&str],
        lines: &[(Sku, i64)],
    ) -> Result<(), OpError> {
        for l in locations {
            let kind: Option<String> = sqlx::query_scalar("SELECT kind FROM stores WHERE store_id = $1")
                .bind(*l)
                .fetch_optional(&mut **tx)
                .await?;
            if kind.is_none() {
                return Err(OpError::UnknownLocation((*l).to_owned()));
            }
        }
        for (sku, _) in lines {
            let found: Option<String> = sqlx::query_scalar("SELECT sku FROM products WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            if found.is_none() {
                return Err(OpError::UnknownProduct(sku.clone()));
            }
        }
        Ok(())
    }

    /// `column` (an expression over a level row) of each line's SKU at
    /// `location`, rows locked for the rest of the transaction.
    async fn levels_for_update(
        tx: &mut Transaction<'static, Any>,
        db: &Db,
        location: &str,
        lines: &[(Sku, i64)],
        column: &'static str,
    ) -> Result<HashMap<Sku, i64>, OpError> {
        let mut out = HashMap::with_capacity(lines.len());
        for (sku, _) in lines {
            let v: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT {column} FROM stock_levels WHERE location = $1 AND sku = $2{}",
                db.for_update()
            )))
            .bind(location)
            .bind(sku.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            out.insert(sku.clone(), v.unwrap_or(0));
        }
        Ok(out)
    }

    async fn commit(
        mut tx: Transaction<'static, Any>,
        actor: &str,
        action: &str,
        bookings: Vec<Booking>,
        detail: serde_json::Value,
        reference: String,
    ) -> Result<Booked, OpError> {
        book(&mut tx, &bookings).await?;
        let loc = bookings.first().map(|b| b.location.clone()).unwrap_or_default();
        crate::audit::record(&mut tx, actor, action, "location", &loc, detail).await?;
        tx.commit().await?;
        Ok(Booked {
            reference,
            movements: bookings.iter().filter(|b| b.delta != 0).count(),
        })
    }
}
