//! Responses end to end, with real peers on loopback: a real OAuth 2.0 authorization server
//! (`oidc-provider` from npm, in `tests/oauth/`), and a gateway/chat receiver that checks
//! Standard Webhooks signatures and dedupes on `webhook-id`.
//!
//! - The generated read-then-exfiltrate chain, run with a real token, is detected; the
//!   playbook revokes the token (RFC 7009); introspection (RFC 7662) then says
//!   `active: false`; a later allowed call with the token raises `cordon.response.not_enforced`.
//! - `kill -9` of Cordon while an action is being delivered: the action completes after the
//!   restart, once.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

mod common;

use common::oauth::oauth;

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cordon")
}

#[derive(Default)]
struct Receiver {
    calls: AtomicU32,
    /// Requests to hold (never answer well) before answering normally.
    hold_first: AtomicU32,
    bad_signatures: AtomicU32,
    effective: Mutex<HashMap<String, (u32, Value)>>,
}

async fn hook(AxState(rx): AxState<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    rx.calls.fetch_add(1, Ordering::SeqCst);
    if rx
        .hold_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        // Cordon is killed while it waits for this answer; nothing takes effect.
        tokio::time::sleep(Duration::from_secs(30)).await;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts) = (h("webhook-id"), h("webhook-timestamp"));
    let secret = cordon_respond::sign::Secret::parse(WHSEC).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if !secret.verify(
        &id,
        ts.parse().unwrap_or(0),
        &body,
        &h("webhook-signature"),
        now,
        300,
    ) {
        rx.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    rx.effective
        .lock()
        .unwrap()
        .entry(id)
        .and_modify(|e| e.0 += 1)
        .or_insert((1, v));
    StatusCode::OK
}

async fn receiver(hold_first: u32) -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver::default());
    rx.hold_first.store(hold_first, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, format!("http://{addr}/hook"))
}

fn write_config(dir: &Path, oauth_port: u16, hook: &str) -> PathBuf {
    let path = dir.join("cordon.toml");
    std::fs::write(
        &path,
        format!(
            r#"# Cordon's configuration for the response test.
[response]
outbox = "{outbox}"
action_log = "{log}"
console_url = "https://cordon.example"

[response.targets.idp]
kind = "oauth_revocation"
url = "http://127.0.0.1:{oauth_port}/token/revocation"
client_id = "cordon"
client_secret_env = "CORDON_TEST_IDP_SECRET"
backoff = "100ms"

[response.targets.gateway]
kind = "webhook"
url = "{hook}"
secret_env = "CORDON_TEST_WHSEC"
backoff = "100ms"
timeout = "2s"

[response.targets.chat]
kind = "webhook"
url = "{hook}"
secret_env = "CORDON_TEST_WHSEC"
backoff = "100ms"
"#,
            outbox = dir.join("outbox.redb").display(),
            log = dir.join("actions.jsonl").display()
        ),
    )
    .unwrap();
    path
}

/// Points the configuration at one playbook file holding `yaml`.
fn use_playbook(dir: &Path, config: &Path, yaml: &str) {
    let playbooks = dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).unwrap();
    std::fs::write(playbooks.join("p.yaml"), yaml).unwrap();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "console_url",
        &format!("playbooks = [\"{}\"]\nconsole_url", playbooks.display()),
    );
    std::fs::write(config, text).unwrap();
}

/// Writes events as JSON lines; returns the file.
fn write_events(dir: &Path, events: &[Value]) -> PathBuf {
    let input = dir.join("events.jsonl");
    std::fs::write(
        &input,
        events.iter().map(|e| format!("{e}\n")).collect::<String>(),
    )
    .unwrap();
    input
}

fn cordon(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("CORDON_TEST_IDP_SECRET", "cordon-secret-0123456789")
        .env("CORDON_TEST_WHSEC", WHSEC);
    c
}

/// The generated read-then-exfiltrate chain (one attack session among benign traffic), with
/// the attacking agent's token id replaced by `token` in that session.
fn generated_chain(dir: &Path, token: &str) -> Vec<Value> {
    let out = dir.join("gen");
    let st = cordon(&[
        "generate",
        "--seed",
        "5",
        "--agents",
        "2",
        "--duration",
        "1h",
        "--attacks",
        "read_then_exfiltrate",
        "--attack-sessions",
        "1",
        "--out",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(st.status.success());
    let labels: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels.json")).unwrap()).unwrap();
    let attack = labels
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, l)| l["label"] == "attack")
        .map(|(s, _)| s.clone())
        .unwrap();
    std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v["mcp.session.id"] == attack.as_str() {
                v["audit.token.jti"] = Value::from(token);
            }
            v
        })
        .collect()
}

fn post_form(port: u16, path: &str, user: &str, pass: &str, form: &str) -> Value {
    // A tiny HTTP/1.1 client: the authorization server is on loopback.
    use base64::Engine as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked or not, the JSON object is the part between the outer braces.
    let (start, end) = (body.find('{').unwrap(), body.rfind('}').unwrap());
    serde_json::from_str(&body[start..=end]).unwrap()
}

fn introspect(port: u16, token: &str) -> Value {
    post_form(
        port,
        "/token/introspection",
        "cordon",
        "cordon-secret-0123456789",
        &format!("token={token}"),
    )
}

fn actions(config: &Path) -> Vec<Value> {
    let o = cordon(&[
        "actions",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detected_chain_revokes_its_token_at_a_real_authorization_server() {
    let idp = oauth();
    let (rx, hook) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), idp.port, &hook);
    // A real token, issued to the agent by client credentials.
    let token = post_form(
        idp.port,
        "/token",
        "agent",
        "agent-secret-0123456789",
        "grant_type=client_credentials",
    )["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(introspect(idp.port, &token)["active"], true);
    let events = generated_chain(dir.path(), &token);
    let alerts = dir.path().join("alerts.jsonl");
    let stats = dir.path().join("stats.json");
    let mut run = cordon(&[
        "run",
        "--input",
        "-",
        "--config",
        config.to_str().unwrap(),
        "--allowed-lateness",
        "0s",
        "--alerts",
        alerts.to_str().unwrap(),
        "--stats",
        stats.to_str().unwrap(),
    ])
    .stdin(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = run.stdin.take().unwrap();
    for e in &events {
        writeln!(stdin, "{e}").unwrap();
    }
    stdin.flush().unwrap();
    // The playbook revokes the token at the authorization server.
    let deadline = Instant::now() + Duration::from_secs(60);
    while introspect(idp.port, &token)["active"] != false {
        assert!(Instant::now() < deadline, "the token was not revoked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent calls again with the revoked token and the gateway lets it through. The
    // runner hands the enforcement to the engine after the IdP's answer reaches it; a second
    // leaves room for a loaded CI machine (the outbox is the run's own, so it cannot be polled).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut again = events
        .iter()
        .rev()
        .find(|e| e["audit.token.jti"] == token.as_str())
        .unwrap()
        .clone();
    let last = events.last().unwrap()["@timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    let t: jiff::Timestamp = last.parse().unwrap();
    again["@timestamp"] = Value::from((t + jiff::SignedDuration::from_secs(60)).to_string());
    again["event.id"] = Value::from("01REUSEAFTERREVOCATION0001");
    again["audit.decision"] = Value::from("allow");
    writeln!(stdin, "{again}").unwrap();
    drop(stdin);
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fired: Vec<String> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["unmapped"]["cordon.rule.id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        fired
            .iter()
            .any(|r| r == "cordon.mcp.chain.secret_read_then_egress"),
        "{fired:?}"
    );
    assert!(
        fired.iter().any(|r| r == "cordon.response.not_enforced"),
        "{fired:?}"
    );
    // Every action succeeded, the token never shown.
    let acts = actions(&config);
    assert!(!acts.is_empty());
    for a in &acts {
        assert_eq!(a["state"], "succeeded", "{a}");
        if let Some(t) = a["params"]["token"].as_str() {
            assert!(t.starts_with("sha256:") && !t.contains(&token), "{a}");
        }
    }
    let kinds: Vec<&str> = acts.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"revoke_token") && kinds.contains(&"quarantine_agent"),
        "{kinds:?}"
    );
    // The gateway and chat got each action once, signed.
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    let eff = rx.effective.lock().unwrap().clone();
    assert!(eff.values().all(|(n, _)| *n == 1), "{eff:?}");
    assert!(eff
        .values()
        .any(|(_, b)| b["type"] == "cordon.quarantine_agent"
            && b["data"]["agent"]
                == events
                    .iter()
                    .find(|e| e["audit.token.jti"] == token.as_str())
                    .unwrap()["gen_ai.agent.id"]));
    // The escalation playbook notified about the unenforced response.
    assert!(eff.values().any(|(_, b)| b["type"] == "cordon.notify"
        && b["data"]["text"].as_str().unwrap().contains("not enforced")));
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(st["response"]["failed"], 0, "{st}");
    assert!(st["response"]["succeeded"].as_u64().unwrap() >= 3, "{st}");
    // The token never reached the logs; the action log has every attempt, as events.
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token));
    let log = std::fs::read_to_string(dir.path().join("actions.jsonl")).unwrap();
    assert!(!log.contains(&token));
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        st["response"]["attempts"].as_u64().unwrap() as usize
    );
    assert!(lines.iter().all(|l| l["type"] == "cordon.action.attempt"));
    assert!(lines
        .iter()
        .any(|l| l["action"]["action"] == "revoke_token" && l["attempt"]["status"] == 200));
}

/// Bad playbooks and bad configurations are refused at start, with where and why, and no
/// secret in the message.
#[test]
fn bad_playbooks_and_configurations_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 1, "http://127.0.0.1:1/hook");
    let pb = dir.path().join("bad.yaml");
    std::fs::write(
        &pb,
        "id: bad\nsteps:\n  - action: revoke_tokn\n    target: idp\n  - action: notify\n    target: chat\n    params: {text: \"{{audit.tokn.jti}}\"}\n  - action: isolate_server\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "console_url",
        &format!("playbooks = [\"{}\"]\nconsole_url", pb.display()),
    );
    std::fs::write(&config, &text).unwrap();
    let input = dir.path().join("empty.jsonl");
    std::fs::write(&input, "").unwrap();
    let run = |config: &Path| {
        cordon(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap()
    };
    let o = run(&config);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "bad.yaml:3:5: step 1: unknown action \"revoke_tokn\"; did you mean revoke_token?"
        ),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:7:") && err.contains("unknown field \"audit.tokn.jti\""),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:8:5: step 3: isolate_server needs a target"),
        "{err}"
    );
    // A target that is not configured.
    std::fs::write(
        &pb,
        "id: ok\nsteps:\n  - action: notify\n    target: pager\n",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&run(&config).stderr).to_string();
    assert!(err.contains("target \"pager\" is not configured"), "{err}");
    // A secret's variable not set: named, the value never shown.
    let o = Command::new(bin())
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .env_remove("CORDON_TEST_IDP_SECRET")
        .env("CORDON_TEST_WHSEC", WHSEC)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("CORDON_TEST_IDP_SECRET") && !err.contains(WHSEC),
        "{err}"
    );
    // The example configuration in the repository is valid (dry run: nothing is called).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("cordon.example.toml");
    let o = Command::new(bin())
        .args([
            "run",
            "--input",
            input.to_str().unwrap(),
            "--config",
            example.to_str().unwrap(),
            "--dry-run",
        ])
        .current_dir(dir.path())
        .env("CORDON_IDP_CLIENT_SECRET", "x")
        .env("CORDON_GATEWAY_WHSEC", WHSEC)
        .env("CORDON_CHAT_WHSEC", WHSEC)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("cordon-outbox.redb").exists());
    // A typo in the configuration file: file, line and column.
    std::fs::write(
        &config,
        text.replace("backoff = \"100ms\"", "bakoff = \"100ms\""),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&run(&config).stderr).to_string();
    assert!(
        err.contains("cordon.toml:") && err.contains("bakoff"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_delivery_then_the_action_completes_once_after_restart() {
    let idp = oauth();
    // The first request is held until Cordon is killed.
    let (rx, hook) = receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), idp.port, &hook);
    // The playbook: quarantine, then notify (webhooks only, so the held request is the
    // first step).
    use_playbook(dir.path(), &config, "id: quarantine\non: {rules: [cordon.mcp.chain.secret_read_then_egress]}\nsteps:\n  - action: quarantine_agent\n    target: gateway\n  - action: notify\n    target: chat\n");
    let events = generated_chain(dir.path(), "tok-kill-9");
    let input = write_events(dir.path(), &events);
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--alerts",
        dir.path()
            .join("alerts.jsonl")
            .to_str()
            .unwrap()
            .to_owned()
            .leak(),
    ];
    let mut first = cordon(&args).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // kill -9 while the request is in flight.
    first.kill().unwrap();
    first.wait().unwrap();
    let pending = actions(&config);
    assert!(
        pending
            .iter()
            .any(|a| a["action"] == "quarantine_agent" && a["state"] == "pending"),
        "{pending:?}"
    );
    // Restart on the same input: the alert comes again, nothing new is planned, and the
    // pending action is delivered with the same idempotency key.
    let out = cordon(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acts = actions(&config);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(acts.iter().all(|a| a["state"] == "succeeded"), "{acts:?}");
    let eff = rx.effective.lock().unwrap().clone();
    assert_eq!(eff.len(), 2, "{eff:?}");
    assert!(eff.values().all(|(n, _)| *n == 1), "{eff:?}");
    let quarantine = acts
        .iter()
        .find(|a| a["action"] == "quarantine_agent")
        .unwrap();
    assert!(eff.contains_key(quarantine["id"].as_str().unwrap()));
}

/// An approval gate through the command line: the playbook holds, `cordon actions approve`
/// records who and why, and the next start delivers what followed the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_from_the_command_line_releases_the_next_step() {
    let (rx, hook) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 1, &hook);
    use_playbook(dir.path(), &config, "id: gated\non: {rules: [cordon.mcp.chain.secret_read_then_egress]}\nsteps:\n  - action: require_approval\n    params: {expires: 1h}\n  - action: isolate_server\n    target: gateway\n");
    let events = generated_chain(dir.path(), "tok-gated");
    let input = write_events(dir.path(), &events);
    let c = config.to_str().unwrap();
    let run = |input: &str| {
        let o = cordon(&["run", "--input", input, "--config", c, "--alerts", "-"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(input.to_str().unwrap());
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        0,
        "nothing before the decision"
    );
    let gate = actions(&config)
        .into_iter()
        .find(|a| a["state"] == "awaiting_approval")
        .unwrap();
    let o = cordon(&[
        "actions",
        "approve",
        gate["id"].as_str().unwrap(),
        "--config",
        c,
        "--by",
        "ana",
        "--reason",
        "confirmed",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Deciding twice is refused.
    let o = cordon(&[
        "actions",
        "deny",
        gate["id"].as_str().unwrap(),
        "--config",
        c,
        "--by",
        "bob",
    ])
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("approved, not awaiting approval"));
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    run(empty.to_str().unwrap());
    let acts = actions(&config);
    let gate = acts
        .iter()
        .find(|a| a["action"] == "require_approval")
        .unwrap();
    assert_eq!(
        (
            gate["state"].as_str(),
            gate["decided_by"].as_str(),
            gate["reason"].as_str()
        ),
        (Some("approved"), Some("ana"), Some("confirmed"))
    );
    assert!(
        acts.iter()
            .any(|a| a["action"] == "isolate_server" && a["state"] == "succeeded"),
        "{acts:?}"
    );
    assert_eq!(rx.effective.lock().unwrap().len(), 1);
}
