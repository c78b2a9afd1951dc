//! The HTTP API (axum, JSON): alerts, read-only SQL, actions and approvals, behind API keys
//! with roles ([`crate::keys`]). Every endpoint but `/healthz` and `/readyz` needs a key
//! (`Authorization: Bearer cordon_…`): none or a wrong one is 401, a role too low is 403, a
//! malformed body 400 naming the field. Filters are bound as SQL parameters, never pasted into
//! SQL text. Every mutating call is appended to an audit log with the key's id and name.
//! The OpenAPI description is at `/openapi.json`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::scalar::ScalarValue;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::keys::{Keys, Role, StoredKey};
use crate::sql::{self, Limits, Sql, SqlError};

/// What the handlers share.
pub struct ApiState {
    /// The alert store.
    pub store: PathBuf,
    /// The API keys.
    pub keys: Keys,
    /// The response outbox, when responses are configured.
    pub outbox: Option<Arc<cordon_respond::Outbox>>,
    /// Limits of analyst SQL.
    pub limits: Limits,
    /// The audit log of mutating calls (JSON lines), if any.
    pub audit: Option<Mutex<std::fs::File>>,
}

/// An API error: a status and a message, as `{"error": …}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> ApiError {
        let status = match e {
            SqlError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            SqlError::Memory { .. } | SqlError::TooManyRows(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SqlError::NotReadOnly(_) | SqlError::Query(_) => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// Checks the caller's key and role.
fn authorize(state: &ApiState, headers: &HeaderMap, need: Role) -> Result<StoredKey, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "an API key is needed: Authorization: Bearer <key>".into(),
            )
        })?;
    let key = state
        .keys
        .check(presented.trim())
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown API key".into()))?;
    if key.role < need {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {need:?} role or above; key {} is {:?}",
                key.id, key.role
            )
            .to_lowercase(),
        ));
    }
    Ok(key.clone())
}

fn audit(state: &ApiState, who: &StoredKey, what: &str, target: &str, detail: &Value) {
    let Some(f) = &state.audit else { return };
    let line = json!({
        "time": jiff::Timestamp::now().to_string(),
        "key_id": who.id, "key_name": who.name, "role": who.role,
        "action": what, "target": target, "detail": detail,
    });
    if let Ok(mut f) = f.lock() {
        use std::io::Write as _;
        let _ = writeln!(f, "{line}");
    }
}

/// The router.
pub fn app(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{id}", get(get_alert))
        .route("/api/v1/sql", post(run_sql))
        .route("/api/v1/actions", get(list_actions))
        .route("/api/v1/actions/{id}/{decision}", post(decide))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if s.store.join("alerts").is_dir() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "the alert store is not there"})),
        )
            .into_response()
    }
}

async fn openapi(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let doc: Value = serde_json::from_str(include_str!("openapi.json"))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(doc).into_response())
}

/// Filters of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// From this time (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// Severity name.
    pub severity: Option<String>,
    /// Rule id.
    pub rule: Option<String>,
    /// Agent id.
    pub agent: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

fn ts_param(name: &str, v: &str) -> Result<ScalarValue, ApiError> {
    let t: jiff::Timestamp = v.parse().map_err(|e| {
        bad(format!(
            "{name}: expected an RFC 3339 time, got {v:?} ({e})"
        ))
    })?;
    Ok(ScalarValue::TimestampMillisecond(
        Some(t.as_millisecond()),
        Some("UTC".into()),
    ))
}

async fn sql_session(s: &ApiState) -> Result<Sql, ApiError> {
    Ok(Sql::open(&s.store, s.limits).await?)
}

fn rows(batches: &[arrow::record_batch::RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let bytes = sql::to_json(batches)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn list_alerts(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    q: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    let mut bind = |clause: &str, v: ScalarValue| {
        params.push(v);
        clauses.push(clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(v) = &q.since {
        bind("time >= ?", ts_param("since", v)?);
    }
    if let Some(v) = &q.until {
        bind("time < ?", ts_param("until", v)?);
    }
    if let Some(v) = &q.severity {
        bind(
            "lower(severity) = lower(?)",
            ScalarValue::Utf8(Some(v.clone())),
        );
    }
    if let Some(v) = &q.rule {
        bind("rule_id = ?", ScalarValue::Utf8(Some(v.clone())));
    }
    if let Some(v) = &q.agent {
        bind("agent_id = ?", ScalarValue::Utf8(Some(v.clone())));
    }
    if let Some(c) = &q.cursor {
        let (ms, id) = c
            .split_once('~')
            .and_then(|(t, id)| t.parse::<i64>().ok().map(|t| (t, id.to_owned())))
            .ok_or_else(|| bad("cursor: not a cursor from a previous page"))?;
        let t = ScalarValue::TimestampMillisecond(Some(ms), Some("UTC".into()));
        params.push(t.clone());
        params.push(t);
        params.push(ScalarValue::Utf8(Some(id)));
        let n = params.len();
        clauses.push(format!(
            "(time < ${} OR (time = ${} AND alert_id < ${}))",
            n - 2,
            n - 1,
            n
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(bad("limit: expected 1 to 1000"));
    }
    let sql = format!(
        "SELECT alert_id, time, rule_id, title, severity, agent_id, session_id, target, message, event_count \
         FROM alerts {} ORDER BY time DESC, alert_id DESC LIMIT {}",
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        },
        limit + 1
    );
    let batches = sql_session(&s).await?.query_with(&sql, params).await?;
    let mut items = rows(&batches)?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().and_then(|last| {
            let t: jiff::Timestamp = last["time"].as_str()?.parse().ok()?;
            Some(format!(
                "{}~{}",
                t.as_millisecond(),
                last["alert_id"].as_str()?
            ))
        })
    } else {
        None
    };
    Ok(Json(json!({"alerts": items, "next": next})).into_response())
}

async fn get_alert(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let batches = sql_session(&s)
        .await?
        .query_with(
            "SELECT ocsf FROM alerts WHERE alert_id = $1 LIMIT 1",
            vec![ScalarValue::Utf8(Some(id.clone()))],
        )
        .await?;
    let items = rows(&batches)?;
    let Some(row) = items.first() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no alert {id}")));
    };
    let ocsf: Value = serde_json::from_str(row["ocsf"].as_str().unwrap_or("{}"))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(ocsf).into_response())
}

/// Body of `POST /api/v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    /// The query.
    pub query: String,
}

async fn run_sql(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<SqlBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Analyst)?;
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    let batches = sql_session(&s).await?.query(&body.query).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.contains("text/csv") {
        return Ok(([(header::CONTENT_TYPE, "text/csv")], sql::to_csv(&batches)?).into_response());
    }
    if accept.contains("application/vnd.apache.arrow.stream") {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        let mut out = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            for b in &batches {
                w.write(b)
                    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            }
            w.finish()
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        }
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            out,
        )
            .into_response());
    }
    Ok(Json(json!({"rows": rows(&batches)?})).into_response())
}

fn outbox(s: &ApiState) -> Result<&cordon_respond::Outbox, ApiError> {
    s.outbox.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "responses are not configured (no [response] outbox)".into(),
        )
    })
}

/// Filters of `GET /api/v1/actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionQuery {
    /// Only actions in this state.
    pub state: Option<String>,
}

async fn list_actions(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    q: Result<Query<ActionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let all = outbox(&s)?
        .all()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let items: Vec<_> = all
        .into_iter()
        .filter(|r| q.state.as_deref().is_none_or(|st| st == r.state.name()))
        .map(|r| r.redacted())
        .collect();
    Ok(Json(json!({"actions": items})).into_response())
}

/// Body of an approval decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why.
    pub reason: String,
}

async fn decide(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath((id, decision)): UrlPath<(String, String)>,
    body: Result<Json<Decision>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize(&s, &headers, Role::Responder)?;
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no such decision {other:?}; expected approve or deny"),
            ))
        }
    };
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    let r = outbox(&s)?
        .decide(
            &id,
            approve,
            &format!("{} ({})", who.name, who.id),
            &body.reason,
        )
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
    audit(&s, &who, &decision, &id, &json!({"reason": body.reason}));
    Ok(Json(json!({"action": r.redacted()})).into_response())
}
