//! The analyst console in a real browser (Debian's Chromium, driven by `playwright-core` from
//! npm): sign in, see a generated attack's alert appear live, open it and read its chain,
//! approve its pending action and see the action succeed, work the alert, open the agent,
//! run SQL and download CSV; a viewer cannot approve. Screenshots of each page at 1280×800
//! are kept in `target/console-screenshots/`.
//!
//! Needs `chromium` (Debian) and Node.js; `.ci/run` installs both and the npm package.

#![allow(clippy::unwrap_used)]

mod common;

use common::{api_key as key, cordon};

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

fn chromium() -> String {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c.to_owned();
        }
    }
    panic!("Chromium is needed for the console test: apt-get install chromium (or run .ci/run)");
}

const PLAYBOOK: &str = r#"id: hold_then_notify
title: Hold for an analyst, then tell the SOC channel
on:
  rules: ["cordon.mcp.chain.*"]
steps:
  - action: require_approval
    params:
      expires: 2h
  - action: notify
    target: chat
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let npm_dir = root.join("tests/console");
    if !npm_dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&npm_dir)
            .status()
            .expect("npm (Node.js) is needed for the console test");
        assert!(ok.success(), "npm ci in tests/console failed");
    }
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = cordon(&[
        "generate",
        "--seed",
        "11",
        "--agents",
        "6",
        "--duration",
        "1h",
        "--attacks",
        "read_then_exfiltrate",
        "--attack-sessions",
        "1",
        "--out",
        d.join("g").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A chat receiver for the notify step.
    let received = Arc::new(Mutex::new(0u32));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let r = r.clone();
            async move {
                *r.lock().unwrap() += 1;
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    std::fs::create_dir(d.join("playbooks")).unwrap();
    std::fs::write(d.join("playbooks/p.yaml"), PLAYBOOK).unwrap();
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[response]\noutbox = \"{}\"\nplaybooks = [\"{}\"]\n\
             [response.targets.chat]\nkind = \"webhook\"\nurl = \"{hook}\"\nsecret_env = \"CONSOLE_TEST_WHSEC\"\n",
            d.join("outbox.redb").display(),
            d.join("playbooks").display()
        ),
    )
    .unwrap();
    let keys = d.join("keys.json");
    let (responder, viewer) = (key(&keys, "responder"), key(&keys, "viewer"));
    let mut run = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args([
            "run",
            "--input",
            "-",
            "--alerts",
            d.join("alerts.jsonl").to_str().unwrap(),
            "--store",
            d.join("store").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--keys",
            keys.to_str().unwrap(),
        ])
        .env(
            "CONSOLE_TEST_WHSEC",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(run.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit("on ").next().unwrap().to_owned();
    assert!(base.starts_with("http://"), "{line}");
    let shots = root.join("target/console-screenshots");
    let mut node = Command::new("node")
        .arg(npm_dir.join("console.mjs"))
        .env("BASE_URL", &base)
        .env("ANALYST_KEY", &responder)
        .env("VIEWER_KEY", &viewer)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &browser)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(node.stdout.take().unwrap());
    let mut said = String::new();
    out.read_line(&mut said).unwrap();
    assert_eq!(said.trim(), "READY", "the browser did not get to the queue");
    // Now the traffic, attack included, while the page watches.
    let events = std::fs::read_to_string(d.join("g/events.jsonl")).unwrap();
    let mut stdin = run.stdin.take().unwrap();
    stdin.write_all(events.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        (node.wait().unwrap(), rest)
    })
    .await
    .unwrap();
    drop(stdin);
    let _ = run.kill();
    let _ = run.wait();
    assert!(status.0.success(), "the browser test failed: {}", status.1);
    assert!(status.1.contains("DONE"), "{}", status.1);
    assert!(
        *received.lock().unwrap() >= 1,
        "the notify step reached the receiver"
    );
    for page in [
        "01-sign-in",
        "02-alert-queue",
        "03-alert-detail",
        "04-approvals",
        "05-alert-after-approval",
        "06-agent",
        "07-sql",
        "08-viewer-approvals",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{page}");
    }
}
