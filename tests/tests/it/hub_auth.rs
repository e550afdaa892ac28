//! Authentication and authorisation of the REST API, route by route, from
//! the OpenAPI document the hub serves.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use storegate_e2e::{ADMIN_EMAIL, Backend, TestHub, both_backends, http, spawn_hub, token};
use storegate_hub::auth::{Auth, Role};

async fn call(hub: &TestHub, method: &Method, path: &str, bearer: Option<&str>) -> StatusCode {
    let mut req = http().request(method.clone(), format!("{}{path}", hub.api));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        req = req.header("content-type", "application/json").body("{}");
    }
    req.send().await.unwrap().status()
}

async fn create_user(hub: &TestHub, email: &str, role: &str) -> Value {
    let resp = http()
        .post(format!("{}/api/v1/users", hub.api))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"email": email, "name": email, "password": "a long enough password", "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

fn concrete(path: &str) -> String {
    // Path parameters: ids that exist nowhere (numeric where a number is expected).
    path.replace("{id}", "1")
}

both_backends!(
    every_route_refuses_missing_expired_revoked_and_underprivileged_credentials,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        create_user(&hub, "op@example.com", "operator").await;
        create_user(&hub, "cl@example.com", "client").await;
        let operator = token(&hub.api, "op@example.com", "a long enough password")
            .await
            .unwrap();
        let client = token(&hub.api, "cl@example.com", "a long enough password")
            .await
            .unwrap();
        let revoked = token(&hub.api, ADMIN_EMAIL, storegate_e2e::ADMIN_PASSWORD)
            .await
            .unwrap();
        assert_eq!(
            call(&hub, &Method::POST, "/api/v1/auth/logout", Some(&revoked)).await,
            204
        );
        // An expired admin token, signed with the hub's own key.
        let auth = Auth::init(&hub.hub.db, &storegate_hub::settings::AuthSettings::default())
            .await
            .unwrap();
        let admin_id: String = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(ADMIN_EMAIL)
            .fetch_one(&hub.hub.db.pool)
            .await
            .unwrap();
        let (expired, _) = auth.issue_with_ttl(&admin_id, Role::Admin, "user", 0, -10);

        let doc: Value = http()
            .get(format!("{}/api/v1/openapi.json", hub.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut public = Vec::new();
        let mut checked = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let method: Method = method.to_uppercase().parse().unwrap();
                let url = concrete(path);
                let Some(role) = op["security"][0]["bearer"][0].as_str() else {
                    public.push(format!("{method} {path}"));
                    continue;
                };
                let what = format!("{method} {path}");
                assert_eq!(
                    call(&hub, &method, &url, None).await,
                    401,
                    "{what} without a token"
                );
                assert_eq!(
                    call(&hub, &method, &url, Some("not-a-token")).await,
                    401,
                    "{what} with garbage"
                );
                assert_eq!(
                    call(&hub, &method, &url, Some(&expired)).await,
                    401,
                    "{what} with an expired token"
                );
                assert_eq!(
                    call(&hub, &method, &url, Some(&revoked)).await,
                    401,
                    "{what} with a revoked token"
                );
                let (below, enough_login) = match role {
                    "admin" => (Some(&operator), ADMIN_EMAIL),
                    "operator" => (Some(&client), "op@example.com"),
                    "client" => (None, "cl@example.com"),
                    other => panic!("{what}: unknown role scope {other}"),
                };
                if let Some(below) = below {
                    assert_eq!(
                        call(&hub, &method, &url, Some(below)).await,
                        403,
                        "{what} with a role below {role}"
                    );
                }
                // A fresh token: some routes (logout) end the token they are called with.
                let password = if enough_login == ADMIN_EMAIL {
                    storegate_e2e::ADMIN_PASSWORD
                } else {
                    "a long enough password"
                };
                let enough = token(&hub.api, enough_login, password).await.unwrap();
                let ok = call(&hub, &method, &url, Some(&enough)).await;
                assert!(
                    ok != 401 && ok != 403,
                    "{what} refused the documented role {role}: {ok}"
                );
                checked += 1;
            }
        }
        public.sort();
        assert_eq!(
            public,
            ["GET /healthz", "GET /readyz", "POST /oauth/token"],
            "the only routes without credentials"
        );
        assert!(checked >= 20, "checked {checked} routes");
        hub.stop().await;
    }
);

both_backends!(
    the_token_endpoint_refuses_wrong_passwords_and_throttles_guessing,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let err = token(&hub.api, ADMIN_EMAIL, "wrong password").await.unwrap_err();
        assert!(err.contains("invalid_grant"), "{err}");
        let err = token(&hub.api, "nobody@example.com", "wrong password")
            .await
            .unwrap_err();
        assert!(
            err.contains("invalid_grant"),
            "unknown accounts look the same: {err}"
        );
        for _ in 0..4 {
            let _ = token(&hub.api, ADMIN_EMAIL, "wrong password").await;
        }
        // Five failures: even the right password now waits.
        let resp = http()
            .post(format!("{}/oauth/token", hub.api))
            .form(&[
                ("grant_type", "password"),
                ("username", ADMIN_EMAIL),
                ("password", storegate_e2e::ADMIN_PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        let wait: i64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(wait > 0 && wait <= 300);
        let resp = http()
            .post(format!("{}/oauth/token", hub.api))
            .form(&[("grant_type", "magic")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "unsupported_grant_type");
        hub.stop().await;
    }
);

both_backends!(
    concurrent_guesses_get_no_more_tries_than_the_limit,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        // 200 wrong passwords at once: the attempt is counted before the
        // password is checked, so at most `max_failed_logins` (5) are.
        let guesses = (0..200).map(|i| {
            let api = hub.api.clone();
            tokio::spawn(async move {
                http()
                    .post(format!("{api}/oauth/token"))
                    .form(&[
                        ("grant_type", "password"),
                        ("username", ADMIN_EMAIL),
                        ("password", &format!("guess number {i}")),
                    ])
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        });
        let mut checked = 0;
        let mut throttled = 0;
        for g in guesses.collect::<Vec<_>>() {
            match g.await.unwrap().as_u16() {
                400 => checked += 1,
                429 => throttled += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert!((1..=5).contains(&checked), "{checked} guesses were checked");
        assert_eq!(checked + throttled, 200);
        let err = token(&hub.api, ADMIN_EMAIL, storegate_e2e::ADMIN_PASSWORD)
            .await
            .unwrap_err();
        assert!(
            err.contains("too_many_requests"),
            "even the right password waits: {err}"
        );
        hub.stop().await;
    }
);

both_backends!(
    a_demoted_admin_and_a_changed_password_lose_their_old_tokens,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let second = create_user(&hub, "second-admin@example.com", "admin").await;
        let id = second["id"].as_str().unwrap().to_owned();
        let old = token(&hub.api, "second-admin@example.com", "a long enough password")
            .await
            .unwrap();
        assert_eq!(call(&hub, &Method::GET, "/api/v1/users", Some(&old)).await, 200);
        let resp = http()
            .patch(format!("{}/api/v1/users/{id}", hub.api))
            .bearer_auth(&hub.admin_token)
            .json(&json!({"role": "operator"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/users", Some(&old)).await,
            401,
            "the admin token of a demoted user is refused at once"
        );
        // Logged in again, the user is an operator.
        let fresh = token(&hub.api, "second-admin@example.com", "a long enough password")
            .await
            .unwrap();
        assert_eq!(call(&hub, &Method::GET, "/api/v1/users", Some(&fresh)).await, 403);
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/auth/me", Some(&fresh)).await,
            200
        );

        // A password change refuses every token issued before it.
        let resp = http()
            .post(format!("{}/api/v1/auth/password", hub.api))
            .bearer_auth(&fresh)
            .json(&json!({"current": "a long enough password", "new": "another long password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/auth/me", Some(&fresh)).await,
            401
        );
        let after = token(&hub.api, "second-admin@example.com", "another long password")
            .await
            .unwrap();
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/auth/me", Some(&after)).await,
            200
        );
        hub.stop().await;
    }
);

both_backends!(
    token_keys_rotate_and_a_retired_key_is_refused,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let before = hub.admin_token.clone();
        let first = storegate_hub::auth::key_ids(&hub.hub.db).await.unwrap();
        assert_eq!(first.len(), 1);
        let kid = storegate_hub::auth::rotate_key(&hub.hub.db).await.unwrap();
        // A hub that has not read the new key yet learns it from a token
        // signed with it; here a fresh Auth signs with the newest key.
        let auth = Auth::init(&hub.hub.db, &storegate_hub::settings::AuthSettings::default())
            .await
            .unwrap();
        let admin = storegate_hub::auth::user_by_email(&hub.hub.db, ADMIN_EMAIL)
            .await
            .unwrap()
            .unwrap();
        let (newer, _) = auth.issue(&admin.id, Role::Admin, "user", admin.token_epoch);
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/auth/me", Some(&newer)).await,
            200
        );
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/auth/me", Some(&before)).await,
            200,
            "old keys still verify"
        );
        assert!(
            storegate_hub::auth::retire_key(&hub.hub.db, &kid)
                .await
                .unwrap()
                .is_err(),
            "the signing key cannot be retired"
        );
        storegate_hub::auth::retire_key(&hub.hub.db, &first[0])
            .await
            .unwrap()
            .unwrap();
        // The running hub rereads its keys within 30 s; a fresh one at once.
        let auth = Auth::init(&hub.hub.db, &storegate_hub::settings::AuthSettings::default())
            .await
            .unwrap();
        assert!(matches!(
            auth.authenticate(&hub.hub.db, &before).await,
            Err(storegate_hub::auth::AuthError::Invalid)
        ));
        assert!(auth.authenticate(&hub.hub.db, &newer).await.is_ok());
        hub.stop().await;
    }
);

both_backends!(
    api_keys_work_directly_and_through_client_credentials_until_revoked,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let resp = http()
            .post(format!("{}/api/v1/api-keys", hub.api))
            .bearer_auth(&hub.admin_token)
            .json(&json!({"name": "ERP export", "role": "operator"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let key: Value = resp.json().await.unwrap();
        let full = key["key"].as_str().unwrap().to_owned();
        let id = key["id"].as_str().unwrap().to_owned();
        let secret = full.rsplit('_').next().unwrap().to_owned();

        let by_header = http()
            .get(format!("{}/api/v1/stores", hub.api))
            .header("x-api-key", &full)
            .send()
            .await
            .unwrap();
        assert_eq!(by_header.status(), 200);
        let resp = http()
            .post(format!("{}/oauth/token", hub.api))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let t: Value = resp.json().await.unwrap();
        let key_token = t["access_token"].as_str().unwrap().to_owned();
        assert_eq!(t["scope"], "operator");
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/stores", Some(&key_token)).await,
            200
        );
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/users", Some(&key_token)).await,
            403,
            "an operator key is not admin"
        );

        // Introspection sees it; then revocation ends both the key and its token.
        let resp = http()
            .post(format!("{}/oauth/introspect", hub.api))
            .bearer_auth(&hub.admin_token)
            .form(&[("token", key_token.as_str())])
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["active"], true);
        assert_eq!(v["kind"], "api_key");
        assert_eq!(
            call(
                &hub,
                &Method::DELETE,
                &format!("/api/v1/api-keys/{id}"),
                Some(&hub.admin_token)
            )
            .await,
            204
        );
        assert_eq!(call(&hub, &Method::GET, "/api/v1/stores", Some(&full)).await, 401);
        assert_eq!(
            call(&hub, &Method::GET, "/api/v1/stores", Some(&key_token)).await,
            401
        );
        let resp = http()
            .post(format!("{}/oauth/token", hub.api))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        hub.stop().await;
    }
);

both_backends!(
    profile_logout_and_disabling_a_user,
    |backend: Backend| async move {
        let Some(hub) = spawn_hub(backend).await else {
            return;
        };
        let user = create_user(&hub, "cashier@example.com", "client").await;
        let t = token(&hub.api, "cashier@example.com", "a long enough password")
            .await
            .unwrap();
        let me: Value = http()
            .get(format!("{}/api/v1/auth/me", hub.api))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["email"], "cashier@example.com");
        assert_eq!(me["principal"]["role"], "client");
        // Password change keeps working with the new password only.
        let resp = http()
            .post(format!("{}/api/v1/auth/password", hub.api))
            .bearer_auth(&t)
            .json(&json!({"current": "a long enough password", "new": "an even longer password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(
            token(&hub.api, "cashier@example.com", "a long enough password")
                .await
                .is_err()
        );
        let t2 = token(&hub.api, "cashier@example.com", "an even longer password")
            .await
            .unwrap();
        // Disabling the user ends their live tokens at once.
        let resp = http()
            .patch(format!(
                "{}/api/v1/users/{}",
                hub.api,
                user["id"].as_str().unwrap()
            ))
            .bearer_auth(&hub.admin_token)
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(call(&hub, &Method::GET, "/api/v1/auth/me", Some(&t2)).await, 401);
        assert!(
            token(&hub.api, "cashier@example.com", "an even longer password")
                .await
                .is_err()
        );
        // Errors have one shape, with the request id.
        let resp = http()
            .get(format!("{}/api/v1/stores/nope", hub.api))
            .bearer_auth(&hub.admin_token)
            .header("x-request-id", "req-123")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-request-id"], "req-123");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["request_id"], "req-123");
        // The audit log recorded the admin's changes.
        let audit: Value = http()
            .get(format!("{}/api/v1/audit?entity=user", hub.api))
            .bearer_auth(&hub.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        assert!(
            actions.contains(&"user_created") && actions.contains(&"user_updated"),
            "{actions:?}"
        );
        hub.stop().await;
    }
);
