//! After confirmation: an operator's cancel, shipment events (goods leave
//! when a shipment first leaves; the order completes when all are
//! delivered), and store task updates (a collection hands the goods over;
//! a failed pick cancels the order).

use sqlx::{Any, AnyConnection, Transaction};

use super::saga::{payment_key, release_all};
use super::{Commerce, OrderError, OrderView, repo};
use crate::db::Db;
use crate::domain::order::{Fulfilment, OrderStatus, SagaStep};
use crate::domain::payment::PaymentStatus;
use crate::domain::task::TaskStatus;
use crate::shipping::{self, ShipmentEvent, ShipmentView};
use crate::{audit, payments, stock, tasks};

impl Commerce {
    /// Cancels an order whose goods have not left yet.
    pub async fn cancel(&self, actor: &str, order_id: &str, reason: &str) -> Result<OrderView, OrderError> {
        let db = &self.db;
        let mut tx = db.begin().await?;
        let Some(row) = repo::status(&mut tx, Some(db), order_id).await? else {
            return Err(OrderError::NotFound(format!("online order {order_id}")));
        };
        match row.status {
            OrderStatus::Reserved => {
                // The saga is still running: hand it the compensation.
                repo::move_saga(&mut tx, order_id, SagaStep::Compensate, None, true).await?;
                audit::record(
                    &mut tx,
                    actor,
                    "order_cancel_requested",
                    "order",
                    order_id,
                    serde_json::json!({"reason": reason}),
                )
                .await?;
                tx.commit().await?;
                self.run_saga(order_id).await?;
            }
            s if s.cancels_at_once() => {
                if !shipping::all_cancellable(&mut tx, order_id).await? {
                    return Err(OrderError::ShipmentLeft);
                }
                let stores = release_all(&mut tx, db, order_id, reason).await?;
                payments::transition(&mut tx, &payment_key(order_id), PaymentStatus::VoidPending).await?;
                shipping::cancel_for_order(&mut tx, order_id).await?;
                repo::set_status(&mut tx, order_id, OrderStatus::Cancelled, reason).await?;
                audit::record(
                    &mut tx,
                    actor,
                    "order_cancelled",
                    "order",
                    order_id,
                    serde_json::json!({"reason": reason}),
                )
                .await?;
                tx.commit().await?;
                self.kick_all(stores);
            }
            status => {
                return Err(OrderError::NotCancellable {
                    id: order_id.to_owned(),
                    status,
                });
            }
        }
        repo::get(db, order_id)
            .await?
            .ok_or_else(|| OrderError::NotFound(order_id.into()))
    }

    /// A shipment event (through the API): goods leave when the shipment
    /// first leaves (in transit or delivered, whatever came before); the
    /// order is shipped when none waits to leave and completes when every
    /// shipment is delivered.
    pub async fn shipment_event(
        &self,
        actor: &str,
        shipment_id: &str,
        e: &ShipmentEvent,
    ) -> Result<ShipmentView, OrderError> {
        let db = &self.db;
        let mut tx = db.begin().await?;
        let Some(moved) = shipping::add_event(&mut tx, db, shipment_id, e).await? else {
            return Err(OrderError::NotFound(format!("shipment {shipment_id}")));
        };
        let moved = moved?;
        let departs = e.status.departs(&moved.before);
        if departs {
            goods_leave(&mut tx, &moved.order_id, &moved.from).await?;
        }
        let left = shipping::progress(&mut tx, &moved.order_id).await?;
        if left.open == 0 {
            repo::set_status(&mut tx, &moved.order_id, OrderStatus::Completed, "delivered").await?;
        } else if departs && left.waiting == 0 {
            repo::set_status(&mut tx, &moved.order_id, OrderStatus::Shipped, "").await?;
        }
        audit::record(
            &mut tx,
            actor,
            "shipment_event",
            "shipment",
            shipment_id,
            serde_json::to_value(e).unwrap_or_default(),
        )
        .await?;
        tx.commit().await?;
        shipping::list(db, None, Some(shipment_id))
            .await?
            .pop()
            .ok_or_else(|| OrderError::NotFound(format!("shipment {shipment_id}")))
    }
}

/// The goods of an order's lines at `location` leave: their reservation
/// becomes a `fulfilment` movement and the payment is captured.
async fn goods_leave(conn: &mut AnyConnection, order_id: &str, location: &str) -> Result<(), sqlx::Error> {
    for l in repo::pick_lines(conn, &[order_id]).await? {
        if l.location.as_deref() == Some(location) {
            stock::fulfil(conn, location, &l.sku, l.qty, order_id).await?;
        }
    }
    payments::transition(conn, &payment_key(order_id), PaymentStatus::PendingCapture).await?;
    Ok(())
}

/// Applies a store's task update to the order it serves (inside the
/// ingest transaction): a click-and-collect pick `done` hands the goods
/// over (stock leaves, payment captured, order completed); `failed`
/// cancels the order with its compensations.
pub async fn on_task_update(
    tx: &mut Transaction<'static, Any>,
    db: &Db,
    store: &str,
    applied: &tasks::Applied,
) -> Result<(), sqlx::Error> {
    let Some(order_id) = &applied.order_id else {
        return Ok(());
    };
    let Some(order) = repo::status(tx, None, order_id).await? else {
        return Ok(());
    };
    let actor = format!("store:{store}");
    let task = serde_json::json!({"task": applied.task_id});
    match applied.status {
        TaskStatus::Done
            if order.status == OrderStatus::Picking && order.fulfilment == Some(Fulfilment::Collect) =>
        {
            goods_leave(tx, order_id, store).await?;
            repo::set_status(tx, order_id, OrderStatus::Completed, "collected by the customer").await?;
            audit::record(tx, &actor, "order_collected", "order", order_id, task).await?;
        }
        TaskStatus::Done => {
            audit::record(tx, &actor, "order_picked", "order", order_id, task).await?;
        }
        TaskStatus::Failed if order.status.cancels_at_once() => {
            let note = format!(
                "pick failed at {store}: {}",
                applied.note.as_deref().unwrap_or("no reason given")
            );
            release_all(tx, db, order_id, &note).await?;
            payments::transition(tx, &payment_key(order_id), PaymentStatus::VoidPending).await?;
            shipping::cancel_for_order(tx, order_id).await?;
            repo::set_status(tx, order_id, OrderStatus::Cancelled, &note).await?;
            audit::record(
                tx,
                &actor,
                "order_cancelled",
                "order",
                order_id,
                serde_json::json!({"reason": note}),
            )
            .await?;
        }
        TaskStatus::Failed
        | TaskStatus::Assigned
        | TaskStatus::Accepted
        | TaskStatus::InProgress
        | TaskStatus::Cancelled => {}
    }
    Ok(())
}
