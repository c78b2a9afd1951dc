//! Delivery against a real HTTP receiver on loopback that verifies the Standard Webhooks
//! signature of every request and dedupes on `webhook-id`, as the specification asks of
//! receivers: retries after 503 + Retry-After, exactly one effective action per alert step,
//! replays planned once, approval gates, dry run.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cordon_detect::Alert;
use cordon_respond::config::ResponseConfig;
use cordon_respond::playbook::{parse, Playbooks};
use cordon_respond::sign::Secret;
use cordon_respond::{Outbox, Responder, State};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[derive(Default)]
struct Receiver {
    fail_first: AtomicU32,
    calls: AtomicU32,
    bad_signatures: AtomicU32,
    /// Effective actions by webhook-id, with the body of the first.
    effective: Mutex<HashMap<String, (u32, serde_json::Value)>>,
}

async fn hook(
    AxState(rx): AxState<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    rx.calls.fetch_add(1, Ordering::SeqCst);
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let secret = Secret::parse(SECRET).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if !secret.verify(&id, ts.parse().unwrap_or(0), &body, &sig, now, 300) {
        rx.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, HeaderMap::new());
    }
    if rx
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut hm = HeaderMap::new();
        hm.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::SERVICE_UNAVAILABLE, hm);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    rx.effective
        .lock()
        .unwrap()
        .entry(id)
        .and_modify(|e| e.0 += 1)
        .or_insert((1, v));
    (StatusCode::OK, HeaderMap::new())
}

async fn receiver(fail_first: u32) -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver::default());
    rx.fail_first.store(fail_first, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, format!("http://{addr}/hook"))
}

fn config(dir: &Path, url: &str) -> ResponseConfig {
    std::env::set_var("CORDON_TEST_WHSEC", SECRET);
    let text = format!(
        r#"
outbox = "{}"
[targets.idp]
kind = "webhook"
url = "{url}"
secret_env = "CORDON_TEST_WHSEC"
backoff = "50ms"
[targets.gateway]
kind = "webhook"
url = "{url}"
secret_env = "CORDON_TEST_WHSEC"
backoff = "50ms"
[targets.chat]
kind = "webhook"
url = "{url}"
secret_env = "CORDON_TEST_WHSEC"
backoff = "50ms"
"#,
        dir.join("outbox.redb").display()
    );
    toml::from_str(&text).unwrap()
}

fn alert(session: &str) -> Alert {
    let set = cordon_rules::RuleSet::builtin().unwrap();
    let rule = set
        .rules
        .iter()
        .find(|r| r.id == "cordon.mcp.chain.secret_read_then_egress")
        .unwrap();
    let ev = |i: u32, tool: &str| {
        let text = format!(
            r#"{{"event.id":"{session}-{i}","@timestamp":"2026-11-20T10:00:0{i}Z","gen_ai.agent.id":"agent-7","mcp.session.id":"{session}","mcp.method.name":"tools/call","audit.target":"gmail","gen_ai.tool.name":"{tool}","audit.token.jti":"tok-{session}","audit.principal.sub":"alice"}}"#
        );
        cordon_ingest::decode_native(text.as_bytes()).unwrap()
    };
    Alert::from_rule(rule, vec![ev(1, "read_file"), ev(2, "send_email")])
}

fn responder(cfg: &ResponseConfig, playbooks: &str, dry_run: bool) -> Responder {
    let pb = Playbooks {
        all: parse(Path::new("test.yaml"), playbooks).unwrap(),
    };
    Responder::new(
        Outbox::open(&cfg.outbox).unwrap(),
        pb,
        cfg.targets().unwrap(),
        dry_run,
        Some("https://cordon.example".into()),
    )
    .unwrap()
}

const CONTAIN: &str = "id: contain\non: {rules: [cordon.mcp.chain.*]}\nsteps:\n  - action: revoke_token\n    target: idp\n  - action: quarantine_agent\n    target: gateway\n  - action: notify\n    target: chat\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_exactly_one_effective_action_per_step() {
    let (rx, url) = receiver(3).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url);
    let r = responder(&cfg, CONTAIN, false);
    let a = alert("s1");
    assert_eq!(r.submit(&a).unwrap(), 3);
    // The same alert again (a replay after a crash): nothing new is planned.
    assert_eq!(r.submit(&a).unwrap(), 0);
    let t = Instant::now();
    assert!(r.drain(Duration::from_secs(60)).await.unwrap());
    // Three 503s with Retry-After: 1 — each honoured.
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    let eff = rx.effective.lock().unwrap().clone();
    assert_eq!(eff.len(), 3, "{eff:?}");
    assert!(eff.values().all(|(n, _)| *n == 1));
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(rx.calls.load(Ordering::SeqCst), 6);
    let kinds: Vec<String> = {
        let mut k: Vec<String> = eff
            .values()
            .map(|(_, b)| b["type"].as_str().unwrap().to_owned())
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        kinds,
        [
            "cordon.notify",
            "cordon.quarantine_agent",
            "cordon.revoke_token"
        ]
    );
    let revoke = eff
        .values()
        .find(|(_, b)| b["type"] == "cordon.revoke_token")
        .unwrap();
    assert_eq!(revoke.1["data"]["token"], "tok-s1");
    let notify = eff
        .values()
        .find(|(_, b)| b["type"] == "cordon.notify")
        .unwrap();
    assert_eq!(
        notify.1["data"]["link"],
        format!("https://cordon.example/alerts/{}", a.id)
    );
    // The action log: the first step took four attempts, three refused.
    let all = r.outbox().all().unwrap();
    assert!(all.iter().all(|x| x.state == State::Succeeded), "{all:?}");
    let first = all.iter().find(|x| x.step == 0).unwrap();
    let attempts = r.outbox().attempts(&first.id).unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[0].status, Some(503));
    assert_eq!(attempts[3].status, Some(200));
    let s = r.stats();
    assert_eq!((s.attempts, s.retried, s.succeeded, s.failed), (6, 3, 3, 0));
    // Shown to people, the token is a hash.
    let shown = all
        .iter()
        .find(|x| x.params.contains_key("token"))
        .unwrap()
        .redacted();
    assert!(shown.params["token"].starts_with("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_hold_deny_and_expire() {
    let (rx, url) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url);
    let pb = "id: gated\non: {min_severity: high}\nsteps:\n  - action: require_approval\n    params: {expires: 1h}\n  - action: isolate_server\n    target: gateway\n";
    let r = responder(&cfg, pb, false);
    r.submit(&alert("approve")).unwrap();
    r.submit(&alert("deny")).unwrap();
    assert!(r.drain(Duration::from_secs(10)).await.unwrap());
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        0,
        "nothing runs before a decision"
    );
    let gates: Vec<_> = r
        .outbox()
        .all()
        .unwrap()
        .into_iter()
        .filter(|x| x.state == State::AwaitingApproval)
        .collect();
    assert_eq!(gates.len(), 2);
    let approve = gates
        .iter()
        .find(|g| g.alert_id == alert("approve").id)
        .unwrap();
    let deny = gates
        .iter()
        .find(|g| g.alert_id == alert("deny").id)
        .unwrap();
    r.outbox()
        .decide(&approve.id, true, "ana", "confirmed exfiltration")
        .unwrap();
    r.outbox()
        .decide(&deny.id, false, "ana", "a test agent")
        .unwrap();
    assert!(r
        .outbox()
        .decide(&deny.id, true, "ana", "again")
        .unwrap_err()
        .contains("denied, not awaiting"));
    assert!(r.drain(Duration::from_secs(10)).await.unwrap());
    let all = r.outbox().all().unwrap();
    let step2 = |alert_id: &str| {
        all.iter()
            .find(|x| x.alert_id == alert_id && x.step == 1)
            .unwrap()
            .state
    };
    assert_eq!(step2(&approve.alert_id), State::Succeeded);
    assert_eq!(step2(&deny.alert_id), State::Cancelled);
    assert_eq!(rx.effective.lock().unwrap().len(), 1);
    // A gate nobody decides expires, and what follows is cancelled.
    r.submit(&alert("late")).unwrap();
    let n = r
        .outbox()
        .expire(cordon_respond::outbox::now_ms() + 2 * 3_600_000)
        .unwrap();
    assert_eq!(n, 1);
    let all = r.outbox().all().unwrap();
    let late = alert("late").id;
    assert_eq!(
        all.iter()
            .find(|x| x.alert_id == late && x.step == 0)
            .unwrap()
            .state,
        State::Expired
    );
    assert_eq!(
        all.iter()
            .find(|x| x.alert_id == late && x.step == 1)
            .unwrap()
            .state,
        State::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_records_and_sends_nothing() {
    let (rx, url) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url);
    let r = responder(&cfg, CONTAIN, true);
    r.submit(&alert("dry")).unwrap();
    assert!(r.drain(Duration::from_secs(10)).await.unwrap());
    assert_eq!(rx.calls.load(Ordering::SeqCst), 0);
    let all = r.outbox().all().unwrap();
    assert!(all.iter().all(|x| x.state == State::DryRun), "{all:?}");
    let log = r.outbox().attempts(&all[0].id).unwrap();
    assert!(log[0].outcome.starts_with("dry run: would POST"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_and_the_breaker_opens() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every attempt fails to connect.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let mut cfg = config(dir.path(), &url);
    for t in cfg.targets.values_mut() {
        t.max_attempts = Some(3);
        t.breaker_failures = Some(2);
        // The third attempt comes 50–100 ms (the backoff) after the second failure opened
        // the breaker; a cooldown far longer than that makes sure it finds the breaker open
        // however the scheduler runs (100 ms raced the backoff's jitter and failed in CI).
        t.breaker_cooldown = Some("2s".into());
    }
    let r = responder(&cfg, "id: p\non: {rules: ['*']}\nsteps:\n  - action: notify\n    target: chat\n  - action: isolate_server\n    target: gateway\n", false);
    r.submit(&alert("down")).unwrap();
    assert!(r.drain(Duration::from_secs(20)).await.unwrap());
    let all = r.outbox().all().unwrap();
    let first = all.iter().find(|x| x.step == 0).unwrap();
    assert_eq!(first.state, State::Failed);
    assert_eq!(first.attempts, 3);
    assert!(
        first
            .last_error
            .as_deref()
            .unwrap()
            .contains("could not connect"),
        "{first:?}"
    );
    assert_eq!(
        all.iter().find(|x| x.step == 1).unwrap().state,
        State::Cancelled
    );
    let s = r.stats();
    assert!(s.deferred_by_breaker > 0, "{s:?}");
}
