//! `cordon run --kafka` against a real Kafka-protocol broker (`tansu`, started on a free
//! loopback port): generated events produced to a 4-partition topic give exactly the alerts
//! `cordon run --input` gives on the same file; alerts reach the alerts topic keyed by agent;
//! an undecodable record reaches the dead-letter topic with its origin and reason in headers;
//! a kill -9 after everything was read (all of it still held in the reorder buffer) commits
//! nothing it had not processed, so the next run in the group reads it all again and gives the
//! same alerts; SIGTERM drains, commits and exits 0, and a third run reads nothing.
//!
//! With partition state checkpointed to a shared store, a million events read by two
//! instances in one group, one of them killed with SIGKILL mid-stream and restarted, give
//! exactly the file run's alerts, and the shared alert store holds each once.
//!
//! Records too large for the producer (a 1.5 MB bad record, an alert carrying 1 MB of tool
//! arguments) are cut to fit rather than stop the stream; an alert the broker never takes
//! stops the run uncommitted, and the next run puts every alert on the topic. The broker
//! unreachable for longer than the group session (a relay that closes and refuses every
//! connection): the run keeps going, gets its partitions back with their state, and gives
//! the file run's alerts; SIGTERM while it is away exits 1 within `shutdown_timeout`.
//!
//! Gateways of several kinds in one group are each read in their topic's format
//! (`[kafka.formats]`), and a backlog fifty-five times `prefetch_bytes` waits in the broker
//! while a slow run works through it, not in the run's memory.
//!
//! Needs `tansu` (`cargo install tansu --locked --features dynostore`; `.ci/run` installs it).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::broker::broker;
use common::http;
use common::{api_key, cordon, sql_json};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

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

/// A client of the broker at `addr` (plain TCP; add TLS settings to the result).
fn client(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr);
    c
}

/// Reads `topic` from the start until `want` records came and a second passed quietly.
fn drain(client: &ClientConfig, topic: &str, want: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = client
        .clone()
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while std::time::Instant::now() < deadline && quiet < 10 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                quiet = 0;
            }
            // Once enough came, a second of quiet says nothing more is coming.
            _ if out.len() >= want => quiet += 1,
            _ => {}
        }
    }
    out
}

/// The ids of the alerts on the `alerts` topic (read as [`drain`] does, `want` expected).
fn topic_alert_ids(client: &ClientConfig, want: usize) -> BTreeSet<String> {
    drain(client, "alerts", want)
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            v["finding_info"]["uid"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Counts the records of `topic` from the start: until `want` came and a second passed
/// quietly (so extras are seen too), at most two minutes.
fn count(client: &ClientConfig, topic: &str, want: usize) -> usize {
    let c: BaseConsumer = client
        .clone()
        .set("group.id", format!("counter-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut n, mut quiet) = (0, 0);
    while std::time::Instant::now() < deadline && quiet < 10 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                n += 1;
                quiet = 0;
            }
            _ if n >= want => quiet += 1,
            _ => {}
        }
    }
    n
}

/// A `cordon run --kafka` child whose stderr is drained by a thread (kept for failures).
struct Running {
    child: Child,
    metrics: String,
    api: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    fn spawn(config: &Path, alerts: &Path, store: &Path, keys: &Path) -> Running {
        Running::spawn_with(config, alerts, store, keys, &[])
    }

    fn spawn_with(
        config: &Path,
        alerts: &Path,
        store: &Path,
        keys: &Path,
        extra: &[&str],
    ) -> Running {
        Running::spawn_env(config, alerts, store, keys, extra, &[])
    }

    fn spawn_env(
        config: &Path,
        alerts: &Path,
        store: &Path,
        keys: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args([
                "run",
                "--kafka",
                "--config",
                config.to_str().unwrap(),
                "--alerts",
                alerts.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--keys",
                keys.to_str().unwrap(),
            ])
            .args(extra)
            .env(
                "CORDON_LOG",
                std::env::var("CORDON_TEST_LOG")
                    .unwrap_or("info,cordon::kafka=debug,librdkafka=debug".into()),
            )
            .env("CORDON_IDP_CLIENT_SECRET", "x")
            .env(
                "CORDON_GATEWAY_WHSEC",
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            )
            .env(
                "CORDON_CHAT_WHSEC",
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            )
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut metrics = String::new();
        let mut api = String::new();
        let mut line = String::new();
        while metrics.is_empty() {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
            log.lock().unwrap().push_str(&line);
            if line.contains("admin-listen on") {
                metrics = line.trim().rsplit("on ").next().unwrap().to_owned();
            } else if line.contains(": listen on") {
                api = line.trim().rsplit("on ").next().unwrap().to_owned();
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Running {
            child,
            metrics: format!("{metrics}/metrics"),
            api,
            log,
        }
    }

    /// The value of a metric (summed over its labels).
    fn metric(&self, key: &str, name: &str) -> f64 {
        http::get(&self.metrics, key)
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The status code of a GET on the API listener (`/readyz`).
    fn status(&self, path: &str) -> u16 {
        let url = format!("{}{path}", self.api);
        http::get(&url, "")
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// `(partition, lag)` as the instance reports it.
    fn lags(&self, key: &str) -> Vec<(String, f64)> {
        http::get(&self.metrics, key)
            .lines()
            .filter(|l| l.starts_with("cordon_kafka_consumer_lag{"))
            .filter_map(|l| {
                let p = l
                    .split("partition=\"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .to_owned();
                Some((p, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    }

    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "exit {status}:\n{log}");
        log
    }

    /// Waits at most `secs` for the instance to exit by itself: its status and log.
    fn exit_within(mut self, secs: u64) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The drain thread has the last lines once the pipe closed.
                std::thread::sleep(Duration::from_millis(200));
                return (status, self.log.lock().unwrap().clone());
            }
            if std::time::Instant::now() > deadline {
                let log = self.log.lock().unwrap().clone();
                self.kill9();
                panic!("still running after {secs} s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the instance is still running.
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Produces every line keyed by its agent (an agent's events stay in order in one
/// partition); lines of `partitioned` go to the partition given.
fn produce(client: &ClientConfig, lines: &[&str], partitioned: &[(i32, String)]) {
    // Idempotent: a retried produce request must not put a record in twice or out of order
    // (the test compares with the file, record for record).
    let producer: BaseProducer = client
        .clone()
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for line in lines {
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["gen_ai.agent.id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        common::broker::send(
            &producer,
            BaseRecord::to("events").key(key.as_str()).payload(*line),
        );
    }
    for (p, line) in partitioned {
        common::broker::send(
            &producer,
            BaseRecord::to("events")
                .key("sentinel")
                .payload(line.as_str())
                .partition(*p),
        );
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    // Read back (tansu's ListOffsets reports one partition's end for all of them, so the
    // watermarks cannot be summed): a lost or doubled record would make the comparison
    // with the file run meaningless.
    let want = lines.len() + partitioned.len();
    let have = count(client, "events", want);
    assert_eq!(have, want, "records in the topic after producing");
}

#[test]
fn kafka_input_gives_the_file_runs_alerts() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(
        d,
        &[
            "--seed",
            "9",
            "--agents",
            "20",
            "--duration",
            "2h",
            "--attack-sessions",
            "3",
        ],
    );
    let reference = file_run(d, &events, &[]);
    assert!(reference.len() > 5);
    // Produce every event keyed by agent (one agent's events stay in order), plus one bad one.
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().chain(std::iter::once("{not json")).collect();
    produce(&client(&b.addr), &lines, &[]);
    let sent = lines.len() as u64;
    let keys = d.join("keys.json");
    let key = api_key(&keys, "viewer");
    // A short session timeout: the killed consumer's partitions go to the next run in seconds
    // instead of librdkafka's default 45 s; `debug = "cgrp"` puts the group protocol's steps
    // in the instance's log (printed if a run reads nothing). Three engine threads for four
    // partitions: lanes move between threads as they take turns.
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-test\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ndead_letter_topic = \"dead\"\ncommit_interval = \"200ms\"\n\
             workers = 3\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"debug\" = \"cgrp\"\n",
            b.addr
        ),
    )
    .unwrap();
    let store = d.join("store");
    // Partitions are read side by side, not in time order: events are held long enough that
    // the engine sees each agent's calls in order.
    let run = |alerts: &Path| {
        Running::spawn_with(
            &config,
            alerts,
            &store,
            &keys,
            &["--allowed-lateness", "24h"],
        )
    };
    let records = |r: &Running| -> u64 { r.metric(&key, "cordon_records_total") as u64 };
    // The group forms within seconds; two minutes leave room for a loaded machine. On
    // failure the instance's log, with librdkafka's group debugging (`cgrp`), shows what
    // the broker answered it.
    let consume_all = |r: &Running| {
        let mut seen = 0;
        for _ in 0..1200 {
            seen = records(r);
            if seen >= sent {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            seen,
            sent,
            "every record consumed; the instance's log:\n{}",
            r.log.lock().unwrap()
        );
    };
    // 1. Read everything, let several commit intervals pass, then kill -9: every event is
    // still in the reorder buffer (24 h of lateness), so no offset may have been committed.
    let killed = run(&d.join("killed.jsonl"));
    consume_all(&killed);
    // Fetched is not yet run: on a busy machine the bad record's job can still be waiting
    // for an engine thread. Its dead letter must be on the topic before the kill, so that
    // both runs are seen to write one (the offset is never committed past it).
    assert_eq!(
        count(&client(&b.addr), "dead", 1),
        1,
        "the first run's dead letter"
    );
    std::thread::sleep(Duration::from_millis(800));
    killed.kill9();
    // The next run joins only once the broker must have seen the killed member's session
    // (6 s) time out. tansu 0.6 can otherwise leave the group with no partitions for anyone:
    // a new member that joins while the dead one still leads waits 3 s as a follower; if the
    // dead leader's session runs out in those 3 s, the broker drops it while answering the
    // follower's SyncGroup, hands the follower an empty assignment and makes it leader, and
    // every later heartbeat succeeds (seen here in about one run in five, and in CI). With
    // the session already over, the join itself drops the dead member and the newcomer leads.
    std::thread::sleep(Duration::from_millis(7_000));
    assert!(alert_ids(&d.join("killed.jsonl")).is_empty());
    // 2. The next run reads it all again; SIGTERM releases, makes durable, commits.
    let second = run(&d.join("kafka.jsonl"));
    consume_all(&second);
    // Every record's delay from its Kafka timestamp is in the histogram once it has run.
    let value = |name: &str| -> f64 {
        http::get(&second.metrics, &key)
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    for _ in 0..100 {
        if value("cordon_kafka_record_delay_seconds_count") >= sent as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        value("cordon_kafka_record_delay_seconds_count"),
        sent as f64
    );
    assert_eq!(
        value("cordon_kafka_record_delay_seconds_bucket{le=\"+Inf\"}"),
        sent as f64
    );
    // Produced before this run started: each waited at least a little.
    assert!(value("cordon_kafka_record_delay_seconds_sum") > 0.0);
    assert_eq!(value("cordon_kafka_run_delay_seconds_count"), sent as f64);
    second.terminate();
    assert_eq!(
        alert_ids(&d.join("kafka.jsonl")),
        reference,
        "the file run's alerts"
    );
    // The alerts topic: every alert, keyed by agent.
    let on_topic = drain(&client(&b.addr), "alerts", reference.len());
    assert_eq!(on_topic.len(), reference.len());
    assert!(on_topic
        .iter()
        .all(|m| m.key().is_some_and(|k| k.starts_with(b"agent-"))));
    // The dead letter: the bad record, where it came from and why (once per run that read it).
    let dead = drain(&client(&b.addr), "dead", 2);
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
            "cordon.reason",
            "cordon.format"
        ]
    );
    assert_eq!(
        dead[0].headers().unwrap().get(4).value,
        Some(&b"native"[..])
    );
    // 3. Committed: a third run in the group reads nothing and raises nothing — once it holds
    // every partition (before that, reading nothing would prove nothing).
    let again = run(&d.join("again.jsonl"));
    wait_until(
        120,
        "the third run to hold every partition",
        &[&again],
        || again.metric(&key, "cordon_kafka_assigned_partitions") == 4.0,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(records(&again), 0);
    let lags = again.lags(&key);
    assert!(lags.iter().all(|(_, l)| *l == 0.0), "{lags:?}");
    again.terminate();
    assert!(alert_ids(&d.join("again.jsonl")).is_empty());
}

/// The test broker itself: a consumer that starts in the middle of a producer batch gets
/// the rest of that batch, as from Apache Kafka. Stock tansu 0.6.0 skips to the next batch,
/// which loses the records a restored partition resumes from (`.ci/tansu.sh` builds it with
/// the fix); every hand-over test depends on this.
#[test]
fn the_broker_resumes_in_the_middle_of_a_batch() {
    let b = broker();
    let p: BaseProducer = client(&b.addr)
        .set("linger.ms", "200")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Ten records sent together go as one batch; then a second batch of ten.
    for round in 0..2 {
        for i in 0..10 {
            let payload = format!("{round}-{i}");
            p.send(
                BaseRecord::to("events")
                    .partition(0)
                    .key("k")
                    .payload(&payload),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }
    let c: BaseConsumer = client(&b.addr)
        .set("group.id", "mid-batch")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("events", 0, rdkafka::Offset::Offset(4))
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 16 && std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            got.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            ));
        }
    }
    let want: Vec<(i64, String)> = (4..20)
        .map(|o| (o, format!("{}-{}", o / 10, o % 10)))
        .collect();
    assert_eq!(
        got, want,
        "records from offset 4 on (a broker that skips the rest of the first batch fails here)"
    );
}

/// Joins `group` as a member that reads nothing and commits nothing, until it has an
/// assignment (at most 30 s), then leaves: the broker rebalances the group twice.
fn nudge(addr: &str, group: &str) {
    let c: BaseConsumer = client(addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&["events"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline && c.assignment().map_or(0, |a| a.count()) == 0 {
        let _ = c.poll(Duration::from_millis(100));
    }
    c.unsubscribe();
    drop(c);
}

/// Waits for `ok`, at most `secs` seconds; panics with `what` and the instances' logs.
fn wait_until(secs: u64, what: &str, logs: &[&Running], mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: Vec<String> = logs.iter().map(|r| r.log.lock().unwrap().clone()).collect();
    panic!(
        "timed out waiting for {what}; logs:\n{}",
        logs.join("\n----\n")
    );
}

/// The issue's contract: a million generated events through a 4-partition topic, read by two
/// instances in one group with their partition state checkpointed to a shared store; one is
/// killed with SIGKILL mid-stream (its partitions and state go to the other) and restarted
/// (partitions come back to it with their state). Together they give exactly the alerts of
/// `cordon run --input` on the same file, and the shared alert store holds each alert once.
#[test]
fn partitions_and_their_state_move_between_instances() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(
        d,
        &[
            "--seed",
            "11",
            "--agents",
            "300",
            "--duration",
            "140h",
            "--attack-sessions",
            "8",
        ],
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 1_000_000, "{} events", lines.len());
    // Two late benign events per partition, days after the traffic: the first moves each
    // partition's event time past every open window (so what `--input` closes at the end of
    // its file is closed in the stream too); the second stays in the reorder buffer in both.
    let sentinels: Vec<(i32, String)> = (0..4)
        .flat_map(|p| {
            [14, 15].map(|day| {
                (
                    p,
                    format!(
                        r#"{{"event.id":"sentinel-{p}-{day}","@timestamp":"2026-11-{day}T00:00:00Z","gen_ai.agent.id":"sentinel-{p}","mcp.method.name":"tools/list","audit.decision":"allow"}}"#
                    ),
                )
            })
        })
        .collect();
    let mut all = text.clone();
    for (_, l) in &sentinels {
        all.push_str(l);
        all.push('\n');
    }
    std::fs::write(d.join("all.jsonl"), &all).unwrap();
    drop(all);
    let o = cordon(&[
        "run",
        "--input",
        d.join("all.jsonl").to_str().unwrap(),
        "--alerts",
        d.join("ref.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = alert_ids(&d.join("ref.jsonl"));
    assert!(reference.len() > 100, "{} alerts", reference.len());
    // Half of the traffic now, the rest once the killed instance's partitions have moved:
    // the survivor must read on from the state it restored, or it writes no checkpoint of
    // those partitions and their old chains rightly stay. (Produced all at once, a fast build
    // had now and then read the topic to its end before the kill.)
    let half = lines.len() / 2;
    produce(&client(&b.addr), &lines[..half], &[]);

    let keys = d.join("keys.json");
    let key = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-pair\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ndead_letter_topic = \"dead\"\n\
             state_store = \"{}\"\ncommit_interval = \"500ms\"\nstats_interval = \"500ms\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
            b.addr,
            d.join("state").display()
        ),
    )
    .unwrap();
    let store = d.join("store");
    let one = Running::spawn(&config, &d.join("one.jsonl"), &store, &keys);
    let two = Running::spawn(&config, &d.join("two.jsonl"), &store, &keys);
    let records = |r: &Running| r.metric(&key, "cordon_records_total");
    let holds = |r: &Running| r.metric(&key, "cordon_kafka_assigned_partitions") > 0.0;
    // Both must hold partitions when one is killed: with a fast broker, the first to join
    // can read a third of the topic alone before the other is in the group, and killing a
    // member that holds nothing hands nothing over.
    wait_until(
        300,
        "both instances holding partitions and a third of the first half read",
        &[&one, &two],
        || holds(&one) && holds(&two) && records(&one) + records(&two) >= half as f64 / 3.0,
    );
    let one_log = one.log.clone();
    let one_held = one.metric(&key, "cordon_kafka_assigned_partitions");
    // Its checkpoints so far count with the others' below: when the survivors read the rest
    // quickly, a partition may reach its end with one checkpoint (a chain's first is full).
    let one_deltas = one.metric(&key, "cordon_kafka_checkpoint_deltas_total");
    one.kill9();
    // The survivor gets every partition once the killed member's session times out, each
    // restored from the last checkpoint the killed one wrote. tansu 0.6 now and then never
    // starts that rebalance (seen in about one run in five, with the survivor idle at two
    // partitions and nothing logged): after a minute a member joins and leaves the group
    // without committing anything, which makes the broker rebalance, as any join would.
    let owns_all = || two.metric(&key, "cordon_kafka_assigned_partitions") == 4.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !owns_all() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if !owns_all() {
        eprintln!(
            "the broker did not rebalance after the kill (survivor: {} partitions, {} rebalances); nudging the group",
            two.metric(&key, "cordon_kafka_assigned_partitions"),
            two.metric(&key, "cordon_kafka_rebalances_total")
        );
        nudge(&b.addr, "cordon-pair");
    }
    wait_until(150, "the survivor to own all partitions", &[&two], owns_all);
    assert!(
        two.metric(&key, "cordon_kafka_restores_total") >= 1.0,
        "the survivor restored no partition state (the killed one held {one_held} partitions); its log:\n{}",
        two.log.lock().unwrap()
    );
    produce(&client(&b.addr), &lines[half..], &sentinels);
    drop(lines);
    drop(text);
    // A restart: partitions move back, handed over with their state.
    let again = Running::spawn(&config, &d.join("again.jsonl"), &store, &keys);
    // What is seen, printed as it changes (shown if the wait fails).
    let mut seen = String::new();
    wait_until(
        300,
        "every partition read to its end",
        &[&two, &again],
        || {
            let mut lags = two.lags(&key);
            lags.extend(again.lags(&key));
            let owned = two.metric(&key, "cordon_kafka_assigned_partitions")
                + again.metric(&key, "cordon_kafka_assigned_partitions");
            let now = format!("owned {owned}, lags {lags:?}");
            if now != seen {
                eprintln!("{now}");
                seen = now;
            }
            owned == 4.0
                && again.metric(&key, "cordon_kafka_assigned_partitions") > 0.0
                && lags.len() == 4
                && lags.iter().all(|(_, n)| *n == 0.0)
        },
    );
    assert!(again.metric(&key, "cordon_kafka_restores_total") >= 1.0);
    assert!(two.metric(&key, "cordon_kafka_rebalances_total") >= 3.0);
    assert_eq!(two.status("/readyz"), 200);
    assert_eq!(again.status("/readyz"), 200);
    // Offsets a partition passed over with no record: none in this topic (no transactions,
    // no compaction), so any would be records the broker did not return.
    let skipped = two.metric(&key, "cordon_kafka_offsets_skipped_total")
        + again.metric(&key, "cordon_kafka_offsets_skipped_total");
    // Records sent again below the offset a partition's state reflects: none from a broker
    // that sends each batch once (stock tansu sent thousands here).
    let repeated = two.metric(&key, "cordon_kafka_records_repeated_total")
        + again.metric(&key, "cordon_kafka_records_repeated_total");
    // Checkpoints are chains: the instances that restored a partition started chains of
    // their own and deleted the old chains' files.
    let deleted = two.metric(&key, "cordon_kafka_checkpoint_files_deleted_total")
        + again.metric(&key, "cordon_kafka_checkpoint_files_deleted_total");
    let undeleted = two.metric(&key, "cordon_kafka_checkpoint_delete_failures_total")
        + again.metric(&key, "cordon_kafka_checkpoint_delete_failures_total");
    // After a chain's first checkpoint, the rules' state is written as deltas: the restores
    // above read full checkpoints and the deltas after them (the killed instance's count is
    // read just before the kill).
    let deltas = one_deltas
        + two.metric(&key, "cordon_kafka_checkpoint_deltas_total")
        + again.metric(&key, "cordon_kafka_checkpoint_deltas_total");
    let logs = [
        one_log.lock().unwrap().clone(),
        two.terminate(),
        again.terminate(),
    ];

    let mut got = alert_ids(&d.join("one.jsonl"));
    got.extend(alert_ids(&d.join("two.jsonl")));
    got.extend(alert_ids(&d.join("again.jsonl")));
    let missing: Vec<_> = reference.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&reference).take(5).collect();
    // Events refused as late (or undecodable) land on the dead-letter topic: the file run
    // refuses none, so any here means records reached an engine out of order.
    let dead = if got == reference {
        0
    } else {
        count(&client(&b.addr), "dead", 1)
    };
    if got != reference {
        keep_evidence(d, &logs, &reference, &got);
    }
    assert!(
        got == reference,
        "{} alerts, {} expected; missing {missing:?}, extra {extra:?}; {dead} records on the dead-letter topic; {skipped} offsets skipped; what the instances said:\n{}",
        got.len(),
        reference.len(),
        logs.iter()
            .map(|log| log
                .lines()
                .filter(|l| ["WARN", "ERROR", "restored", "released", "no checkpoint", "duplicate"]
                    .iter()
                    .any(|w| l.contains(w)))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    assert_eq!(skipped, 0.0, "offsets skipped by the survivors");
    assert_eq!(repeated, 0.0, "records the broker sent twice");
    assert!(deleted > 0.0, "no old checkpoint file was deleted");
    assert!(deltas > 0.0, "no checkpoint was written as a delta");
    assert_eq!(undeleted, 0.0, "old checkpoint files left behind");
    // What is left of the chains: each partition's files (a chain is at most 64; a file
    // written by the killed instance after its last head may be left over).
    for p in 0..4 {
        let dir = d
            .join("state")
            .join("cordon-pair")
            .join("events")
            .join(p.to_string());
        let n = std::fs::read_dir(&dir).map_or(0, |r| r.count());
        assert!(
            (1..=65).contains(&n),
            "{n} checkpoint files in {}",
            dir.display()
        );
    }
    // The shared store: every alert, whichever instance raised it (and raised it again on
    // replay). The instances dedupe against each other's recent files, which leaves a rare
    // race (a replay racing the other's write: seen as 7 extra rows in 1 of 8 runs); copies
    // are reported, and compaction must leave one row per alert.
    let counts = || {
        let v = sql_json(
            &store,
            "SELECT count(*) AS n, count(DISTINCT alert_id) AS d FROM alerts",
        );
        (v[0]["n"].as_u64().unwrap(), v[0]["d"].as_u64().unwrap())
    };
    let (rows, distinct) = counts();
    assert_eq!(distinct as usize, reference.len());
    eprintln!("alert store: {rows} rows for {distinct} alerts before compaction");
    if rows != distinct {
        keep_evidence(d, &logs, &reference, &got);
    }
    let o = cordon(&["store", "compact", "--store", store.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        counts(),
        (distinct, distinct),
        "one row per alert after compaction"
    );
    // The alerts topic (at least once): every alert.
    let on_topic = topic_alert_ids(&client(&b.addr), reference.len());
    assert_eq!(on_topic, reference);
}

/// After a failed comparison, or copies in the store: keeps every instance's whole log, each
/// differing alert (with the instance that raised it) and the alert store in a directory that
/// outlives the test, and says where.
fn keep_evidence(d: &Path, logs: &[String], reference: &BTreeSet<String>, got: &BTreeSet<String>) {
    let keep = std::env::temp_dir().join(format!("cordon-pair-{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    for (name, log) in ["one", "two", "again"].iter().zip(logs) {
        std::fs::write(keep.join(format!("{name}.log")), log).unwrap();
    }
    // The shared alert store as the instances left it (which instance wrote which file shows
    // in the files' times against the logs).
    let mut dirs = vec![std::path::PathBuf::from("store")];
    while let Some(rel) = dirs.pop() {
        std::fs::create_dir_all(keep.join(&rel)).unwrap();
        for e in std::fs::read_dir(d.join(&rel))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rel = rel.join(e.file_name());
            if e.path().is_dir() {
                dirs.push(rel);
            } else {
                let _ = std::fs::copy(e.path(), keep.join(&rel));
            }
        }
    }
    let mut diff = String::new();
    for (file, wanted) in [
        ("ref", false),
        ("one", true),
        ("two", true),
        ("again", true),
    ] {
        let text = std::fs::read_to_string(d.join(format!("{file}.jsonl"))).unwrap_or_default();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let id = v["finding_info"]["uid"].as_str().unwrap_or_default();
            let differs = if wanted {
                !reference.contains(id)
            } else {
                !got.contains(id)
            };
            if differs {
                diff.push_str(&format!("{file}: {l}\n"));
            }
        }
    }
    std::fs::write(keep.join("differing-alerts.jsonl"), &diff).unwrap();
    eprintln!("logs and the differing alerts kept in {}", keep.display());
}

/// Two hours of 10 agents' generated traffic in `d`, and the alert ids `cordon run --input`
/// gives on it (what every transport must give too).
fn small_traffic(d: &Path) -> (std::path::PathBuf, BTreeSet<String>) {
    let events = generated(d, &["--seed", "4", "--agents", "10", "--duration", "2h"]);
    let reference = file_run(d, &events, &["--allowed-lateness", "24h"]);
    assert!(!reference.is_empty());
    (events, reference)
}

/// `cordon generate` with `args` into `d/g`; the events file.
fn generated(d: &Path, args: &[&str]) -> std::path::PathBuf {
    let out = d.join("g");
    let mut all = vec!["generate", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = cordon(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("events.jsonl")
}

/// The alert ids `cordon run --input events` (plus `args`) writes to `d/ref.jsonl`: the
/// reference every transport must give too.
fn file_run(d: &Path, events: &Path, args: &[&str]) -> BTreeSet<String> {
    let alerts = d.join("ref.jsonl");
    let mut all = vec![
        "run",
        "--input",
        events.to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let o = cordon(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    alert_ids(&alerts)
}

/// A certificate authority and a server certificate for `127.0.0.1`: (CA, cert, key) paths.
fn pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    // Distinct names: OpenSSL takes a certificate whose subject is its issuer's for
    // self-signed.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Cordon test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "tansu behind a TLS front");
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("broker.pem"),
        dir.join("broker-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// TLS to the broker: tansu speaks plain TCP, so a rustls front on loopback terminates TLS
/// and the broker advertises the front's address — every connection librdkafka makes goes
/// through TLS, verified against the test CA, which Cordon reads through `[kafka.secrets]`
/// (`ssl.ca.pem` from a file). The run gives the file run's alerts.
#[test]
fn kafka_over_tls() {
    let front = common::broker::free_port();
    let b = common::broker::broker_advertising(&[("events", 4), ("alerts", 1)], Some(front));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key_pem) = pki(d);
    let tls = cordon_query::tls::TlsFiles {
        cert,
        key: key_pem,
        client_ca: None,
    }
    .server_config()
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", front)))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let upstream = b.addr.clone();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = handshakes.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream, counted) =
                (acceptor.clone(), upstream.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    let (events, reference) = small_traffic(d);
    // Produced over TLS too.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut tls_client = client(&format!("127.0.0.1:{front}"));
    tls_client
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_str().unwrap());
    let lines: Vec<&str> = text.lines().collect();
    produce(&tls_client, &lines, &[]);
    let sent = lines.len() as f64;
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{front}\"\ngroup_id = \"cordon-tls\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ncommit_interval = \"200ms\"\n\
             [kafka.properties]\n\"security.protocol\" = \"ssl\"\n\
             [kafka.secrets]\n\"ssl.ca.pem\" = \"file:{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let run = Running::spawn_with(
        &config,
        &d.join("kafka.jsonl"),
        &d.join("store"),
        &keys,
        &["--allowed-lateness", "24h"],
    );
    wait_until(120, "every record read over TLS", &[&run], || {
        run.metric(&api, "cordon_records_total") >= sent
    });
    run.terminate();
    assert_eq!(alert_ids(&d.join("kafka.jsonl")), reference);
    assert!(handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(
        drain(&tls_client, "alerts", reference.len()).len(),
        reference.len()
    );
}

/// SASL to the broker, each mechanism against a broker side that checks it: tansu has no
/// SASL listener, so a front on loopback (`tests/common/sasl.rs`) authenticates every
/// connection and only then relays it to tansu, which advertises the front's port.
/// PLAIN with the password from the environment, SCRAM-SHA-256 and -512 with it from a
/// file, and OAUTHBEARER with tokens from the real OAuth server, which the front introspects: each run
/// reads every record and gives the file run's alerts. A wrong password is refused, nothing
/// is read, and the log never shows the password. Last, OAUTHBEARER over SASL_SSL (its
/// default) through a front that does TLS too.
#[test]
fn kafka_over_sasl() {
    let idp = common::oauth::oauth();
    let front = common::broker::free_port();
    let b = common::broker::broker_advertising(&[("events", 4), ("alerts", 1)], Some(front));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", front)))
        .unwrap();
    let accounts = common::sasl::Accounts {
        plain: [
            ("producer", "producer-password-1"),
            ("cordon-plain", "plain-password-0123"),
        ]
        .into_iter()
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .collect(),
        scram: [("cordon-scram".to_owned(), "scram-password-4567".to_owned())].into(),
        introspect_port: Some(idp.port),
    };
    let counts = common::sasl::start(&rt, listener, b.addr.clone(), accounts.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (events, reference) = small_traffic(d);
    let text = std::fs::read_to_string(&events).unwrap();
    let mut producer = client(&format!("127.0.0.1:{front}"));
    producer
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "producer")
        .set("sasl.password", "producer-password-1");
    let lines: Vec<&str> = text.lines().collect();
    produce(&producer, &lines, &[]);
    assert!(counts.plain.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let sent = lines.len() as f64;
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    std::fs::write(d.join("scram.secret"), "scram-password-4567\n").unwrap();
    std::fs::write(d.join("oauth.secret"), "cordon-secret-0123456789\n").unwrap();
    let head = |name: &str, port: u16| {
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{port}\"\ngroup_id = \"cordon-{name}\"\n\
             topics = [\"events\"]\nalerts_topic = \"alerts\"\ncommit_interval = \"200ms\"\n"
        )
    };
    let runs = [
        (
            "plain",
            format!(
                "{}[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                 \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"cordon-plain\"\n\
                 [kafka.secrets]\n\"sasl.password\" = \"env:CORDON_TEST_SASL_PASSWORD\"\n",
                head("plain", front)
            ),
        ),
        (
            "scram",
            format!(
                "{}[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                 \"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"cordon-scram\"\n\
                 [kafka.secrets]\n\"sasl.password\" = \"file:{}\"\n",
                head("scram", front),
                d.join("scram.secret").display()
            ),
        ),
        (
            "scram512",
            format!(
                "{}[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                 \"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"cordon-scram\"\n\
                 [kafka.secrets]\n\"sasl.password\" = \"file:{}\"\n",
                head("scram512", front),
                d.join("scram.secret").display()
            ),
        ),
        (
            "oauthbearer",
            format!(
                "{}[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                 [kafka.oauthbearer]\ntoken_endpoint = \"http://127.0.0.1:{}/token\"\n\
                 client_id = \"cordon\"\nclient_secret = \"file:{}\"\n",
                head("oauthbearer", front),
                idp.port,
                d.join("oauth.secret").display()
            ),
        ),
    ];
    for (name, config_text) in &runs {
        let config = d.join(format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let out = d.join(format!("{name}.jsonl"));
        let run = Running::spawn_env(
            &config,
            &out,
            &d.join(format!("store-{name}")),
            &keys,
            &["--allowed-lateness", "24h"],
            &[("CORDON_TEST_SASL_PASSWORD", "plain-password-0123")],
        );
        wait_until(
            120,
            &format!("every record read over SASL {name}"),
            &[&run],
            || run.metric(&api, "cordon_records_total") >= sent,
        );
        run.terminate();
        assert_eq!(alert_ids(&out), reference, "{name}");
    }
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // The producer and Cordon's consumer and producer authenticated with each mechanism.
    assert!(n(&counts.plain) >= 3, "{}", n(&counts.plain));
    assert!(n(&counts.scram) >= 2, "{}", n(&counts.scram));
    assert!(n(&counts.scram512) >= 2, "{}", n(&counts.scram512));
    assert!(n(&counts.oauthbearer) >= 2, "{}", n(&counts.oauthbearer));
    assert_eq!(n(&counts.failed), 0);
    assert_eq!(n(&counts.refused), 0);

    // A wrong password: refused at the front, nothing read, the password never logged.
    let config = d.join("wrong.toml");
    std::fs::write(
        &config,
        runs[0]
            .1
            .replace("group_id = \"cordon-plain\"", "group_id = \"cordon-wrong\""),
    )
    .unwrap();
    let run = Running::spawn_env(
        &config,
        &d.join("wrong.jsonl"),
        &d.join("store-wrong"),
        &keys,
        &[],
        &[("CORDON_TEST_SASL_PASSWORD", "not-the-password-4711")],
    );
    wait_until(60, "a refused authentication", &[&run], || {
        n(&counts.failed) >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run.metric(&api, "cordon_records_total"), 0.0);
    let log = run.terminate();
    assert!(log.contains("SASL authentication error"), "{log}");
    assert!(!log.contains("not-the-password-4711"), "{log}");
    assert_eq!(n(&counts.refused), 0);

    // SASL_SSL, which `[kafka.oauthbearer]` defaults to: TLS first (verified against the
    // test CA), then the token, on a second broker behind a front that does both.
    let front = common::broker::free_port();
    let b = common::broker::broker_advertising(&[("events", 4), ("alerts", 1)], Some(front));
    let (ca, cert, key_pem) = pki(d);
    let tls = cordon_query::tls::TlsFiles {
        cert,
        key: key_pem,
        client_ca: None,
    }
    .server_config()
    .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", front)))
        .unwrap();
    let counts = common::sasl::start_with(
        &rt,
        listener,
        b.addr.clone(),
        accounts,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
    );
    let mut producer = client(&format!("127.0.0.1:{front}"));
    producer
        .set("security.protocol", "SASL_SSL")
        .set("ssl.ca.location", ca.to_str().unwrap())
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "producer")
        .set("sasl.password", "producer-password-1");
    produce(&producer, &lines, &[]);
    let config = d.join("sasl-ssl.toml");
    std::fs::write(
        &config,
        format!(
            "{}[kafka.properties]\n\"ssl.ca.location\" = \"{}\"\n\
             [kafka.oauthbearer]\ntoken_endpoint = \"http://127.0.0.1:{}/token\"\n\
             client_id = \"cordon\"\nclient_secret = \"file:{}\"\n",
            head("sasl-ssl", front),
            ca.display(),
            idp.port,
            d.join("oauth.secret").display()
        ),
    )
    .unwrap();
    let out = d.join("sasl-ssl.jsonl");
    let run = Running::spawn_with(
        &config,
        &out,
        &d.join("store-sasl-ssl"),
        &keys,
        &["--allowed-lateness", "24h"],
    );
    wait_until(120, "every record read over SASL_SSL", &[&run], || {
        run.metric(&api, "cordon_records_total") >= sent
    });
    run.terminate();
    assert_eq!(alert_ids(&out), reference);
    assert!(n(&counts.oauthbearer) >= 2, "{}", n(&counts.oauthbearer));
    assert_eq!((n(&counts.failed), n(&counts.refused)), (0, 0));
}

/// A secret that cannot be had is an error naming the property and where it was to come
/// from — never a silent empty value, never the secret.
#[test]
fn missing_kafka_secrets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cordon.toml");
    for (source, expect) in [
        ("env:CORDON_TEST_UNSET_SECRET", "CORDON_TEST_UNSET_SECRET"),
        (
            "file:/nonexistent/cordon-secret",
            "/nonexistent/cordon-secret",
        ),
        ("hunter2", "expected \"env:NAME\" or \"file:PATH\""),
    ] {
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:9\"\ngroup_id = \"g\"\ntopics = [\"events\"]\n\
                 [kafka.secrets]\n\"sasl.password\" = \"{source}\"\n"
            ),
        )
        .unwrap();
        let o = cordon(&["run", "--kafka", "--config", config.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains("sasl.password") && err.contains(expect),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "the value is never echoed: {err}");
    }
}

/// SASL/OAUTHBEARER: Cordon's Kafka clients get their tokens from a real OAuth 2.0 server
/// by client credentials (secret from a file) and count them; a wrong secret is a counted
/// failure whose log names the endpoint and the OAuth error, never the secret. (The broker
/// side of the handshake with such a token is `kafka_over_sasl`.)
#[test]
fn oauthbearer_tokens_come_from_the_token_endpoint() {
    let idp = common::oauth::oauth();
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys.json");
    let key = api_key(&keys, "viewer");
    let store = d.join("store");
    let spawn = |name: &str, secret: &str| {
        let secret_file = d.join(format!("{name}.secret"));
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let config = d.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{name}\"\ntopics = [\"events\"]\n\
                 [kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                 [kafka.oauthbearer]\ntoken_endpoint = \"http://127.0.0.1:{}/token\"\n\
                 client_id = \"cordon\"\nclient_secret = \"file:{}\"\n",
                b.addr,
                idp.port,
                secret_file.display()
            ),
        )
        .unwrap();
        Running::spawn(&config, &d.join(format!("{name}.jsonl")), &store, &keys)
    };
    let good = spawn("good", "cordon-secret-0123456789");
    wait_until(60, "a token", &[&good], || {
        good.metric(&key, "cordon_kafka_oauth_tokens_total") >= 1.0
    });
    assert_eq!(
        good.metric(&key, "cordon_kafka_oauth_token_failures_total"),
        0.0
    );
    let bad = spawn("bad", "not-the-secret-4711");
    wait_until(60, "a refused token request", &[&bad], || {
        bad.metric(&key, "cordon_kafka_oauth_token_failures_total") >= 1.0
    });
    assert_eq!(bad.metric(&key, "cordon_kafka_oauth_tokens_total"), 0.0);
    let log = bad.terminate();
    assert!(
        log.contains(&format!("http://127.0.0.1:{}/token", idp.port))
            && log.contains("invalid_client"),
        "{log}"
    );
    assert!(!log.contains("not-the-secret-4711"), "{log}");
    good.terminate();
}

/// With responses configured, every action attempt and its outcome reaches `actions_topic`
/// (here in dry run, with the repository's example configuration), keyed by alert id, with
/// tokens redacted.
#[test]
fn action_results_reach_their_topic() {
    let b = common::broker::broker_with(&[("events", 4), ("alerts", 1), ("actions", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(d, &["--seed", "6", "--agents", "10", "--duration", "2h"]);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    produce(&client(&b.addr), &lines, &[]);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cordon.example.toml"))
            .unwrap()
            .replace(
                "\"cordon-outbox.redb\"",
                &format!("{:?}", d.join("outbox.redb")),
            )
            .replace(
                "\"cordon-actions.jsonl\"",
                &format!("{:?}", d.join("actions.jsonl")),
            );
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "{example}\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-actions\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\nactions_topic = \"actions\"\ncommit_interval = \"200ms\"\n",
            b.addr
        ),
    )
    .unwrap();
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let run = Running::spawn_with(
        &config,
        &d.join("kafka.jsonl"),
        &d.join("store"),
        &keys,
        &["--dry-run"],
    );
    wait_until(120, "action results on the topic", &[&run], || {
        run.metric(&api, "cordon_kafka_action_results_produced_total") >= 1.0
    });
    run.terminate();
    let logged = std::fs::read_to_string(d.join("actions.jsonl")).unwrap();
    let on_topic = drain(&client(&b.addr), "actions", 1);
    assert!(!on_topic.is_empty());
    for m in &on_topic {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(v["type"], "cordon.action.attempt");
        assert_eq!(m.key(), v["action"]["alert_id"].as_str().map(str::as_bytes));
        assert!(v["attempt"]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("dry run"));
        // The same record the action log has.
        assert!(logged.contains(v["action"]["id"].as_str().unwrap()));
    }
}

/// Gateways of three kinds in one group: native events on `events`, agentgateway's access
/// log and Docker's audit events on topics a pattern subscribes to, each read in the format
/// `[kafka.formats]` gives its topic. The alerts are those of the three file runs, each in its
/// own format; a native record on the Docker topic is dead-lettered saying it was read as
/// `docker`.
#[test]
fn each_topic_is_read_in_its_own_format() {
    let b = common::broker::broker_with(&[
        ("events", 4),
        ("gw-agentgateway", 1),
        ("gw-docker", 1),
        ("alerts", 1),
        ("dead", 1),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (events, mut reference) = small_traffic(d);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut sent = 0;
    for (format, topic) in [("agentgateway", "gw-agentgateway"), ("docker", "gw-docker")] {
        let file = data.join(format!("{format}.jsonl"));
        let theirs = file_run(d, &file, &["--format", format]);
        assert!(!theirs.is_empty(), "{format}: no alerts to compare");
        reference.extend(theirs);
        let producer: BaseProducer = client(&b.addr).create().unwrap();
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            producer
                .send(BaseRecord::to(topic).key("gw").payload(line))
                .unwrap();
            sent += 1;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    produce(&client(&b.addr), &lines, &[]);
    sent += lines.len();
    // A native event on the Docker gateway's topic: not a Docker audit event.
    let stray = lines[0];
    let producer: BaseProducer = client(&b.addr).create().unwrap();
    producer
        .send(BaseRecord::to("gw-docker").key("stray").payload(stray))
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    sent += 1;
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-formats\"\n\
             topics = [\"events\", \"^gw-.*\"]\nformat = \"native\"\n\
             alerts_topic = \"alerts\"\ndead_letter_topic = \"dead\"\ncommit_interval = \"200ms\"\n\
             [kafka.formats]\n\"gw-agentgateway\" = \"agentgateway\"\n\"gw-docker\" = \"docker\"\n\
             [kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"1000\"\n",
            b.addr
        ),
    )
    .unwrap();
    let run = Running::spawn_with(
        &config,
        &d.join("alerts.jsonl"),
        &d.join("store"),
        &keys,
        &["--allowed-lateness", "24h"],
    );
    wait_until(
        120,
        "every record of the three topics read",
        &[&run],
        || {
            let lags = run.lags(&api);
            run.metric(&api, "cordon_records_total") >= sent as f64
                && lags.len() == 6
                && lags.iter().all(|(_, l)| *l == 0.0)
        },
    );
    let dead = drain(&client(&b.addr), "dead", 1);
    let log = run.terminate();
    assert_eq!(alert_ids(&d.join("alerts.jsonl")), reference, "{log}");
    assert_eq!(dead.len(), 1, "{log}");
    assert_eq!(dead[0].payload(), Some(stray.as_bytes()));
    let h = dead[0].headers().unwrap();
    let header = |name: &str| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("cordon.source.topic").as_deref(), Some("gw-docker"));
    assert_eq!(header("cordon.format").as_deref(), Some("docker"));
}

/// Backpressure: a backlog far larger than `prefetch_bytes` (≈ 230 MB of 17 KB records,
/// against 4 MiB), produced while the run is stopped, then read by one engine thread of a
/// debug build, slower than the broker. Consumption waits for the engine: the lag stays
/// high while the run works through it, the records queued for the engine stay within the
/// bound, and the process grows by well under half the backlog (without the cap, by most
/// of it). Every record is read in the end.
#[test]
fn a_backlog_waits_in_the_broker_not_in_memory() {
    const PAD: usize = 16 * 1024;
    const PREFETCH: usize = 4 << 20;
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(d, &["--seed", "4", "--agents", "10", "--duration", "2days"]);
    let text = std::fs::read_to_string(&events).unwrap();
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-backlog\"\ntopics = [\"events\"]\n\
             workers = 1\nprefetch_bytes = {PREFETCH}\nstats_interval = \"200ms\"\n",
            b.addr
        ),
    )
    .unwrap();
    let run = Running::spawn(&config, &d.join("alerts.jsonl"), &d.join("store"), &keys);
    let pid = run.child.id();
    let rss = || -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb * 1024.0)
    };
    wait_until(120, "the run to hold every partition", &[&run], || {
        run.metric(&api, "cordon_kafka_assigned_partitions") == 4.0 && run.status("/readyz") == 200
    });
    let before = rss();
    // The backlog, produced while the run is stopped (a debug build's producer here is
    // slower than the run, which would otherwise keep up): every event padded with an
    // extra field, keyed by agent.
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let producer: BaseProducer = client(&b.addr)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let pad = "p".repeat(PAD);
    let (mut sent, mut bytes) = (0usize, 0usize);
    for (i, line) in text.lines().enumerate() {
        let key = serde_json::from_str::<serde_json::Value>(line).unwrap()["gen_ai.agent.id"]
            .as_str()
            .unwrap()
            .to_owned();
        let padded = format!("{},\"x.pad\":\"{i}{pad}\"}}", &line[..line.len() - 1]);
        common::broker::send(
            &producer,
            BaseRecord::to("events")
                .key(key.as_str())
                .payload(padded.as_str()),
        );
        sent += 1;
        bytes += padded.len();
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    signal("-CONT");
    // Sample while the run works through it.
    let (mut peak_rss, mut peak_queued, mut peak_lag) = (before, 0.0f64, 0.0f64);
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let read = run.metric(&api, "cordon_records_total");
        peak_rss = peak_rss.max(rss());
        peak_queued = peak_queued.max(run.metric(&api, "cordon_kafka_queued_bytes"));
        peak_lag = peak_lag.max(run.lags(&api).iter().map(|(_, l)| l).sum());
        if read >= sent as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{read} of {sent} read after 10 minutes:\n{}",
            run.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = run.terminate();
    let grew = peak_rss - before;
    eprintln!(
        "backlog {sent} records, {:.0} MB; peak lag {peak_lag} records; peak queued {:.1} MB; \
         RSS {:.0} MB before, grew {:.0} MB",
        bytes as f64 / 1e6,
        peak_queued / 1e6,
        before / 1e6,
        grew / 1e6
    );
    // The run fell behind: much of the backlog waited in the broker at some point (the lag
    // comes from librdkafka's statistics, every 200 ms, so the peak is sampled).
    assert!(
        peak_lag >= sent as f64 / 4.0,
        "peak lag {peak_lag} of {sent}:\n{log}"
    );
    // Queued for the engine: the bound, plus one batch drained from librdkafka's queue
    // (itself capped at the prefetch). Measured here: 8.4 MB; with the cap lifted
    // (`prefetch_bytes` 1 GiB), 180 MB.
    assert!(
        peak_queued <= (3 * PREFETCH + (8 << 20)) as f64,
        "queued {peak_queued} bytes with prefetch_bytes = {PREFETCH}"
    );
    // The process: librdkafka's prefetch, the queued records and their kept buffers (as
    // much again), the events the engine holds, and what the allocators keep. Measured
    // here: 31–61 MB; with the cap lifted, 159 MB.
    assert!(
        grew < bytes as f64 / 2.0,
        "RSS grew {grew} bytes for a backlog of {bytes}:\n{log}"
    );
}

/// Records too large for the producer (the client's `message.max.bytes`) do not stop the
/// stream. A bad one's dead letter carries its first bytes and says how long it was; an
/// alert whose evidence is too large (a tool call with 1 MB of arguments) goes to the alerts
/// topic without its evidences' data, whole in the alerts file. The records after them are
/// read and committed.
#[test]
fn oversized_records_and_alerts_are_cut_to_fit() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (events, _) = small_traffic(d);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().take(200).collect();
    produce(&client(&b.addr), &lines, &[]);
    // 1.5 MB that is not an event, and a secret sent out by email with 1 010 000 bytes of
    // arguments (under the 1 MiB record limit of the decoder, over the producer's limit
    // once it is an alert's evidence).
    let big = format!("{{\"not an event\": \"{}\"}}", "x".repeat(1_500_000));
    let leak = serde_json::json!({
        "event.id": "01KBIGEVENT0000000000000000",
        "@timestamp": "2030-01-01T00:00:00Z",
        "gen_ai.agent.id": "agent-big",
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "send_email",
        "audit.decision": "allow",
        "audit.data_class": "secret",
        "gen_ai.tool.call.arguments": {"to": "drop@evil.example", "body": "A".repeat(1_010_000)},
    })
    .to_string();
    // And one whose agent id is a megabyte: its alert is too large even without evidences.
    let mut huge: serde_json::Value = serde_json::from_str(&leak).unwrap();
    huge["event.id"] = "01KHUGEAGENT000000000000000".into();
    huge["gen_ai.agent.id"] = "g".repeat(1_000_000).into();
    huge["gen_ai.tool.call.arguments"] = serde_json::json!({"to": "drop@evil.example"});
    let huge = huge.to_string();
    let producer: BaseProducer = client(&b.addr)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    let long_key = "k".repeat(5000);
    for (p, key, payload) in [
        (0, &long_key, &big),
        (1, &"big".to_owned(), &leak),
        (2, &long_key, &huge),
    ] {
        producer
            .send(
                BaseRecord::to("events")
                    .key(key.as_str())
                    .payload(payload.as_str())
                    .partition(p),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-big\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ndead_letter_topic = \"dead\"\ncommit_interval = \"200ms\"\n\
             [kafka.properties]\n\"fetch.message.max.bytes\" = \"4000000\"\n",
            b.addr
        ),
    )
    .unwrap();
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let run = Running::spawn(&config, &d.join("alerts.jsonl"), &d.join("store"), &keys);
    wait_until(90, "every record read and committed", &[&run], || {
        run.metric(&api, "cordon_kafka_dead_letter_records_total") >= 1.0
            && run.lags(&api).len() == 4
            && run.lags(&api).iter().all(|(_, l)| *l == 0.0)
    });
    assert_eq!(
        run.metric(&api, "cordon_kafka_dead_letters_truncated_total"),
        1.0
    );
    let log = run.terminate();
    let header = |m: &rdkafka::message::OwnedMessage, k: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == k))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let dead = drain(&client(&b.addr), "dead", 1);
    assert_eq!(dead.len(), 1, "{log}");
    assert_eq!(
        header(&dead[0], "cordon.source.partition").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&dead[0], "cordon.truncated"),
        Some(big.len().to_string())
    );
    let payload = dead[0].payload().unwrap();
    assert!(payload.len() < 1_000_000, "{}", payload.len());
    assert_eq!(dead[0].key(), Some(&long_key.as_bytes()[..1024]));
    assert!(big.as_bytes().starts_with(payload));
    // The leak's alert: whole in the file, without evidences on the topic.
    let whole: Vec<serde_json::Value> = std::fs::read_to_string(d.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["unmapped"]["gen_ai.agent.id"] == "agent-big")
        .collect();
    assert_eq!(whole.len(), 1, "{log}");
    let uid = whole[0]["finding_info"]["uid"].as_str().unwrap();
    assert_eq!(whole[0]["evidences"].as_array().unwrap().len(), 1);
    let topic = drain(&client(&b.addr), "alerts", 1);
    // The huge agent's alert is not there (its key would start with its id).
    assert!(!topic.is_empty());
    assert!(topic
        .iter()
        .all(|m| m.key().is_none_or(|k| !k.starts_with(b"ggg"))));
    let on_topic: Vec<_> = topic
        .into_iter()
        .filter(|m| m.key() == Some(b"agent-big".as_slice()))
        .collect();
    assert_eq!(on_topic.len(), 1, "{log}");
    let v: serde_json::Value = serde_json::from_slice(on_topic[0].payload().unwrap()).unwrap();
    assert_eq!(v["finding_info"]["uid"], uid);
    assert_eq!(v["evidences"], serde_json::json!([]));
    assert_eq!(
        v["finding_info"]["related_events"][0]["uid"],
        "01KBIGEVENT0000000000000000"
    );
    let omitted: usize = header(&on_topic[0], "cordon.evidences_omitted")
        .unwrap()
        .parse()
        .unwrap();
    assert!(omitted > 1_000_000, "{omitted}");
    assert!(
        log.contains("alert too large for the alerts topic: produced without")
            && log.contains("dead letter cut to fit"),
        "{log}"
    );
    // The huge agent's alert: in the file, said in the log.
    let file = std::fs::read_to_string(d.join("alerts.jsonl")).unwrap();
    assert!(file.contains("01KHUGEAGENT000000000000000"));
    assert!(
        log.contains("too large for the alerts topic even without its evidences' data"),
        "{log}"
    );
}

/// An alert the broker never takes (here its topic does not exist, and
/// `message.timeout.ms` is short) stops the run with the reason, and nothing after it is
/// committed: the next run in the group restores the partitions' state from before it,
/// reads those events again and puts every alert of the file run on the alerts topic.
#[test]
fn an_undelivered_alert_stops_the_run_uncommitted() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(d, &["--seed", "4", "--agents", "10", "--duration", "2h"]);
    let reference = file_run(d, &events, &[]);
    assert!(!reference.is_empty());
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    produce(&client(&b.addr), &lines, &[]);
    let sent = lines.len() as f64;
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = |name: &str, alerts: &str| {
        let path = d.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"{}\"\ngroup_id = \"cordon-undelivered\"\ntopics = [\"events\"]\n\
                 alerts_topic = \"{alerts}\"\nstate_store = \"{}\"\ncommit_interval = \"200ms\"\n\
                 [kafka.properties]\n\"message.timeout.ms\" = \"1500\"\n\"session.timeout.ms\" = \"6000\"\n",
                b.addr,
                d.join("state").display()
            ),
        )
        .unwrap();
        path
    };
    let first = Running::spawn(
        &config("first", "no-such-topic"),
        &d.join("first.jsonl"),
        &d.join("store"),
        &keys,
    );
    let (status, log) = first.exit_within(120);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("were not delivered") && log.contains("to no-such-topic"),
        "{log}"
    );
    // Said at the start, before any alert: the topic is not on the broker.
    assert!(
        log.contains("alerts_topic \"no-such-topic\": UnknownTopicOrPartition"),
        "{log}"
    );
    assert!(!alert_ids(&d.join("first.jsonl")).is_empty(), "{log}");
    // Its session is over before the next run joins (see `kafka_input_gives_the_file_runs_alerts`).
    std::thread::sleep(Duration::from_secs(7));
    let second = Running::spawn(
        &config("second", "alerts"),
        &d.join("second.jsonl"),
        &d.join("store"),
        &keys,
    );
    wait_until(120, "the rest read again", &[&second], || {
        second.lags(&api).len() == 4 && second.lags(&api).iter().all(|(_, l)| *l == 0.0)
    });
    let log = second.terminate();
    let on_topic = topic_alert_ids(&client(&b.addr), reference.len());
    assert_eq!(on_topic, reference, "{log}");
    let _ = sent;
}

/// The broker unreachable for longer than the group session (every connection closed and
/// refused for 10 s, by a relay the broker advertises): the run keeps going, its partitions
/// are lost and come back with their checkpointed state, and once the broker is back it
/// reads the rest. Its alerts, in the file and on the alerts topic, are the file run's.
#[test]
fn a_broker_outage_is_ridden_out() {
    let front = common::broker::free_port();
    let b = common::broker::broker_advertising(&[("events", 4), ("alerts", 1)], Some(front));
    let relay = common::broker::Relay::start(front, &b.addr);
    let addr = format!("127.0.0.1:{front}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(d, &["--seed", "4", "--agents", "10", "--duration", "2h"]);
    let reference = file_run(d, &events, &[]);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    produce(&client(&addr), &lines[..half], &[]);
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{addr}\"\ngroup_id = \"cordon-outage\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\nstate_store = \"{}\"\ncommit_interval = \"200ms\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"debug\" = \"cgrp\"\n",
            d.join("state").display()
        ),
    )
    .unwrap();
    let mut run = Running::spawn(&config, &d.join("alerts.jsonl"), &d.join("store"), &keys);
    let caught_up = |r: &Running| {
        let lags = r.lags(&api);
        lags.len() == 4 && lags.iter().all(|(_, l)| *l == 0.0)
    };
    wait_until(120, "the first half read and committed", &[&run], || {
        run.metric(&api, "cordon_records_total") >= half as f64 && caught_up(&run)
    });
    let rebalances = run.metric(&api, "cordon_kafka_rebalances_total");
    wait_until(30, "the broker up in the metrics", &[&run], || {
        run.metric(&api, "cordon_kafka_brokers_up") == 1.0
    });
    let cut = std::time::Instant::now();
    relay.cut();
    wait_until(9, "the outage in the metrics", &[&run], || {
        run.metric(&api, "cordon_kafka_brokers_up") == 0.0
    });
    std::thread::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed()));
    assert!(run.alive(), "{}", run.log.lock().unwrap());
    relay.restore();
    produce(&client(&addr), &lines[half..], &[]);
    wait_until(180, "the rest read after the outage", &[&run], || {
        run.metric(&api, "cordon_kafka_rebalances_total") > rebalances
            && run.metric(&api, "cordon_records_total") >= lines.len() as f64
            && caught_up(&run)
    });
    wait_until(30, "the broker up in the metrics", &[&run], || {
        run.metric(&api, "cordon_kafka_brokers_up") == 1.0
    });
    // Every alert produced so far was acknowledged and timed.
    wait_until(30, "the alerts' acknowledgements timed", &[&run], || {
        let produced = run.metric(&api, "cordon_kafka_alerts_produced_total");
        produced > 0.0 && run.metric(&api, "cordon_kafka_produce_ack_seconds_count") == produced
    });
    let log = run.terminate();
    assert!(relay.refused() > 0);
    // Said once per client and kind, not at every reconnection attempt.
    let down = log.matches("AllBrokersDown").count();
    assert!((1..=4).contains(&down), "{down} lines:\n{log}");
    assert_eq!(alert_ids(&d.join("alerts.jsonl")), reference, "{log}");
    let on_topic = topic_alert_ids(&client(&addr), reference.len());
    assert_eq!(on_topic, reference, "{log}");
}

/// SIGTERM while the broker is unreachable: the run cannot put the alerts its held events
/// raise on the topic, so it commits nothing, says why and exits 1 — within
/// `shutdown_timeout`, though
/// the commit in progress, the revocation's and the last one each wait for deliveries (they
/// share one deadline; each used to wait the whole timeout, three times it in all).
#[test]
fn sigterm_while_the_broker_is_away_exits_within_the_timeout() {
    let front = common::broker::free_port();
    let b = common::broker::broker_advertising(&[("events", 4), ("alerts", 1)], Some(front));
    let relay = common::broker::Relay::start(front, &b.addr);
    let addr = format!("127.0.0.1:{front}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = generated(d, &["--seed", "4", "--agents", "10", "--duration", "2h"]);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    produce(&client(&addr), &lines, &[]);
    let keys = d.join("keys.json");
    let api = api_key(&keys, "viewer");
    let config = d.join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{addr}\"\ngroup_id = \"cordon-away\"\ntopics = [\"events\"]\n\
             alerts_topic = \"alerts\"\ncommit_interval = \"200ms\"\n\
             shutdown_timeout = \"4s\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n"
        ),
    )
    .unwrap();
    // Without a state store, events held for the allowed lateness are run at the stop: the
    // alerts they raise are made only once the broker is away.
    let run = Running::spawn_with(
        &config,
        &d.join("alerts.jsonl"),
        &d.join("store"),
        &keys,
        &["--allowed-lateness", "24h"],
    );
    wait_until(120, "every record read", &[&run], || {
        run.metric(&api, "cordon_records_total") >= lines.len() as f64
    });
    assert_eq!(run.metric(&api, "cordon_alerts_total"), 0.0);
    relay.cut();
    std::thread::sleep(Duration::from_secs(2));
    let pid = run.child.id().to_string();
    let t = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (status, log) = run.exit_within(60);
    let took = t.elapsed();
    assert!(!status.success(), "{log}");
    assert!(log.contains("waiting for deliveries"), "{log}");
    assert!(
        took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM, with shutdown_timeout = 4s:\n{log}"
    );
}
