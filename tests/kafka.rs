//! `cordon run --kafka` against a real Kafka-protocol broker (`tansu`, started on a free
//! loopback port): generated events produced to a 4-partition topic give exactly the alerts
//! `cordon run --input` gives on the same file; alerts reach the alerts topic keyed by agent;
//! an undecodable record reaches the dead-letter topic with its origin and reason in headers;
//! a kill -9 after everything was read (all of it still held in the reorder buffer) commits
//! nothing it had not processed, so the next run in the group reads it all again and gives the
//! same alerts; SIGTERM drains, commits and exits 0, and a third run reads nothing.
//!
//! Needs `tansu` (`cargo install tansu --locked --features dynostore`; `.ci/run` installs it).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{api_key, cordon};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

struct Broker {
    child: Child,
    addr: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = Path::new(&home).join(".cargo/bin/tansu");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("tansu")
}

fn broker() -> Broker {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu: cargo install tansu --locked --features dynostore (or run .ci/run)");
    let b = Broker {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&b.addr).is_ok() {
            for (topic, partitions) in [("events", "4"), ("alerts", "1"), ("dead", "1")] {
                let o = Command::new(tansu())
                    .args([
                        "topic",
                        "create",
                        topic,
                        "--partitions",
                        partitions,
                        "--broker",
                        &url,
                    ])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            return b;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("tansu did not listen on {port}");
}

fn alert_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["finding_info"]["uid"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn drain(addr: &str, topic: &str, want: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    for _ in 0..300 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
        if out.len() >= want {
            // A little longer, to see that nothing more comes.
            for _ in 0..10 {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    out.push(m.detach());
                }
            }
            break;
        }
    }
    out
}

#[test]
fn kafka_input_gives_the_file_runs_alerts() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = cordon(&[
        "generate",
        "--seed",
        "9",
        "--agents",
        "20",
        "--duration",
        "2h",
        "--attack-sessions",
        "3",
        "--out",
        d.join("g").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let events = d.join("g/events.jsonl");
    let o = cordon(&[
        "run",
        "--input",
        events.to_str().unwrap(),
        "--alerts",
        d.join("ref.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = alert_ids(&d.join("ref.jsonl"));
    assert!(reference.len() > 5);
    // Produce every event keyed by agent (one agent's events stay in order), plus one bad one.
    let text = std::fs::read_to_string(&events).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .create()
        .unwrap();
    let mut sent = 0;
    for line in text.lines().chain(std::iter::once("{not json")) {
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["gen_ai.agent.id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut rec = BaseRecord::to("events").key(&key).payload(line);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(20));
                    rec = r;
                }
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let keys = d.join("keys.json");
    let key = api_key(&keys, "viewer");
    // A short session timeout: the killed consumer's partitions go to the next run in seconds
    // instead of librdkafka's default 45 s.
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-test\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ndead_letter_topic = \"dead\"\ncommit_interval = \"200ms\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
            b.addr
        ),
    )
    .unwrap();
    let run = |alerts: &Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args([
                "run",
                "--kafka",
                "--config",
                config.to_str().unwrap(),
                "--alerts",
                alerts.to_str().unwrap(),
                // Partitions are read side by side, not in time order: hold events long
                // enough that the engine sees each agent's calls in order.
                "--allowed-lateness",
                "24h",
                "--store",
                d.join("store").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--keys",
                keys.to_str().unwrap(),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        for _ in 0..2 {
            line.clear();
            std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        }
        let metrics = line.trim().rsplit("on ").next().unwrap().to_owned();
        (child, metrics, err)
    };
    let records = |metrics: &str| -> u64 {
        let text = http::get(metrics, &key);
        text.lines()
            .find(|l| l.starts_with("cordon_records_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let consume_all = |metrics: &str| {
        let url = format!("{metrics}/metrics");
        let mut seen = 0;
        for _ in 0..600 {
            seen = records(&url);
            if seen >= sent {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(seen, sent, "every record consumed");
    };
    // 1. Read everything, let several commit intervals pass, then kill -9: every event is
    // still in the reorder buffer (24 h of lateness), so no offset may have been committed.
    let (mut killed, metrics, _err) = run(&d.join("killed.jsonl"));
    consume_all(&metrics);
    std::thread::sleep(Duration::from_millis(800));
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(alert_ids(&d.join("killed.jsonl")).is_empty());
    // 2. The next run reads it all again; SIGTERM releases, makes durable, commits.
    let (mut child, metrics, _err) = run(&d.join("kafka.jsonl"));
    consume_all(&metrics);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    assert_eq!(
        alert_ids(&d.join("kafka.jsonl")),
        reference,
        "the file run's alerts"
    );
    // The alerts topic: every alert, keyed by agent.
    let on_topic = drain(&b.addr, "alerts", reference.len());
    assert_eq!(on_topic.len(), reference.len());
    assert!(on_topic
        .iter()
        .all(|m| m.key().is_some_and(|k| k.starts_with(b"agent-"))));
    // The dead letter: the bad record, where it came from and why (once per run that read it).
    let dead = drain(&b.addr, "dead", 2);
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload(), Some(&b"{not json"[..]));
    let headers = dead[0].headers().unwrap();
    let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
    assert_eq!(
        names,
        [
            "cordon.source.topic",
            "cordon.source.partition",
            "cordon.source.offset",
            "cordon.reason"
        ]
    );
    // 3. Committed: a third run in the group reads nothing and raises nothing.
    let (mut again, metrics, _err) = run(&d.join("again.jsonl"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(records(&format!("{metrics}/metrics")), 0);
    let pid = again.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(again.wait().unwrap().success());
    assert!(alert_ids(&d.join("again.jsonl")).is_empty());
}

/// A blocking GET with a bearer key, on plain TCP (the test has no blocking HTTP client).
mod http {
    pub fn get(url: &str, key: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut s) = std::net::TcpStream::connect(host) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}
