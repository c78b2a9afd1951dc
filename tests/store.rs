//! The Parquet alert store and read-only SQL over it, through the binary: alerts written by
//! `cordon run --store` come back from `cordon sql` exactly; writes are refused; the memory
//! and row limits fail queries clearly; compaction keeps every alert.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{cordon, sql_json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir.join("alerts")).unwrap() {
        let day = day.unwrap().path();
        for f in std::fs::read_dir(&day).unwrap() {
            out.push(f.unwrap().path().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn alerts_go_to_parquet_and_come_back_by_sql() {
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen");
    let o = cordon(&[
        "generate",
        "--seed",
        "3",
        "--agents",
        "30",
        "--duration",
        "30h",
        "--out",
        gen.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let store = dir.path().join("store");
    let alerts = dir.path().join("alerts.jsonl");
    let run = || {
        let o = cordon(&[
            "run",
            "--input",
            gen.join("events.jsonl").to_str().unwrap(),
            "--alerts",
            alerts.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    run();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 5);
    // Hive-style day partitions, whole files only.
    let fs = files(&store);
    assert!(
        fs.iter()
            .all(|f| f.contains("/date=2026-11-") && f.ends_with(".parquet")),
        "{fs:?}"
    );
    assert!(fs.len() >= 2, "30 hours span two days: {fs:?}");
    // Every alert, with its rule and evidence, by SQL.
    let rows = sql_json(
        &store,
        "SELECT alert_id, rule_id, event_count, evidence FROM alerts ORDER BY alert_id",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), lines.len());
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["finding_info"]["uid"].as_str().unwrap())
        .collect();
    ids.sort();
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    for r in rows {
        let evidence: serde_json::Value =
            serde_json::from_str(r["evidence"].as_str().unwrap()).unwrap();
        assert_eq!(
            evidence.as_array().unwrap().len() as i64,
            r["event_count"].as_i64().unwrap()
        );
    }
    // A day's partition alone.
    let by_day = sql_json(
        &store,
        "SELECT date, count(*) AS n FROM alerts GROUP BY date ORDER BY date",
    );
    let total: i64 = by_day
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(total as usize, lines.len());
    // CSV with a header.
    let o = cordon(&[
        "sql",
        "--store",
        store.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT severity, count(*) AS n FROM alerts GROUP BY severity ORDER BY severity",
    ]);
    assert!(
        text(&o.stdout).starts_with("severity,n\n"),
        "{}",
        text(&o.stdout)
    );

    // A second run replays the same events: the same alerts (same ids), which the store
    // already has, so it adds nothing. Compaction leaves one file per day, losing nothing.
    run();
    let before = files(&store).len();
    let o = cordon(&["store", "compact", "--store", store.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let after = files(&store);
    assert!(after.len() <= before, "{before} → {after:?}");
    assert_eq!(after.len(), by_day.as_array().unwrap().len());
    let n = sql_json(&store, "SELECT count(*) AS n FROM alerts");
    assert_eq!(n[0]["n"].as_i64().unwrap() as usize, lines.len());
}

#[test]
fn sql_is_read_only_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let o = cordon(&[
        "run",
        "--input",
        "tests/data/agentgateway.jsonl",
        "--format",
        "agentgateway",
        "--store",
        store.to_str().unwrap(),
        "--alerts",
        dir.path().join("a.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = store.to_str().unwrap();
    for q in [
        "INSERT INTO alerts VALUES (1)",
        "CREATE TABLE x AS SELECT 1",
        "COPY alerts TO '/tmp/cordon-copy.csv'",
        "DROP TABLE alerts",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; SELECT 2",
    ] {
        let o = cordon(&["sql", "--store", s, q]);
        assert_eq!(o.status.code(), Some(2), "{q}");
        assert!(
            text(&o.stderr).contains("only queries are allowed"),
            "{q}: {}",
            text(&o.stderr)
        );
    }
    assert!(!Path::new("/tmp/cordon-copy.csv").exists());
    // Row limit.
    let o = cordon(&[
        "sql",
        "--store",
        s,
        "--max-rows",
        "0",
        "SELECT * FROM alerts",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("returns more than 0 rows"), "{err}");
    // Memory limit: a cross join sorted on wide columns cannot fit in 1 MiB.
    let o = cordon(&[
        "sql", "--store", s, "--memory-mib", "1", "--max-rows", "100000000",
        "SELECT a.ocsf, b.ocsf FROM alerts a, alerts b, alerts c, alerts d ORDER BY a.ocsf, b.evidence, c.ocsf",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs more memory than its limit of 1 MiB"),
        "{err}"
    );
    // An unknown column: DataFusion's message, exit 2.
    let o = cordon(&["sql", "--store", s, "SELECT agent FROM alerts"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("agent"), "{}", text(&o.stderr));
    // Not a store.
    let o = cordon(&[
        "sql",
        "--store",
        dir.path().join("nope").to_str().unwrap(),
        "SELECT 1",
    ]);
    assert!(text(&o.stderr).contains("not an alert store"));
}

/// `cordon keys create` then `cordon serve`: the key works over HTTP, a missing one does not.
#[test]
fn keys_and_serve() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let o = cordon(&[
        "keys",
        "create",
        "--role",
        "analyst",
        "--name",
        "ana",
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = text(&o.stdout).trim().to_owned();
    assert!(key.starts_with("cordon_") && !std::fs::read_to_string(&keys).unwrap().contains(&key));
    let o = cordon(&[
        "keys",
        "create",
        "--role",
        "root",
        "--name",
        "x",
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("expected viewer, analyst, responder or admin"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args([
            "serve",
            "--store",
            dir.path().join("store").to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_owned();
    let get = |auth: Option<&str>| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let h = auth
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /api/v1/alerts HTTP/1.1\r\nHost: x\r\n{h}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let ok = get(Some(&key));
    let denied = get(None);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    // TLS files that are not there, or a client CA without a certificate: exit 2, saying which.
    let store = dir.path().join("store");
    let base = [
        "serve",
        "--store",
        store.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let o = cordon(
        &[
            &base[..],
            &["--tls-cert", "/nope/cert.pem", "--tls-key", "/nope/key.pem"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--tls-cert /nope/cert.pem"),
        "{}",
        text(&o.stderr)
    );
    let o = cordon(&[&base[..], &["--client-ca", "/nope/ca.pem"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--tls-cert"),
        "{}",
        text(&o.stderr)
    );
}

/// A real S3 protocol peer on loopback: moto's server (`pip install 'moto[server]'`). If the
/// module is missing the server exits at once and the test fails on the connection wait.
struct S3 {
    child: std::process::Child,
    port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn s3() -> S3 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 for moto's S3 server: pip install 'moto[server]', or run .ci/run");
    let s = S3 { child, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(http(port, "PUT", "/cordon-test").starts_with("HTTP/1.1 200"));
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "moto's S3 server did not listen on {port}: is it installed? pip install 'moto[server]'"
    );
}

#[test]
fn an_object_store_url_holds_the_store() {
    let s3 = s3();
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen");
    let o = cordon(&[
        "generate",
        "--seed",
        "4",
        "--agents",
        "20",
        "--duration",
        "6h",
        "--out",
        gen.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let url = "s3://cordon-test/soc/store";
    let env = [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", s3.port)),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .output()
            .unwrap()
    };
    let alerts = dir.path().join("alerts.jsonl");
    let store_run = |input: &Path| {
        let o = run(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--alerts",
            alerts.to_str().unwrap(),
            "--store",
            url,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    // Two runs over different traffic on the same days: two files per day, then compaction.
    let gen2 = dir.path().join("gen2");
    let o = cordon(&[
        "generate",
        "--seed",
        "5",
        "--agents",
        "20",
        "--duration",
        "6h",
        "--out",
        gen2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    store_run(&gen.join("events.jsonl"));
    store_run(&gen2.join("events.jsonl"));
    let raised = std::fs::read_to_string(&alerts).unwrap().lines().count();
    assert!(raised > 0);
    let count = |q: &str| -> i64 {
        let o = run(&["sql", "--store", url, "--format", "json", q]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["n"].as_i64().unwrap()
    };
    let q = "SELECT count(*) AS n FROM alerts";
    assert_eq!(count(q) as usize, raised);
    // A replay of the first input raises the same alerts (same ids): the store keeps one each.
    store_run(&gen.join("events.jsonl"));
    assert_eq!(count(q) as usize, raised, "a replay adds no rows");
    let listing = |port| {
        let l = http(
            port,
            "GET",
            "/cordon-test?list-type=2&prefix=soc/store/alerts/",
        );
        l.matches(".parquet</Key>").count()
    };
    let before = listing(s3.port);
    let o = run(&["store", "compact", "--store", url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let after = listing(s3.port);
    assert!(after < before, "{before} files, then {after}");
    assert_eq!(count(q) as usize, raised, "compaction keeps every alert");
    assert_eq!(
        count("SELECT count(DISTINCT alert_id) AS n FROM alerts") as usize,
        raised
    );
    // A URL the object_store crate does not know is a clear error naming it.
    let o = run(&["sql", "--store", "ftp://x/y", q]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("ftp://x/y"), "{}", text(&o.stderr));
}
