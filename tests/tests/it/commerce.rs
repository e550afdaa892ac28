//! Hub commerce on SQLite and PostgreSQL: online orders under contention,
//! the saga's compensations and its recovery after a crash, idempotency
//! keys, store sales and their stock, the ledger, click-and-collect,
//! store-and-forward payments, lane card authorisations, catalog
//! replication, CSV, refunds.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use storegate_e2e::{
    Backend, HubProcess, Rest, StorePeer, TestHub, both_backends, drop_pg_database, fresh_pg_database,
    spawn_hub, spawn_hub_with, token, wait_until,
};
use storegate_protocol::downlink::{DownBody, PaymentOutcome};
use storegate_protocol::envelope::{DownAck, Message, Presence, UpBatch};
use storegate_protocol::event::{
    CardAuth, CardPayment, CardRef, CardToken, Event, EventBody, Last4, PaymentVoid, Return, ReturnLine,
    Sale, SaleLine, TaskStatus, TaskUpdate, Tender, TenderMethod, Totals,
};
use storegate_protocol::rpc::{CardKind, RpcCall, RpcRequest, RpcResult};
use storegate_protocol::topic::{RpcLeg, RpcSide, WanTopic};
use storegate_protocol::{Currency, EventId, LaneId, Money, Qty, Seq, Sku, StoreId};

const CLIENT_EMAIL: &str = "shopper@example.com";
const CLIENT_PASSWORD: &str = "a long shopper password";

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

async fn seed(hub: &TestHub) -> (Rest, Rest) {
    seed_api(&hub.api, &hub.admin_token).await
}

async fn receive(admin: &Rest, location: &str, sku: &str, qty: i64) {
    admin
        .post(
            "/api/v1/stock/receipts",
            json!({"location": location, "lines": [{"sku": sku, "qty": qty}]}),
        )
        .await;
}

fn order(sku: &str, qty: i64, token: &str) -> Value {
    json!({
        "lines": [{"sku": sku, "qty": qty}],
        "fulfilment": "ship",
        "ship_region": "north",
        "payment": {"method": "card", "token": token, "last4": "4242"},
    })
}

async fn place(client: &Rest, key: &str, body: &Value) -> storegate_e2e::Answer {
    client
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(body),
            &[("Idempotency-Key", key)],
        )
        .await
}

/// Counts 201s and out-of-stock 409s; anything else fails the test.
async fn confirmed_and_out_of_stock(
    tasks: Vec<tokio::task::JoinHandle<storegate_e2e::Answer>>,
) -> (usize, usize) {
    let (mut ok, mut out) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            201 => ok += 1,
            409 => {
                assert_eq!(a.body["error"]["code"], "out_of_stock", "{}", a.body);
                out += 1;
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    (ok, out)
}

async fn level(admin: &Rest, location: &str, sku: &str) -> (i64, i64) {
    let page = admin
        .get(&format!("/api/v1/stock?location={location}&sku={sku}"))
        .await;
    let l = &page["items"][0];
    (
        l["on_hand"].as_i64().unwrap_or(0),
        l["reserved"].as_i64().unwrap_or(0),
    )
}

async fn verify_ledger(admin: &Rest) {
    let mismatches = admin.get("/api/v1/stock/verify").await;
    assert_eq!(mismatches, json!([]), "every level is the sum of its ledger");
}

async fn db(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

async fn count(db: &sqlx::AnyPool, sql: &str, arg: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(arg.to_owned())
        .fetch_one(db)
        .await
        .unwrap()
}

both_backends!(
    two_hundred_orders_for_the_last_fifty_units_sell_exactly_fifty,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 50).await;

        let mut tasks = Vec::new();
        for i in 0..200 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                place(&client, &format!("race-{i}"), &order("P1", 1, "tok_visa")).await
            }));
        }
        let (ok, out) = confirmed_and_out_of_stock(tasks).await;
        assert_eq!((ok, out), (50, 150));
        assert_eq!(
            level(&admin, "w1", "P1").await,
            (50, 50),
            "50 on hand, all reserved"
        );
        let again = place(&client, "one-more", &order("P1", 1, "tok_visa")).await;
        assert_eq!(again.status, 409);
        assert!(again.body["error"]["message"].as_str().unwrap().contains("P1"));
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    concurrent_orders_are_placed_in_groups_and_a_bad_order_spoils_none_of_its_group,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 100).await;

        // 40 at once: 34 good, 3 naming a product that does not exist,
        // 3 whose card is declined.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let client = client.clone();
            let body = match i % 13 {
                5 => order("NOPE", 1, "tok_visa"),
                9 => order("P1", 1, "decline_card"),
                _ => order("P1", 1, "tok_visa"),
            };
            tasks.push(tokio::spawn(async move {
                (
                    i,
                    body.clone(),
                    place(&client, &format!("group-{i}"), &body).await,
                )
            }));
        }
        let mut confirmed = Vec::new();
        for t in tasks {
            let (i, body, a) = t.await.unwrap();
            match i % 13 {
                5 => {
                    assert_eq!(a.status, 422, "{}", a.body);
                    assert!(
                        a.body["error"]["message"].as_str().unwrap().contains("NOPE"),
                        "{}",
                        a.body
                    );
                }
                9 => assert_eq!(a.status, 402, "{}", a.body),
                _ => {
                    assert_eq!(a.status, 201, "{}", a.body);
                    assert_eq!(a.body["status"], "awaiting_shipment", "{}", a.body);
                    assert_eq!(a.body["payments"][0]["status"], "authorized", "{}", a.body);
                    assert_eq!(a.body["shipments"].as_array().unwrap().len(), 1, "{}", a.body);
                    assert_eq!(a.body["tasks"].as_array().unwrap().len(), 1, "{}", a.body);
                    confirmed.push((i, body, a.body["id"].as_str().unwrap().to_owned()));
                }
            }
        }
        assert_eq!(confirmed.len(), 34);
        // Reserved for the confirmed orders only: the declined ones released theirs.
        assert_eq!(level(&admin, "w1", "P1").await, (100, 34));
        // A retry with the same key answers the same order.
        let (i, body, id) = &confirmed[0];
        let again = place(&client, &format!("group-{i}"), body).await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(again.body["id"].as_str(), Some(id.as_str()));
        verify_ledger(&admin).await;
        // Some group held more than one order.
        let metrics = crate::hub_ingest::metrics(&hub).await;
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
        };
        let (sum, count) = (
            value("hub_order_group_size_sum"),
            value("hub_order_group_size_count"),
        );
        assert!(
            count >= 1.0 && sum > count,
            "groups: {count}, orders in them: {sum}"
        );
        hub.stop().await;
    }
);

both_backends!(
    a_shipment_in_trouble_before_it_left_books_its_goods_once_when_it_leaves,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 10).await;
        let placed = place(&client, "trouble-1", &order("P1", 2, "tok_visa")).await;
        assert_eq!(placed.status, 201, "{}", placed.body);
        let id = placed.body["id"].as_str().unwrap().to_owned();
        let shipment = placed.body["shipments"][0]["id"].as_str().unwrap().to_owned();
        let event = |status: &str| {
            let admin = admin.clone();
            let path = format!("/api/v1/shipments/{shipment}/events");
            let body = json!({ "status": status });
            async move { admin.call(Method::POST, &path, Some(&body), &[]).await }
        };
        // The carrier reports a problem before pick-up: nothing has left.
        assert_eq!(event("exception").await.status, 200);
        assert_eq!(level(&admin, "w1", "P1").await, (10, 2));
        // Then it leaves: the goods leave the ledger and the payment is captured.
        assert_eq!(event("in_transit").await.status, 200);
        assert_eq!(level(&admin, "w1", "P1").await, (8, 0), "the goods left");
        let pid = format!("order-{id}");
        wait_until("the payment is captured", Duration::from_secs(20), || {
            let admin = admin.clone();
            let pid = pid.clone();
            async move { admin.get(&format!("/api/v1/payments/{pid}")).await["status"] == "captured" }
        })
        .await;
        assert_eq!(
            admin.get(&format!("/api/v1/orders/{id}")).await["status"],
            "shipped"
        );
        // Trouble on the way and the delivery book nothing again.
        assert_eq!(event("exception").await.status, 200);
        assert_eq!(event("delivered").await.status, 200);
        assert_eq!(level(&admin, "w1", "P1").await, (8, 0), "booked once");
        let done = admin.get(&format!("/api/v1/orders/{id}")).await;
        assert_eq!(done["status"], "completed");
        let statuses: Vec<&str> = done["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            [
                "created",
                "reserved",
                "confirmed",
                "awaiting_shipment",
                "shipped",
                "completed"
            ]
        );
        // A delivered shipment goes nowhere; the refusal says why.
        let back = event("in_transit").await;
        assert_eq!(back.status, 409, "{}", back.body);
        assert_eq!(
            back.body["error"]["message"],
            "shipment cannot go from delivered to in_transit"
        );
        // An unknown status is not a status.
        assert_eq!(event("teleported").await.status, 422);
        // Its goods left: cancelling is refused, naming the status.
        let cancel = admin
            .call(
                Method::POST,
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&json!({})),
                &[],
            )
            .await;
        assert_eq!(cancel.status, 409, "{}", cancel.body);
        assert!(
            cancel.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is completed"),
            "{}",
            cancel.body
        );
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    online_orders_get_the_promotions_stores_apply,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 10).await;
        receive(&admin, "w1", "P2", 10).await;
        let promo = |id: &str, rule: Value, skus: &[&str], ends: Option<i64>| {
            let admin = admin.clone();
            let body = json!({"label": id, "rule": rule, "skus": skus, "starts_ms": 0, "ends_ms": ends});
            let path = format!("/api/v1/promotions/{id}");
            async move { admin.put(&path, body).await }
        };
        promo("p1-10pc", json!({"PercentOff": {"bp": 1000}}), &["P1"], None).await;
        // Two for P2: the better one wins, no stacking.
        promo(
            "p2-3for2",
            json!({"MultiBuy": {"buy": 3, "pay": 2}}),
            &["P2"],
            None,
        )
        .await;
        promo(
            "p2-50off",
            json!({"AmountOff": {"amount": {"minor": 50, "currency": "EUR"}}}),
            &["P2"],
            None,
        )
        .await;
        // Over: does not apply.
        promo(
            "p1-half",
            json!({"PercentOff": {"bp": 5000}}),
            &["P1"],
            Some(1_000),
        )
        .await;

        let body = json!({
            "lines": [{"sku": "P1", "qty": 2}, {"sku": "P2", "qty": 3}],
            "fulfilment": "ship",
            "ship_region": "north",
            "payment": {"method": "card", "token": "tok_visa", "last4": "4242"},
        });
        let a = place(&client, "promo-1", &body).await;
        assert_eq!(a.status, 201, "{}", a.body);
        let o = &a.body;
        // P1: 2 x 10.00 = 20.00, 10% off = 18.00 (VAT 20% in it: 3.00).
        // P2: 3 x 5.00 = 15.00, 3 for 2 = 10.00 (VAT 1.67). Shipping 4.99.
        let line = |sku: &str| {
            o["lines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["sku"] == sku)
                .cloned()
                .unwrap()
        };
        let p1 = line("P1");
        assert_eq!(
            (
                &p1["total_minor"],
                &p1["discount_minor"],
                &p1["tax_minor"],
                &p1["promotion_id"]
            ),
            (&json!(1800), &json!(200), &json!(300), &json!("p1-10pc"))
        );
        let p2 = line("P2");
        assert_eq!(
            (
                &p2["total_minor"],
                &p2["discount_minor"],
                &p2["tax_minor"],
                &p2["promotion_id"]
            ),
            (&json!(1000), &json!(500), &json!(167), &json!("p2-3for2"))
        );
        assert_eq!(
            (
                &o["subtotal_minor"],
                &o["discount_minor"],
                &o["tax_minor"],
                &o["shipping_minor"],
                &o["total_minor"]
            ),
            (&json!(3500), &json!(700), &json!(467), &json!(499), &json!(3299))
        );
        assert_eq!(
            o["payments"][0]["amount_minor"], 3299,
            "the card is charged the discounted total"
        );

        // The same basket priced by the code the store lanes run.
        let eur = |m| Money::new(m, Currency::EUR);
        let input = |sku: &str, n, unit| storegate_protocol::pricing::LineInput {
            sku: Sku::parse(sku).unwrap(),
            qty: Qty::each(n).unwrap(),
            unit_price: eur(unit),
            fixed_amount: None,
            tax_rate_bp: 2000,
        };
        let promos: Vec<storegate_protocol::downlink::Promotion> =
            serde_json::from_value::<Vec<Value>>(admin.get("/api/v1/promotions").await)
                .unwrap()
                .into_iter()
                .filter(|p| p["ends_ms"].is_null())
                .map(|p| storegate_protocol::downlink::Promotion {
                    id: p["id"].as_str().unwrap().into(),
                    label: p["label"].as_str().unwrap().into(),
                    rule: serde_json::from_value(p["rule"].clone()).unwrap(),
                    skus: vec![Sku::parse(p["skus"][0].as_str().unwrap()).unwrap()],
                    starts_ms: 0,
                    ends_ms: None,
                })
                .collect();
        let at_store = storegate_protocol::pricing::price(
            &[input("P1", 2, 1000), input("P2", 3, 500)],
            &promos,
            true,
            Currency::EUR,
        )
        .unwrap();
        assert_eq!(at_store.total.minor + 499, 3299);
        hub.stop().await;
    }
);

both_backends!(
    two_line_orders_in_opposite_orders_neither_deadlock_nor_oversell,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 30).await;
        receive(&admin, "w1", "P2", 30).await;
        // Half the orders list P1 then P2, half P2 then P1: two orders that
        // lock the same rows in opposite orders must not fail each other.
        let mut tasks = Vec::new();
        for i in 0..60 {
            let client = client.clone();
            let (a, b) = if i % 2 == 0 { ("P1", "P2") } else { ("P2", "P1") };
            tasks.push(tokio::spawn(async move {
                let body = json!({
                    "lines": [{"sku": a, "qty": 1}, {"sku": b, "qty": 1}],
                    "fulfilment": "ship",
                    "ship_region": "north",
                    "payment": {"method": "card", "token": "tok_visa", "last4": "4242"},
                });
                place(&client, &format!("pair-{i}"), &body).await
            }));
        }
        let (ok, out) = confirmed_and_out_of_stock(tasks).await;
        assert_eq!((ok, out), (30, 30));
        assert_eq!(level(&admin, "w1", "P1").await, (30, 30));
        assert_eq!(level(&admin, "w1", "P2").await, (30, 30));
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    a_declined_payment_releases_the_reservation_and_fails_the_order,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 5).await;
        let a = place(&client, "declined-1", &order("P1", 2, "decline_card")).await;
        assert_eq!(a.status, 402, "{}", a.body);
        assert_eq!(a.body["error"]["code"], "payment_declined");
        let message = a.body["error"]["message"].as_str().unwrap();
        let id = message
            .strip_prefix("order ")
            .and_then(|m| m.split(':').next())
            .unwrap()
            .to_owned();
        assert_eq!(level(&admin, "w1", "P1").await, (5, 0), "nothing stays reserved");

        let o = admin.get(&format!("/api/v1/orders/{id}")).await;
        assert_eq!(o["status"], "failed");
        let statuses: Vec<&str> = o["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, vec!["created", "reserved", "failed"]);
        assert_eq!(o["payments"][0]["status"], "declined");

        let audit = admin.get("/api/v1/audit?limit=500").await;
        let mut trail: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["entity_id"] == id.as_str())
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        trail.reverse();
        assert_eq!(
            trail,
            vec![
                "order_created",
                "stock_reserved",
                "payment_declined",
                "stock_released",
                "order_failed"
            ]
        );
        let moves = admin.get("/api/v1/stock/movements?location=w1&sku=P1").await;
        let kinds: Vec<&str> = moves["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec!["receipt", "reservation", "release"]);
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    idempotency_keys_replay_refuse_and_report_in_flight,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub_with(backend, |s| s.commerce.sim_latency_ms = 1_500).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "w1", "P1", 10).await;
        let body = order("P1", 1, "tok_visa");

        // No key: refused.
        let a = client
            .call(Method::POST, "/api/v1/orders", Some(&body), &[])
            .await;
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (400, Some("idempotency_key_required"))
        );

        // A second request while the first is running: 409.
        let first = {
            let client = client.clone();
            let body = body.clone();
            tokio::spawn(async move { place(&client, "key-1", &body).await })
        };
        // In flight: its key is recorded with no answer yet.
        wait_until("the first request in flight", Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM idempotency WHERE key = 'key-1' AND status IS NULL",
            )
            .fetch_one(&hub.hub.db.pool)
            .await
            .unwrap()
                == 1
        })
        .await;
        let during = place(&client, "key-1", &body).await;
        assert_eq!(
            (during.status, during.body["error"]["code"].as_str()),
            (409, Some("request_in_flight"))
        );
        let first = first.await.unwrap();
        assert_eq!(first.status, 201, "{}", first.body);

        // Same key, same body: the same response, marked as a replay.
        let replay = place(&client, "key-1", &body).await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.body["id"], first.body["id"]);
        assert_eq!(replay.headers.get("idempotent-replayed").unwrap(), "true");

        // Same key, another body: 422, and nothing ordered.
        let other = place(&client, "key-1", &order("P1", 2, "tok_visa")).await;
        assert_eq!(
            (other.status, other.body["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        assert_eq!(
            level(&admin, "w1", "P1").await,
            (10, 1),
            "one order, reserved once"
        );

        // Keys are per principal: the admin's "key-1" is a new order.
        let mine = admin
            .call(
                Method::POST,
                "/api/v1/orders",
                Some(&body),
                &[("Idempotency-Key", "key-1")],
            )
            .await;
        assert_eq!(mine.status, 201);
        assert_ne!(mine.body["id"], first.body["id"]);

        // Refunds take keys too: the same refund twice is one refund.
        let pid = format!("order-{}", first.body["id"].as_str().unwrap());
        let shipment = first.body["shipments"][0]["id"].as_str().unwrap().to_owned();
        admin
            .post(
                &format!("/api/v1/shipments/{shipment}/events"),
                json!({"status": "in_transit"}),
            )
            .await;
        wait_until("the payment is captured", Duration::from_secs(20), || {
            let admin = admin.clone();
            let pid = pid.clone();
            async move { admin.get(&format!("/api/v1/payments/{pid}")).await["status"] == "captured" }
        })
        .await;
        let refund = json!({"amount_minor": 300, "reason": "dented box"});
        let path = format!("/api/v1/payments/{pid}/refund");
        let r1 = admin
            .call(
                Method::POST,
                &path,
                Some(&refund),
                &[("Idempotency-Key", "refund-1")],
            )
            .await;
        let r2 = admin
            .call(
                Method::POST,
                &path,
                Some(&refund),
                &[("Idempotency-Key", "refund-1")],
            )
            .await;
        assert_eq!((r1.status, r2.status), (202, 202), "{}", r1.body);
        assert_eq!(r1.body["id"], r2.body["id"]);
        let too_much = json!({"amount_minor": 100_000});
        let r3 = admin
            .call(
                Method::POST,
                &path,
                Some(&too_much),
                &[("Idempotency-Key", "refund-2")],
            )
            .await;
        assert_eq!(r3.status, 422, "{}", r3.body);
        assert_eq!(
            admin.get(&format!("/api/v1/payments/{pid}")).await["refunded_minor"],
            300
        );
        hub.stop().await;
    }
);

both_backends!(
    a_hub_killed_mid_saga_resumes_without_double_reservation_or_charge,
    |backend: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("hub.db").display()),
            Backend::Postgres => match fresh_pg_database().await {
                Some(u) => u,
                None => return,
            },
        };
        let lease = [("SG_HUB_COMMERCE__SAGA_LEASE_MS", "1000")];
        let hub = HubProcess::spawn(dir.path(), &url, &lease).await;
        let api = format!("http://{}", hub.api);
        let admin_token = token(&api, storegate_e2e::ADMIN_EMAIL, storegate_e2e::ADMIN_PASSWORD)
            .await
            .unwrap();
        let (admin, client) = seed_api(&api, &admin_token).await;
        receive(&admin, "w1", "P1", 3).await;
        drop(hub);

        // The hub dies right after the provider authorised.
        let hub = HubProcess::spawn(
            dir.path(),
            &url,
            &[lease[0], ("STOREGATE_FAILPOINT", "abort_after_authorize")],
        )
        .await;
        let api = format!("http://{}", hub.api);
        let client = Rest::new(&api, &client.token);
        let body = order("P1", 2, "tok_visa");
        let died = storegate_e2e::http()
            .post(format!("{api}/api/v1/orders"))
            .bearer_auth(&client.token)
            .header("Idempotency-Key", "crash-1")
            .json(&body)
            .send()
            .await;
        assert!(died.is_err(), "the hub died before answering: {died:?}");
        let status = hub.exited(Duration::from_secs(30)).await;
        assert!(!status.success());

        // Restarted: the saga resumes by itself once its lease expires.
        let hub = HubProcess::spawn(dir.path(), &url, &lease).await;
        let api = format!("http://{}", hub.api);
        let admin = Rest::new(&api, &admin.token);
        let client = Rest::new(&api, &client.token);
        let pool = db(&url).await;
        let order_id: String = sqlx::query_scalar("SELECT id FROM orders WHERE kind = 'online'")
            .fetch_one(&pool)
            .await
            .unwrap();
        wait_until("the saga finished", Duration::from_secs(30), || {
            let admin = admin.clone();
            let id = order_id.clone();
            async move { admin.get(&format!("/api/v1/orders/{id}")).await["status"] == "awaiting_shipment" }
        })
        .await;
        assert_eq!(level(&admin, "w1", "P1").await, (3, 2), "reserved once");
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM stock_movements WHERE reference = $1 AND kind = 'reservation'",
                &order_id
            )
            .await,
            1
        );
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM sim_provider WHERE key = $1",
                &format!("auth:order-{order_id}")
            )
            .await,
            1,
            "the provider authorised once"
        );
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM payments WHERE order_id = $1",
                &order_id
            )
            .await,
            1
        );
        // The client's retry with the same key gets the order.
        let retry = client
            .call(
                Method::POST,
                "/api/v1/orders",
                Some(&body),
                &[("Idempotency-Key", "crash-1")],
            )
            .await;
        assert_eq!(retry.status, 201, "{}", retry.body);
        assert_eq!(retry.body["id"], order_id.as_str());
        verify_ledger(&admin).await;
        hub.terminate().await;
        if url.starts_with("postgres") {
            pool.close().await;
            drop_pg_database(&url).await;
        }
    }
);

/// A chain: warehouse w1 (north), warehouse w2 (south), store s1 (north);
/// products P1 (10.00) and P2 (5.00); one carrier; a client account.
/// Returns (admin, client).
async fn seed_api(api: &str, admin_token: &str) -> (Rest, Rest) {
    let admin = Rest::new(api, admin_token);
    for (id, kind, region) in [
        ("w1", "warehouse", "north"),
        ("w2", "warehouse", "south"),
        ("s1", "store", "north"),
    ] {
        admin
            .put(
                &format!("/api/v1/stores/{id}"),
                json!({"name": id, "kind": kind, "region": region}),
            )
            .await;
    }
    admin.put("/api/v1/carriers/post", json!({"name": "Post"})).await;
    for region in ["north", "south"] {
        admin
            .put(&format!("/api/v1/shipping/zones/{region}"), json!({"zone": "z1"}))
            .await;
    }
    admin
        .put(
            "/api/v1/shipping/rates",
            json!({"carrier": "post", "zone": "z1", "max_grams": 1_000_000, "price_minor": 499, "currency": "EUR"}),
        )
        .await;
    for (sku, price) in [("P1", 1000), ("P2", 500)] {
        admin
            .put(
                &format!("/api/v1/products/{sku}"),
                json!({"name": format!("Product {sku}"), "tax_rate_bp": 2000, "attributes": {"weight_grams": 800}}),
            )
            .await;
        admin
            .post(
                "/api/v1/prices",
                json!({"sku": sku, "scope": "all", "price_minor": price, "currency": "EUR", "effective_from_ms": 0}),
            )
            .await;
    }
    admin
        .post(
            "/api/v1/users",
            json!({"email": CLIENT_EMAIL, "password": CLIENT_PASSWORD, "role": "client"}),
        )
        .await;
    let client = Rest::new(api, &token(api, CLIENT_EMAIL, CLIENT_PASSWORD).await.unwrap());
    (admin, client)
}

// ---- store-side helpers ----

fn card(token: &str) -> CardRef {
    CardRef {
        token: CardToken::parse(token).unwrap(),
        last4: Last4::parse("4242").unwrap(),
        brand: None,
    }
}

fn ids(n: u64, k: u128) -> EventId {
    EventId::from_parts(1_700_000_000_000 + n, k)
}

/// A sale of `lines` (sku, qty, unit price) paid by one tender.
fn store_sale(n: u64, lines: &[(&str, u32, i64)], method: TenderMethod) -> Sale {
    let sale_lines: Vec<SaleLine> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, qty, unit))| SaleLine {
            line_no: i as u16 + 1,
            sku: Sku::parse(*sku).unwrap(),
            gtin: None,
            qty: Qty::each(*qty).unwrap(),
            unit_price: eur(*unit),
            discounts: Vec::new(),
            tax_rate_bp: 2000,
            tax: eur(unit * i64::from(*qty) / 6),
            total: eur(unit * i64::from(*qty)),
        })
        .collect();
    let total: i64 = sale_lines.iter().map(|l| l.total.minor).sum();
    let tax: i64 = sale_lines.iter().map(|l| l.tax.minor).sum();
    Sale {
        sale_id: ids(n, 1),
        lane: LaneId::parse("lane-1").unwrap(),
        cashier: None,
        customer: None,
        tax_included: true,
        lines: sale_lines,
        basket_discounts: Vec::new(),
        totals: Totals {
            subtotal: eur(total),
            discount: eur(0),
            tax: eur(tax),
            total: eur(total),
        },
        tenders: vec![Tender {
            payment_key: ids(n, 2),
            amount: eur(total),
            method,
        }],
        change: eur(0),
        started_at_ms: 1_700_000_000_000,
        completed_at_ms: 1_700_000_000_000 + n as i64,
    }
}

fn event(seq: u64, body: EventBody) -> Event {
    Event {
        id: ids(seq, 99),
        seq: Seq(seq),
        recorded_at_ms: 1_700_000_000_000,
        body,
    }
}

fn batch(store: &str, events: Vec<Event>) -> Message {
    Message::UpBatch(UpBatch {
        store: StoreId::parse(store).unwrap(),
        first: events.first().unwrap().seq,
        last: events.last().unwrap().seq,
        events,
        backlog: 0,
        dropped_telemetry: 0,
    })
}

/// An edge stand-in for store `store`: receives acks, downlink and RPC
/// answers.
async fn edge(hub: &TestHub, store: &str) -> StorePeer {
    let s = StoreId::parse(store).unwrap();
    let peer = hub.store_peer(store).await;
    // Online, as an edge announces itself: the hub sends its snapshot.
    peer.publish_retained(
        WanTopic::Status(s.clone()).to_string(),
        Message::Presence(Presence {
            store: s,
            online: true,
            agent_version: "test".into(),
            protocol_version: 2,
            at_ms: 0,
        }),
    )
    .await;
    peer
}

/// Collects downlink items (acking them, skipping seqs already seen, as an
/// edge does) until `until` holds or `timeout`.
async fn downlink_until(
    peer: &mut StorePeer,
    store: &str,
    applied: &mut u64,
    timeout: Duration,
    mut until: impl FnMut(&[DownBody]) -> bool,
) -> Vec<DownBody> {
    let mut got: Vec<DownBody> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !until(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((topic, message)) = peer.next(left).await else {
            panic!("downlink did not arrive in time; got {got:?}");
        };
        if !topic.ends_with("/down") {
            continue;
        }
        if let Message::DownBatch(b) = message {
            let last = b.items.last().map(|i| i.seq);
            for i in b.items {
                if i.seq.0 == *applied + 1 {
                    *applied = i.seq.0;
                    got.push(i.body);
                }
            }
            if let Some(last) = last.filter(|l| l.0 <= *applied) {
                peer.publish(
                    WanTopic::Up(StoreId::parse(store).unwrap()).to_string(),
                    Message::DownAck(DownAck { applied_up_to: last }),
                )
                .await;
            }
        }
    }
    got
}

both_backends!(
    a_store_sale_ingested_twice_moves_stock_once,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        receive(&admin, "s1", "P1", 20).await;
        let peer = edge(&hub, "s1").await;
        let events: Vec<Event> = (1..=3)
            .map(|n| {
                event(
                    n,
                    EventBody::Sale(store_sale(
                        n,
                        &[("P1", 2, 1000)],
                        TenderMethod::Cash { received: eur(2000) },
                    )),
                )
            })
            .collect();
        let up = WanTopic::Up(StoreId::parse("s1").unwrap()).to_string();
        peer.publish(up.clone(), batch("s1", events.clone())).await;
        peer.publish(up.clone(), batch("s1", events)).await;
        wait_until("both batches handled", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move { admin.get("/api/v1/stores/s1").await["duplicates"].as_i64() == Some(3) }
        })
        .await;
        assert_eq!(
            level(&admin, "s1", "P1").await,
            (14, 0),
            "20 received, 3 sales of 2"
        );
        let orders = admin.get("/api/v1/orders?kind=store").await;
        assert_eq!(orders["items"].as_array().unwrap().len(), 3);
        let one = admin
            .get(&format!(
                "/api/v1/orders/{}",
                orders["items"][0]["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(one["lines"][0]["sku"], "P1");
        assert_eq!(one["payments"][0]["method"], "cash");
        assert_eq!(one["payments"][0]["status"], "captured");
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    the_ledger_explains_every_level_after_a_random_run,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        let peer = edge(&hub, "s1").await;
        let up = WanTopic::Up(StoreId::parse("s1").unwrap()).to_string();
        // A small deterministic generator (no extra dependency).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let locations = ["w1", "w2", "s1"];
        let skus = ["P1", "P2"];
        let mut seq = 0;
        for step in 0..120 {
            let loc = locations[next(3) as usize];
            let sku = skus[next(2) as usize];
            match next(7) {
                0 => receive(&admin, loc, sku, 1 + next(20) as i64).await,
                1 => {
                    admin
                        .post(
                            "/api/v1/stock/adjustments",
                            json!({"location": loc, "reason": "damaged", "lines": [{"sku": sku, "delta": -(next(3) as i64)}]}),
                        )
                        .await;
                }
                2 => {
                    let to = locations
                        [(next(2) as usize + 1 + locations.iter().position(|l| *l == loc).unwrap()) % 3];
                    let a = admin
                        .call(
                            Method::POST,
                            "/api/v1/stock/transfers",
                            Some(&json!({"from": loc, "to": to, "lines": [{"sku": sku, "qty": 1 + next(3) as i64}]})),
                            &[],
                        )
                        .await;
                    assert!(matches!(a.status, 201 | 409), "{}", a.body);
                }
                3 => {
                    admin
                        .post(
                            "/api/v1/stock/counts",
                            json!({"location": loc, "lines": [{"sku": sku, "counted": next(30) as i64}]}),
                        )
                        .await;
                }
                4 => {
                    seq += 1;
                    let qty = 1 + next(2) as u32;
                    let sale = store_sale(
                        seq,
                        &[(sku, qty, 1000)],
                        TenderMethod::Cash { received: eur(5000) },
                    );
                    peer.publish(up.clone(), batch("s1", vec![event(seq, EventBody::Sale(sale))]))
                        .await;
                }
                5 => {
                    let token = if next(4) == 0 { "decline_x" } else { "tok_visa" };
                    let a = place(
                        &client,
                        &format!("rand-{step}"),
                        &order(sku, 1 + next(3) as i64, token),
                    )
                    .await;
                    assert!(matches!(a.status, 201 | 402 | 409), "{}", a.body);
                    if a.status == 201 && next(2) == 0 {
                        let id = a.body["id"].as_str().unwrap();
                        client
                            .post(&format!("/api/v1/orders/{id}/cancel"), json!({}))
                            .await;
                    }
                }
                _ => {
                    let a = place(&client, &format!("rand-{step}"), &order(sku, 1, "tok_visa")).await;
                    if a.status == 201 && next(2) == 0 {
                        let shipment = a.body["shipments"][0]["id"].as_str().unwrap().to_owned();
                        admin
                            .post(
                                &format!("/api/v1/shipments/{shipment}/events"),
                                json!({"status": "in_transit"}),
                            )
                            .await;
                    }
                }
            }
        }
        wait_until("every store sale ingested", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move { admin.get("/api/v1/stores/s1").await["hwm"].as_i64() == Some(seq as i64) }
        })
        .await;
        verify_ledger(&admin).await;
        // Online orders never took a location below zero available.
        let levels = admin.get("/api/v1/stock?limit=500").await;
        for l in levels["items"].as_array().unwrap() {
            assert!(l["reserved"].as_i64().unwrap() >= 0, "{l}");
            assert!(
                l["reserved"].as_i64().unwrap() <= l["on_hand"].as_i64().unwrap().max(0)
                    || l["location"] == "s1",
                "{l}"
            );
        }
        hub.stop().await;
    }
);

both_backends!(
    click_and_collect_becomes_a_pick_task_whose_confirmation_completes_the_order,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, client) = seed(&hub).await;
        receive(&admin, "s1", "P2", 4).await;
        let mut peer = edge(&hub, "s1").await;
        let mut applied = 0;
        let body = json!({
            "lines": [{"sku": "P2", "qty": 3}],
            "fulfilment": "collect",
            "collect_at": "s1",
            "payment": {"method": "card", "token": "tok_visa", "last4": "4242"},
        });
        let a = place(&client, "collect-1", &body).await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["status"], "picking");
        let id = a.body["id"].as_str().unwrap().to_owned();
        let items = downlink_until(&mut peer, "s1", &mut applied, Duration::from_secs(20), |got| {
            got.iter().any(|b| matches!(b, DownBody::TaskAssigned(_)))
        })
        .await;
        let task = items
            .iter()
            .find_map(|b| match b {
                DownBody::TaskAssigned(t) => Some(t.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(task.order_ref.as_deref(), Some(id.as_str()));
        assert_eq!(task.lines[0].qty, 3);

        let update = EventBody::TaskUpdated(TaskUpdate {
            task_id: task.task_id.clone(),
            status: TaskStatus::Done,
            device: None,
            lines: Vec::new(),
            note: None,
        });
        peer.publish(
            WanTopic::Up(StoreId::parse("s1").unwrap()).to_string(),
            batch("s1", vec![event(1, update)]),
        )
        .await;
        wait_until("the order is completed and paid", Duration::from_secs(20), || {
            let client = client.clone();
            let id = id.clone();
            async move {
                let o = client.get(&format!("/api/v1/orders/{id}")).await;
                o["status"] == "completed" && o["payments"][0]["status"] == "captured"
            }
        })
        .await;
        assert_eq!(level(&admin, "s1", "P2").await, (1, 0), "the goods left");
        assert_eq!(
            admin.get(&format!("/api/v1/tasks?order_id={id}")).await["items"][0]["status"],
            "done"
        );
        // The client sees the order in their history; nobody else's.
        let mine = client.get("/api/v1/orders").await;
        assert!(
            mine["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["customer_id"] == mine["items"][0]["customer_id"])
        );
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    store_and_forward_payments_are_captured_or_become_exceptions,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        let mut peer = edge(&hub, "s1").await;
        let mut applied = 0;
        let offline = |token: &str| {
            TenderMethod::Card(CardPayment {
                card: card(token),
                auth: CardAuth::StoreAndForward {
                    taken_at_ms: 1_700_000_000_000,
                },
            })
        };
        // 10.13 ends in 13: the simulated provider declines it.
        let declined = store_sale(1, &[("P1", 1, 1013)], offline("tok_a"));
        let fine = store_sale(2, &[("P1", 1, 1000)], offline("tok_b"));
        peer.publish(
            WanTopic::Up(StoreId::parse("s1").unwrap()).to_string(),
            batch(
                "s1",
                vec![
                    event(1, EventBody::Sale(declined.clone())),
                    event(2, EventBody::Sale(fine.clone())),
                ],
            ),
        )
        .await;
        let items = downlink_until(&mut peer, "s1", &mut applied, Duration::from_secs(30), |got| {
            got.iter()
                .filter(|b| matches!(b, DownBody::PaymentDecision(_)))
                .count()
                == 2
        })
        .await;
        for b in items {
            if let DownBody::PaymentDecision(d) = b {
                if d.payment_key == declined.tenders[0].payment_key {
                    assert!(matches!(d.outcome, PaymentOutcome::Declined { .. }));
                    assert_eq!(d.sale_id, Some(declined.sale_id));
                } else {
                    assert_eq!(d.payment_key, fine.tenders[0].payment_key);
                    assert!(matches!(d.outcome, PaymentOutcome::Captured { .. }));
                }
            }
        }
        let ex = admin.get("/api/v1/payment-exceptions").await;
        let items = ex["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["amount_minor"], 1013);
        assert_eq!(items[0]["store_id"], "s1");
        // The goods stay sold: a decline is money to collect, not stock.
        assert_eq!(level(&admin, "s1", "P1").await, (-2, 0));
        let id = items[0]["id"].as_i64().unwrap();
        let a = admin
            .call(
                Method::POST,
                &format!("/api/v1/payment-exceptions/{id}/resolve"),
                Some(&json!({"status": "collected"})),
                &[],
            )
            .await;
        assert_eq!(a.status, 204);
        assert_eq!(admin.get("/api/v1/payment-exceptions").await["items"], json!([]));
        hub.stop().await;
    }
);

fn rpc(payment_key: EventId, token: &str, amount: i64, timeout_ms: u32) -> Message {
    Message::RpcRequest(RpcRequest {
        correlation_id: EventId::from_parts(
            1_700_000_000_000,
            u128::from(amount as u64) << 4 | u128::from(timeout_ms),
        ),
        sent_at_ms: storegate_hub::db::now_ms(),
        timeout_ms,
        call: RpcCall::CardAuthorize {
            payment_key,
            lane: LaneId::parse("lane-1").unwrap(),
            kind: CardKind::Payment,
            card: card(token),
            amount: eur(amount),
        },
    })
}

async fn rpc_answer(peer: &mut StorePeer, timeout: Duration) -> Option<RpcResult> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (topic, message) = peer.next(left).await?;
        if topic.ends_with("/rpc/edge/res")
            && let Message::RpcResponse(r) = message
        {
            return Some(r.result);
        }
    }
}

both_backends!(
    lane_card_authorisations_are_answered_in_time_or_voided,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub_with(backend, |s| s.commerce.provider_timeout_ms = 10_000).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        let mut peer = edge(&hub, "s1").await;
        let req = WanTopic::Rpc(StoreId::parse("s1").unwrap(), RpcSide::Edge, RpcLeg::Req).to_string();

        let key = ids(1, 7);
        peer.publish(req.clone(), rpc(key, "tok_visa", 2500, 3000)).await;
        let first = rpc_answer(&mut peer, Duration::from_secs(5))
            .await
            .expect("an answer");
        let RpcResult::CardAuthorized { authorization_id, .. } = &first else {
            panic!("{first:?}")
        };
        // Asked again (a retry): the same authorisation.
        peer.publish(req.clone(), rpc(key, "tok_visa", 2500, 3000)).await;
        assert_eq!(
            rpc_answer(&mut peer, Duration::from_secs(5)).await,
            Some(first.clone())
        );
        assert_eq!(
            admin.get(&format!("/api/v1/payments/{key}")).await["provider_ref"],
            authorization_id.as_str()
        );

        peer.publish(req.clone(), rpc(ids(2, 7), "tok_visa", 2513, 3000))
            .await;
        assert!(matches!(
            rpc_answer(&mut peer, Duration::from_secs(5)).await,
            Some(RpcResult::CardDeclined { .. })
        ));

        // A request a broker held back long past its own deadline is not
        // acted on.
        let Message::RpcRequest(mut stale) = rpc(ids(9, 7), "tok_visa", 700, 3000) else {
            unreachable!()
        };
        stale.sent_at_ms -= 3_600_000;
        peer.publish(req.clone(), Message::RpcRequest(stale)).await;
        assert_eq!(rpc_answer(&mut peer, Duration::from_millis(800)).await, None);
        assert_eq!(hub.hub.trust.refused("rpc_stale"), 1);

        // The provider never answers: no answer goes back, and the
        // authorisation (if it ever happened) is voided.
        let late = ids(3, 7);
        peer.publish(req.clone(), rpc(late, "timeout_card", 2500, 500))
            .await;
        assert_eq!(rpc_answer(&mut peer, Duration::from_millis(1500)).await, None);
        wait_until(
            "the late authorisation is voided",
            Duration::from_secs(20),
            || {
                let admin = admin.clone();
                async move { admin.get(&format!("/api/v1/payments/{late}")).await["status"] == "voided" }
            },
        )
        .await;

        // Garbage is dropped unread; a signed request that does not decode
        // is quarantined; the next one is answered.
        peer.mqtt.publish(req.clone(), b"not an envelope".to_vec()).await;
        let signed_garbage = peer.trust.sealer.seal_body(&req, b"\xffnot a message");
        peer.mqtt.publish(req.clone(), signed_garbage).await;
        peer.publish(req.clone(), rpc(ids(4, 7), "tok_visa", 100, 3000))
            .await;
        assert!(matches!(
            rpc_answer(&mut peer, Duration::from_secs(5)).await,
            Some(RpcResult::CardAuthorized { .. })
        ));
        let q = admin.get("/api/v1/quarantine").await;
        assert!(
            q["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["reason"].as_str().unwrap().starts_with("undecodable")),
            "{q}"
        );
        hub.stop().await;
    }
);

both_backends!(
    stores_get_the_catalog_once_then_deltas_with_their_own_prices,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub_with(backend, |s| s.commerce.stock_push_interval_ms = 200).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        receive(&admin, "s1", "P1", 7).await;
        admin
            .post(
                "/api/v1/prices",
                json!({"sku": "P1", "scope": "location", "scope_id": "s1", "price_minor": 900, "currency": "EUR", "effective_from_ms": 0}),
            )
            .await;
        let mut peer = edge(&hub, "s1").await;
        let mut applied = 0;
        let snapshot = downlink_until(&mut peer, "s1", &mut applied, Duration::from_secs(20), |got| {
            got.iter().any(|b| matches!(b, DownBody::StockLevel(_)))
        })
        .await;
        let products: Vec<&str> = snapshot
            .iter()
            .filter_map(|b| match b {
                DownBody::ProductUpsert(p) => Some(p.sku.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(products, vec!["P1", "P2"]);
        let p1_price = snapshot.iter().find_map(|b| match b {
            DownBody::PriceSet(p) if p.sku.as_str() == "P1" && p.effective_to_ms.is_none() => {
                Some(p.price.minor)
            }
            _ => None,
        });
        assert_eq!(p1_price, Some(900), "s1's own price, not the chain's");
        assert!(
            snapshot
                .iter()
                .any(|b| matches!(b, DownBody::StockLevel(l) if l.sku.as_str() == "P1" && l.on_hand == 7))
        );

        // A change is a delta; a regional price reaches the region's stores.
        admin
            .put(
                "/api/v1/products/P3",
                json!({"name": "Product P3", "tax_rate_bp": 550, "barcodes": ["4006381333931"]}),
            )
            .await;
        admin
            .post(
                "/api/v1/prices",
                json!({"sku": "P3", "scope": "region", "scope_id": "north", "price_minor": 333, "currency": "EUR", "effective_from_ms": 0}),
            )
            .await;
        receive(&admin, "s1", "P3", 2).await;
        let delta = downlink_until(&mut peer, "s1", &mut applied, Duration::from_secs(20), |got| {
            got.iter()
                .any(|b| matches!(b, DownBody::StockLevel(l) if l.sku.as_str() == "P3"))
        })
        .await;
        assert!(delta.iter().any(
            |b| matches!(b, DownBody::ProductUpsert(p) if p.sku.as_str() == "P3" && p.barcodes.len() == 1)
        ));
        assert!(
            delta.iter().any(
                |b| matches!(b, DownBody::PriceSet(p) if p.sku.as_str() == "P3" && p.price.minor == 333)
            )
        );
        assert!(
            !delta
                .iter()
                .any(|b| matches!(b, DownBody::ProductUpsert(p) if p.sku.as_str() == "P1")),
            "no second snapshot"
        );

        // Search by barcode, name and category.
        let found = admin.get("/api/v1/products?barcode=4006381333931").await;
        assert_eq!(found["items"][0]["sku"], "P3");
        let found = admin.get("/api/v1/products?q=product%20p").await;
        assert_eq!(found["items"].as_array().unwrap().len(), 3);
        hub.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import_is_all_or_nothing_and_export_round_trips() {
    let Some(hub) = spawn_hub(Backend::Sqlite).await else {
        return;
    };
    let admin = Rest::new(&hub.api, &hub.admin_token);
    let import = |body: &'static str| {
        let admin = admin.clone();
        async move {
            let resp = storegate_e2e::http()
                .post(format!("{}/api/v1/products/import", admin.base))
                .bearer_auth(&admin.token)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) =
        import("sku,name,tax_rate_bp,barcodes\nA,Apple,550,4006381333931\nB,,550,\nC,Cherry,abc,\n").await;
    assert_eq!(status, 422);
    let lines: Vec<i64> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, vec![3, 4]);
    assert_eq!(
        admin.get("/api/v1/products").await["items"],
        json!([]),
        "nothing imported"
    );

    let (status, body) = import(
        "sku,name,tax_rate_bp,barcodes,measure\nA,Apple,550,4006381333931,each\nB,Banana,550,,grams\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], 2);
    let csv = storegate_e2e::http()
        .get(format!("{}/api/v1/products/export.csv", hub.api))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("sku,name,category,supplier,measure,tax_rate_bp,barcodes,active,attributes"));
    assert!(csv.contains("A,Apple,,,each,550,04006381333931,1,{}"), "{csv}");
    // The export imports back unchanged.
    let resp = storegate_e2e::http()
        .post(format!("{}/api/v1/products/import", hub.api))
        .bearer_auth(&hub.admin_token)
        .body(csv)
        .send()
        .await
        .unwrap();
    let back: Value = resp.json().await.unwrap();
    assert_eq!(
        (back["created"].as_i64(), back["updated"].as_i64()),
        (Some(0), Some(2))
    );

    // Bad JSON gets the API's error shape, not a plain-text rejection.
    let a = admin
        .call(Method::PUT, "/api/v1/products/X", Some(&json!({"name": 5})), &[])
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(a.body["error"]["code"], "invalid_body");
    hub.stop().await;
}

/// Publishes `events` as one batch of `store` and waits for the hub's ack
/// of its last seq (other messages skipped).
async fn sync(hub: &TestHub, peer: &mut StorePeer, store: &str, events: Vec<Event>) {
    let last = events.last().unwrap().seq;
    peer.publish(
        WanTopic::Up(StoreId::parse(store).unwrap()).to_string(),
        batch(store, events),
    )
    .await;
    loop {
        let Some((_, m)) = peer.next(Duration::from_secs(15)).await else {
            let rows: Vec<(String, i64)> = sqlx::query_as("SELECT store_id, hwm FROM store_sync")
                .fetch_all(&hub.hub.db.pool)
                .await
                .unwrap();
            let q: Vec<(String, String)> = sqlx::query_as("SELECT store_id, reason FROM quarantine")
                .fetch_all(&hub.hub.db.pool)
                .await
                .unwrap_or_default();
            panic!(
                "no ack from the hub for {store} up to {last}: sync {rows:?}, quarantine {q:?}, refused {}",
                hub.hub.trust.refused_total()
            );
        };
        if let Message::AppAck(a) = m
            && a.committed_up_to >= last
        {
            return;
        }
    }
}

both_backends!(
    money_from_a_store_moves_only_within_its_own_sales_and_authorisations,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        admin
            .put(
                "/api/v1/stores/s2",
                json!({"name": "s2", "kind": "store", "region": "north"}),
            )
            .await;
        let mut s1 = edge(&hub, "s1").await;
        let mut s2 = edge(&hub, "s2").await;
        let req = WanTopic::Rpc(StoreId::parse("s1").unwrap(), RpcSide::Edge, RpcLeg::Req).to_string();
        let online = |auth: &str| {
            TenderMethod::Card(CardPayment {
                card: card("tok_visa"),
                auth: CardAuth::Online {
                    authorization_id: auth.into(),
                    auth_code: "OK".into(),
                },
            })
        };
        let refund = |n: u64, amount: i64, token: &str| Tender {
            payment_key: ids(n, 3),
            amount: eur(amount),
            method: TenderMethod::Card(CardPayment {
                card: card(token),
                auth: CardAuth::StoreAndForward {
                    taken_at_ms: 1_700_000_000_000,
                },
            }),
        };

        // s1's lane gets an authorisation of 10.00 from the hub.
        let key = ids(1, 2);
        s1.publish(req.clone(), rpc(key, "tok_visa", 1000, 3000)).await;
        let Some(RpcResult::CardAuthorized { authorization_id, .. }) =
            rpc_answer(&mut s1, Duration::from_secs(5)).await
        else {
            panic!("no authorisation")
        };

        // s2 presents s1's authorisation in a sale of its own: refused.
        let mut stolen = store_sale(1, &[("P1", 1, 1000)], online(&authorization_id));
        stolen.sale_id = ids(50, 1);
        sync(&hub, &mut s2, "s2", vec![event(1, EventBody::Sale(stolen))]).await;
        // s2 voids s1's payment: not its to void.
        sync(
            &hub,
            &mut s2,
            "s2",
            vec![event(
                2,
                EventBody::PaymentVoided(PaymentVoid {
                    payment_key: key,
                    amount: eur(1000),
                    reason: "void".into(),
                }),
            )],
        )
        .await;
        let p = admin.get(&format!("/api/v1/payments/{key}")).await;
        assert_eq!(
            (p["status"].as_str(), p["store_id"].as_str()),
            (Some("authorized"), Some("s1")),
            "{p}"
        );
        // A sale with an authorisation the hub never gave: refused too.
        let mut forged = store_sale(3, &[("P1", 1, 1000)], online("auth-made-up"));
        forged.tenders[0].payment_key = ids(3, 9);
        sync(&hub, &mut s1, "s1", vec![event(1, EventBody::Sale(forged))]).await;
        assert_eq!(
            admin
                .call(Method::GET, &format!("/api/v1/payments/{}", ids(3, 9)), None, &[])
                .await
                .status,
            404
        );

        // s1's own sale with it: accepted.
        let sale = store_sale(1, &[("P1", 1, 1000)], online(&authorization_id));
        sync(&hub, &mut s1, "s1", vec![event(2, EventBody::Sale(sale.clone()))]).await;
        let ret = |n: u64, refunds: Vec<Tender>| {
            EventBody::Return(Return {
                return_id: ids(n, 4),
                original_sale: Some(sale.sale_id),
                lane: LaneId::parse("lane-1").unwrap(),
                lines: vec![ReturnLine {
                    sku: Sku::parse("P1").unwrap(),
                    qty: Qty::each(1).unwrap(),
                    amount: eur(400),
                    tax: eur(66),
                    restock: false,
                }],
                refunds,
                reason: "changed mind".into(),
            })
        };
        // More than was paid, and to a card the sale was not paid with:
        // refused. Then 4.00 back to the card that paid: accepted.
        sync(
            &hub,
            &mut s1,
            "s1",
            vec![
                event(3, ret(10, vec![refund(10, 5000, "tok_visa")])),
                event(4, ret(11, vec![refund(11, 400, "tok_mallory")])),
                event(5, ret(12, vec![refund(12, 400, "tok_visa")])),
            ],
        )
        .await;
        let p = admin.get(&format!("/api/v1/payments/{key}")).await;
        assert_eq!(p["refunded_minor"], 400, "{p}");
        for (n, moved) in [(10, false), (11, false), (12, true)] {
            let status = admin
                .call(Method::GET, &format!("/api/v1/payments/{}", ids(n, 3)), None, &[])
                .await
                .status;
            assert_eq!(status == 200, moved, "refund {n}");
        }
        let kinds = |store: &'static str| {
            let admin = admin.clone();
            async move {
                let page = admin
                    .get(&format!("/api/v1/discrepancies?store_id={store}"))
                    .await;
                let mut k: Vec<String> = page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["kind"].as_str().unwrap().to_owned())
                    .collect();
                k.sort();
                k
            }
        };
        assert_eq!(kinds("s2").await, vec!["payment_refused"]);
        assert_eq!(
            kinds("s1").await,
            vec!["payment_refused", "refund_refused", "refund_refused"]
        );
        verify_ledger(&admin).await;
        hub.stop().await;
    }
);

both_backends!(
    card_data_in_events_is_removed_before_it_is_stored_and_refused_at_the_api,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        let mut s1 = edge(&hub, "s1").await;
        let mut sale = store_sale(1, &[("P1", 1, 1000)], TenderMethod::Cash { received: eur(1000) });
        sale.customer = Some("card 4111 1111 1111 1111".into());
        sync(&hub, &mut s1, "s1", vec![event(1, EventBody::Sale(sale))]).await;
        let events = admin.get("/api/v1/stores/s1/events").await.to_string();
        assert!(!events.contains("4111"), "{events}");
        assert!(events.contains("[card data removed]"), "{events}");
        let page = admin.get("/api/v1/discrepancies?store_id=s1").await;
        assert_eq!(page["items"][0]["kind"], "card_data_removed");
        assert!(!page.to_string().contains("4111"));
        // Every JSON body at the API.
        let a = admin
            .call(
                Method::PUT,
                "/api/v1/products/P9",
                Some(&json!({"name": "gift for 4111-1111-1111-1111", "tax_rate_bp": 2000})),
                &[],
            )
            .await;
        assert_eq!(a.status, 422);
        assert_eq!(a.body["error"]["code"], "card_data", "{}", a.body);
        assert!(!a.body.to_string().contains("4111"));
        hub.stop().await;
    }
);

both_backends!(
    a_refund_of_a_payment_that_was_never_captured_pays_nothing,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let (admin, _) = seed(&hub).await;
        let mut s1 = edge(&hub, "s1").await;
        let offline = |token: &str| {
            TenderMethod::Card(CardPayment {
                card: card(token),
                auth: CardAuth::StoreAndForward {
                    taken_at_ms: 1_700_000_000_000,
                },
            })
        };
        // 10.13 ends in 13: the simulated provider declines its capture.
        let sale = store_sale(1, &[("P1", 1, 1013)], offline("tok_a"));
        let refund = Tender {
            payment_key: ids(1, 3),
            amount: eur(500),
            method: offline("tok_a"),
        };
        let ret = EventBody::Return(Return {
            return_id: ids(1, 4),
            original_sale: Some(sale.sale_id),
            lane: LaneId::parse("lane-1").unwrap(),
            lines: vec![ReturnLine {
                sku: Sku::parse("P1").unwrap(),
                qty: Qty::each(1).unwrap(),
                amount: eur(500),
                tax: eur(83),
                restock: true,
            }],
            refunds: vec![refund.clone()],
            reason: "faulty".into(),
        });
        sync(
            &hub,
            &mut s1,
            "s1",
            vec![event(1, EventBody::Sale(sale.clone())), event(2, ret)],
        )
        .await;
        let key = refund.payment_key;
        wait_until("the refund is settled", Duration::from_secs(30), || {
            let admin = admin.clone();
            async move {
                let p = admin.get(&format!("/api/v1/payments/{key}")).await;
                p["status"] == "declined" || p["status"] == "refunded"
            }
        })
        .await;
        let p = admin.get(&format!("/api/v1/payments/{key}")).await;
        assert_eq!(
            p["status"], "declined",
            "no money back for money never taken: {p}"
        );
        let original = admin
            .get(&format!("/api/v1/payments/{}", sale.tenders[0].payment_key))
            .await;
        assert_eq!(original["status"], "declined", "{original}");
        hub.stop().await;
    }
);
