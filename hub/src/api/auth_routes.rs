//! `/oauth/token` (OAuth2 password and client_credentials grants),
//! `/oauth/introspect` (RFC 7662), and the signed-in user's profile, logout
//! and password change.

use std::net::SocketAddr;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, Authed, Client, ErrorBody, Operator};
use crate::auth::{self, Role};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/introspect", post(introspect))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(change_password))
}

/// A token request (form-encoded, as OAuth2 says, or JSON).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `password` or `client_credentials`.
    pub grant_type: String,
    /// Email, for the password grant.
    pub username: Option<String>,
    /// Password, for the password grant.
    pub password: Option<String>,
    /// API key id, for client_credentials.
    pub client_id: Option<String>,
    /// API key secret, for client_credentials.
    pub client_secret: Option<String>,
}

/// A token response.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// The role the token carries.
    pub scope: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        Json(json!({"error": error, "error_description": description, "request_id": super::request_id()})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn parse_token_request(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_urlencoded::from_bytes(body).map_err(|e| format!("invalid form: {e}"))
    }
}

/// Issues an access token.
#[utoipa::path(post, path = "/oauth/token", tag = "auth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, description = "RFC 6749 error (invalid_request, invalid_grant, unsupported_grant_type)"),
        (status = 401, description = "invalid_client"),
        (status = 429, description = "Too many failed attempts; see Retry-After"),
    ))]
pub async fn token(
    State(s): State<AppState>,
    addr: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    super::RawBody(body): super::RawBody,
) -> Response {
    let req = match parse_token_request(&headers, &body) {
        Ok(r) => r,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    let ip = addr
        .map(|Extension(ConnectInfo(a))| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ip_key = format!("ip:{ip}");
    let ip_max = s.auth.max_failed * 4;
    match req.grant_type.as_str() {
        "password" => {
            let (Some(email), Some(password)) = (req.username.as_deref(), req.password.as_deref()) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                );
            };
            let user_key = format!("user:{}", email.trim().to_lowercase());
            if let Some(refused) = address_refused(&s, &ip_key, ip_max).await {
                return refused;
            }
            match s
                .auth
                .begin_attempt(&s.db, &[(user_key.as_str(), s.auth.max_failed)])
                .await
            {
                Ok(Some(wait)) => return throttled(wait),
                Ok(None) => {}
                Err(e) => return ApiError::internal(e).into_response(),
            }
            let user = match auth::user_by_email(&s.db, email).await {
                Ok(u) => u,
                Err(e) => return ApiError::internal(e).into_response(),
            };
            let ok =
                auth::verify_password_blocking(password, user.as_ref().map(|u| u.password_hash.as_str()))
                    .await;
            match user {
                Some(u) if ok && !u.disabled => {
                    let _ = s.auth.attempt_succeeded(&s.db, &user_key).await;
                    let (token, ttl) = s.auth.issue(&u.id, u.role, "user", u.token_epoch);
                    metrics::counter!("hub_logins_total", "result" => "ok").increment(1);
                    grant(token, ttl, u.role)
                }
                _ => {
                    let _ = s.auth.failed(&s.db, &ip_key).await;
                    metrics::counter!("hub_logins_total", "result" => "failed").increment(1);
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "wrong email or password",
                    )
                }
            }
        }
        "client_credentials" => {
            let (Some(id), Some(secret)) = (req.client_id.as_deref(), req.client_secret.as_deref()) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id and client_secret are required",
                );
            };
            let client_key = format!("client:{id}");
            if let Some(refused) = address_refused(&s, &ip_key, ip_max).await {
                return refused;
            }
            match s
                .auth
                .begin_attempt(&s.db, &[(client_key.as_str(), s.auth.max_failed)])
                .await
            {
                Ok(Some(wait)) => return throttled(wait),
                Ok(None) => {}
                Err(e) => return ApiError::internal(e).into_response(),
            }
            match auth::check_api_key(&s.db, id, secret).await {
                Ok(Some(role)) => {
                    let _ = s.auth.attempt_succeeded(&s.db, &client_key).await;
                    let (token, ttl) = s.auth.issue(id, role, "api_key", 0);
                    grant(token, ttl, role)
                }
                Ok(None) => {
                    let _ = s.auth.failed(&s.db, &ip_key).await;
                    oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "unknown or revoked client",
                    )
                }
                Err(e) => ApiError::internal(e).into_response(),
            }
        }
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("{other:?} is not supported (password, client_credentials)"),
        ),
    }
}

/// The answer for a client address past its failures, if it is.
async fn address_refused(s: &AppState, ip_key: &str, max: i64) -> Option<Response> {
    match s.auth.address_throttled(&s.db, ip_key, max).await {
        Ok(Some(wait)) => Some(throttled(wait)),
        Ok(None) => None,
        Err(e) => Some(ApiError::internal(e).into_response()),
    }
}

fn throttled(wait: i64) -> Response {
    let mut resp = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        &format!("too many failed attempts; retry in {wait} s"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn grant(token: String, ttl: i64, role: Role) -> Response {
    let mut resp = Json(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ttl,
        scope: role.as_str().into(),
    })
    .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// An introspection request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectRequest {
    /// The token to check.
    pub token: String,
}

/// Checks a token (RFC 7662); for resource servers and integrations.
#[utoipa::path(post, path = "/oauth/introspect", tag = "auth", security(("bearer" = ["operator"])),
    request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "{active, sub, role, kind, exp}"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn introspect(
    _: Authed<Operator>,
    State(s): State<AppState>,
    headers: HeaderMap,
    super::RawBody(body): super::RawBody,
) -> ApiResult<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let req: IntrospectRequest = if json {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?
    } else {
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid form: {e}")))?
    };
    Ok(match s.auth.authenticate(&s.db, &req.token).await {
        Ok(p) => Json(json!({
            "active": true, "sub": p.subject, "role": p.role, "kind": p.kind,
            "exp": p.expires_ms.map(|ms| ms / 1000),
        }))
        .into_response(),
        Err(auth::AuthError::Db(e)) => return Err(ApiError::internal(e)),
        Err(_) => Json(json!({"active": false})).into_response(),
    })
}

/// The signed-in principal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// Who.
    pub principal: crate::auth::Principal,
    /// Email, for users.
    pub email: Option<String>,
    /// Name, for users.
    pub name: Option<String>,
}

/// Who am I.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = ["client"])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(Authed(p, ..): Authed<Client>, State(s): State<AppState>) -> ApiResult<Json<Me>> {
    let user = if p.kind == "user" {
        auth::user_by_id(&s.db, &p.subject).await?
    } else {
        None
    };
    Ok(Json(Me {
        email: user.as_ref().map(|u| u.email.clone()),
        name: user.map(|u| u.name),
        principal: p,
    }))
}

/// Revokes the token used for this request.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = ["client"])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn logout(Authed(p, ..): Authed<Client>, State(s): State<AppState>) -> ApiResult<StatusCode> {
    let (Some(jti), Some(exp)) = (p.jti.as_deref(), p.expires_ms) else {
        return Err(ApiError::bad_request(
            "API keys are revoked with DELETE /api/v1/api-keys/{id}, not logged out",
        ));
    };
    s.auth.revoke(&s.db, jti, exp).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The current password.
    pub current: String,
    /// The new password (10 characters or more).
    pub new: String,
}

/// Changes the signed-in user's password.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", security(("bearer" = ["client"])),
    request_body = PasswordChange,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn change_password(
    Authed(p, ..): Authed<Client>,
    State(s): State<AppState>,
    super::Body(req): super::Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    if p.kind != "user" {
        return Err(ApiError::bad_request("only users have passwords"));
    }
    let user = auth::user_by_id(&s.db, &p.subject)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    if !auth::verify_password_blocking(&req.current, Some(&user.password_hash)).await {
        return Err(ApiError::invalid("the current password is wrong"));
    }
    auth::check_password_rules(&req.new).map_err(ApiError::invalid)?;
    auth::set_password(&s.db, &super::catalog::actor(&p), &user.id, &req.new).await?;
    Ok(StatusCode::NO_CONTENT)
}
