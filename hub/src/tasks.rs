//! Tasks for stores' devices (pick, pack, collect, count, replenish): sent
//! down as `TaskAssigned`, confirmed back as `TaskUpdated` events.

use serde::{Deserialize, Serialize};
use sqlx::{Any, AssertSqlSafe, Transaction};
use storegate_protocol::Sku;
use storegate_protocol::downlink::{DownBody, Task, TaskKind, TaskLine};
use storegate_protocol::event::TaskUpdate;
use utoipa::ToSchema;

use crate::db::{Db, now_ms};
use crate::domain::machine::Machine;
pub use crate::domain::task::TaskStatus;
use crate::sql::{self, row};

/// A task line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineView {
    /// Product.
    pub sku: String,
    /// Base units.
    pub qty: i64,
    /// Done so far (from the device's report).
    #[serde(default)]
    pub done: i64,
}

/// A task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    /// Id.
    pub id: String,
    /// Store (or warehouse) whose devices do it.
    pub store_id: String,
    /// pick, pack, collect, count, replenish.
    pub kind: String,
    /// The order it serves.
    pub order_id: Option<String>,
    /// Where it is.
    pub status: TaskStatus,
    /// The goods.
    pub lines: Vec<LineView>,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

/// Kind name.
pub fn kind_name(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Pick => "pick",
        TaskKind::Pack => "pack",
        TaskKind::Collect => "collect",
        TaskKind::Count => "count",
        TaskKind::Replenish => "replenish",
    }
}

/// Kind from its name.
pub fn parse_kind(s: &str) -> Option<TaskKind> {
    Some(match s {
        "pick" => TaskKind::Pick,
        "pack" => TaskKind::Pack,
        "collect" => TaskKind::Collect,
        "count" => TaskKind::Count,
        "replenish" => TaskKind::Replenish,
        _ => return None,
    })
}

fn task_body(
    id: &str,
    kind: TaskKind,
    order_id: Option<&str>,
    lines: &[(String, i64)],
    note: Option<String>,
) -> Task {
    Task {
        task_id: id.to_owned(),
        kind,
        order_ref: order_id.map(str::to_owned),
        lines: lines
            .iter()
            .filter_map(|(sku, qty)| {
                Some(TaskLine {
                    sku: Sku::parse(sku.as_str()).ok()?,
                    qty: *qty,
                })
            })
            .collect(),
        due_ms: None,
        note,
        status: None,
    }
}

row! {
    struct OpenRow {
        id: String,
        kind: String,
        order_id: Option<String>,
        lines: String,
    }
}

/// Open tasks of a store as downlink items (for its first snapshot).
pub async fn open_items(
    tx: &mut Transaction<'static, Any>,
    store: &str,
) -> Result<Vec<DownBody>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, OpenRow>(AssertSqlSafe(format!(
        "SELECT id, kind, order_id, lines FROM tasks WHERE store_id = $1 AND status IN {} ORDER BY id",
        sql::list(2, TaskStatus::OPEN.len())
    )))
    .bind(store);
    for s in TaskStatus::OPEN {
        q = q.bind(s);
    }
    let mut out = Vec::new();
    for r in q.fetch_all(&mut **tx).await? {
        let lines: Vec<LineView> = serde_json::from_str(&r.lines).unwrap_or_default();
        let Some(kind) = parse_kind(&r.kind) else { continue };
        let pairs: Vec<(String, i64)> = lines.into_iter().map(|l| (l.sku, l.qty)).collect();
        out.push(DownBody::TaskAssigned(task_body(
            &r.id,
            kind,
            r.order_id.as_deref(),
            &pairs,
            None,
        )));
    }
    Ok(out)
}

/// Creates a task; queues it for the store's edge if the edge has had its
/// first snapshot (which carries open tasks). Call it last in a
/// transaction: it locks the store's sync row until the commit, which
/// orders it with a concurrent snapshot. Returns its id.
pub async fn create(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    store: &str,
    kind: TaskKind,
    order_id: Option<&str>,
    lines: &[(String, i64)],
    note: Option<String>,
) -> Result<String, sqlx::Error> {
    let id = crate::auth::new_id();
    create_many(
        tx,
        db,
        &[NewTask {
            id: &id,
            store,
            kind,
            order_id,
            lines,
            note,
        }],
    )
    .await?;
    Ok(id)
}

/// A task to create, with an id chosen by the caller.
#[derive(Debug)]
pub struct NewTask<'a> {
    /// Its id.
    pub id: &'a str,
    /// The store that does it.
    pub store: &'a str,
    /// Pick, count...
    pub kind: TaskKind,
    /// The order it serves.
    pub order_id: Option<&'a str>,
    /// SKUs and quantities.
    pub lines: &'a [(String, i64)],
    /// A note for staff.
    pub note: Option<String>,
}

/// [`create`] for several tasks: one statement for the rows, then the
/// stores' sync rows locked in store order (they serialise with snapshots,
/// and every order for the location takes them: call this last in a
/// transaction) and each store's tasks queued in one downlink append.
pub async fn create_many(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    new: &[NewTask<'_>],
) -> Result<(), sqlx::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    for chunk in new.chunks(sql::CHUNK) {
        let text = sql::values(
            "INSERT INTO tasks (id, store_id, kind, order_id, status, lines, created_ms, updated_ms)",
            chunk.len(),
            8,
            "",
        );
        let mut q = sqlx::query(AssertSqlSafe(text));
        for t in chunk {
            let views: Vec<LineView> = t
                .lines
                .iter()
                .map(|(sku, qty)| LineView {
                    sku: sku.clone(),
                    qty: *qty,
                    done: 0,
                })
                .collect();
            q = q
                .bind(t.id)
                .bind(t.store)
                .bind(kind_name(t.kind))
                .bind(t.order_id)
                .bind(TaskStatus::Assigned)
                .bind(serde_json::to_string(&views).unwrap_or_default())
                .bind(now)
                .bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    let mut stores: Vec<&str> = new.iter().map(|t| t.store).collect();
    stores.sort_unstable();
    stores.dedup();
    let mut q = sqlx::query_as::<_, (String, Option<i64>)>(AssertSqlSafe(format!(
        "SELECT store_id, snapshot_ms FROM store_sync WHERE store_id IN {} ORDER BY store_id{}",
        sql::list(1, stores.len()),
        db.for_update()
    )));
    for s in &stores {
        q = q.bind(*s);
    }
    let snapshotted: Vec<String> = q
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .filter_map(|(store, snapshot)| snapshot.map(|_| store))
        .collect();
    for store in &snapshotted {
        let bodies: Vec<DownBody> = new
            .iter()
            .filter(|t| t.store == store)
            .map(|t| DownBody::TaskAssigned(task_body(t.id, t.kind, t.order_id, t.lines, t.note.clone())))
            .collect();
        crate::downlink::enqueue(tx, db, store, &bodies).await?;
    }
    Ok(())
}

row! {
    struct TaskStore {
        id: String,
        store_id: String,
    }
}

/// Withdraws open tasks of an order; returns the stores told.
pub async fn cancel_for_order(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    order_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, TaskStore>(AssertSqlSafe(format!(
        "SELECT id, store_id FROM tasks WHERE order_id = $1 AND status IN {}",
        sql::list(2, TaskStatus::OPEN.len())
    )))
    .bind(order_id);
    for s in TaskStatus::OPEN {
        q = q.bind(s);
    }
    let mut stores = Vec::new();
    for t in q.fetch_all(&mut **tx).await? {
        sqlx::query("UPDATE tasks SET status = $3, updated_ms = $2 WHERE id = $1")
            .bind(t.id.as_str())
            .bind(now_ms())
            .bind(TaskStatus::Cancelled)
            .execute(&mut **tx)
            .await?;
        let snapshot: Option<Option<i64>> =
            sqlx::query_scalar("SELECT snapshot_ms FROM store_sync WHERE store_id = $1")
                .bind(t.store_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        if matches!(snapshot, Some(Some(_))) {
            crate::downlink::enqueue(tx, db, &t.store_id, &[DownBody::TaskCancelled { task_id: t.id }])
                .await?;
            stores.push(t.store_id);
        }
    }
    Ok(stores)
}

/// What a store's task update means for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The task.
    pub task_id: String,
    /// Its kind.
    pub kind: String,
    /// The order it serves.
    pub order_id: Option<String>,
    /// The new status.
    pub status: TaskStatus,
    /// The device's note.
    pub note: Option<String>,
}

row! {
    struct Updated {
        kind: String,
        order_id: Option<String>,
        status: TaskStatus,
        lines: String,
    }
}

/// Applies a `TaskUpdated` from `store`. Returns `None` for an unknown
/// task, another store's task, or an update its status does not allow
/// (updates after done/failed/cancelled, or going back, change nothing).
pub async fn apply_update(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    store: &str,
    u: &TaskUpdate,
) -> Result<Option<Applied>, sqlx::Error> {
    let row: Option<Updated> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT kind, order_id, status, lines FROM tasks WHERE id = $1 AND store_id = $2{}",
        db.for_update()
    )))
    .bind(u.task_id.as_str())
    .bind(store)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status = TaskStatus::reported(u.status);
    if !row.status.can_become(status) {
        return Ok(None);
    }
    let mut lines: Vec<LineView> = serde_json::from_str(&row.lines).unwrap_or_default();
    for r in &u.lines {
        if let Some(l) = lines.iter_mut().find(|l| l.sku == r.sku.as_str()) {
            l.done = r.done;
        }
    }
    sqlx::query("UPDATE tasks SET status = $2, lines = $3, updated_ms = $4 WHERE id = $1")
        .bind(u.task_id.as_str())
        .bind(status)
        .bind(serde_json::to_string(&lines).unwrap_or_default())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(Some(Applied {
        task_id: u.task_id.clone(),
        kind: row.kind,
        order_id: row.order_id,
        status,
        note: u.note.clone(),
    }))
}

/// One task.
pub async fn get(db: &Db, id: &str) -> Result<Option<TaskView>, sqlx::Error> {
    Ok(query(db, Some(id), None, None, None, "", 1).await?.pop())
}

/// Tasks, filtered, by id after `after`.
pub async fn list(
    db: &Db,
    store: Option<&str>,
    status: Option<TaskStatus>,
    order_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<TaskView>, sqlx::Error> {
    query(db, None, store, status, order_id, after, limit).await
}

row! {
    struct TaskRow {
        id: String,
        store_id: String,
        kind: String,
        order_id: Option<String>,
        status: TaskStatus,
        lines: String,
        created_ms: i64,
        updated_ms: i64,
    }
}

async fn query(
    db: &Db,
    id: Option<&str>,
    store: Option<&str>,
    status: Option<TaskStatus>,
    order_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<TaskView>, sqlx::Error> {
    let rows: Vec<TaskRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE ($1 = '' OR store_id = $1) AND ($2 = '' OR status = $2) AND ($3 = '' OR order_id = $3) \
         AND id > $4 AND ($6 = '' OR id = $6) ORDER BY id LIMIT $5"
    )))
    .bind(store.unwrap_or(""))
    .bind(status.map_or("", TaskStatus::as_str))
    .bind(order_id.unwrap_or(""))
    .bind(after)
    .bind(limit)
    .bind(id.unwrap_or(""))
    .fetch_all(&db.pool)
    .await?;
    Ok(views(rows))
}

const SELECT: &str = "SELECT id, store_id, kind, order_id, status, lines, created_ms, updated_ms FROM tasks";

/// The tasks of orders `ids`, by id.
pub async fn for_orders(db: &Db, ids: &[&str]) -> Result<Vec<TaskView>, sqlx::Error> {
    let mut q = sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "{SELECT} WHERE order_id IN {} ORDER BY id",
        crate::sql::list(1, ids.len())
    )));
    for id in ids {
        q = q.bind(*id);
    }
    Ok(views(q.fetch_all(&db.pool).await?))
}

fn views(rows: Vec<TaskRow>) -> Vec<TaskView> {
    rows.into_iter()
        .map(|r| TaskView {
            lines: serde_json::from_str(&r.lines).unwrap_or_default(),
            id: r.id,
            store_id: r.store_id,
            kind: r.kind,
            order_id: r.order_id,
            status: r.status,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        })
        .collect()
}
