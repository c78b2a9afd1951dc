//! The HTTP API: each role can do exactly what its row of the table allows (a matrix over
//! every endpoint), a missing or wrong key is 401, a forbidden call 403, a malformed body or
//! filter 400 naming the field; filters cannot inject SQL; pagination walks every alert once;
//! and the same app answers over a real socket. Alert lifecycle changes land in the
//! `alert_events` table and the `alert_status` view; `actions` is queryable by SQL; metrics
//! need a key on the admin router.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cordon_query::api::{admin_app, app, ApiState, Live};
use cordon_query::keys::{Keys, Role};
use cordon_query::sql::Limits;
use cordon_query::store::AlertStore;
use serde_json::Value;
use tower::ServiceExt;

/// A stand-in for the running engine: one agent, one rule, and a reload that succeeds
/// once and then refuses.
struct FakeLive {
    reloads: std::sync::atomic::AtomicU32,
}

impl Live for FakeLive {
    fn agent(&self, id: &str) -> Option<Value> {
        (id == "agent-known").then(|| serde_json::json!({"agent": id, "events": 42}))
    }
    fn rules(&self) -> Vec<Value> {
        vec![serde_json::json!({"id": "r1", "version": 1})]
    }
    fn reload(&self) -> Result<Value, String> {
        match self
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        {
            0 => Ok(serde_json::json!({"kept": ["r1"]})),
            _ => Err("rules/bad.yaml:3:8: unknown field `serverity`".into()),
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    state: Arc<ApiState>,
    keys: Vec<(Role, String)>,
    alerts: usize,
    gate: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Alerts from generated traffic, through the engine, into the store.
    let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
        agents: 20,
        duration_nanos: 6 * 3_600_000_000_000,
        ..Default::default()
    });
    let set = cordon_rules::RuleSet::builtin().unwrap();
    let mut engine = cordon_detect::Engine::new(&set);
    let mut out = Vec::new();
    for ev in g.events {
        engine.push(ev, &mut out).unwrap();
    }
    engine.finish(&mut out);
    let alerts = out.len();
    assert!(alerts > 5);
    let store = AlertStore::open(dir.path()).unwrap();
    let first = out[0].clone();
    for a in out {
        store.append(a).unwrap();
    }
    store.flush().unwrap();
    // An outbox with one gate awaiting approval.
    let outbox = cordon_respond::Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let gate = cordon_respond::ActionRecord {
        id: "act_gate".into(),
        alert_id: first.id.clone(),
        rule_id: first.rule_id.clone(),
        playbook: "p".into(),
        step: 0,
        action: cordon_respond::playbook::ActionKind::RequireApproval,
        target: None,
        params: Default::default(),
        continue_on_error: false,
        state: cordon_respond::State::AwaitingApproval,
        attempts: 0,
        next_attempt_ms: 0,
        created_ms: 0,
        updated_ms: 0,
        trigger_ms: 0,
        expires_ms: Some(i64::MAX),
        last_error: None,
        decided_by: None,
        reason: None,
    };
    outbox.plan(&[gate]).unwrap();
    let mut keys = Keys::default();
    let mut plain = Vec::new();
    for role in [Role::Viewer, Role::Analyst, Role::Responder, Role::Admin] {
        plain.push((role, keys.create(role, &format!("{role:?}")).0));
    }
    keys.save(&dir.path().join("keys.json")).unwrap();
    let mut state = ApiState::new(
        cordon_query::store::Location::Local(dir.path().to_path_buf()),
        keys,
    )
    .with_audit(&dir.path().join("audit.jsonl"))
    .unwrap();
    state.outbox = Some(Arc::new(outbox));
    state.keys_file = Some(dir.path().join("keys.json"));
    state.limits = Limits::default();
    state.live = Some(Arc::new(FakeLive {
        reloads: Default::default(),
    }));
    let state = Arc::new(state);
    Fixture {
        dir,
        state,
        keys: plain,
        alerts,
        gate: "act_gate".into(),
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn key(f: &Fixture, role: Role) -> &str {
    &f.keys.iter().find(|(r, _)| *r == role).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_exactly_what_its_row_allows() {
    let f = fixture();
    let alert_id = {
        let (s, v) = call(
            &f,
            "GET",
            "/api/v1/alerts?limit=1",
            Some(key(&f, Role::Viewer)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["alerts"][0]["alert_id"].as_str().unwrap().to_owned()
    };
    let agent = {
        let (_, v) = call(
            &f,
            "GET",
            "/api/v1/alerts?limit=1",
            Some(key(&f, Role::Viewer)),
            None,
        )
        .await;
        v["alerts"][0]["agent_id"].as_str().unwrap().to_owned()
    };
    // (method, path, body, lowest role allowed)
    let matrix: Vec<(&str, String, Option<&str>, Role)> = vec![
        ("GET", "/openapi.json".into(), None, Role::Viewer),
        ("GET", "/api/v1/alerts".into(), None, Role::Viewer),
        (
            "GET",
            format!("/api/v1/alerts/{alert_id}"),
            None,
            Role::Viewer,
        ),
        ("GET", "/api/v1/actions".into(), None, Role::Viewer),
        (
            "POST",
            "/api/v1/sql".into(),
            Some(r#"{"query": "SELECT count(*) AS n FROM alerts"}"#),
            Role::Analyst,
        ),
        (
            "POST",
            format!("/api/v1/alerts/{alert_id}/ack"),
            Some(r#"{"reason": "looking"}"#),
            Role::Analyst,
        ),
        (
            "POST",
            format!("/api/v1/alerts/{alert_id}/assign"),
            Some(r#"{"assignee": "bob"}"#),
            Role::Analyst,
        ),
        ("GET", format!("/api/v1/agents/{agent}"), None, Role::Viewer),
        ("GET", "/api/v1/rules".into(), None, Role::Viewer),
        ("GET", "/api/v1/keys".into(), None, Role::Admin),
        // A denial keeps the gate for the other roles' turn: deny is checked on a copy below.
        (
            "POST",
            "/api/v1/actions/act_missing/approve".into(),
            Some(r#"{"reason": "x"}"#),
            Role::Responder,
        ),
    ];
    for (method, path, body, lowest) in &matrix {
        for (role, k) in &f.keys {
            let (s, v) = call(&f, method, path, Some(k), *body).await;
            if role >= lowest {
                assert!(
                    s == StatusCode::OK
                        || (path.contains("act_missing") && s == StatusCode::CONFLICT),
                    "{role:?} {method} {path}: {s} {v}"
                );
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{role:?} {method} {path}: {v}");
                assert!(v["error"].as_str().unwrap().contains("role"), "{v}");
            }
        }
        // No key, or a wrong one: 401 everywhere.
        assert_eq!(
            call(&f, method, path, None, *body).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&f, method, path, Some("cordon_forged"), *body).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Health is open.
    let resp = app(f.state.clone())
        .oneshot(
            Request::builder()
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        call(&f, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    // The responder approves the real gate; the audit log names the key.
    let (s, v) = call(
        &f,
        "POST",
        &format!("/api/v1/actions/{}/approve", f.gate),
        Some(key(&f, Role::Responder)),
        Some(r#"{"reason": "confirmed"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["action"]["state"], "approved");
    assert!(v["action"]["decided_by"]
        .as_str()
        .unwrap()
        .contains("Responder"));
    let (s, _) = call(
        &f,
        "POST",
        &format!("/api/v1/actions/{}/deny", f.gate),
        Some(key(&f, Role::Admin)),
        Some(r#"{"reason": "late"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "already decided");
    // Reload is admin-only; a refused rule set is a 422 carrying its errors.
    for role in [Role::Viewer, Role::Analyst, Role::Responder] {
        let (s, _) = call(
            &f,
            "POST",
            "/api/v1/rules/reload",
            Some(key(&f, role)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role:?}");
    }
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/rules/reload",
        Some(key(&f, Role::Admin)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/rules/reload",
        Some(key(&f, Role::Admin)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bad.yaml:3:8"), "{v}");
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"action\":\"approve\"") && audit.contains("\"key_name\":\"Responder\""),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_a_400_that_names_the_field() {
    let f = fixture();
    let k = key(&f, Role::Admin);
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/sql",
        Some(k),
        Some(r#"{"qurey": "SELECT 1"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("qurey"), "{v}");
    let (s, v) = call(&f, "POST", "/api/v1/sql", Some(k), Some("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&f, "GET", "/api/v1/alerts?since=yesterday", Some(k), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("since:"), "{v}");
    let (s, v) = call(&f, "GET", "/api/v1/alerts?limit=0", Some(k), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("limit:"), "{v}");
    let (s, v) = call(&f, "GET", "/api/v1/alerts?colour=red", Some(k), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("colour"), "{v}");
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/sql",
        Some(k),
        Some(r#"{"query": "DELETE FROM alerts"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("only queries"), "{v}");
    // Lifecycle bodies: assign needs an assignee, resolve and suppress a reason.
    let (_, v) = call(&f, "GET", "/api/v1/alerts?limit=1", Some(k), None).await;
    let id = v["alerts"][0]["alert_id"].as_str().unwrap().to_owned();
    for (change, body, field) in [
        ("assign", "{}", "assignee:"),
        ("resolve", r#"{"assignee": "x"}"#, "reason:"),
        ("suppress", r#"{"reason": "  "}"#, "reason:"),
        ("ack", r#"{"reson": "typo"}"#, "reson"),
    ] {
        let uri = format!("/api/v1/alerts/{id}/{change}");
        let (s, v) = call(&f, "POST", &uri, Some(k), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{change}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(field),
            "{change}: {v}"
        );
    }
    let (s, v) = call(
        &f,
        "POST",
        &format!("/api/v1/alerts/{id}/close"),
        Some(k),
        Some("{}"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expected ack"), "{v}");
    let (s, _) = call(
        &f,
        "POST",
        "/api/v1/alerts/no-such-alert/ack",
        Some(k),
        Some("{}"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&f, "GET", "/api/v1/alerts?status=closed", Some(k), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("status:"), "{v}");
    let (s, _) = call(&f, "GET", "/api/v1/agents/agent-nobody", Some(k), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_is_appended_and_the_status_view_follows_it() {
    let f = fixture();
    let k = key(&f, Role::Analyst);
    let (_, v) = call(&f, "GET", "/api/v1/alerts?limit=2", Some(k), None).await;
    let ids: Vec<String> = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(v["alerts"][0]["status"] == "new", "{v}");
    let post = |id: &str, change: &str, body: &'static str| {
        let uri = format!("/api/v1/alerts/{id}/{change}");
        let f = &f;
        async move { call(f, "POST", &uri, Some(k), Some(body)).await }
    };
    let (s, v) = post(
        &ids[0],
        "assign",
        r#"{"assignee": "bob", "reason": "on call"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ocsf"]["activity_id"], 2);
    assert_eq!(v["ocsf"]["type_uid"], 200402);
    let (s, v) = post(&ids[0], "resolve", r#"{"reason": "token rotated"}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ocsf"]["activity_id"], 3);
    assert_eq!(v["ocsf"]["status_id"], 4);
    let (s, _) = post(&ids[1], "suppress", r#"{"reason": "known scanner"}"#).await;
    assert_eq!(s, StatusCode::OK);
    // The detail shows the history in order, the status and the assignee kept by resolve.
    let (_, d) = call(
        &f,
        "GET",
        &format!("/api/v1/alerts/{}", ids[0]),
        Some(k),
        None,
    )
    .await;
    assert_eq!(d["status"], "resolved", "{d}");
    assert_eq!(d["assignee"], "bob");
    let changes: Vec<&str> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["assign", "resolve"]);
    assert_eq!(d["history"][0]["actor_name"], "Analyst");
    assert!(!d["finding"]["evidences"].as_array().unwrap().is_empty());
    // The alert behind the approval gate lists it with its attempts.
    let (_, acts) = call(&f, "GET", "/api/v1/actions", Some(k), None).await;
    let gated = acts["actions"][0]["alert_id"].as_str().unwrap().to_owned();
    let (_, g) = call(&f, "GET", &format!("/api/v1/alerts/{gated}"), Some(k), None).await;
    assert_eq!(g["actions"][0]["id"], "act_gate", "{g}");
    assert!(g["actions"][0]["attempt_log"].is_array());
    // Filters by status, and SQL over the view, the lifecycle table and the actions.
    let (_, v) = call(&f, "GET", "/api/v1/alerts?status=resolved", Some(k), None).await;
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(v["alerts"][0]["alert_id"], ids[0].as_str());
    let (_, v) = call(
        &f,
        "GET",
        "/api/v1/alerts?status=new&limit=1000",
        Some(k),
        None,
    )
    .await;
    assert_eq!(v["alerts"].as_array().unwrap().len(), f.alerts - 2);
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/sql",
        Some(k),
        Some(r#"{"query": "SELECT status, count(*) AS n FROM alert_status GROUP BY status ORDER BY status"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert_eq!(rows[1]["status"], "resolved");
    let (_, v) = call(
        &f,
        "POST",
        "/api/v1/sql",
        Some(k),
        Some(r#"{"query": "SELECT count(*) AS n FROM alert_events WHERE change = 'suppress'"}"#),
    )
    .await;
    assert_eq!(v["rows"][0]["n"], 1, "{v}");
    let (_, v) = call(
        &f,
        "POST",
        "/api/v1/sql",
        Some(k),
        Some(r#"{"query": "SELECT action_id, action, state FROM actions"}"#),
    )
    .await;
    assert_eq!(v["rows"][0]["state"], "awaiting_approval", "{v}");
    // The lifecycle stream is Parquet under alert_events/date=…/.
    let day_dirs: Vec<_> = std::fs::read_dir(f.dir.path().join("alert_events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        day_dirs.iter().all(|d| d.starts_with("date=")),
        "{day_dirs:?}"
    );
    // Agents: the live profile and the agent's alerts.
    let (s, v) = call(&f, "GET", "/api/v1/agents/agent-known", Some(k), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["profile"]["events"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_create_and_revoke_keys() {
    let f = fixture();
    let admin = key(&f, Role::Admin);
    let body = r#"{"role": "viewer", "name": "new soc member"}"#;
    let (s, _) = call(
        &f,
        "POST",
        "/api/v1/keys",
        Some(key(&f, Role::Responder)),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(
        &f,
        "POST",
        "/api/v1/keys",
        Some(admin),
        Some(r#"{"role": "root", "name": "x"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&f, "POST", "/api/v1/keys", Some(admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let new = v["key"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    // Stored hashed, usable at once, listed without the secret.
    let file = std::fs::read_to_string(f.dir.path().join("keys.json")).unwrap();
    assert!(file.contains(&id) && !file.contains(&new));
    assert_eq!(
        call(&f, "GET", "/api/v1/alerts?limit=1", Some(&new), None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, v) = call(&f, "GET", "/api/v1/keys", Some(admin), None).await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 5);
    assert!(!v.to_string().contains("sha256"));
    // Revoked: refused at once; an admin cannot revoke its own key.
    let (s, _) = call(
        &f,
        "DELETE",
        &format!("/api/v1/keys/{id}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        call(&f, "GET", "/api/v1/alerts?limit=1", Some(&new), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (_, me) = call(&f, "GET", "/api/v1/whoami", Some(admin), None).await;
    let (s, _) = call(
        &f,
        "DELETE",
        &format!("/api/v1/keys/{}", me["id"].as_str().unwrap()),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let audit = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("keys.create") && audit.contains("keys.revoke"));
    assert!(
        !audit.contains(&new),
        "the new key never reaches the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_key_and_count_requests() {
    let f = fixture();
    let _ = call(&f, "GET", "/api/v1/alerts", None, None).await;
    let admin = admin_app(
        f.state.clone(),
        Arc::new(|out: &mut cordon_query::metrics::Exposition| {
            out.counter("cordon_events_total", "Events", &[], 7.0)
        }),
    );
    let get = |key: Option<&str>| {
        let mut r = Request::builder().uri("/metrics");
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.body(Body::empty()).unwrap()
    };
    let resp = admin.clone().oneshot(get(None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = admin
        .oneshot(get(Some(key(&f, Role::Viewer))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("cordon_events_total 7"), "{text}");
    assert!(
        text.contains("cordon_api_requests_total{code=\"401\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_cannot_inject_and_pages_cover_every_alert_once() {
    let f = fixture();
    let k = key(&f, Role::Viewer);
    for evil in [
        "x' OR '1'='1",
        "x'; DROP TABLE alerts; --",
        "' UNION SELECT ocsf, ocsf, ocsf, ocsf, ocsf, ocsf, ocsf, ocsf, ocsf, event_count FROM alerts --",
    ] {
        let uri = format!("/api/v1/alerts?rule={}", urlencode(evil));
        let (s, v) = call(&f, "GET", &uri, Some(k), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["alerts"].as_array().unwrap().len(), 0, "{evil}: {v}");
    }
    // Pages of 3, newest first, every alert once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let uri = match &cursor {
            None => "/api/v1/alerts?limit=3".to_owned(),
            Some(c) => format!("/api/v1/alerts?limit=3&cursor={}", urlencode(c)),
        };
        let (s, v) = call(&f, "GET", &uri, Some(k), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for a in v["alerts"].as_array().unwrap() {
            seen.push(a["alert_id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no alert twice");
    assert_eq!(seen.len(), f.alerts, "every alert");
    // A filter that matches.
    let (_, v) = call(
        &f,
        "GET",
        "/api/v1/alerts?severity=critical&limit=1000",
        Some(k),
        None,
    )
    .await;
    assert!(v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["severity"] == "Critical"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_json_csv_and_arrow_over_a_real_socket() {
    let f = fixture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(f.state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/sql");
    let body = r#"{"query": "SELECT rule_id, count(*) AS n FROM alerts GROUP BY rule_id ORDER BY rule_id"}"#;
    let k = key(&f, Role::Analyst);
    let send = |accept: &'static str| {
        client
            .post(&url)
            .bearer_auth(k)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body)
            .send()
    };
    let json: Value = send("application/json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: i64 = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(total as usize, f.alerts);
    let csv = send("text/csv").await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("rule_id,n\n"), "{csv}");
    let arrow = send("application/vnd.apache.arrow.stream")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow.to_vec()), None)
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, json["rows"].as_array().unwrap().len());
    let r = client
        .get(format!("http://{addr}/api/v1/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
}

/// A CA, and a certificate it signs for `name` (a server's address or a client's id).
fn pki(
    dir: &std::path::Path,
    tag: &str,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let f = fixture();
    let d = f.dir.path();
    let (server_ca, server_cert, server_key) = pki(d, "server", &["localhost", "127.0.0.1"]);
    let (client_ca, client_cert, client_key) = pki(d, "client", &["soar-worker"]);
    let (_, rogue_cert, rogue_key) = pki(d, "rogue", &["soar-worker"]);
    let config = cordon_query::tls::TlsFiles {
        cert: server_cert,
        key: server_key,
        client_ca: Some(client_ca),
    }
    .server_config()
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = cordon_query::tls::TlsListener::new(tcp, config).unwrap();
    let failed = listener.failed.clone();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let router = app(f.state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = |identity: Option<(&std::path::Path, &std::path::Path)>| {
        let mut b = reqwest::Client::builder().add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&server_ca).unwrap()).unwrap(),
        );
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).unwrap();
            pem.extend(std::fs::read(key).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    };
    let url = format!("https://127.0.0.1:{}/api/v1/alerts?limit=1", addr.port());
    let ok = client(Some((&client_cert, &client_key)))
        .get(&url)
        .bearer_auth(key(&f, Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), reqwest::StatusCode::OK);
    // The certificate does not replace the key.
    let no_key = client(Some((&client_cert, &client_key)))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), reqwest::StatusCode::UNAUTHORIZED);
    // No client certificate, or one from another CA: no HTTP at all.
    for c in [client(None), client(Some((&rogue_cert, &rogue_key)))] {
        let r = c.get(&url).bearer_auth(key(&f, Role::Viewer)).send().await;
        assert!(r.is_err(), "{r:?}");
    }
    // Plain HTTP to the TLS port fails too.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", addr.port()))
            .await
            .is_err()
    );
    for _ in 0..100 {
        if failed.load(std::sync::atomic::Ordering::Relaxed) >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(failed.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}
