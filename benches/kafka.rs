//! Kafka end to end, against a real broker (`tansu`, in-memory storage, on loopback), each
//! figure against a baseline measured in the same run on the same broker and topic:
//!
//! - **Throughput**: `cordon run --kafka` (release build; decode, 28 built-in rules, one
//!   engine per partition, alerts produced to a topic and stored in Parquet, partition state
//!   checkpointed every second) reading a 4-partition topic of generated events, against a
//!   raw rdkafka consume loop in a consumer group of its own that only touches each payload.
//!   Rates are first record fetched to last event run. Goal: ≥ 70% of the raw rate.
//!   Around each phase the bench reads the CPU time of the consumer (this process for the
//!   raw loop, Cordon's) and of the broker from `/proc`, and prints both per event: the raw
//!   loop leaves the cores half idle while Cordon keeps them busy, so these say what ratio
//!   the machine allows and how many cores the goal would take.
//! - **Latency**: events produced at half the measured end-to-end rate with their time set to
//!   the send time; for each alert read back from the alerts topic, the time from sending the
//!   alert's last evidence event to receiving the alert. p50 and p99. Goal: p99 ≤ 50 ms. Then
//!   again at a quarter and an eighth of the rate, to tell the pipeline's own latency from the
//!   queueing of a machine whose cores are saturated (`KAFKA_BENCH_RATE` sets the first
//!   rate). The baseline, measured just before each latency phase at the same rate: the
//!   broker alone, with a raw consumer (own group, Cordon's consumer properties) timing each
//!   record's one hop from send to poll. An alert needs two such hops (events in, alert
//!   out), so its latency is also printed as a ratio to twice the hop's. The engine runs with
//!   `--allowed-lateness 0s` here: with lateness L, an event waits in the reorder buffer until
//!   the stream is L past it, which adds L to every alert by design. Each phase runs on a
//!   broker of its own, started afresh (the in-memory broker keeps every record, and one
//!   holding millions serves more slowly). Beside its figures a phase prints what Cordon's
//!   own histograms say (records' delay from their Kafka timestamp, the share past 25 and
//!   50 ms), its commits, and, for the 150 ms around the slowest alert's last event, every
//!   thread's time on a core and time waiting for one (Cordon's, the broker's, the bench's)
//!   and the hypervisor's steal time: what had the cores at the moment that set p99.
//! - **The highest rate sustained live**, the other reading of the goal's "maximum rate": the
//!   throughput phase drains a topic filled beforehand, but live the broker also takes in each
//!   record and the bench produces it, on the same cores. Probes of 8 s each, with a fresh
//!   Cordon, find the highest rate at which the producer keeps its pace and Cordon is never
//!   more than 0.5 s of traffic behind it (`KAFKA_BENCH_PROBES`, default 6;
//!   `KAFKA_BENCH_SUSTAINED=0` skips them); the first latency phase then runs at half of it.
//!   Each latency phase also prints its figures without the alerts of its first 2 s, beside
//!   the whole: a fresh instance's first seconds often hold the one burst that is the p99.
//!
//! `cargo bench --bench kafka` (`KAFKA_BENCH_EVENTS` sets the size, default 500 000;
//! `KAFKA_BENCH_PROPS` / `KAFKA_BENCH_LATENCY_PROPS` add librdkafka properties (`k=v,…`) to
//! both consumers / to the latency run; `KAFKA_BENCH_COMMIT` sets `commit_interval`;
//! `KAFKA_BENCH_RUNS=k` repeats the throughput phase and prints the median ratio (0, with
//! `KAFKA_BENCH_RATE`, skips it and the probes);
//! `KAFKA_BENCH_COMPARE=path/to/cordon` runs another build beside this one, interleaved, for
//! an A/B under the same noise; `KAFKA_BENCH_LATENCY=0` skips the latency phases;
//! `KAFKA_BENCH_BESIDE=1` times a raw consumer reading the same events beside Cordon, and what
//! it saw at the slowest alert's moment; `KAFKA_BENCH_STATE=0` runs Cordon without a state
//! store, so without checkpoints; `KAFKA_BENCH_NICE=n` renices Cordon's committer thread;
//! `KAFKA_BENCH_LOG=dir` keeps each Cordon's log there; `KAFKA_BENCH_IDLE=0` skips the idle
//! phase, which prints what each of Cordon's threads costs with no traffic;
//! `KAFKA_BENCH_PIN=B/C`, CPU lists as `taskset` takes them, e.g. `0/1`, runs the
//! throughput phase with the broker on cores `B` and the consumers, the raw loop and Cordon,
//! on cores `C`: what each does per core with the broker on cores of its own, as it would be
//! in production, where the unpinned bench has all three share them). Needs
//! `tansu` (built by `.ci/tansu.sh`, or `CORDON_TANSU`; without it, it says so and exits).
//! The first line printed names the broker, because the ratio depends on it:
//! `TANSU_FIXES=1 bash .ci/tansu.sh` builds the earlier broker, which answers a fetch only
//! when `fetch.wait.max.ms` has passed, so the raw loop, bound by fetch round trips, reads
//! about half as fast on it while Cordon, bound by its CPU, reads as fast; its ratios are about
//! twice the tests' broker's and do not compare with them. The broker, the bench and Cordon
//! share this machine's cores, so the ratio is the figure to read, not the absolute rates.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/broker.rs"]
mod broker;
#[path = "../tests/common/http.rs"]
mod http;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cordon_ingest::generate::{generate, GenConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn cordon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
}

/// `KAFKA_BENCH_PIN=B/C`: the broker's cores and the consumers' (`taskset` CPU lists).
fn pinning() -> Option<(String, String)> {
    let v = std::env::var("KAFKA_BENCH_PIN").ok()?;
    let (b, c) = v
        .split_once('/')
        .unwrap_or_else(|| panic!("KAFKA_BENCH_PIN={v}: expected BROKER_CPUS/CONSUMER_CPUS"));
    Some((b.to_owned(), c.to_owned()))
}

/// Moves every thread of process `pid` to the cores `cpus` (threads it starts later
/// inherit them).
fn pin(pid: &str, cpus: &str) {
    let o = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, pid])
        .output()
        .unwrap_or_else(|e| panic!("taskset: {e}"));
    assert!(
        o.status.success(),
        "taskset -a -p -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A command running `bin`, on the cores `cpus` when the bench is pinned.
fn on_cores(bin: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The Cordon binaries whose throughput is measured: this build, and with
/// `KAFKA_BENCH_COMPARE=path` another one too (an A/B on the same broker and topic, runs
/// interleaved, so that two builds are compared under the same noise).
fn contenders() -> Vec<(String, std::path::PathBuf)> {
    let mut v = vec![("this build".to_owned(), env!("CARGO_BIN_EXE_cordon").into())];
    if let Ok(other) = std::env::var("KAFKA_BENCH_COMPARE") {
        v.push((other.clone(), other.into()));
    }
    v
}

fn producer(addr: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn agent(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["gen_ai.agent.id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Consumer properties given to both the raw loop and Cordon (`KAFKA_BENCH_PROPS`,
/// `name=value,…`).
fn props() -> Vec<(String, String)> {
    env_props("KAFKA_BENCH_PROPS")
}

/// librdkafka properties from the environment variable `name` (`name=value,…`).
fn env_props(name: &str) -> Vec<(String, String)> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Consumes `n` records of `topic` in a group of its own; returns records/s from the first
/// record to the last.
fn raw_rate(addr: &str, topic: &str, n: usize) -> f64 {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", addr)
        .set("group.id", format!("raw-{}", ulid::Ulid::new()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (k, v) in props() {
        cfg.set(k, v);
    }
    let c: BaseConsumer = cfg.create().unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    assert_eq!(seen, n, "raw loop read everything");
    std::hint::black_box(bytes);
    n as f64 / first.unwrap().elapsed().as_secs_f64()
}

struct Cordon {
    child: Child,
    metrics: String,
    api: String,
}

impl Cordon {
    fn start(config: &Path, dir: &Path, keys: &Path, extra: &[&str]) -> Cordon {
        Cordon::start_with(cordon(), config, dir, keys, extra)
    }

    /// This build, for a live phase: reading `topic` (state and files in `tmp/<topic>`),
    /// alerts to `alerts`, the latency properties, `--allowed-lateness 0s`; returns once it
    /// is ready (at most a minute).
    fn start_live(tmp: &Path, addr: &str, topic: &str, alerts: &str, keys: &Path) -> Cordon {
        let dir = tmp.join(topic);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Cordon::start(
            &config(&dir, addr, topic, alerts, &latency_props()),
            &dir,
            keys,
            &["--allowed-lateness", "0s"],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // `KAFKA_BENCH_NICE=n`: the committer's thread reniced to n from outside, to see
        // what its bursts cost the others.
        if let Ok(n) = std::env::var("KAFKA_BENCH_NICE") {
            let task = Path::new("/proc")
                .join(c.child.id().to_string())
                .join("task");
            for t in std::fs::read_dir(task).unwrap().flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.trim() == "cordon-commit" {
                    let tid = t.file_name().to_string_lossy().into_owned();
                    Command::new("renice")
                        .args(["-n", &n, "-p", &tid])
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                }
            }
        }
        c
    }

    fn start_with(
        mut cmd: Command,
        config: &Path,
        dir: &Path,
        keys: &Path,
        extra: &[&str],
    ) -> Cordon {
        let mut child = cmd
            .args([
                "run",
                "--kafka",
                "--config",
                config.to_str().unwrap(),
                "--alerts",
                dir.join("alerts.jsonl").to_str().unwrap(),
                "--store",
                dir.join("store").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--keys",
                keys.to_str().unwrap(),
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let (mut metrics, mut api, mut line) = (String::new(), String::new(), String::new());
        while metrics.is_empty() {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
            if line.contains("admin-listen on") {
                metrics = line.trim().rsplit("on ").next().unwrap().to_owned() + "/metrics";
            } else if line.contains(": listen on") {
                api = line.trim().rsplit("on ").next().unwrap().to_owned();
            }
        }
        // `KAFKA_BENCH_LOG=dir`: each Cordon's log is kept there (the directory is made).
        let mut keep: Box<dyn std::io::Write + Send> = match std::env::var("KAFKA_BENCH_LOG") {
            Ok(d) => Box::new(
                std::fs::create_dir_all(&d)
                    .and_then(|()| {
                        std::fs::File::create(Path::new(&d).join(format!(
                            "cordon-{}.log",
                            dir.file_name().unwrap().to_string_lossy()
                        )))
                    })
                    .unwrap_or_else(|e| panic!("KAFKA_BENCH_LOG={d}: {e}")),
            ),
            Err(_) => Box::new(std::io::sink()),
        };
        std::thread::spawn(move || std::io::copy(&mut err, &mut keep));
        Cordon {
            child,
            metrics,
            api,
        }
    }

    fn metric(&self, key: &str, name: &str) -> f64 {
        metric_at(&self.metrics, key, name)
    }

    /// The bucket bounds (ms) under which half and 99 % of a delay histogram's records fall
    /// (`cordon_kafka_record_delay_seconds`, `cordon_kafka_run_delay_seconds`).
    /// A histogram's cumulative buckets: (upper bound in ms, count).
    fn buckets(&self, key: &str, name: &str) -> Vec<(f64, f64)> {
        let text = http::get(&self.metrics, key);
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| {
                let (le, n) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le * 1000.0, n.parse().ok()?))
            })
            .collect()
    }

    fn delay_quantiles(&self, key: &str, name: &str) -> (f64, f64) {
        let buckets = self.buckets(key, name);
        let total = buckets.last().map_or(0.0, |b| b.1);
        let at = |q: f64| {
            buckets
                .iter()
                .find(|(_, n)| *n >= q * total)
                .map_or(f64::NAN, |b| b.0)
        };
        (at(0.5), at(0.99))
    }

    /// The share of observations above `bound_ms` (a bucket bound).
    fn share_over(&self, key: &str, name: &str, bound_ms: f64) -> f64 {
        let buckets = self.buckets(key, name);
        let total = buckets.last().map_or(0.0, |b| b.1);
        let within = buckets
            .iter()
            .find(|(b, _)| *b >= bound_ms)
            .map_or(total, |b| b.1);
        (total - within) / total.max(1.0)
    }

    /// The upper bound of the lowest bucket that holds every observation, in ms.
    fn delay_max(&self, key: &str, name: &str) -> f64 {
        let buckets = self.buckets(key, name);
        let total = buckets.last().map_or(0.0, |b| b.1);
        buckets
            .iter()
            .find(|(_, n)| *n >= total)
            .map_or(f64::NAN, |b| b.0)
    }

    fn ready(&self) -> bool {
        http::get(&format!("{}/readyz", self.api), "").starts_with("HTTP/1.1 200")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The value of the unlabelled metric `name` at the metrics address `url` (0 if absent).
fn metric_at(url: &str, key: &str, name: &str) -> f64 {
    http::get(url, key)
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn config(
    dir: &Path,
    addr: &str,
    topic: &str,
    alerts: &str,
    extra: &[(String, String)],
) -> std::path::PathBuf {
    let group = format!("cordon-{}", dir.file_name().unwrap().to_string_lossy());
    let p = dir.join("cordon.toml");
    let mut text = format!(
        "[kafka]\nbrokers = \"{addr}\"\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\n\
         alerts_topic = \"{alerts}\"\n{}commit_interval = \"{}\"\n{}\
         [kafka.properties]\n",
        // `KAFKA_BENCH_STATE=0`: no state store, so no checkpoints (to see what they cost).
        if std::env::var("KAFKA_BENCH_STATE").as_deref() == Ok("0") {
            String::new()
        } else {
            format!("state_store = \"{}\"\n", dir.join("state").display())
        },
        std::env::var("KAFKA_BENCH_COMMIT").unwrap_or_else(|_| "1s".into()),
        std::env::var("KAFKA_BENCH_TOML")
            .unwrap_or_default()
            .replace(';', "\n")
            + "\n"
    );
    let mut all: std::collections::BTreeMap<String, String> = props().into_iter().collect();
    all.extend(extra.iter().cloned());
    for (k, v) in all {
        text.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Whether the latency phase stamps each event's `@timestamp` with the moment it is sent
/// (`KAFKA_BENCH_STAMP=send`, the default) or sends it with its generated time
/// (`KAFKA_BENCH_STAMP=generated`).
///
/// Stamped at send time, the generated hours of traffic arrive in seconds: each of the 150
/// agents runs hundreds of calls a second, so windows and open sequences hold far more
/// events, and checkpoints carry them, than in the throughput phase — a heavier workload
/// than the one whose rate the goal halves. With generated times the latency phase runs the
/// throughput phase's workload, at the paced rate. Either way latency is measured from the
/// send to the alert's arrival.
fn stamp_at_send() -> bool {
    match std::env::var("KAFKA_BENCH_STAMP").as_deref() {
        Ok("generated") => false,
        Ok("send") | Err(_) => true,
        Ok(other) => panic!("KAFKA_BENCH_STAMP={other}: expected send or generated"),
    }
}

/// Properties for the latency phase (`KAFKA_BENCH_LATENCY_PROPS`, `name=value,…`).
fn latency_props() -> Vec<(String, String)> {
    env_props("KAFKA_BENCH_LATENCY_PROPS")
}

/// One reading of every thread's scheduler times: when, and (name, ns on a core, ns waiting
/// for one) per thread.
type Sample = (Instant, Vec<(String, u64, u64)>);
/// Samples of every thread's scheduler times in the processes of a latency phase.
type ThreadSamples = Vec<Sample>;

/// Reads `/proc/<pid>/task/*/schedstat` of the given processes every 10 ms until `stop`:
/// each thread's time on a core and time runnable but waiting for one, in ns, and the
/// machine's steal time (as `machine:steal`, on a core meaning taken by the hypervisor).
/// Which threads ran and which waited at the moment of the slowest alerts tells a pause of
/// Cordon's own from cores taken by the broker, the producer, a checkpoint or the host.
fn sample_threads(
    pids: &[String; 3],
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<ThreadSamples> {
    let pids: Vec<(String, String)> = ["cordon", "broker", "bench"]
        .iter()
        .zip(pids)
        .map(|(l, p)| {
            let pid = if p == "self" {
                std::process::id().to_string()
            } else {
                p.clone()
            };
            ((*l).to_owned(), pid)
        })
        .collect();
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let at = Instant::now();
            let mut row = Vec::new();
            for (label, pid) in &pids {
                row.extend(task_times(label, pid));
            }
            // The time the hypervisor ran something else on this machine's cores
            // (`steal` in /proc/stat, in clock ticks of 10 ms): no thread here ran then.
            let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
            let steal = stat
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(8)?.parse::<u64>().ok())
                .unwrap_or(0);
            row.push(("machine:steal/0".to_owned(), steal * 10_000_000, 0));
            samples.push((at, row));
            std::thread::sleep(Duration::from_millis(10));
        }
        samples
    })
}

/// Each thread of process `pid` as `label:name/tid`, with its time on a core and its time
/// waiting for one so far, in ns (`/proc/<pid>/task/*/schedstat`).
fn task_times(label: &str, pid: &str) -> Vec<(String, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let st = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
            let mut f = st.split_whitespace().map(|v| v.parse().unwrap_or(0));
            let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            let name = format!(
                "{label}:{}/{}",
                comm.trim(),
                t.file_name().to_string_lossy()
            );
            (name, run, wait)
        })
        .collect()
}

/// What a Cordon with nothing to read costs: one on a broker with no traffic, its threads'
/// time on a core over 10 s, as shares of a core. Work no record drives (timers, a poll that
/// spins) shows here and nowhere else: the delivery thread's busy loop, 4.6 % of a core,
/// was found this way.
fn idle_cost(tmp: &Path, keys: &Path) {
    let b = broker::broker_with(&[("idle", 4), ("idle-alerts", 1)]);
    let c = Cordon::start_live(tmp, &b.addr, "idle", "idle-alerts", keys);
    std::thread::sleep(Duration::from_secs(3));
    let pid = c.child.id().to_string();
    let t = Instant::now();
    let before = task_times("cordon", &pid);
    std::thread::sleep(Duration::from_secs(10));
    let after = task_times("cordon", &pid);
    let secs = t.elapsed().as_secs_f64();
    c.stop();
    let share = |ms: f64| ms / (secs * 1000.0) * 100.0;
    let mut threads = thread_shares(&(t, before), &(t, after));
    let total: f64 = threads.iter().map(|(_, (r, _))| r).sum();
    threads.retain(|(_, (r, _))| share(*r) >= 0.05);
    println!(
        "idle (a broker, no traffic, {secs:.0} s): Cordon used {:.2} % of a core; by thread (0.05 % and more): {}",
        share(total),
        threads
            .iter()
            .map(|(n, (r, _))| format!("{} {:.2} %", n.trim_start_matches("cordon:"), share(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Each thread's ms on a core and ms waiting for one between `from` and `to` (the samples
/// nearest inside), threads of one name summed, busiest first.
fn thread_use(samples: &ThreadSamples, from: Instant, to: Instant) -> String {
    let first = samples.iter().position(|s| s.0 >= from);
    let last = samples.iter().rposition(|s| s.0 <= to);
    let (Some(a), Some(b)) = (first, last) else {
        return "no samples".into();
    };
    let span = samples[b].0.duration_since(samples[a].0).as_secs_f64() * 1000.0;
    let v = thread_shares(&samples[a], &samples[b]);
    format!(
        "over {span:.0} ms: {}",
        v.iter()
            .filter(|(_, (r, w))| r + w >= 1.0)
            .take(10)
            .map(|(n, (r, w))| format!("{n} {r:.0}/{w:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// From sample `a` to sample `b`: each kind of thread's ms on a core and ms waiting for
/// one, threads of one name summed, busiest first.
fn thread_shares(a: &Sample, b: &Sample) -> Vec<(String, (f64, f64))> {
    let before: HashMap<&str, (u64, u64)> =
        a.1.iter().map(|(n, r, w)| (n.as_str(), (*r, *w))).collect();
    let mut by: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for (n, r, w) in &b.1 {
        let (r0, w0) = before.get(n.as_str()).copied().unwrap_or((0, 0));
        // Threads of one kind (librdkafka's, tokio's) summed: the name without its tid.
        let kind = n.rsplit_once('/').map_or(n.as_str(), |(k, _)| k).to_owned();
        let e = by.entry(kind).or_default();
        e.0 += r.saturating_sub(r0) as f64 / 1e6;
        e.1 += w.saturating_sub(w0) as f64 / 1e6;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|x, y| (y.1 .0 + y.1 .1).total_cmp(&(x.1 .0 + x.1 .1)));
    v
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (which is in parentheses
/// and may hold spaces): index 0 is the state, 7 `minflt`, 11 and 12 `utime` and `stime`.
/// Empty once the process is gone.
fn stat_fields(pid: &str) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect()
}

/// CPU seconds a process has used so far, all its threads, user and system (in the
/// kernel's clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: &str) -> f64 {
    stat_fields(pid).iter().skip(11).take(2).sum::<f64>() / 100.0
}

/// Minor page faults a process has taken so far. Each is a page the kernel mapped and
/// zeroed: memory an allocator gave back and took again shows here.
fn page_faults(pid: &str) -> f64 {
    stat_fields(pid).get(7).copied().unwrap_or(0.0)
}

/// CPU time per event of one side of a throughput phase and of the broker beside it.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// The consumer's (the raw loop's, or Cordon's), µs per event.
    consumer: f64,
    /// The broker's, µs per event.
    broker: f64,
    /// The consumer's minor page faults per 1 000 events.
    faults: f64,
}

/// Measures the CPU `pid` and the broker use while `f` runs, per event of `n`.
fn cpu_of<T>(pid: &str, broker: &str, n: usize, f: impl FnOnce() -> T) -> (T, Cpu) {
    let (c0, b0, f0) = (cpu_seconds(pid), cpu_seconds(broker), page_faults(pid));
    let out = f();
    let (c1, b1, f1) = (cpu_seconds(pid), cpu_seconds(broker), page_faults(pid));
    let per = |s: f64| s * 1e6 / n as f64;
    (
        out,
        Cpu {
            consumer: per(c1 - c0),
            broker: per(b1 - b0),
            faults: (f1 - f0) * 1e3 / n as f64,
        },
    )
}

/// "one hop of p50 …, p99 …, max …" of sorted, non-empty hop times in ms.
fn hop_summary(hops: &[f64]) -> String {
    format!(
        "one hop of p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(hops, 0.50),
        percentile(hops, 0.99),
        hops[hops.len() - 1]
    )
}

/// Seconds at the start of a latency phase that its second summary leaves out.
const WARM_UP_SECS: f64 = 2.0;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    if !broker::tansu_path().exists() {
        eprintln!(
            "kafka bench: no tansu at {} (run .ci/tansu.sh or set CORDON_TANSU); skipped",
            broker::tansu_path().display()
        );
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("KAFKA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    // Which broker: the fix-1 build (`TANSU_FIXES=1`) answers a fetch only when
    // `fetch.wait.max.ms` expires, which halves the raw loop's rate and so doubles the ratio.
    // Every figure below belongs to the broker named here.
    println!(
        "broker: {}{}",
        broker::tansu_path().display(),
        if std::env::var_os("CORDON_TANSU").is_some() {
            " (CORDON_TANSU)"
        } else {
            " (.ci/tansu.sh's build, as the tests run)"
        }
    );
    let b = broker::broker_with(&[("events", 4), ("alerts", 1)]);
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.json");
    let o = cordon()
        .args([
            "keys", "create", "--role", "viewer", "--name", "bench", "--keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(o.status.success());
    let key = String::from_utf8(o.stdout).unwrap().trim().to_owned();

    // Traffic: generated, with every attack scenario, keyed by agent.
    let hours = (n as f64 / 25.0 / 150.0).ceil() as i64;
    let events = generate(&GenConfig {
        seed: 5,
        agents: 150,
        duration_nanos: hours.max(1) * 3_600_000_000_000,
        sessions_per_attack: 6,
        ..Default::default()
    })
    .events;
    let lines: Vec<String> = events.iter().take(n).map(|e| e.to_string()).collect();
    let n = lines.len();
    let bytes: usize = lines.iter().map(String::len).sum();
    let keyed: Vec<(String, &String)> = lines.iter().map(|l| (agent(l), l)).collect();
    let p = producer(&b.addr);
    let t = Instant::now();
    let broker_pid = b.pid().to_string();
    let ((), cpu) = cpu_of("self", &broker_pid, n, || {
        for (key, l) in &keyed {
            broker::send(
                &p,
                BaseRecord::to("events")
                    .key(key.as_str())
                    .payload(l.as_str()),
            );
        }
        p.flush(Duration::from_secs(120)).unwrap();
    });
    println!(
        "produced {n} events ({:.0} B each) in {:.2} s; CPU per event: producer {:.2} µs, broker {:.2} µs",
        bytes as f64 / n as f64,
        t.elapsed().as_secs_f64(),
        cpu.consumer,
        cpu.broker
    );

    // Pinned: the broker on its cores, this process (the raw loop, and the Cordons it
    // starts) on the consumers'. Traffic is already produced, so the producer is not in it.
    let pinned = pinning();
    if let Some((bcpus, ccpus)) = &pinned {
        pin(&broker_pid, bcpus);
        pin(&std::process::id().to_string(), ccpus);
        println!("pinned: broker on cores {bcpus}, the raw loop and Cordon on cores {ccpus}");
    }

    // Throughput: the raw loop, then Cordon, then the raw loop again (the broker warms up),
    // `KAFKA_BENCH_RUNS` times (default 1); each Cordon run is a new consumer group with
    // fresh state. With `KAFKA_BENCH_COMPARE`, each round runs every contender.
    let runs: usize = std::env::var("KAFKA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // No throughput phase only where the latency phases do not need its rate.
    let runs = if std::env::var_os("KAFKA_BENCH_RATE").is_some() {
        runs
    } else {
        runs.max(1)
    };
    let contenders = contenders();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    // CPU per event: the raw loop's (this process) and each contender's, each with the
    // broker's beside it.
    let mut raw_cpu: Vec<Cpu> = Vec::new();
    let mut cordon_cpu: Vec<Vec<Cpu>> = vec![Vec::new(); contenders.len()];
    let mut raw_rates: Vec<f64> = Vec::new();
    let mut e2e = 0.0;
    // One raw pass first, not counted: in every bench of one session the raw loop's first
    // pass over the topic was its slowest (0.34–0.57 M events/s against 0.61–1.37 M for the
    // passes after), which made each bench's first ratio its highest.
    if runs > 0 {
        println!(
            "raw consume loop, warm-up pass (not counted): {:.0} events/s",
            raw_rate(&b.addr, "events", n)
        );
    }
    for run in 0..runs {
        for (ci, (name, bin)) in contenders.iter().enumerate() {
            if contenders.len() > 1 {
                println!("[run {run}, {name}]");
            }
            let (raw1, cpu1) = cpu_of("self", &broker_pid, n, || raw_rate(&b.addr, "events", n));
            let dir = tmp.path().join(format!("e2e-{run}-{ci}"));
            std::fs::create_dir_all(&dir).unwrap();
            let c = Cordon::start_with(
                on_cores(bin, pinned.as_ref().map(|(_, c)| c.as_str())),
                &config(&dir, &b.addr, "events", "alerts", &[]),
                &dir,
                &keys,
                &[],
            );
            let (rate, cpu) = cpu_of(&c.child.id().to_string(), &broker_pid, n, || {
                throughput(&c, &key, n)
            });
            if ci == 0 {
                e2e = rate;
            }
            c.stop();
            let (raw2, cpu2) = cpu_of("self", &broker_pid, n, || raw_rate(&b.addr, "events", n));
            let raw = (raw1 + raw2) / 2.0;
            ratios[ci].push(rate / raw);
            raw_cpu.extend([cpu1, cpu2]);
            raw_rates.extend([raw1, raw2]);
            cordon_cpu[ci].push(cpu);
            println!("raw consume loop:   {raw1:>9.0} / {raw2:>9.0} events/s (before / after)");
            println!(
                "cordon end to end:  {rate:>9.0} events/s  = {:.2} of the raw rate",
                rate / raw
            );
            println!(
                "  CPU per event: raw loop {:.2} / {:.2} µs, its broker {:.2} / {:.2} µs; Cordon {:.2} µs, its broker {:.2} µs; page faults per 1 000 events: raw loop {:.1} / {:.1}, Cordon {:.1}",
                cpu1.consumer,
                cpu2.consumer,
                cpu1.broker,
                cpu2.broker,
                cpu.consumer,
                cpu.broker,
                cpu1.faults,
                cpu2.faults,
                cpu.faults
            );
        }
    }
    if runs > 1 || contenders.len() > 1 {
        for ((name, _), r) in contenders.iter().zip(&mut ratios) {
            r.sort_by(f64::total_cmp);
            println!(
                "{name}: end to end over {runs} runs, of the raw rate: median {:.2} (min {:.2}, max {:.2})",
                r[r.len() / 2],
                r[0],
                r[r.len() - 1]
            );
        }
    }
    // What the ratio can be on this machine. The raw loop is not bound by CPU (it keeps
    // well under the cores busy); Cordon is: at best it runs at the cores over the CPU
    // each event costs it and the broker. And what the goal of 0.70 would take.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Pinned, this process runs on the consumers' cores, and so does Cordon.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if runs == 0 {
        println!("no throughput phase (KAFKA_BENCH_RUNS=0 with KAFKA_BENCH_RATE)");
    }
    if runs > 0 {
        let raw_median = median(raw_rates.clone());
        let raw_us = median(raw_cpu.iter().map(|c| c.consumer + c.broker).collect());
        // Pinned, the consumers' cores hold the raw loop alone.
        let raw_busy = match pinned {
            Some(_) => median(raw_cpu.iter().map(|c| c.consumer).collect()),
            None => raw_us,
        } * raw_median
            / 1e6;
        println!(
            "raw loop: {raw_us:.2} µs of CPU per event with its broker's (medians), {raw_busy:.2} of the {cores} cores{} busy at {:.0} k events/s",
            if pinned.is_some() { " it is pinned to" } else { "" },
            raw_median / 1e3
        );
        for ((name, _), cpus) in contenders.iter().zip(&cordon_cpu) {
            let own = median(cpus.iter().map(|c| c.consumer).collect());
            let all = median(cpus.iter().map(|c| c.consumer + c.broker).collect());
            let faults = median(cpus.iter().map(|c| c.faults).collect());
            // Pinned, the broker has cores of its own: Cordon's CPU alone bounds it.
            let ceiling = cores / if pinned.is_some() { own } else { all } * 1e6;
            println!(
            "{name}: {own:.2} µs of CPU per event, {all:.2} µs with its broker's, {faults:.1} page faults per 1 000 events (medians); all {cores} cores busy would run {:.0} k events/s, {:.2} of the raw rate; 0.70 of it would take {:.1} cores for Cordon alone",
            ceiling / 1e3,
            ceiling / raw_median,
            own * 0.70 * raw_median / 1e6
        );
        }
    }
    if !std::env::var("KAFKA_BENCH_IDLE").is_ok_and(|v| v == "0") {
        idle_cost(tmp.path(), &keys);
    }
    if std::env::var("KAFKA_BENCH_LATENCY").is_ok_and(|v| v == "0") {
        return;
    }

    // Latency at half the end-to-end rate (the goal's figure), then at a quarter and an
    // eighth: the difference shows how much of the tail is this machine's cores being
    // saturated (broker, producer and Cordon share them) rather than the pipeline itself.
    let fixed: Option<f64> = std::env::var("KAFKA_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok());
    let rate = fixed.unwrap_or(e2e / 2.0);
    let labels = match fixed {
        Some(_) => [
            "KAFKA_BENCH_RATE",
            "half of KAFKA_BENCH_RATE",
            "a quarter of KAFKA_BENCH_RATE",
        ],
        None => [
            "half the end-to-end rate",
            "a quarter of the end-to-end rate",
            "an eighth of the end-to-end rate",
        ],
    };
    let mut phases = vec![
        (rate, "live", labels[0]),
        (rate / 2.0, "live2", labels[1]),
        (rate / 4.0, "live3", labels[2]),
    ];
    // The other reading of "the maximum rate": the highest rate this machine sustains while
    // the events are produced live, found by probing, and latency at half of it.
    if e2e > 0.0 && !std::env::var("KAFKA_BENCH_SUSTAINED").is_ok_and(|v| v == "0") {
        let probes = std::env::var("KAFKA_BENCH_PROBES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6usize)
            .clamp(1, 8);
        // On a broker of their own, dropped after: the probes send millions of records,
        // which the in-memory broker would otherwise hold through the latency phases.
        let pb = broker::broker_with(&[
            ("probe-alerts", 1),
            ("probe0", 4),
            ("probe1", 4),
            ("probe2", 4),
            ("probe3", 4),
            ("probe4", 4),
            ("probe5", 4),
            ("probe6", 4),
            ("probe7", 4),
        ]);
        let top = sustained_rate(
            &pb.addr,
            tmp.path(),
            &keys,
            &key,
            &events,
            e2e / 8.0,
            e2e,
            probes,
        );
        drop(pb);
        if let Some(top) = top {
            phases.insert(
                0,
                (top / 2.0, "live4", "half the highest rate sustained live"),
            );
        }
    }
    // Each phase on a broker of its own, started afresh: the in-memory broker keeps every
    // record it is sent, and one holding the throughput phase's and the earlier phases'
    // millions of records served the later phases more slowly (in one run, 22 % of the
    // records of the last phase, at 51.6 k events/s, came to Cordon more than 25 ms after
    // their send; 0.02 % in a phase at 54.4 k on a fresh broker).
    drop(b);
    for (rate, topic, label) in phases {
        let alerts = format!("{topic}-alerts");
        let hop = format!("{topic}-hop");
        let b = broker::broker_with(&[(topic, 4), (&alerts, 1), (&hop, 4)]);
        let broker_pid = b.pid().to_string();
        let hops = hop_baseline(&b.addr, &events, rate, &hop);
        latency(
            &b.addr,
            tmp.path(),
            &keys,
            &key,
            &events,
            rate,
            topic,
            label,
            &hops,
            &broker_pid,
        );
    }
}

/// The highest rate at which the pipeline keeps up while its events are produced live on
/// this machine: the throughput phase drains a topic filled beforehand, with the broker only
/// serving reads; live, the broker also takes in every record and the bench produces them, on
/// the same cores. Probes `probes` rates, each with a fresh Cordon on a topic of its own
/// (`probe0`…): first `lo`, then bisecting (geometrically) between the highest rate kept up
/// with and the lowest not, starting from `hi`. A rate is kept up with when the producer
/// reached 97 % of it, Cordon was never more than 0.5 s of that traffic behind it, and Cordon
/// had run the last event within 0.5 s of its send. Returns the highest rate kept up with (the rate
/// achieved), or `None` if `lo` was not.
#[allow(clippy::too_many_arguments)]
fn sustained_rate(
    addr: &str,
    tmp: &Path,
    keys: &Path,
    key: &str,
    events: &[cordon_ingest::Event],
    lo: f64,
    hi: f64,
    probes: usize,
) -> Option<f64> {
    let (mut ok, mut fail): (Option<f64>, f64) = (None, hi);
    for i in 0..probes {
        let asked = match ok {
            None if i == 0 => lo,
            None => return None,
            Some(good) => (good * fail).sqrt(),
        };
        let topic = format!("probe{i}");
        let c = Cordon::start_live(tmp, addr, &topic, "probe-alerts", keys);
        std::thread::sleep(Duration::from_secs(2));
        // How far Cordon is behind the producer, read every 20 ms from beside it (events
        // run, then events sent, so a backlog is never understated) until it has run them all
        // or 5 s have passed since the last send: the largest backlog of the probe, and when
        // the last event ran, known to 20 ms however long the producer's flush takes.
        let total = ((asked * 8.0) as usize).min(events.len());
        let last: Arc<Mutex<Option<Instant>>> = Arc::default();
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let sampler = {
            let (url, key, last, sent) = (
                c.metrics.clone(),
                key.to_owned(),
                last.clone(),
                sent.clone(),
            );
            std::thread::spawn(move || {
                let mut most = 0.0f64;
                loop {
                    let ran = metric_at(&url, &key, "cordon_events_total");
                    let now = Instant::now();
                    most = most.max(sent.lock().unwrap().len() as f64 - ran);
                    let given_up = last
                        .lock()
                        .unwrap()
                        .is_some_and(|l| now > l + Duration::from_secs(5));
                    if ran >= total as f64 || given_up {
                        return (ran, now, most);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let (_, sent_n, achieved, at) = send_paced(addr, &topic, events, asked, 8.0, &sent, || {});
        assert_eq!(sent_n, total);
        *last.lock().unwrap() = Some(at);
        let (ran, done, most) = sampler.join().unwrap();
        let drain = done.saturating_duration_since(at).as_secs_f64();
        let behind = most / asked;
        c.stop();
        let kept = achieved >= 0.97 * asked && ran >= total as f64 && drain <= 0.5 && behind <= 0.5;
        println!(
            "sustained probe {i}: asked {asked:.0} events/s, sent {achieved:.0}; Cordon at most {:.0} ms of traffic behind; {}: {}",
            behind * 1e3,
            if ran >= total as f64 {
                format!(
                    "it ran the last of {total} events {:.0} ms after the last send",
                    drain * 1e3
                )
            } else {
                format!(
                    "it was {:.0} events behind 5 s after the last send",
                    total as f64 - ran
                )
            },
            if kept { "kept up" } else { "fell behind" }
        );
        if kept {
            ok = Some(achieved.min(asked));
        } else {
            fail = fail.min(asked);
        }
    }
    if let Some(top) = ok {
        println!(
            "highest rate sustained live: {top:.0} events/s ({:.2} of the end-to-end rate of the throughput phase)",
            top / hi
        );
    }
    ok
}

/// Waits until `c` has run all `n` events; returns its rate (first record fetched to the
/// last event run) and prints its commit figures.
fn throughput(c: &Cordon, key: &str, n: usize) -> f64 {
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    // Run, not just fetched: records are counted as they are fetched, events once an
    // engine has run them.
    let mut ran = 0.0;
    while ran < n as f64 && Instant::now() < deadline {
        if c.metric(key, "cordon_records_total") > 0.0 {
            first.get_or_insert_with(Instant::now);
        }
        ran = c.metric(key, "cordon_events_total");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ran as usize, n, "cordon ran everything");
    let rate = n as f64 / first.unwrap().elapsed().as_secs_f64();
    let alerts = c.metric(key, "cordon_alerts_total");
    let checkpoints = c.metric(key, "cordon_kafka_checkpoints_total");
    let commit_s = c.metric(key, "cordon_kafka_commit_seconds_total");
    let commits = c.metric(key, "cordon_kafka_commits_total");
    let ckpt_s = c.metric(key, "cordon_kafka_checkpoint_seconds_total");
    let ckpt_b = c.metric(key, "cordon_kafka_checkpoint_bytes_total");
    let durable_s = c.metric(key, "cordon_kafka_durable_seconds_total");
    let delivery_s = c.metric(key, "cordon_kafka_delivery_wait_seconds_total");
    println!(
        "  {alerts} alerts, {checkpoints} checkpoints, {commits} commits averaging {:.1} ms: {:.1} ms making sinks durable, {:.1} ms waiting for deliveries, {:.1} ms checkpointing ({:.0} KB per partition checkpoint)",
        commit_s * 1000.0 / commits.max(1.0),
        durable_s * 1000.0 / commits.max(1.0),
        delivery_s * 1000.0 / commits.max(1.0),
        ckpt_s * 1000.0 / commits.max(1.0),
        ckpt_b / checkpoints.max(1.0) / 1024.0
    );
    rate
}

/// Sends the first `secs × rate` events to `topic` at `rate`, each with its `@timestamp` set
/// to the moment it is sent (unless [`stamp_at_send`] says otherwise) and that moment
/// recorded in `sent` by event id; returns when sending began, how many were sent, the
/// rate achieved (to the producer's flush) and when the last was handed to the producer. `at_start` runs once the lines are rendered, just before the first send.
fn send_paced(
    addr: &str,
    topic: &str,
    events: &[cordon_ingest::Event],
    rate: f64,
    secs: f64,
    sent: &Mutex<HashMap<String, Instant>>,
    at_start: impl FnOnce(),
) -> (Instant, usize, f64, Instant) {
    let p = producer(addr);
    let total = ((rate * secs) as usize).min(events.len());
    let at_send = stamp_at_send();
    // Each line is rendered beforehand with a placeholder time, replaced by the send time as
    // it goes: rendering JSON while sending took most of a core here, which the broker and
    // Cordon share.
    const PLACEHOLDER: &str = "1970-01-01T00:00:00Z";
    let rendered: Vec<(String, String, String)> = events
        .iter()
        .take(total)
        .map(|ev| {
            let mut ev = ev.clone();
            if at_send {
                ev.set_timestamp_nanos(0);
            }
            (
                ev.to_string(),
                ev.id().unwrap_or_default().to_owned(),
                ev.agent_id().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        !at_send
            || rendered
                .iter()
                .all(|(l, _, _)| l.matches(PLACEHOLDER).count() == 1)
    );
    // Sized up front: growing a map of hundreds of thousands of ids rehashes it all while
    // the lock is held, which would delay the send (and a reader timing hops) by milliseconds.
    sent.lock().unwrap().reserve(total);
    at_start();
    // The producer shares the cores with the broker and Cordon, so it is kept cheap: it
    // sleeps only when a millisecond or more ahead of the pace (sleeping before each event
    // woke it tens of thousands of times a second) and serves librdkafka's queue every 64
    // sends, not after each.
    let start = Instant::now();
    for (i, (line, id, agent)) in rendered.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        let stamped;
        let line = if at_send {
            stamped = line.replacen(PLACEHOLDER, &jiff::Timestamp::now().to_string(), 1);
            &stamped
        } else {
            line
        };
        sent.lock().unwrap().insert(id.clone(), Instant::now());
        broker::send(
            &p,
            BaseRecord::to(topic)
                .key(agent.as_str())
                .payload(line.as_str()),
        );
        if i % 64 == 63 {
            p.poll(Duration::ZERO);
        }
    }
    let last = Instant::now();
    p.flush(Duration::from_secs(30)).unwrap();
    (
        start,
        total,
        total as f64 / start.elapsed().as_secs_f64(),
        last,
    )
}

/// The baseline of the latency phase, measured just before it at the same rate: the same
/// traffic through the broker to a raw consumer (a group of its own, Cordon's consumer
/// properties), with nothing else consuming. Returns each record's one hop, from its send to
/// its poll, in ms, sorted. An alert takes two such hops (events in, alert out) plus
/// Cordon's own time.
fn hop_baseline(addr: &str, events: &[cordon_ingest::Event], rate: f64, topic: &str) -> Vec<f64> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = hop_reader(addr, topic, &sent, &stop);
    // Let the reader join its group before anything is sent.
    std::thread::sleep(Duration::from_secs(3));
    send_paced(addr, topic, events, rate, 10.0, &sent, || {});
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Release);
    reader.join().unwrap().into_iter().map(|h| h.0).collect()
}

/// A raw consumer of `topic` (a group of its own, Cordon's consumer properties) timing each
/// record's one hop, from its send (in `sent`, by event id) to its poll, in ms, each with its
/// send time; returns them sorted by hop once `stop` is set.
fn hop_reader(
    addr: &str,
    topic: &str,
    sent: &Arc<Mutex<HashMap<String, Instant>>>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, Instant)>> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", addr)
        .set("group.id", format!("hop-{}", ulid::Ulid::new()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // Cordon's own defaults (kafka/src/lib.rs).
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.min.messages", "10000");
    for (k, v) in props().into_iter().chain(latency_props()) {
        cfg.set(k, v);
    }
    let c: BaseConsumer = cfg.create().unwrap();
    c.subscribe(&[topic]).unwrap();
    let (sent, stop) = (sent.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut hops = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                let at = Instant::now();
                let id = m.payload().and_then(|p| {
                    let p = std::str::from_utf8(p).ok()?;
                    let from = p.find("\"event.id\":\"")? + 12;
                    Some(p[from..].split('"').next()?.to_owned())
                });
                if let Some(t) = id.and_then(|id| sent.lock().unwrap().get(&id).copied()) {
                    hops.push((at.duration_since(t).as_secs_f64() * 1000.0, t));
                }
            }
        }
        hops.sort_by(|a, b| a.0.total_cmp(&b.0));
        hops
    })
}

/// Sends events at `rate` to `topic` with their time set to the send time and measures, for
/// each alert on `{topic}-alerts`, the time from sending its last evidence event to receiving
/// it.
#[allow(clippy::too_many_arguments)]
fn latency(
    addr: &str,
    tmp: &Path,
    keys: &Path,
    key: &str,
    events: &[cordon_ingest::Event],
    rate: f64,
    topic: &str,
    label: &str,
    hops: &[f64],
    broker_pid: &str,
) {
    let c = Cordon::start_live(tmp, addr, topic, &format!("{topic}-alerts"), keys);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, stop, addr) = (received.clone(), stop.clone(), addr.to_owned());
        let alerts = format!("{topic}-alerts");
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "latency-reader")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "5")
                .create()
                .unwrap();
            c.subscribe(&[alerts.as_str()]).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                    let at = Instant::now();
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap()).unwrap();
                    if let Some(last) = v["finding_info"]["related_events"]
                        .as_array()
                        .and_then(|e| e.last())
                        .and_then(|e| e["uid"].as_str())
                    {
                        let rule = v["finding_info"]["title"].as_str().unwrap_or_default();
                        received
                            .lock()
                            .unwrap()
                            .push((last.to_owned(), rule.to_owned(), at));
                    }
                }
            }
        })
    };
    // `KAFKA_BENCH_BESIDE=1`: a raw consumer reads the same events beside Cordon and times
    // each one's hop. Against the baseline measured alone, it tells a broker (or machine)
    // slowed by Cordon's presence from delay inside Cordon's own consumer.
    let beside = std::env::var("KAFKA_BENCH_BESIDE")
        .is_ok_and(|v| v == "1")
        .then(|| hop_reader(addr, topic, &sent, &stop));
    // Let the readers join their groups before anything is sent.
    std::thread::sleep(Duration::from_secs(3));
    // Where the cores go while live: Cordon, the broker, and this process (the paced
    // producer and the readers), from the first send (rendering the lines comes before).
    let pids = [
        c.child.id().to_string(),
        broker_pid.to_owned(),
        "self".to_owned(),
    ];
    let (mut cpu0, mut faults0, mut wall0) = ([0.0; 3], 0.0, None);
    let threads = sample_threads(&pids, &stop);
    let (start, total, achieved, _) = send_paced(addr, topic, events, rate, 20.0, &sent, || {
        cpu0 = pids.each_ref().map(|p| cpu_seconds(p));
        faults0 = page_faults(&pids[0]);
        wall0 = Some(jiff::Timestamp::now());
    });
    let wall = start.elapsed().as_secs_f64();
    let cpu = [0, 1, 2].map(|i| cpu_seconds(&pids[i]) - cpu0[i]);
    let faults = (page_faults(&pids[0]) - faults0) * 1e3 / total as f64;
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Release);
    reader.join().unwrap();
    let beside = beside.map(|r| r.join().unwrap());
    let threads = threads.join().unwrap();
    let commits = c.metric(key, "cordon_kafka_commits_total");
    let commit_ms = c.metric(key, "cordon_kafka_commit_seconds_total") * 1000.0 / commits.max(1.0);
    let ckpt_ms =
        c.metric(key, "cordon_kafka_checkpoint_seconds_total") * 1000.0 / commits.max(1.0);
    let sinks_ms = c.metric(key, "cordon_kafka_durable_seconds_total") * 1000.0 / commits.max(1.0);
    let snap_ms = c.metric(key, "cordon_kafka_snapshot_seconds_total") * 1000.0 / commits.max(1.0);
    let cow_n = c.metric(key, "cordon_engine_copies_on_write_total") / commits.max(1.0);
    let cow_ms =
        c.metric(key, "cordon_engine_copy_on_write_seconds_total") * 1000.0 / commits.max(1.0);
    let wait_ms =
        c.metric(key, "cordon_kafka_delivery_wait_seconds_total") * 1000.0 / commits.max(1.0);
    let (delay50, delay99) = c.delay_quantiles(key, "cordon_kafka_record_delay_seconds");
    let (run50, run99) = c.delay_quantiles(key, "cordon_kafka_run_delay_seconds");
    let over = [25.0, 50.0].map(|b| c.share_over(key, "cordon_kafka_record_delay_seconds", b));
    let (ack50, ack99) = c.delay_quantiles(key, "cordon_kafka_produce_ack_seconds");
    let ack_max = c.delay_max(key, "cordon_kafka_produce_ack_seconds");
    let buffers = [
        "cordon_kafka_job_buffers_made_total",
        "cordon_kafka_job_buffer_bytes_made_total",
        "cordon_kafka_job_buffers_freed_total",
    ]
    .map(|m| c.metric(key, m));
    let ckpt_kb = c.metric(key, "cordon_kafka_checkpoint_bytes_total")
        / c.metric(key, "cordon_kafka_checkpoints_total").max(1.0)
        / 1024.0;
    c.stop();
    let per = |s: f64| s * 1e6 / total as f64;
    println!(
        "  while live: CPU per event (cores busy) Cordon {:.2} µs ({:.2}; {faults:.1} page faults per 1 000 events), the broker {:.2} µs ({:.2}), this bench's producer and readers {:.2} µs ({:.2})",
        per(cpu[0]),
        cpu[0] / wall,
        per(cpu[1]),
        cpu[1] / wall,
        per(cpu[2]),
        cpu[2] / wall
    );
    println!("  while live: records run within {delay50} ms of their Kafka timestamp (half of them) and {delay99} ms (99 %), and within {run50} / {run99} ms of being fetched (histogram bounds); {:.3} % of records past 25 ms, {:.3} % past 50 ms", over[0] * 100.0, over[1] * 100.0);
    println!("  while live: alerts acknowledged by the broker within {ack50} ms of being produced (half of them), {ack99} ms (99 %), all within {ack_max} ms (histogram bounds)");
    println!("  while live: {commits} commits averaging {commit_ms:.1} ms beside the poll loop ({sinks_ms:.1} ms sinks, {wait_ms:.1} ms deliveries, {ckpt_ms:.1} ms writing checkpoints of {ckpt_kb:.0} KB per partition); {snap_ms:.1} ms per commit copying engines, then {cow_n:.0} windows and partials copied on write ({cow_ms:.1} ms)");
    println!(
        "  while live: {} job buffers made ({:.1} MB), {} kept ones freed",
        buffers[0],
        buffers[1] / 1e6,
        buffers[2]
    );
    if !hops.is_empty() {
        println!(
            "  baseline (the broker alone, just before, same rate): a raw consumer got each record in {}",
            hop_summary(hops)
        );
    }
    let beside = beside.filter(|h| !h.is_empty());
    if let Some(hops) = &beside {
        let ms: Vec<f64> = hops.iter().map(|h| h.0).collect();
        println!(
            "  beside Cordon (same events, a raw consumer of its own): {}",
            hop_summary(&ms)
        );
    }
    let sent = sent.lock().unwrap();
    // (latency ms, sent at s since the start, rule)
    let mut each: Vec<(f64, f64, String)> = received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, rule, at)| {
            let t = *sent.get(id)?;
            Some((
                at.duration_since(t).as_secs_f64() * 1000.0,
                t.duration_since(start).as_secs_f64(),
                rule.clone(),
            ))
        })
        .collect();
    each.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ms: Vec<f64> = each.iter().map(|e| e.0).collect();
    if ms.is_empty() {
        println!("latency: no alerts came back");
        return;
    }
    let (p50, p99) = (percentile(&ms, 0.50), percentile(&ms, 0.99));
    println!(
        "event-to-alert latency at {achieved:.0} events/s ({label}; event times {}), {total} events, {} alerts: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        if stamp_at_send() { "stamped at send" } else { "as generated" },
        ms.len(),
        ms[ms.len() - 1]
    );
    // Printed beside, never instead: the first seconds of a fresh instance (every agent new,
    // memory touched for the first time, the first commits) hold one burst of slow alerts in
    // many runs, and with a few hundred alerts such a burst alone is the p99.
    let steady: Vec<f64> = each
        .iter()
        .filter(|e| e.1 >= WARM_UP_SECS)
        .map(|e| e.0)
        .collect();
    if !steady.is_empty() {
        println!(
            "  the same without alerts whose last event was sent in the first {WARM_UP_SECS} s: {} alerts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            steady.len(),
            percentile(&steady, 0.50),
            percentile(&steady, 0.99),
            steady[steady.len() - 1]
        );
    }
    if !hops.is_empty() {
        let (h50, h99) = (percentile(hops, 0.50), percentile(hops, 0.99));
        println!(
            "  against twice a raw hop (events in, alert out): p50 {:.2}, p99 {:.2} of {:.0} / {:.0} ms",
            p50 / (2.0 * h50).max(1.0),
            p99 / (2.0 * h99).max(1.0),
            2.0 * h50,
            2.0 * h99
        );
    }
    // The slowest, with when their last event was sent: several at one moment is a pause,
    // one rule again and again is the rule's semantics. The clock time sending began at
    // places them in Cordon's log (`KAFKA_BENCH_LOG`).
    if let Some(t) = wall0 {
        println!("  sending began at {t}; the slowest:");
    }
    for (ms, at, rule) in each.iter().rev().take(8) {
        println!("  {ms:>8.1} ms  sent at {at:>6.2} s  {rule}");
    }
    if let Some((_, at, _)) = each.last() {
        let from = start + Duration::from_secs_f64((at - 0.1).max(0.0));
        println!(
            "  threads in the 150 ms up to 50 ms after the slowest alert's last event (ms on a core / ms waiting for one): {}",
            thread_use(&threads, from, from + Duration::from_millis(150))
        );
    }
    // What the raw consumer beside Cordon saw of the records sent at the slowest alert's
    // moment: slow too, and the broker or the machine held them; quick, and Cordon did.
    if let (Some(hops), Some((_, at, _))) = (&beside, each.last()) {
        let near: Vec<f64> = hops
            .iter()
            .filter(|(_, t)| (t.duration_since(start).as_secs_f64() - at).abs() <= 0.05)
            .map(|h| h.0)
            .collect();
        if !near.is_empty() {
            println!(
                "  beside Cordon, the {} records sent within 50 ms of the slowest alert's last event: {}",
                near.len(),
                hop_summary(&near)
            );
        }
    }
}
