//! Back-office stock operations through the REST API, on both databases:
//! lines of one SKU are checked and booked as their sum.

use serde_json::json;
use storegate_e2e::{Backend, Rest, both_backends, spawn_hub};

async fn level(admin: &Rest, location: &str, sku: &str) -> i64 {
    let page = admin
        .get(&format!("/api/v1/stock?location={location}&sku={sku}"))
        .await;
    page["items"][0]["on_hand"].as_i64().unwrap_or(0)
}

both_backends!(
    transfers_and_counts_take_lines_of_one_sku_as_their_sum,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let admin = Rest::new(&hub.api, &hub.admin_token);
        for s in ["s1", "s2"] {
            admin
                .put(
                    &format!("/api/v1/stores/{s}"),
                    json!({"name": s, "kind": "store", "region": "north"}),
                )
                .await;
        }
        admin
            .put("/api/v1/products/P1", json!({"name": "P1", "tax_rate_bp": 2000}))
            .await;
        admin
            .post(
                "/api/v1/stock/receipts",
                json!({"location": "s1", "lines": [{"sku": "P1", "qty": 6}]}),
            )
            .await;

        // 5 + 5 of P1 with 6 available: one line of 10, refused whole.
        let a = admin
            .call(
                reqwest::Method::POST,
                "/api/v1/stock/transfers",
                Some(&json!({"from": "s1", "to": "s2", "lines": [{"sku": "P1", "qty": 5}, {"sku": "P1", "qty": 5}]})),
                &[],
            )
            .await;
        assert_eq!(a.status, 409, "{}", a.body);
        assert_eq!(a.body["error"]["code"], "out_of_stock", "{}", a.body);
        assert_eq!(
            (level(&admin, "s1", "P1").await, level(&admin, "s2", "P1").await),
            (6, 0)
        );

        // 3 + 3 goes, as one movement each way.
        let booked = admin
            .post(
                "/api/v1/stock/transfers",
                json!({"from": "s1", "to": "s2", "lines": [{"sku": "P1", "qty": 3}, {"sku": "P1", "qty": 3}]}),
            )
            .await;
        assert_eq!(booked["movements"], 2);
        assert_eq!(
            (level(&admin, "s1", "P1").await, level(&admin, "s2", "P1").await),
            (0, 6)
        );

        // Counted on two shelves, 4 and 3: the level becomes 7, corrected once.
        let booked = admin
            .post(
                "/api/v1/stock/counts",
                json!({"location": "s2", "lines": [{"sku": "P1", "counted": 4}, {"sku": "P1", "counted": 3}]}),
            )
            .await;
        assert_eq!(booked["movements"], 1);
        assert_eq!(level(&admin, "s2", "P1").await, 7);

        // Adjustments that cancel out book nothing; receipts add up.
        let booked = admin
            .post(
                "/api/v1/stock/adjustments",
                json!({"location": "s2", "reason": "typo", "lines": [{"sku": "P1", "delta": 2}, {"sku": "P1", "delta": -2}]}),
            )
            .await;
        assert_eq!(booked["movements"], 0);
        assert_eq!(level(&admin, "s2", "P1").await, 7);
        admin
            .post(
                "/api/v1/stock/receipts",
                json!({"location": "s1", "lines": [{"sku": "P1", "qty": 1}, {"sku": "P1", "qty": 2}]}),
            )
            .await;
        assert_eq!(level(&admin, "s1", "P1").await, 3);
        assert_eq!(admin.get("/api/v1/stock/verify").await, json!([]));
        hub.stop().await;
    }
);
