//! Orders in groups (group commit): concurrent online order requests wait
//! in one queue, and each of a few workers takes whatever has queued (up
//! to `commerce.order_group_max` orders) as one group:
//!
//! 1. step 1 for the whole group in one transaction ([`Commerce::reserve`]);
//! 2. the provider asked for every card at once (each call idempotent by
//!    the order's payment key, as alone);
//! 3. the authorised orders confirmed and fulfilled in one transaction
//!    ([`Commerce::confirm`]); declines, provider failures and gift cards
//!    take the one-order path of the saga;
//! 4. the answers read back in one go ([`repo::get_many`]).
//!
//! Per order nothing changes: the same checks, the same Idempotency-Key
//! semantics (each order's key records its order in the group's step 1
//! transaction), the same saga rows and leases (a hub killed mid-group
//! leaves leased sagas that the saga worker resumes), the same
//! compensation. When a group loses a reservation to a concurrent writer,
//! or its transaction fails, each of its orders is placed alone instead
//! (planned again, as a single order would be).
//!
//! Step 1 runs for one group at a time: while it is written, the next
//! group queues, so the groups grow with the load (one request alone is a
//! group of one). The rest of each group (the provider, confirmation,
//! answers) runs in a task of its own, up to
//! `commerce.order_group_workers` groups at once, so a slow provider does
//! not hold up the next group's step 1.

use std::sync::Arc;

use storegate_protocol::Money;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::place::{Outcomes, Request};
use super::repo;
use super::saga::{Authorised, Card, payment_key};
use super::{Commerce, Created, OrderError, OrderInput};
use crate::domain::order::{self, Valid};
use crate::domain::payment::PaymentMethod;
use crate::idempotency::KeyRef;

/// Most order lines in one group (bounds the statements' parameters).
const MAX_GROUP_LINES: usize = 2_000;

/// Requests waiting in the queue before callers wait to enqueue.
const QUEUE: usize = 1_024;

/// An order request waiting for its group.
pub(super) struct Job {
    actor: String,
    customer: Option<String>,
    allow_split: bool,
    valid: Valid,
    idem: Option<KeyRef>,
    reply: oneshot::Sender<Result<Created, OrderError>>,
}

/// The queue of order requests (cheap to clone).
#[derive(Debug, Clone)]
pub struct Groups {
    tx: mpsc::Sender<Job>,
}

/// The queue's receiving end, for [`run`].
pub struct Queue(mpsc::Receiver<Job>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

/// A new queue and its receiving end.
pub fn queue() -> (Groups, Queue) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Groups { tx }, Queue(rx))
}

impl Commerce {
    /// Places an online order and runs its saga (see the module docs of
    /// [`super`]): in a group when the hub runs groups, else alone.
    pub async fn place(
        &self,
        actor: &str,
        customer: Option<&str>,
        input: &OrderInput,
        idem: Option<&KeyRef>,
    ) -> Result<Created, OrderError> {
        let valid = order::validate(input).map_err(|e| OrderError::Invalid(e.0))?;
        let Some(groups) = &self.groups else {
            return self
                .place_alone(&Request {
                    actor,
                    customer,
                    allow_split: input.allow_split,
                    valid: &valid,
                    idem,
                })
                .await;
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            actor: actor.to_owned(),
            customer: customer.map(str::to_owned),
            allow_split: input.allow_split,
            valid,
            idem: idem.cloned(),
            reply,
        };
        if groups.tx.send(job).await.is_err() {
            return Err(stopping());
        }
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Step 1 of a group.
    async fn reserve_group(&self, jobs: &[Owned]) -> Result<Outcomes, OrderError> {
        let reqs = requests(jobs);
        match repo::rules(&self.db).await {
            Ok(rules) => self.reserve(&reqs, &rules).await,
            Err(e) => Err(e.into()),
        }
    }

    /// The rest of a group after step 1: its sagas and its answers, in
    /// order. A group whose step 1 failed places each order alone.
    async fn finish_group(
        &self,
        jobs: &[Owned],
        step1: Result<Outcomes, OrderError>,
    ) -> Vec<Result<Created, OrderError>> {
        let reqs = requests(jobs);
        let outcomes = match step1 {
            Ok(o) => o,
            Err(e) => {
                if matches!(e, OrderError::Raced) {
                    metrics::counter!("hub_order_groups_split_total", "why" => "raced").increment(1);
                } else {
                    tracing::warn!(error = %e, orders = reqs.len(), "an order group failed; placing its orders alone");
                    metrics::counter!("hub_order_groups_split_total", "why" => "error").increment(1);
                }
                return futures_util::future::join_all(reqs.iter().map(|r| self.place_alone(r))).await;
            }
        };
        metrics::histogram!("hub_order_group_size").record(reqs.len() as f64);
        let placed: Vec<(&str, &Valid, i64)> = outcomes
            .iter()
            .zip(&reqs)
            .filter_map(|(o, r)| o.as_ref().ok().map(|(id, total)| (id.as_str(), r.valid, *total)))
            .collect();
        let failed = self.saga_group(&placed).await;
        let ids: Vec<&str> = placed.iter().map(|(id, ..)| *id).collect();
        let mut views = match repo::get_many(&self.db, &ids).await {
            Ok(v) => v,
            Err(e) => {
                let e = e.to_string();
                return outcomes
                    .into_iter()
                    .map(|o| o.and_then(|_| Err(OrderError::Db(sqlx::Error::Protocol(e.clone())))))
                    .collect();
            }
        };
        outcomes
            .into_iter()
            .map(|o| {
                let (id, _) = o?;
                if let Some(e) = failed.iter().find(|(f, _)| *f == id).map(|(_, e)| e) {
                    return Err(OrderError::Db(sqlx::Error::Protocol(e.clone())));
                }
                let i = views
                    .iter()
                    .position(|v| v.id == id)
                    .ok_or_else(|| OrderError::NotFound(id.clone()))?;
                Ok(Created::of(views.swap_remove(i)))
            })
            .collect()
    }

    /// One request alone: step 1 (planned again if raced), the saga, the
    /// answer.
    pub(super) async fn place_alone(&self, req: &Request<'_>) -> Result<Created, OrderError> {
        let order_id = self.reserve_one(req).await?;
        self.run_saga(&order_id).await?;
        let order = repo::get(&self.db, &order_id)
            .await?
            .ok_or_else(|| OrderError::NotFound(order_id.clone()))?;
        Ok(Created::of(order))
    }

    /// Steps 2 and 3 for a group's orders (id, request, total): cards
    /// authorised at once and the authorised ones confirmed together; the
    /// rest through the one-order saga. Returns the orders whose saga hit
    /// a database error (the saga worker resumes them).
    async fn saga_group(&self, placed: &[(&str, &Valid, i64)]) -> Vec<(String, String)> {
        let keys: Vec<String> = placed.iter().map(|(id, ..)| payment_key(id)).collect();
        let cards: Vec<Card<'_>> = placed
            .iter()
            .zip(&keys)
            .map(|((_, v, total), key)| Card {
                key,
                token: v.token.as_str(),
                last4: v.last4.as_str(),
                amount: Money::new(*total, self.currency),
            })
            .collect();
        let mut failed = Vec::new();
        let (gifts, by_card): (Vec<usize>, Vec<usize>) =
            (0..placed.len()).partition(|i| placed[*i].1.method == PaymentMethod::GiftCard);
        let outcomes = futures_util::future::join_all(by_card.iter().map(|i| {
            let c = &cards[*i];
            self.payments
                .authorize_card(c.key, c.amount, c.token, self.payments.timeout)
        }))
        .await;
        if self.abort_after_authorize && !by_card.is_empty() {
            tracing::error!("failpoint abort_after_authorize: aborting");
            std::process::abort();
        }
        let mut authorised = Vec::new();
        let mut others = Vec::new();
        for (i, outcome) in by_card.into_iter().zip(outcomes) {
            match outcome {
                Ok(crate::payments::AuthOutcome::Authorized { id, code }) => authorised.push(Authorised {
                    order_id: placed[i].0,
                    card: &cards[i],
                    id,
                    code,
                }),
                other => others.push((i, other)),
            }
        }
        if let Err(e) = self.confirm(&authorised).await {
            tracing::warn!(error = %e, orders = authorised.len(), "confirming an order group failed; the saga worker resumes it");
            failed.extend(authorised.iter().map(|a| (a.order_id.to_owned(), e.to_string())));
        }
        let declined = futures_util::future::join_all(others.into_iter().map(|(i, outcome)| {
            let cards = &cards;
            async move { (i, self.after_authorize(placed[i].0, &cards[i], 0, outcome).await) }
        }));
        let gifts = futures_util::future::join_all(
            gifts
                .into_iter()
                .map(|i| async move { (i, self.run_saga(placed[i].0).await) }),
        );
        let (declined, gifts) = futures_util::future::join(declined, gifts).await;
        for (i, r) in declined.into_iter().chain(gifts) {
            if let Err(e) = r {
                failed.push((placed[i].0.to_owned(), e.to_string()));
            }
        }
        failed
    }
}

fn stopping() -> OrderError {
    OrderError::Db(sqlx::Error::PoolClosed)
}

/// A request's data, owned by its group.
type Owned = (String, Option<String>, bool, Valid, Option<KeyRef>);

fn requests(jobs: &[Owned]) -> Vec<Request<'_>> {
    jobs.iter()
        .map(|(actor, customer, allow_split, valid, idem)| Request {
            actor,
            customer: customer.as_deref(),
            allow_split: *allow_split,
            valid,
            idem: idem.as_ref(),
        })
        .collect()
}

/// Takes groups off `queue` until `shutdown`: step 1 of one group at a
/// time (what queues meanwhile is the next group), the rest of each group
/// in a task of its own, at most `in_flight` groups at once. At shutdown
/// the groups in flight finish.
pub async fn run(c: Commerce, queue: Queue, in_flight: usize, max: usize, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut rx = queue.0;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            j = rx.recv() => match j {
                Some(j) => j,
                None => break,
            },
        };
        let mut lines = first.valid.lines.len();
        let mut taken = vec![first];
        while taken.len() < max.max(1) && lines < MAX_GROUP_LINES {
            match rx.try_recv() {
                Ok(j) => {
                    lines += j.valid.lines.len();
                    taken.push(j);
                }
                Err(_) => break,
            }
        }
        let (replies, jobs): (Vec<_>, Vec<Owned>) = taken
            .into_iter()
            .map(|j| (j.reply, (j.actor, j.customer, j.allow_split, j.valid, j.idem)))
            .unzip();
        let step1 = c.reserve_group(&jobs).await;
        let c = c.clone();
        running.spawn(async move {
            let answers = c.finish_group(&jobs, step1).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away (its request cancelled) finds its
                // order through its Idempotency-Key.
                let _ = reply.send(answer);
            }
            drop(permit);
        });
    }
    while running.join_next().await.is_some() {}
}
