//! Users and API keys (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{Admin, ApiError, ApiResult, AppState, Authed, ErrorBody, Page, PageParams, Path, Query};
use crate::auth::{self, CreateUserError, KeyView, NewApiKey, Role, UserRow};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", get(get_user).patch(update_user))
        .route("/api/v1/api-keys", get(list_keys).post(create_key))
        .route("/api/v1/api-keys/{id}", delete(revoke_key))
}

/// A user, as the API shows it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: String,
    /// Email (login name).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Cannot log in.
    pub disabled: bool,
    /// Created, ms since the epoch.
    pub created_ms: i64,
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            name: u.name,
            role: u.role,
            disabled: u.disabled,
            created_ms: u.created_ms,
        }
    }
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUser {
    /// Email (login name).
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Initial password (10 characters or more).
    pub password: String,
    /// Role.
    pub role: Role,
}

/// Creates a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "admin", security(("bearer" = ["admin"])), request_body = NewUser,
    responses((status = 201, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_user(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    super::Body(req): super::Body<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = auth::create_user(&s.db, &req.email, &req.name, &req.password, req.role)
        .await
        .map_err(|e| match e {
            CreateUserError::Exists => ApiError::conflict(e.to_string()),
            CreateUserError::Invalid(m) => ApiError::invalid(m),
            CreateUserError::Db(e) => ApiError::internal(e),
        })?;
    super::audit(
        &s.db,
        &p,
        "user_created",
        "user",
        &user.id,
        json!({"email": user.email, "role": user.role}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Lists users.
#[utoipa::path(get, path = "/api/v1/users", tag = "admin", security(("bearer" = ["admin"])), params(PageParams),
    responses((status = 200, body = Page<UserView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    _: Authed<Admin>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<UserView>>> {
    let after = page.after()?;
    let rows = auth::list_users(&s.db, after.as_deref(), page.limit() + 1).await?;
    let items: Vec<UserView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(Page::from(items, page.limit(), |u| u.id.clone())))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "admin", security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    _: Authed<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserView>> {
    auth::user_by_id(&s.db, &id)
        .await?
        .map(|u| Json(u.into()))
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))
}

/// Changes to a user; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserPatch {
    /// New display name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// Disable or enable the account (disabling revokes its tokens at once).
    pub disabled: Option<bool>,
    /// A new password.
    pub password: Option<String>,
}

/// Updates a user.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "admin", security(("bearer" = ["admin"])), request_body = UserPatch,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_user(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    super::Body(req): super::Body<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let user = auth::user_by_id(&s.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    if p.subject == user.id && (req.disabled == Some(true) || req.role.is_some_and(|r| r != Role::Admin)) {
        return Err(ApiError::invalid("admins cannot disable or demote themselves"));
    }
    let hash = match &req.password {
        Some(pw) => {
            auth::check_password_rules(pw).map_err(ApiError::invalid)?;
            auth::hash_password_blocking(pw).await
        }
        None => user.password_hash.clone(),
    };
    // A new password, role or disabled state: the user's tokens so far
    // are refused from now on (the role is read on each request anyway).
    let revoke = req.password.is_some()
        || req.role.is_some_and(|r| r != user.role)
        || req.disabled.is_some_and(|d| d != user.disabled);
    auth::update_user(
        &s.db,
        &super::catalog::actor(&p),
        &id,
        req.name.as_deref().unwrap_or(&user.name),
        req.role.unwrap_or(user.role),
        req.disabled.unwrap_or(user.disabled),
        &hash,
        revoke,
        json!({"name": req.name, "role": req.role, "disabled": req.disabled, "password_changed": req.password.is_some()}),
    )
    .await?;
    get_user(Authed(p, std::marker::PhantomData), State(s), Path(id)).await
}

/// A new API key request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewKey {
    /// What it is for ("ERP export", "Prometheus").
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Creates an API key; the key text is shown once.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "admin", security(("bearer" = ["admin"])), request_body = NewKey,
    responses((status = 201, body = NewApiKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_key(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    super::Body(req): super::Body<NewKey>,
) -> ApiResult<(StatusCode, Json<NewApiKey>)> {
    if req.name.trim().is_empty() {
        return Err(ApiError::invalid("name the key"));
    }
    let key = auth::create_api_key(&s.db, &req.name, req.role, &p.subject).await?;
    super::audit(
        &s.db,
        &p,
        "api_key_created",
        "api_key",
        &key.id,
        json!({"name": req.name, "role": req.role}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Lists API keys.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "admin", security(("bearer" = ["admin"])), params(PageParams),
    responses((status = 200, body = Page<KeyView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_keys(
    _: Authed<Admin>,
    State(s): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<KeyView>>> {
    let after = page.after()?;
    let items = auth::api_keys(&s.db, &after.unwrap_or_default(), page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |k| k.id.clone())))
}

/// Revokes an API key (and every token issued to it).
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "admin", security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    Authed(p, ..): Authed<Admin>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !auth::revoke_api_key(&s.db, &super::catalog::actor(&p), &id).await? {
        return Err(ApiError::not_found(format!("active API key {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
