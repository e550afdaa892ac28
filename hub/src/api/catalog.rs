//! Catalog routes: products, barcodes, prices, suppliers, categories,
//! promotions, CSV import and export.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, ApiResult, AppState, Authed, Body, Client, ErrorBody, Operator, Page, PageParams, Path, Query,
};
use crate::catalog::{
    self, CatalogError, Imported, NamedKind, NamedView, PriceInput, PriceView, ProductInput, ProductView,
    PromotionView, RowError,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/products", get(list_products))
        .route("/api/v1/products/export.csv", get(export_products))
        .route("/api/v1/products/import", post(import_products))
        .route(
            "/api/v1/products/{sku}",
            get(get_product).put(put_product).delete(delete_product),
        )
        .route("/api/v1/prices", get(list_prices).post(add_price))
        .route("/api/v1/prices/export.csv", get(export_prices))
        .route("/api/v1/prices/import", post(import_prices))
        .route("/api/v1/suppliers", get(list_suppliers))
        .route("/api/v1/suppliers/{id}", put(put_supplier))
        .route("/api/v1/categories", get(list_categories))
        .route("/api/v1/categories/{id}", put(put_category))
        .route("/api/v1/promotions", get(list_promotions))
        .route(
            "/api/v1/promotions/{id}",
            put(put_promotion).delete(delete_promotion),
        )
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(m) => ApiError::invalid(m),
            CatalogError::Conflict(m) => ApiError::conflict(m),
            CatalogError::NotFound(m) => ApiError::not_found(m),
            CatalogError::Db(e) => ApiError::internal(e),
        }
    }
}

/// The actor string for audit rows.
pub fn actor(p: &crate::auth::Principal) -> String {
    format!("{}:{}", p.kind, p.subject)
}

/// `?q=&category=&barcode=` product search.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ProductQuery {
    /// Part of the name or SKU (case-insensitive).
    pub q: Option<String>,
    /// Category id.
    pub category: Option<String>,
    /// A barcode (EAN-8/13, UPC-A, GTIN-14).
    pub barcode: Option<String>,
    /// Include inactive products (back office).
    pub include_inactive: Option<bool>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Searches products by name, SKU, barcode or category.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", security(("bearer" = ["client"])), params(ProductQuery),
    responses((status = 200, body = Page<ProductView>), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_products(
    _: Authed<Client>,
    State(s): State<AppState>,
    Query(q): Query<ProductQuery>,
) -> ApiResult<Json<Page<ProductView>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor.clone(),
    };
    let after = page.after()?;
    let search = catalog::Search {
        q: q.q.filter(|s| !s.is_empty()),
        category: q.category.filter(|s| !s.is_empty()),
        barcode: q.barcode.filter(|s| !s.is_empty()),
        active_only: !q.include_inactive.unwrap_or(false),
    };
    let items = catalog::search(&s.db, &search, after.as_deref(), page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |p| p.sku.clone())))
}

/// One product.
#[utoipa::path(get, path = "/api/v1/products/{sku}", tag = "catalog", security(("bearer" = ["client"])),
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = ProductView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_product(
    _: Authed<Client>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<Json<ProductView>> {
    catalog::get_product(&s.db, &sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("product {sku}")))
}

/// Creates or replaces a product; stores get it as a delta.
#[utoipa::path(put, path = "/api/v1/products/{sku}", tag = "catalog", security(("bearer" = ["operator"])), request_body = ProductInput,
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 200, body = ProductView), (status = 201, body = ProductView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_product(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
    Body(input): Body<ProductInput>,
) -> ApiResult<Response> {
    let (created, view) = s.catalog.put_product(&actor(&p), &sku, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// Stops selling a product everywhere (kept, inactive).
#[utoipa::path(delete, path = "/api/v1/products/{sku}", tag = "catalog", security(("bearer" = ["operator"])),
    params(("sku" = String, Path, description = "SKU")),
    responses((status = 204, description = "Deactivated"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_product(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(sku): Path<String>,
) -> ApiResult<StatusCode> {
    s.catalog.deactivate(&actor(&p), &sku).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn csv_response(body: String, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Every product as CSV (columns: sku, name, category, supplier, measure,
/// tax_rate_bp, barcodes (`;`-separated), active, attributes (JSON)).
#[utoipa::path(get, path = "/api/v1/products/export.csv", tag = "catalog", security(("bearer" = ["operator"])),
    responses((status = 200, description = "CSV", content_type = "text/csv"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn export_products(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Response> {
    Ok(csv_response(s.catalog.products_csv().await?, "products.csv"))
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    /// Rows read.
    pub rows: usize,
    /// New products (imports of prices: rows added).
    pub created: usize,
    /// Replaced products.
    pub updated: usize,
}

impl From<Imported> for ImportReport {
    fn from(i: Imported) -> Self {
        ImportReport {
            rows: i.rows,
            created: i.created,
            updated: i.rows - i.created,
        }
    }
}

/// A refused import: every row's error; nothing was written.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportErrors {
    /// The error.
    pub error: super::ErrorDetail,
    /// Row errors.
    pub rows: Vec<RowError>,
}

fn import_refused(rows: Vec<RowError>) -> Response {
    let body = ImportErrors {
        error: super::ErrorDetail {
            code: "invalid_csv".into(),
            message: format!("{} row(s) refused; nothing was imported", rows.len()),
            request_id: super::request_id(),
        },
        rows,
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// Imports products from CSV (the export's columns; `sku`, `name` and
/// `tax_rate_bp` required). All or nothing: any bad row refuses the file
/// with every row's error.
#[utoipa::path(post, path = "/api/v1/products/import", tag = "catalog", security(("bearer" = ["operator"])),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ImportErrors)))]
pub async fn import_products(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    super::TextBody(body): super::TextBody,
) -> ApiResult<Response> {
    Ok(match s.catalog.import_products(&actor(&p), &body).await? {
        Ok(done) => Json(ImportReport::from(done)).into_response(),
        Err(rows) => import_refused(rows),
    })
}

/// `?sku=` filter for prices.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PriceQuery {
    /// Only this product.
    pub sku: Option<String>,
    /// Items per page (1 to 500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Price rows (append-only; the most specific scope, then the latest
/// start, is in force).
#[utoipa::path(get, path = "/api/v1/prices", tag = "catalog", security(("bearer" = ["operator"])), params(PriceQuery),
    responses((status = 200, body = Page<PriceView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_prices(
    _: Authed<Operator>,
    State(s): State<AppState>,
    Query(q): Query<PriceQuery>,
) -> ApiResult<Json<Page<PriceView>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let after = match page.after()? {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid cursor"))?,
        None => 0,
    };
    let items = catalog::list_prices(&s.db, q.sku.as_deref(), after, page.limit() + 1).await?;
    Ok(Json(Page::from(items, page.limit(), |p| p.id.to_string())))
}

/// Adds a price for the chain, a region or a location, from a moment
/// (default now). The affected stores get their new schedule.
#[utoipa::path(post, path = "/api/v1/prices", tag = "catalog", security(("bearer" = ["operator"])), request_body = PriceInput,
    responses((status = 201, description = "Added"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_price(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Body(input): Body<PriceInput>,
) -> ApiResult<StatusCode> {
    s.catalog.add_prices(&actor(&p), &[input]).await?;
    Ok(StatusCode::CREATED)
}

/// Every price row as CSV (columns: sku, scope, scope_id, price_minor,
/// currency, effective_from_ms, effective_to_ms).
#[utoipa::path(get, path = "/api/v1/prices/export.csv", tag = "catalog", security(("bearer" = ["operator"])),
    responses((status = 200, description = "CSV", content_type = "text/csv"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn export_prices(_: Authed<Operator>, State(s): State<AppState>) -> ApiResult<Response> {
    Ok(csv_response(s.catalog.prices_csv().await?, "prices.csv"))
}

/// Imports price rows from CSV, all or nothing.
#[utoipa::path(post, path = "/api/v1/prices/import", tag = "catalog", security(("bearer" = ["operator"])),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ImportErrors)))]
pub async fn import_prices(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    super::TextBody(body): super::TextBody,
) -> ApiResult<Response> {
    Ok(match s.catalog.import_prices(&actor(&p), &body).await? {
        Ok(done) => Json(ImportReport::from(done)).into_response(),
        Err(rows) => import_refused(rows),
    })
}

/// A supplier or category as the API takes it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NamedInput {
    /// Display name.
    pub name: String,
    /// Parent category (categories only).
    pub parent: Option<String>,
}

/// Every supplier.
#[utoipa::path(get, path = "/api/v1/suppliers", tag = "catalog", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<NamedView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_suppliers(
    _: Authed<Operator>,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<NamedView>>> {
    Ok(Json(catalog::list_named(&s.db, NamedKind::Supplier).await?))
}

/// Creates or renames a supplier.
#[utoipa::path(put, path = "/api/v1/suppliers/{id}", tag = "catalog", security(("bearer" = ["operator"])), request_body = NamedInput,
    params(("id" = String, Path, description = "Supplier id")),
    responses((status = 200, body = NamedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_supplier(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(input): Body<NamedInput>,
) -> ApiResult<Json<NamedView>> {
    let v = NamedView {
        id,
        name: input.name,
        parent: None,
    };
    s.catalog.save_named(&actor(&p), NamedKind::Supplier, &v).await?;
    Ok(Json(v))
}

/// Every category.
#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog", security(("bearer" = ["client"])),
    responses((status = 200, body = Vec<NamedView>), (status = 401, body = ErrorBody)))]
pub async fn list_categories(
    _: Authed<Client>,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<NamedView>>> {
    Ok(Json(catalog::list_named(&s.db, NamedKind::Category).await?))
}

/// Creates or renames a category.
#[utoipa::path(put, path = "/api/v1/categories/{id}", tag = "catalog", security(("bearer" = ["operator"])), request_body = NamedInput,
    params(("id" = String, Path, description = "Category id")),
    responses((status = 200, body = NamedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_category(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(input): Body<NamedInput>,
) -> ApiResult<Json<NamedView>> {
    let v = NamedView {
        id,
        name: input.name,
        parent: input.parent,
    };
    s.catalog.save_named(&actor(&p), NamedKind::Category, &v).await?;
    Ok(Json(v))
}

/// Every promotion (ended ones with `active: false`).
#[utoipa::path(get, path = "/api/v1/promotions", tag = "catalog", security(("bearer" = ["operator"])),
    responses((status = 200, body = Vec<PromotionView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_promotions(
    _: Authed<Operator>,
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<PromotionView>>> {
    Ok(Json(catalog::list_promotions(&s.db).await?))
}

/// Creates or replaces a promotion (percent off, amount off, multi-buy);
/// every store gets it.
#[utoipa::path(put, path = "/api/v1/promotions/{id}", tag = "catalog", security(("bearer" = ["operator"])), request_body = PromotionView,
    params(("id" = String, Path, description = "Promotion id")),
    responses((status = 200, body = PromotionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_promotion(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(mut input): Body<PromotionView>,
) -> ApiResult<Json<PromotionView>> {
    input.id = id;
    input.active = true;
    s.catalog.save_promotion(&actor(&p), &input).await?;
    Ok(Json(input))
}

/// Ends a promotion everywhere.
#[utoipa::path(delete, path = "/api/v1/promotions/{id}", tag = "catalog", security(("bearer" = ["operator"])),
    params(("id" = String, Path, description = "Promotion id")),
    responses((status = 204, description = "Ended"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_promotion(
    Authed(p, ..): Authed<Operator>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.catalog.remove_promotion(&actor(&p), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
