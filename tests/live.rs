//! `cordon run --listen`: the API served by the running pipeline, over real sockets. Events
//! stream in on stdin; an alert becomes queryable while the input is still open (the store's
//! flusher); the agent's live profile and the rules in force are served; a bad rule set is
//! refused with its errors and the running set stays, a good one is swapped in; lifecycle
//! changes land; `/metrics` on the admin listener counts the run; alerts reach a SIEM
//! collector that fails its first request; SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used)]

mod common;

use common::{api_key as key, cordon};

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

#[derive(Default)]
struct Collector {
    requests: u32,
    events: Vec<Value>,
    auth: Vec<String>,
}

async fn collect(
    State(c): State<Arc<Mutex<Collector>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut c = c.lock().unwrap();
    c.requests += 1;
    if c.requests == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    c.auth.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    );
    // HEC: JSON objects back to back.
    for v in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        c.events.push(v.unwrap());
    }
    StatusCode::OK
}

const NEW_RULE: &str = "id: test.many_denials\nversion: 1\ntitle: Denied call\n\
description: a denied call\nseverity: low\nquery: |\n  tool where audit.decision == \"deny\"\n";

const BAD_RULE: &str = "id: test.bad\nversion: 1\ntitle: Bad\ndescription: bad\n\
severity: low\nquery: |\n  tool where audit.decison == \"deny\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_api_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Traffic with attacks.
    let o = cordon(&[
        "generate",
        "--seed",
        "5",
        "--agents",
        "20",
        "--duration",
        "3h",
        "--attack-sessions",
        "3",
        "--out",
        d.join("g").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = std::fs::read_to_string(d.join("g/events.jsonl")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    // The built-in packs, copied so the test can edit them.
    let rules = d.join("rules");
    std::fs::create_dir(&rules).unwrap();
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/packs");
    for e in std::fs::read_dir(&packs).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
    }
    let keys = d.join("keys.json");
    let (viewer, analyst, admin) = (
        key(&keys, "viewer"),
        key(&keys, "analyst"),
        key(&keys, "admin"),
    );
    // A SIEM collector that refuses its first request.
    let collector = Arc::new(Mutex::new(Collector::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hec = format!(
        "http://{}/services/collector/event",
        listener.local_addr().unwrap()
    );
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(collect))
        .with_state(collector.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[siem]\nurl = \"{hec}\"\nformat = \"splunk_hec\"\ntoken_env = \"TEST_HEC_TOKEN\"\n\
             batch = 50\nflush_interval = \"200ms\"\nbackoff = \"50ms\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args([
            "run",
            "--input",
            "-",
            "--rules",
            rules.to_str().unwrap(),
            "--alerts",
            d.join("alerts.jsonl").to_str().unwrap(),
            "--store",
            d.join("store").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--keys",
            keys.to_str().unwrap(),
            "--audit",
            d.join("audit.jsonl").to_str().unwrap(),
        ])
        .env("TEST_HEC_TOKEN", "hec-token-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = |what: &str| {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains(what), "{line}");
        line.trim().rsplit("http://").next().unwrap().to_owned()
    };
    let api = format!("http://{}", addr("listen on"));
    let metrics = format!("http://{}/metrics", addr("admin-listen on"));
    let http = reqwest::Client::new();
    let get = |url: String, k: &str| {
        let req = http.get(url).bearer_auth(k);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let post = |url: String, k: &str, body: &str| {
        let req = http
            .post(url)
            .bearer_auth(k)
            .header("content-type", "application/json")
            .body(body.to_owned());
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Stream every event, keeping stdin open: alerts must be queryable while the run goes on.
    let mut stdin = child.stdin.take().unwrap();
    for l in &lines {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    let written = Instant::now();
    let mut alerts = Value::Null;
    for _ in 0..200 {
        let (s, v) = get(format!("{api}/api/v1/alerts?limit=1000"), &viewer).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if !v["alerts"].as_array().unwrap().is_empty() {
            alerts = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = alerts["alerts"]
        .as_array()
        .expect("an alert became queryable while the input was still open");
    eprintln!(
        "first alert queryable {:?} after the events were written",
        written.elapsed()
    );
    let alert_id = first[0]["alert_id"].as_str().unwrap().to_owned();
    let agent = first[0]["agent_id"].as_str().unwrap().to_owned();

    // The agent's live profile and alerts.
    let (s, v) = get(format!("{api}/api/v1/agents/{agent}"), &viewer).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["profile"]["events"].as_u64().unwrap() > 0, "{v}");
    assert!(!v["alerts"].as_array().unwrap().is_empty());

    // Rules in force; a bad set is refused with where, the running set stays.
    let (_, v) = get(format!("{api}/api/v1/rules"), &viewer).await;
    let before = v["rules"].as_array().unwrap().len();
    assert!(before > 20, "{v}");
    std::fs::write(rules.join("zz_bad.yaml"), BAD_RULE).unwrap();
    let (s, v) = post(format!("{api}/api/v1/rules/reload"), &admin, "").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("zz_bad.yaml:7") && err.contains("decison"),
        "{err}"
    );
    let (_, v) = get(format!("{api}/api/v1/rules"), &viewer).await;
    assert_eq!(v["rules"].as_array().unwrap().len(), before);
    let (s, _) = post(format!("{api}/api/v1/rules/reload"), &analyst, "").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    std::fs::remove_file(rules.join("zz_bad.yaml")).unwrap();
    std::fs::write(rules.join("zz_new.yaml"), NEW_RULE).unwrap();
    let (s, v) = post(format!("{api}/api/v1/rules/reload"), &admin, "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["changes"]["added"],
        serde_json::json!(["test.many_denials"])
    );
    assert_eq!(v["changes"]["kept"].as_array().unwrap().len(), before);
    let (_, v) = get(format!("{api}/api/v1/rules"), &viewer).await;
    assert_eq!(v["rules"].as_array().unwrap().len(), before + 1);

    // Work the alert.
    let (s, v) = post(
        format!("{api}/api/v1/alerts/{alert_id}/ack"),
        &analyst,
        r#"{"reason": "looking"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = get(format!("{api}/api/v1/alerts/{alert_id}"), &viewer).await;
    assert_eq!(v["status"], "in_progress", "{v}");

    // Metrics on the admin listener, behind a key.
    let r = http.get(&metrics).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let text = http
        .get(&metrics)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(value("cordon_events_total") as usize, lines.len());
    // Generated records all have the shape the decoder's fast path reads.
    assert_eq!(value("cordon_decode_full_total"), 0.0);
    // Without Kafka no checkpoint's copy shares an engine's state: nothing is copied on write.
    assert_eq!(value("cordon_engine_copies_on_write_total"), 0.0);
    assert!(value("cordon_store_alerts_written_total") >= 1.0);
    assert!(text.contains("cordon_rule_alerts_total{rule="), "{text}");

    // End of input: the API stays up; SIGTERM stops the process cleanly.
    drop(stdin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = get(format!("{api}/api/v1/alerts?limit=1"), &viewer).await;
    assert_eq!(s, StatusCode::OK);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Every alert reached the SIEM, once, after a refused first request.
    let raised = std::fs::read_to_string(d.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .count();
    let c = collector.lock().unwrap();
    assert!(c.requests >= 2);
    assert_eq!(c.events.len(), raised);
    assert!(c.auth.iter().all(|a| a == "Splunk hec-token-1"));
    assert!(c
        .events
        .iter()
        .all(|e| e["event"]["class_uid"] == 2004 && e["sourcetype"] == "ocsf:detection_finding"));
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    assert!(audit.contains("rules.reload.refused") && audit.contains("\"ack\""));
    // The token never shows in the audit log or the alerts.
    assert!(!audit.contains("hec-token-1"));
}
