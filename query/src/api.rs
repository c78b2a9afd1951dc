//! The HTTP API (axum, JSON): alerts, read-only SQL, actions and approvals, behind API keys
//! with roles ([`crate::keys`]). Every endpoint but `/healthz` and `/readyz` needs a key
//! (`Authorization: Bearer cordon_…`): none or a wrong one is 401, a role too low is 403, a
//! malformed body 400 naming the field. Filters are bound as SQL parameters, never pasted into
//! SQL text. Every mutating call is appended to an audit log with the key's id and name.
//! The OpenAPI description is at `/openapi.json`; the analyst console (static page, script and
//! style embedded in the binary) is at `/` and calls this same API with the analyst's key. Prometheus metrics are served by
//! [`admin_app`] on a separate listener, so that scraping never competes with analysts and the
//! metrics port can be firewalled apart.
//!
//! The API works over any store. Inside `cordon run` it is also given the running engine
//! ([`Live`]: agents' profiles, the rules in force, hot reload) and the responder's outbox.

use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::lifecycle::{Change, LifecycleEvent};
use crate::sql::{self, Limits, Sql, SqlError};
use crate::store::Location;

/// The running engine as the API sees it; `cordon run` implements it over its engine.
pub trait Live: Send + Sync {
    /// An agent's learnt profile as JSON, if the engine knows the agent.
    fn agent(&self, id: &str) -> Option<Value>;
    /// The rules in force.
    fn rules(&self) -> Vec<Value>;
    /// Loads the rule files again; if they are valid, swaps them in between two events and
    /// says what changed; otherwise refuses with every error and keeps the running set.
    fn reload(&self) -> Result<Value, String>;
    /// Whether the pipeline is ready to process (a Kafka input restoring partition state is
    /// not); the reason when not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What the handlers share.
pub struct ApiState {
    /// The alert store.
    pub store: Location,
    /// The API keys (changed by the admin endpoints, which save them to `keys_file`).
    pub keys: std::sync::RwLock<Keys>,
    /// Where the keys are kept, for the admin endpoints; none: keys are read-only here.
    pub keys_file: Option<std::path::PathBuf>,
    /// The response outbox, when responses are configured.
    pub outbox: Option<Arc<cordon_respond::Outbox>>,
    /// Called after an approval decision (wakes the responder's worker).
    pub on_decision: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The running engine, inside `cordon run`.
    pub live: Option<Arc<dyn Live>>,
    /// Limits of analyst SQL.
    pub limits: Limits,
    /// Where analyst SQL runs: a runtime of its own with `limits.threads` workers, so that a
    /// heavy query takes at most that share of the cores and never the pipeline's.
    pub query_runtime: Option<tokio::runtime::Handle>,
    /// The audit log of mutating calls (JSON lines), if any.
    pub audit: Option<Mutex<std::fs::File>>,
    /// Requests answered, by status code.
    pub requests: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Analyst queries that failed on a limit (memory, time, rows).
    pub queries_limited: AtomicU64,
}

impl ApiState {
    /// A state over a store and keys, with nothing else attached.
    pub fn new(store: Location, keys: Keys) -> ApiState {
        ApiState {
            store,
            keys: std::sync::RwLock::new(keys),
            keys_file: None,
            outbox: None,
            on_decision: None,
            live: None,
            limits: Limits::default(),
            query_runtime: None,
            audit: None,
            requests: Mutex::new(Default::default()),
            queries_limited: AtomicU64::new(0),
        }
    }

    /// Opens (appending) the audit log.
    pub fn with_audit(mut self, path: &std::path::Path) -> Result<ApiState, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.audit = Some(Mutex::new(f));
        Ok(self)
    }

    /// The metrics of the API, in Prometheus text format.
    pub fn metrics(&self, out: &mut crate::metrics::Exposition) {
        if let Ok(r) = self.requests.lock() {
            for (code, n) in r.iter() {
                out.counter(
                    "cordon_api_requests_total",
                    "HTTP API requests answered, by status code",
                    &[("code", &code.to_string())],
                    *n as f64,
                );
            }
        }
        out.counter(
            "cordon_api_queries_limited_total",
            "Analyst SQL queries stopped by a memory, time or row limit",
            &[],
            self.queries_limited.load(Ordering::Relaxed) as f64,
        );
    }
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
    let keys = state.keys.read().unwrap_or_else(|p| p.into_inner());
    let key = keys
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
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", CONSOLE_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{id}", get(get_alert))
        .route("/api/v1/alerts/{id}/{change}", post(change_alert))
        .route("/api/v1/sql", post(run_sql))
        .route("/api/v1/actions", get(list_actions))
        .route("/api/v1/actions/{id}/{decision}", post(decide))
        .route("/api/v1/agents/{id}", get(get_agent))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/rules/reload", post(reload_rules))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/{id}", axum::routing::delete(revoke_key))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The admin router: `/metrics` (Prometheus text format; any valid key, so a scraper gets a
/// viewer key) and `/healthz`. `render` appends the process's metrics.
pub fn admin_app(
    state: Arc<ApiState>,
    render: Arc<dyn Fn(&mut crate::metrics::Exposition) + Send + Sync>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move |State(s): State<Arc<ApiState>>, headers: HeaderMap| {
                let render = render.clone();
                async move {
                    authorize(&s, &headers, Role::Viewer)?;
                    let mut out = crate::metrics::Exposition::default();
                    render(&mut out);
                    s.metrics(&mut out);
                    Ok::<_, ApiError>(
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            out.finish(),
                        )
                            .into_response(),
                    )
                }
            }),
        )
        .with_state(state)
}

/// The console's page, script and style, embedded in the binary (no CDN; works offline).
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/app.js");
const CONSOLE_CSS: &str = include_str!("console/app.css");

/// A console asset. The assets hold no data (every datum comes from the API with a key), so
/// they are served without one; a strict content security policy allows only this origin's
/// script and style.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn whoami(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let k = authorize(&s, &headers, Role::Viewer)?;
    Ok(Json(json!({"id": k.id, "name": k.name, "role": k.role})).into_response())
}

async fn count(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    if let Ok(mut r) = s.requests.lock() {
        *r.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    if let Some(Err(reason)) = s.live.as_ref().map(|l| l.ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response();
    }
    match s.store.list("alerts").await {
        Ok(_) => Json(json!({"ready": true})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": format!("the alert store cannot be read: {e}")})),
        )
            .into_response(),
    }
}

async fn openapi(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let doc: Value = serde_json::from_str(include_str!("openapi.json")).map_err(internal)?;
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
    /// Status: new, in_progress, resolved or suppressed.
    pub status: Option<String>,
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
    let actions = match &s.outbox {
        Some(o) => o.all().map_err(internal)?,
        None => Vec::new(),
    };
    Ok(Sql::open_at(&s.store, s.limits, &actions).await?)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs a query, counting the ones stopped by a limit.
async fn query(
    s: &ApiState,
    sql: &str,
    params: Vec<ScalarValue>,
) -> Result<Vec<arrow::record_batch::RecordBatch>, ApiError> {
    let session = sql_session(s).await?;
    let sql = sql.to_owned();
    let r = match &s.query_runtime {
        Some(rt) => rt
            .spawn(async move { session.query_with(&sql, params).await })
            .await
            .map_err(internal)?,
        None => session.query_with(&sql, params).await,
    };
    if let Err(SqlError::Memory { .. } | SqlError::Timeout(_) | SqlError::TooManyRows(_)) = &r {
        s.queries_limited.fetch_add(1, Ordering::Relaxed);
    }
    Ok(r?)
}

fn rows(batches: &[arrow::record_batch::RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let bytes = sql::to_json(batches)?;
    serde_json::from_slice(&bytes).map_err(internal)
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
    if let Some(v) = &q.status {
        if !STATUSES.contains(&v.as_str()) {
            return Err(bad(format!(
                "status: expected one of {}, got {v:?}",
                STATUSES.join(", ")
            )));
        }
        bind("status = ?", ScalarValue::Utf8(Some(v.clone())));
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
        "SELECT alert_id, time, rule_id, title, severity, agent_id, session_id, target, message, event_count, \
         status, assignee \
         FROM alert_status {} ORDER BY time DESC, alert_id DESC LIMIT {}",
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        },
        limit + 1
    );
    let batches = query(&s, &sql, params).await?;
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

/// The statuses an alert can have.
pub const STATUSES: [&str; 4] = ["new", "in_progress", "resolved", "suppressed"];

async fn get_alert(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let id_param = || vec![ScalarValue::Utf8(Some(id.clone()))];
    let batches = query(
        &s,
        "SELECT ocsf FROM alerts WHERE alert_id = $1 LIMIT 1",
        id_param(),
    )
    .await?;
    let items = rows(&batches)?;
    let Some(row) = items.first() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no alert {id}")));
    };
    let ocsf: Value =
        serde_json::from_str(row["ocsf"].as_str().unwrap_or("{}")).map_err(internal)?;
    let history = rows(
        &query(
            &s,
            "SELECT event_id, time, change, status, assignee, reason, actor_id, actor_name \
             FROM alert_events WHERE alert_id = $1 ORDER BY time, event_id",
            id_param(),
        )
        .await?,
    )?;
    let status = history
        .last()
        .and_then(|h| h["status"].as_str())
        .unwrap_or("new");
    let assignee = history
        .iter()
        .rev()
        .find_map(|h| h["assignee"].as_str().map(str::to_owned));
    let actions: Vec<Value> = match &s.outbox {
        Some(o) => o
            .all()
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.alert_id == id)
            .map(|r| {
                let attempts = o.attempts(&r.id).unwrap_or_default();
                let mut v = serde_json::to_value(r.redacted()).unwrap_or(Value::Null);
                v["attempt_log"] = serde_json::to_value(attempts).unwrap_or(Value::Null);
                v
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({
        "finding": ocsf,
        "status": status,
        "assignee": assignee,
        "history": history,
        "actions": actions,
    }))
    .into_response())
}

/// Body of a lifecycle change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// Why (required for resolve and suppress).
    pub reason: Option<String>,
    /// Who the alert goes to (required for assign).
    pub assignee: Option<String>,
}

async fn change_alert(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath((id, change)): UrlPath<(String, String)>,
    body: Result<Json<ChangeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize(&s, &headers, Role::Analyst)?;
    let change: Change = change
        .parse()
        .map_err(|e: String| ApiError(StatusCode::NOT_FOUND, e))?;
    let Json(body) = match body {
        Ok(b) => b,
        // An empty body is fine for ack.
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_)) => {
            Json(ChangeBody::default())
        }
        Err(e) => return Err(bad(e.body_text())),
    };
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    let assignee = body.assignee.filter(|r| !r.trim().is_empty());
    match change {
        Change::Assign if assignee.is_none() => {
            return Err(bad("assignee: required to assign an alert"))
        }
        Change::Resolve | Change::Suppress if reason.is_none() => {
            return Err(bad(format!(
                "reason: required to {} an alert",
                change.name()
            )))
        }
        _ => {}
    }
    let exists = query(
        &s,
        "SELECT alert_id FROM alerts WHERE alert_id = $1 LIMIT 1",
        vec![ScalarValue::Utf8(Some(id.clone()))],
    )
    .await?;
    if exists.iter().all(|b| b.num_rows() == 0) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no alert {id}")));
    }
    let mut ev = LifecycleEvent::new(&id, change, &who.id, &who.name);
    ev.reason = reason;
    ev.assignee = assignee;
    s.store
        .append_lifecycle(std::slice::from_ref(&ev))
        .await
        .map_err(internal)?;
    audit(
        &s,
        &who,
        change.name(),
        &id,
        &json!({"reason": ev.reason, "assignee": ev.assignee}),
    );
    Ok(Json(json!({"event": ev.to_json(), "ocsf": ev.to_ocsf()})).into_response())
}

fn keys_file(s: &ApiState) -> Result<&std::path::Path, ApiError> {
    s.keys_file.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "keys are read-only in this process (no keys file)".into(),
        )
    })
}

async fn list_keys(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Admin)?;
    let keys = s.keys.read().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> = keys
        .keys
        .iter()
        .map(|k| json!({"id": k.id, "role": k.role, "name": k.name, "created": k.created}))
        .collect();
    Ok(Json(json!({"keys": items})).into_response())
}

/// Body of `POST /api/v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// viewer, analyst, responder or admin.
    pub role: Role,
    /// Who it is for.
    pub name: String,
}

async fn create_key(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<NewKey>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let who = authorize(&s, &headers, Role::Admin)?;
    let path = keys_file(&s)?;
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    if body.name.trim().is_empty() {
        return Err(bad("name: required (who the key is for)"));
    }
    let (key, stored) = {
        let mut keys = s.keys.write().unwrap_or_else(|p| p.into_inner());
        // From the file, so that keys created elsewhere meanwhile are kept.
        let mut fresh = Keys::load(path).map_err(internal)?;
        let created = fresh.create(body.role, body.name.trim());
        fresh.save(path).map_err(internal)?;
        *keys = fresh;
        created
    };
    audit(
        &s,
        &who,
        "keys.create",
        &stored.id,
        &json!({"role": stored.role, "name": stored.name}),
    );
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"key": key, "id": stored.id, "role": stored.role, "name": stored.name,
            "note": "the key is shown once; only its hash is kept"}),
        ),
    )
        .into_response())
}

async fn revoke_key(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let who = authorize(&s, &headers, Role::Admin)?;
    let path = keys_file(&s)?;
    if id == who.id {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "a key cannot revoke itself; use another admin key".into(),
        ));
    }
    {
        let mut keys = s.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Keys::load(path).map_err(internal)?;
        let before = fresh.keys.len();
        fresh.keys.retain(|k| k.id != id);
        if fresh.keys.len() == before {
            return Err(ApiError(StatusCode::NOT_FOUND, format!("no key {id}")));
        }
        fresh.save(path).map_err(internal)?;
        *keys = fresh;
    }
    audit(&s, &who, "keys.revoke", &id, &json!({}));
    Ok(Json(json!({"revoked": id})).into_response())
}

fn live(s: &ApiState) -> Result<Arc<dyn Live>, ApiError> {
    s.live.clone().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "no engine runs in this process; serve the API from `cordon run --listen`".into(),
        )
    })
}

async fn get_agent(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let profile = match &s.live {
        Some(l) => {
            let (l, id) = (l.clone(), id.clone());
            tokio::task::spawn_blocking(move || l.agent(&id))
                .await
                .map_err(internal)?
        }
        None => None,
    };
    let alerts = rows(
        &query(
            &s,
            "SELECT alert_id, time, rule_id, title, severity, status, session_id \
             FROM alert_status WHERE agent_id = $1 ORDER BY time DESC LIMIT 100",
            vec![ScalarValue::Utf8(Some(id.clone()))],
        )
        .await?,
    )?;
    if profile.is_none() && alerts.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no agent {id}: no profile and no alerts"),
        ));
    }
    Ok(Json(json!({"agent": id, "profile": profile, "alerts": alerts})).into_response())
}

async fn list_rules(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Viewer)?;
    let l = live(&s)?;
    let rules = tokio::task::spawn_blocking(move || l.rules())
        .await
        .map_err(internal)?;
    Ok(Json(json!({"rules": rules})).into_response())
}

async fn reload_rules(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = authorize(&s, &headers, Role::Admin)?;
    let l = live(&s)?;
    let result = tokio::task::spawn_blocking(move || l.reload())
        .await
        .map_err(internal)?;
    match result {
        Ok(report) => {
            audit(&s, &who, "rules.reload", "rules", &report);
            Ok(Json(json!({"reloaded": true, "changes": report})).into_response())
        }
        Err(errors) => {
            audit(
                &s,
                &who,
                "rules.reload.refused",
                "rules",
                &json!({"errors": errors}),
            );
            Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the rule set was refused; the running rules stay:\n{errors}"),
            ))
        }
    }
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
    let batches = query(&s, &body.query, Vec::new()).await?;
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
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(internal)?;
            for b in &batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
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
    let all = outbox(&s)?.all().map_err(internal)?;
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
    if let Some(wake) = &s.on_decision {
        wake();
    }
    Ok(Json(json!({"action": r.redacted()})).into_response())
}
