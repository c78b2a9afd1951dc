//! # cordon-kafka
//!
//! Kafka as the input of `cordon run`: a consumer in a consumer group reads the gateways'
//! audit events, one engine per assigned partition runs them, and offsets are committed only
//! once everything the consumed events caused is durable — alerts in the store and on the
//! alerts topic (delivery confirmed), actions in the outbox — so a crash replays events rather
//! than losing them, and the replay changes nothing (alert ids come from the rule and the
//! evidence event ids; action ids are idempotency keys; the store keeps one row per id).
//!
//! **State per partition.** Agents are the record key, so a partition holds whole agents and
//! its engine holds everything about them: events in the reorder buffer, open partial
//! matches, threshold and suppression windows, baselines. Each partition has its own
//! event-time watermark. With `state_store` set, each partition's engine is checkpointed at
//! every commit, *before* the commit and tagged with the offset it reflects: everything read
//! is in the checkpoint (events still waiting for the watermark are in its reorder buffer), so
//! the committed offset is simply the next one to read. When a partition is assigned — at
//! start, or handed over by a rebalance — its checkpoint is restored before any of its records
//! is read, and consumption starts at the checkpoint's offset (which may be past the committed
//! one if a crash fell between the two writes). When a partition is revoked, its alerts are
//! made durable, its state checkpointed and its offset committed before it goes.
//!
//! Why checkpoints in a store, not a compacted changelog topic: a partition's state is one
//! value of tens of kilobytes to tens of megabytes (profiles of thousands of agents), past
//! Kafka's default 1 MiB record limit, and restoring it is a few reads instead of replaying a
//! changelog. The store is a local directory (one machine, or a shared volume) or any object
//! store URL (`s3://bucket/prefix`), where a write appears whole or not at all — the same
//! layer the alert store uses.
//!
//! **Checkpoints are chains.** Most of a partition's state is events held by open partial
//! matches, and they are held for minutes while the state is checkpointed every second; so a
//! checkpoint writes the events new since the last one and refers to the rest
//! ([`cordon_detect::checkpoint`]). A partition's head file (`<partition>.ckpt`) names the
//! offset and the chain's files (`<partition>/<ulid>.part`); each checkpoint writes one file,
//! then the head. After a chain's first checkpoint, each one is a *delta*: the rules' windows
//! and partial matches that changed since the previous one, found by comparing the engine's
//! copy with the copy the previous checkpoint was written from (the two share every window
//! and partial match neither changed). A checkpoint then costs what changed, not how much the
//! rules hold: a session-keyed rule at tens of thousands of events per second holds a window
//! for every session of the last 15 minutes. When the chain's files hold more than twice the
//! bytes of the events still held (plus 8 MiB; a delta counts its new events as held, since
//! it cannot tell which earlier ones died), or 64 files, the next checkpoint starts a new
//! chain with all of the state and every held event, and once its head is written the old
//! chain's files are deleted. A new owner restores the chain's last
//! full checkpoint, applies the deltas after it in order, and starts a chain of its own.
//!
//! Without `state_store`, state lives in memory: commits then cover, per partition, only the
//! offsets before the first event still held in the reorder buffer, and a restart or
//! hand-over starts that partition's state afresh.
//!
//! **Partitions run side by side.** The poll loop only fetches: it drains a batch, checks
//! each record against its partition's offset, copies it into a job for the partition's lane
//! and goes back to fetching. Engine threads (`workers`, default one per core) run the lanes:
//! a lane runs on one thread at a time, its jobs in order, so a partition's records reach its
//! engine in offset order; lanes with work take turns a job at a time, a thread preferring
//! the lanes it ran last (their state is still in its core's cache). Each engine has its
//! own lock, so partitions share nothing while they run. A job's thread writes its dead
//! letters and alerts itself, each alert as soon as the chunk of records that raised it has
//! run rather than at the end of the job. Whenever a partition's state and offset must
//! agree — a checkpoint, a revocation, the stop — the loop first waits for that partition's
//! lane to run everything handed to it, so the state reflects exactly the records before the
//! offset and their alerts are written. A librdkafka consumer queue gives a partition's records in
//! runs of thousands, so the lanes hold several runs' worth for every thread to have work.
//!
//! **Backpressure.** Records are fetched only as fast as the engines and sinks take them:
//! librdkafka's prefetch is capped (`prefetch_bytes`), the lanes hold at most as many bytes
//! again before the loop stops fetching, and the producer waits when its queue is full. When
//! anything downstream is slow, lag grows and memory does not.
//!
//! Records are drained in batches (one `poll` each, no await per message); undecodable ones go
//! to the dead-letter topic with where they came from and why in headers. SIGTERM or SIGINT
//! stops fetching, makes everything durable, checkpoints, commits and exits 0.
//!
//! This file holds the input itself (opening the clients, the poll loop, the engine threads' work
//! and the sinks it feeds); beside it, `config` (`[kafka]`), `stats` (its metrics), `lanes`
//! (the engine threads' queues), `group` (assigned partitions, rebalances, cuts), `commit`
//! (completing a cut), `checkpoint` (the partition state store) and `oauthbearer` (SASL
//! OAUTHBEARER tokens from an OAuth 2.0 token endpoint).

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cordon_detect::Alert;
use cordon_query::store::Location;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use cordon_detect::engines::{Engines, Inner};
use cordon_detect::engines::{PipelineStats, Progress};

mod checkpoint;
mod commit;
mod config;
mod group;
mod lanes;
pub mod oauthbearer;
mod stats;

use checkpoint::CheckpointStore;
use commit::{Committer, Cut, Settled};
pub use config::KafkaConfig;
use config::{duration, PREFETCH};
use group::{Ctx, RunState};
use lanes::{Job, Lanes, Spare, DECODE_CHUNK};
pub use stats::KafkaStats;

/// Counts failed deliveries, so a commit never covers an alert the broker did not take.
///
/// A failed delivery stops the run. librdkafka has already retried the record for
/// `message.timeout.ms` (5 minutes by default) or met an error retrying cannot mend, and
/// the record itself is gone; a later commit would cover the events that caused it, so
/// nothing more is committed, and the next run reads those events again and makes the
/// record anew (Kafka Streams' default for a failed send is the same).
struct Deliveries {
    stats: Arc<KafkaStats>,
    /// Never reset: once a record is lost, no later cut may commit.
    failed: AtomicU64,
    /// The first failure: the topic and librdkafka's error.
    first: Mutex<Option<String>>,
    /// librdkafka's client-wide errors, logged once per kind and interval.
    errors: group::Repeats,
    tokens: Option<Arc<crate::oauthbearer::TokenSource>>,
}

impl ClientContext for Deliveries {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(repeats) = self.errors.log(&error.to_string()) {
            tracing::error!(error = %error, %reason, repeats, "librdkafka (producer)");
        }
    }

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.tokens.as_deref())
    }
}

impl Deliveries {
    /// Why the run must stop, once a record was not delivered.
    fn lost(&self) -> Option<String> {
        let n = self.failed.load(Ordering::Relaxed);
        (n > 0).then(|| {
            let first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            format!(
                "[kafka]: {n} alert, dead-letter or action records were not delivered (first: {}); stopping without committing the events that caused them, which the next run reads again",
                first.as_deref().unwrap_or("unknown")
            )
        })
    }
}

/// A token for librdkafka's OAUTHBEARER refresh (asked only when `sasl.mechanism` is it).
fn oauth_token(
    tokens: Option<&crate::oauthbearer::TokenSource>,
) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
    match tokens {
        Some(t) => t.token().map_err(Into::into),
        None => Err("sasl.mechanism OAUTHBEARER needs a [kafka.oauthbearer] section (token endpoint and client credentials)".into()),
    }
}

impl ProducerContext for Deliveries {
    /// When the record was handed to the producer.
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        if result.is_ok() {
            self.stats
                .acks
                .observe_n(sent.elapsed().as_micros() as u64, 1);
        }
        if let Err((e, m)) = result {
            // The first is logged as an error; the run stops on it, and the records in
            // flight with it (as many as were queued) fail the same way.
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                tracing::error!(error = %e, topic = m.topic(), "a record was not delivered; the run stops");
                *first = Some(format!("to {}: {e}", m.topic()));
            } else {
                tracing::debug!(error = %e, topic = m.topic(), "a record was not delivered");
            }
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Work on the poll thread slower than this is logged (debug): it holds up every record.
const SLOW: Duration = Duration::from_millis(20);

/// How long one call of the delivery thread's `poll` lasts. A report wakes it at once, so
/// this is not a delay; it is how often the thread spins. rdkafka's `BaseProducer::poll`
/// serves events until its deadline, asking librdkafka to wait for the time left in whole
/// milliseconds: under a millisecond left, that is a wait of 0, so each call ends in a
/// busy loop of up to 1 ms. With calls of 20 ms that was 4–5 % of a core, traffic or
/// none; with these, 0.5 % at most.
const DELIVERY_POLL: Duration = Duration::from_millis(200);

/// What became of one record on an engine thread.
enum Outcome {
    /// Decoded and pushed; `late` when the engine refused it as too late (dead-lettered).
    Event {
        /// Its event time.
        ts: Option<i64>,
        /// Why it was refused.
        late: Option<String>,
    },
    /// Not an event (dead-lettered).
    Undecodable(String),
}

/// What `cordon run` gives the input to make its sinks durable and to learn of new partitions.
pub struct Hooks {
    /// Makes every sink durable (alerts file flushed, store written).
    pub durable: Box<dyn FnMut() -> Result<()> + Send>,
    /// Partitions were assigned (the alert store refreshes the ids it dedupes against).
    pub assigned: Box<dyn FnMut() -> Result<()> + Send>,
}

/// A running Kafka input.
pub struct KafkaInput {
    consumer: BaseConsumer<Ctx>,
    results: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>>>,
    run: Arc<Mutex<RunState>>,
    stats: Arc<KafkaStats>,
    engines: Arc<Engines>,
    producer: Option<Arc<BaseProducer<Deliveries>>>,
    config: KafkaConfig,
    formats: config::TopicFormats,
    /// Whether a thread of its own serves the producer's delivery reports (else the poll
    /// loop does, once a turn).
    reports_served: bool,
    commit_every: Duration,
    /// Engine threads: each partition's lane runs on one of them at a time.
    workers: usize,
    lanes: Arc<Lanes>,
    stateful: bool,
    /// Buffers of finished jobs, reused by the next ones.
    spare: Spare,
    /// The largest record the producer takes ([`record_max`]).
    record_max: usize,
}

/// librdkafka's default `message.max.bytes`.
const MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept in a produced record for its framing (lengths, offsets, timestamps, attributes)
/// beside key, value and headers: librdkafka refuses a record whose wire size passes
/// `message.max.bytes`, and the framing is a few dozen bytes.
const FRAMING: usize = 512;

/// Longest key Cordon produces: keys only place records in partitions, and an agent id or
/// a bad record's key can be as long as a record.
const KEY_MAX: usize = 1024;

/// `key`, cut to [`KEY_MAX`] bytes at a character boundary (the same long key is always cut
/// the same way, so it still picks one partition).
fn capped_key(key: &str) -> &str {
    if key.len() <= KEY_MAX {
        return key;
    }
    let mut end = KEY_MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// Warns of an output topic the broker does not have. A record for it waits for the topic
/// until `message.timeout.ms` (5 minutes by default) and then stops the run, so a misspelt
/// `alerts_topic` would otherwise show only then. Run on its own thread: with the broker
/// unreachable the question waits, and the run need not. A broker that creates topics on
/// first use creates it here, and nothing is said.
fn check_outputs(p: &BaseProducer<Deliveries>, outputs: &[(&str, String)]) {
    for (key, topic) in outputs {
        match p
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
        {
            Ok(md) => {
                if let Some(e) = md.topics().iter().find_map(|t| t.error()) {
                    tracing::warn!(
                        "[kafka]: {key} {topic:?}: {}; records for it will fail after message.timeout.ms and stop the run",
                        rdkafka::types::RDKafkaErrorCode::from(e)
                    );
                }
            }
            Err(e) => tracing::debug!(%key, %topic, error = %e, "output topic not checked"),
        }
    }
}

/// The largest record (key, value and headers) the producer takes: `message.max.bytes`
/// from `[kafka.properties]`, or librdkafka's default.
///
/// Why it matters: a record the producer refuses stops the run, and the run that restarts
/// reads the same record and stops again. A dead letter carries the whole bad record and
/// an alert its evidence events, either of which can be as large as the largest record the
/// events topic takes (a tool call's arguments are the caller's to choose), so both are cut
/// to fit instead.
fn record_max(config: &KafkaConfig) -> Result<usize> {
    match config.properties.get("message.max.bytes") {
        None => Ok(MESSAGE_MAX_BYTES),
        Some(v) => v.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "[kafka.properties]: message.max.bytes: {v:?} (expected a number of bytes)"
            )
        }),
    }
}

impl KafkaInput {
    /// Connects (lazily: librdkafka retries brokers in the background) and subscribes;
    /// partition state is restored as partitions are assigned (`rt` runs the state store's
    /// I/O).
    pub fn open(
        config: &KafkaConfig,
        engines: Arc<Engines>,
        rt: tokio::runtime::Handle,
    ) -> Result<KafkaInput> {
        if config.topics.is_empty() {
            anyhow::bail!("[kafka]: topics: expected at least one topic");
        }
        let formats = config.formats()?;
        let commit_every = duration(
            "commit_interval",
            &config.commit_interval,
            Duration::from_secs(1),
        )?;
        let flush_timeout = duration(
            "shutdown_timeout",
            &config.shutdown_timeout,
            Duration::from_secs(30),
        )?;
        let stats_every = duration(
            "stats_interval",
            &config.stats_interval,
            Duration::from_secs(2),
        )?;
        let checkpoints = config
            .state_store
            .as_deref()
            .map(|s| {
                let location =
                    Location::parse(s).map_err(|e| anyhow::anyhow!("[kafka]: state_store: {e}"))?;
                location
                    .create()
                    .map_err(|e| anyhow::anyhow!("[kafka]: state_store: {e}"))?;
                anyhow::Ok(CheckpointStore::new(
                    location,
                    config.group_id.clone(),
                    rt.clone(),
                ))
            })
            .transpose()?;
        let stats = Arc::new(KafkaStats::default());
        let base = config.client()?;
        let tokens = config
            .oauthbearer
            .as_ref()
            .map(|o| crate::oauthbearer::TokenSource::new(o, rt.clone()).map(Arc::new))
            .transpose()?;
        if let Some(t) = &tokens {
            let _ = stats.oauth.set(t.stats.clone());
        }
        let producer: Option<Arc<BaseProducer<Deliveries>>> = if config.alerts_topic.is_some()
            || config.dead_letter_topic.is_some()
            || config.actions_topic.is_some()
        {
            let mut p = base.clone();
            p.set("enable.idempotence", "true").set("acks", "all");
            // Alerts are few and every millisecond before an analyst or a SIEM sees one
            // counts: librdkafka's default wait of 5 ms to fill a batch is for bulk traffic.
            // Records queued while a request is in flight are still sent together.
            if !["linger.ms", "queue.buffering.max.ms"]
                .iter()
                .any(|k| config.properties.contains_key(*k))
            {
                p.set("linger.ms", "0");
            }
            Some(Arc::new(
                p.create_with_context(Deliveries {
                    stats: stats.clone(),
                    failed: AtomicU64::new(0),
                    first: Mutex::new(None),
                    errors: group::Repeats::default(),
                    tokens: tokens.clone(),
                })
                .context("[kafka]: producer")?,
            ))
        } else {
            None
        };
        let mut reports_served = false;
        if let Some(p) = &producer {
            // Delivery reports are served as they arrive, not only when the poll loop next
            // turns (a turn drains a batch, tens of milliseconds under a backlog): so
            // `cordon_kafka_produce_ack_seconds` times the broker, not the loop, and a lost
            // delivery stops the run sooner. The thread ends with the producer, within one
            // `DELIVERY_POLL`.
            let weak = Arc::downgrade(p);
            let spawned = std::thread::Builder::new()
                .name("cordon-deliveries".into())
                .spawn(move || {
                    while let Some(p) = weak.upgrade() {
                        p.poll(DELIVERY_POLL);
                    }
                });
            match spawned {
                Ok(_) => reports_served = true,
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for delivery reports; the poll loop serves them")
                }
            }
        }
        let stateful = checkpoints.is_some();
        let committer = Arc::new(Committer {
            hooks: Mutex::new(None),
            producer: producer.clone(),
            checkpoints,
            flush_timeout,
            stop_by: Mutex::new(None),
            stats: stats.clone(),
            lock: Mutex::new(0),
        });
        let lanes = Arc::new(Lanes::new(stats.clone()));
        let run = Arc::new(Mutex::new(RunState {
            engines: engines.clone(),
            lanes: lanes.clone(),
            committer: committer.clone(),
            parts: BTreeMap::new(),
            fatal: None,
            closing: false,
            cuts: 0,
            building: None,
        }));
        let mut c = base;
        c.set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "statistics.interval.ms",
                stats_every.as_millis().max(1).to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                (config.prefetch_bytes.unwrap_or(PREFETCH) / 1024)
                    .max(1)
                    .to_string(),
            );
        // Defaults a `[kafka.properties]` entry overrides. librdkafka postpones a partition's
        // next fetch by `fetch.queue.backoff.ms` (1 s) whenever its prefetch queue is past a
        // threshold, which with 1 KB events capped the rate at a fraction of the broker's;
        // the prefetch cap bounds memory, a short backoff keeps the queue fed.
        for (k, v) in [
            ("auto.offset.reset", "earliest"),
            ("fetch.queue.backoff.ms", "10"),
            ("queued.min.messages", "10000"),
        ] {
            if c.get(k).is_none() {
                c.set(k, v);
            }
        }
        let read_committed = c.get("isolation.level") != Some("read_uncommitted");
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx {
                run: run.clone(),
                stats: stats.clone(),
                tokens,
                read_committed,
                errors: group::Repeats::default(),
            })
            .context("[kafka]: consumer")?;
        let workers = match config.workers {
            Some(0) => anyhow::bail!("[kafka]: workers: 0 (expected at least 1)"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("[kafka]: subscribe")?;
        if let Some(p) = &producer {
            let outputs: Vec<(&'static str, String)> = [
                ("alerts_topic", &config.alerts_topic),
                ("dead_letter_topic", &config.dead_letter_topic),
                ("actions_topic", &config.actions_topic),
            ]
            .into_iter()
            .filter_map(|(k, t)| Some((k, t.clone()?)))
            .collect();
            let p = p.clone();
            let checked = std::thread::Builder::new()
                .name("cordon-topics".into())
                .spawn(move || check_outputs(&p, &outputs));
            if let Err(e) = checked {
                tracing::debug!(error = %e, "output topics not checked");
            }
        }
        Ok(KafkaInput {
            consumer,
            results: Mutex::new(None),
            run,
            stats,
            engines,
            producer,
            config: config.clone(),
            formats,
            reports_served,
            commit_every,
            workers,
            lanes,
            stateful,
            spare: Spare::default(),
            record_max: record_max(config)?,
        })
    }

    /// Leaves the consumer group and closes the clients, waiting at most until the stop's
    /// deadline (`shutdown_timeout` after the stop began; `shutdown_timeout` from now if the
    /// run did not stop).
    ///
    /// Why bounded: closing a consumer leaves its group, and librdkafka waits for that with
    /// no limit of its own but its request timeout. With the broker unreachable, and the
    /// group session just expired (the consumer rejoining), the process hung for a minute
    /// after SIGTERM in that close. Past the deadline the close is left running on its own
    /// thread and the process exits: the broker ends the member's session by itself.
    pub fn close(self) {
        let deadline = {
            let committer = self.lock().committer.clone();
            let stop_by = *committer.stop_by.lock().unwrap_or_else(|p| p.into_inner());
            stop_by.unwrap_or_else(|| Instant::now() + committer.flush_timeout)
        };
        let (done, closed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("cordon-close".into())
            .spawn(move || {
                drop(self);
                let _ = done.send(());
            });
        if spawned.is_err() {
            tracing::warn!(
                "no thread to close the Kafka clients on; exiting without leaving the group"
            );
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // A second at least: a reachable broker answers a LeaveGroup in milliseconds.
        if closed
            .recv_timeout(left.max(Duration::from_secs(1)))
            .is_err()
        {
            tracing::warn!("the consumer did not leave its group within shutdown_timeout (is the broker reachable?); exiting without waiting: the broker ends its session");
        }
    }

    /// Whether action results have somewhere to go.
    pub fn wants_action_results(&self) -> bool {
        self.config.actions_topic.is_some()
    }

    /// Where the responder's action results come from (published to `actions_topic`).
    pub fn action_results(&self, rx: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }

    /// Produces the action results that arrived since the last call.
    fn publish_action_results(&self) -> Result<()> {
        let Some(topic) = &self.config.actions_topic else {
            return Ok(());
        };
        let mut rx = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rx) = rx.as_mut() else {
            return Ok(());
        };
        while let Ok(v) = rx.try_recv() {
            let key = v["action"]["alert_id"].as_str().unwrap_or("").to_owned();
            self.send(topic, &key, &serde_json::to_vec(&v)?, OwnedHeaders::new())?;
            self.stats
                .action_results_produced
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The input's counters (metrics, readiness).
    pub fn stats(&self) -> Arc<KafkaStats> {
        self.stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, topic: &str, key: &str, payload: &[u8], headers: OwnedHeaders) -> Result<()> {
        let Some(p) = &self.producer else {
            return Ok(());
        };
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match p.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    // Backpressure: wait for deliveries to make room.
                    p.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((e, _)) => return Err(anyhow::anyhow!("producing to {topic}: {e}")),
            }
        }
    }

    /// Produces an alert to the alerts topic, if there is one (key = agent id). An alert
    /// too large for a record goes without its evidences' data (the alert store and the
    /// alerts file keep it whole), with header `cordon.evidences_omitted` giving the size
    /// of the whole alert.
    fn publish(&self, a: &Alert) -> Result<()> {
        let Some(t) = &self.config.alerts_topic else {
            return Ok(());
        };
        let text = a.render_ocsf();
        let key = capped_key(a.agent_id().unwrap_or(""));
        let room = self.record_max.saturating_sub(key.len() + FRAMING + 64);
        if text.json.len() <= room {
            self.send(t, key, text.json.as_bytes(), OwnedHeaders::new())?;
        } else {
            let whole = text.json.len().to_string();
            let short = text.without_evidences();
            if short.len() > room {
                // Even without its evidences (an agent id or a rule text as large as a
                // record): left to the store and the alerts file, counted.
                tracing::error!(alert = %a.id, rule = %a.rule_id, bytes = short.len(), max = self.record_max, "alert too large for the alerts topic even without its evidences' data: not produced (the alert store and the alerts file have it)");
                self.stats
                    .alerts_not_produced
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            tracing::warn!(alert = %a.id, rule = %a.rule_id, bytes = text.json.len(), max = self.record_max, "alert too large for the alerts topic: produced without its evidences' data");
            self.send(
                t,
                key,
                short.as_bytes(),
                OwnedHeaders::new().insert(Header {
                    key: "cordon.evidences_omitted",
                    value: Some(&whole),
                }),
            )?;
            self.stats
                .alerts_without_evidences
                .fetch_add(1, Ordering::Relaxed);
        }
        self.stats.alerts_produced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a record to the dead-letter topic, with where it came from and why.
    fn dead_letter(
        &self,
        job: &Job,
        offset: i64,
        key: &[u8],
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        let Some(t) = &self.config.dead_letter_topic else {
            tracing::warn!(topic = %job.topic, partition = job.partition, offset, %reason, "record dropped (no dead_letter_topic)");
            return Ok(());
        };
        let partition = job.partition.to_string();
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "cordon.source.topic",
                value: Some(&job.topic),
            })
            .insert(Header {
                key: "cordon.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "cordon.source.offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "cordon.reason",
                value: Some(reason),
            })
            // What the record was read as: with several formats in one group, a record
            // on the wrong topic, or a topic given the wrong format, shows here.
            .insert(Header {
                key: "cordon.format",
                value: Some(self.formats.of(&job.topic).name()),
            });
        let key = String::from_utf8_lossy(key);
        let key = capped_key(&key);
        // Besides the key, the reason (one line, bounded) and the source topic's name (up to
        // 249 bytes), the headers above and the one below take under 256 bytes.
        let room = self
            .record_max
            .saturating_sub(key.len() + reason.len() + job.topic.len() + FRAMING + 256);
        let (payload, headers) = if payload.len() > room {
            let whole = payload.len().to_string();
            tracing::warn!(topic = %job.topic, partition = job.partition, %offset, bytes = payload.len(), max = self.record_max, "dead letter cut to fit message.max.bytes");
            self.stats
                .dead_letters_truncated
                .fetch_add(1, Ordering::Relaxed);
            (
                &payload[..room],
                headers.insert(Header {
                    key: "cordon.truncated",
                    value: Some(&whole),
                }),
            )
        } else {
            (payload, headers)
        };
        self.send(t, key, payload, headers)?;
        self.stats
            .dead_letter_records
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs until `stop` is set: poll a batch, push each record through its partition's
    /// engine, hand alerts to `on_alert`; every commit interval, make durable, checkpoint and
    /// commit.
    pub fn run(
        &self,
        progress: &Progress,
        stop: &AtomicBool,
        mut before_event: impl FnMut(&mut Inner),
        on_alert: impl Fn(Alert) -> Result<()> + Sync,
        hooks: Hooks,
    ) -> Result<PipelineStats> {
        let committer = self.lock().committer.clone();
        *committer.hooks.lock().unwrap_or_else(|p| p.into_inner()) = Some(hooks);
        let stateful = committer.checkpoints.is_some();
        std::thread::scope(|scope| {
            // The committer's thread: completes the cuts the loop hands it, one at a time.
            let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Cut>(1);
            let (done_tx, done) = std::sync::mpsc::channel::<Settled>();
            let worker = {
                let committer = committer.clone();
                let consumer = &self.consumer;
                // Named, so profiles and `top -H` tell its work from the loop's.
                std::thread::Builder::new()
                    .name("cordon-commit".into())
                    .spawn_scoped(scope, move || {
                    for cut in job_rx {
                        let mut last = committer.lock.lock().unwrap_or_else(|p| p.into_inner());
                        let keys = cut.keys();
                        let r = committer.complete(consumer, cut, CommitMode::Async, &mut last).map_err(|e| {
                            // Not fatal: the next interval tries again; until then nothing
                            // new is committed, so nothing is lost.
                            tracing::warn!(error = %format!("{e:#}"), "commit failed; retrying at the next interval");
                            keys
                        });
                        if done_tx.send(r).is_err() {
                            break;
                        }
                    }
                })
                .context("starting the committer thread")?
            };
            // The engine threads: each runs one lane's job at a time, lanes taking turns
            // (each thread preferring its own, `Lanes::next`).
            let engines: Vec<_> = (0..self.workers)
                .map(|i| {
                    let on_alert = &on_alert;
                    std::thread::Builder::new()
                        .name(format!("cordon-engine-{i}"))
                        .spawn_scoped(scope, move || {
                            while let Some(job) = self.lanes.next(i) {
                                let r = self
                                    .run_job(&job, on_alert, progress)
                                    .map_err(|e| format!("{e:#}"));
                                self.lanes.finished(&job, r);
                                self.spare.keep(job.into_buffers());
                            }
                        })
                        .context("starting the engine threads")
                })
                .collect::<Result<_>>()?;
            // However the loop ends (a panic too), the engine threads end, so that the scope
            // can join them and the process exits rather than hangs.
            struct Closing<'a>(&'a Lanes);
            impl Drop for Closing<'_> {
                fn drop(&mut self) {
                    self.0.close();
                }
            }
            let closing = Closing(&self.lanes);
            let r = self.poll_loop(
                progress,
                stop,
                stateful,
                &mut before_event,
                &on_alert,
                &jobs,
                &done,
            );
            // On an error too, what was handed out finishes before the threads end.
            self.lanes.settle(None);
            drop(closing);
            for e in engines {
                let _ = e.join();
            }
            drop(jobs);
            let _ = worker.join();
            while let Ok(d) = done.try_recv() {
                self.lock().settle(d);
            }
            r
        })
    }

    /// Runs one job on its partition's engine: decodes each record, pushes it, then writes
    /// the dead letters and alerts. Returns, without a state store, the (offset, event time)
    /// of the events pushed.
    fn run_job(
        &self,
        job: &Job,
        on_alert: &(impl Fn(Alert) -> Result<()> + Sync),
        progress: &Progress,
    ) -> Result<Vec<(i64, i64)>> {
        let engine = self.engines.lock().shared(&job.key);
        if let Some(slot) = &job.snapshot {
            let t = Instant::now();
            let copy = Box::new(
                engine
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone_state(),
            );
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy);
            self.stats
                .snapshot_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            return Ok(Vec::new());
        }
        let mut alerts = Vec::new();
        // Records are decoded a few at a time before the engine is locked, so the API's
        // reads wait only for the pushes, and each event is pushed while it is still in the
        // cache: decoding a whole job first (thousands of events, megabytes) made every push
        // fetch its event from memory again.
        let mut outcomes = Vec::with_capacity(job.records.len());
        let mut decoded = Vec::with_capacity(DECODE_CHUNK);
        let format = self.formats.of(&job.topic);
        for chunk in job.records.chunks(DECODE_CHUNK) {
            decoded.extend(
                chunk
                    .iter()
                    .map(|(_, _, payload)| format.decode(&job.bytes[payload.clone()])),
            );
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            for d in decoded.drain(..) {
                outcomes.push(match d {
                    Ok(ev) => {
                        let ts = ev.timestamp_nanos();
                        let late = engine
                            .push(ev, &mut alerts)
                            .err()
                            .map(|l| l.reason(Duration::ZERO));
                        Outcome::Event { ts, late }
                    }
                    Err(e) => Outcome::Undecodable(e.to_string()),
                });
            }
            drop(engine);
            // An alert leaves as soon as the chunk that raised it has run, not when the
            // whole job has: under a backlog a job holds thousands of records, tens of
            // milliseconds of the engine's time. The commit still waits for the job.
            self.emit(&mut alerts, progress, on_alert)?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.stats.run_delays.observe_n(
            job.fetched.elapsed().as_micros() as u64,
            job.records.len() as u64,
        );
        // A producer's clock ahead of ours counts as no delay.
        self.stats.delays.observe_all(
            job.times
                .iter()
                .flatten()
                .map(|t| now.saturating_sub(t.saturating_mul(1000)).max(0) as u64),
        );
        let mut held = Vec::new();
        let mut events = 0;
        for ((offset, key, payload), o) in job.records.iter().zip(outcomes) {
            let reason = match o {
                Outcome::Event { ts, late } => {
                    events += 1;
                    if let (false, Some(ts)) = (self.stateful, ts) {
                        held.push((*offset, ts));
                    }
                    if late.is_some() {
                        progress.late.fetch_add(1, Ordering::Relaxed);
                    }
                    late
                }
                Outcome::Undecodable(reason) => Some(reason),
            };
            if let Some(reason) = reason {
                progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.dead_letter(
                    job,
                    *offset,
                    &job.bytes[key.clone()],
                    &job.bytes[payload.clone()],
                    &reason,
                )?;
            }
        }
        progress.events.fetch_add(events, Ordering::Relaxed);
        Ok(held)
    }

    /// Counts `alerts`, produces them to the alerts topic and hands them to the sinks, in
    /// order, leaving the vector empty.
    fn emit(
        &self,
        alerts: &mut Vec<Alert>,
        progress: &Progress,
        on_alert: &(impl Fn(Alert) -> Result<()> + Sync),
    ) -> Result<()> {
        for a in alerts.drain(..) {
            progress.alerts.fetch_add(1, Ordering::Relaxed);
            self.publish(&a)?;
            on_alert(a)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn poll_loop(
        &self,
        progress: &Progress,
        stop: &AtomicBool,
        stateful: bool,
        before_event: &mut impl FnMut(&mut Inner),
        on_alert: &(impl Fn(Alert) -> Result<()> + Sync),
        jobs: &std::sync::mpsc::SyncSender<Cut>,
        done: &std::sync::mpsc::Receiver<Settled>,
    ) -> Result<PipelineStats> {
        let mut in_flight = false;
        let counted = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let base = [
            counted(&progress.records),
            counted(&progress.events),
            counted(&progress.dead_lettered),
            counted(&progress.alerts),
            counted(&progress.late),
        ];
        let mut alerts = Vec::new();
        let batch = self.config.batch.unwrap_or(10_000).max(1);
        // Records handed to the engine threads and not yet run are held to the same bound as
        // librdkafka's prefetch: a partition's records come in long runs, so the lanes need
        // room for several for every engine thread to have work.
        let limit = self.config.prefetch_bytes.unwrap_or(PREFETCH).max(1);
        let mut last_commit = Instant::now();
        let mut key = String::new();
        let mut msgs = Vec::with_capacity(batch);
        let consumer_errors = group::Repeats::default();
        while !stop.load(Ordering::Acquire) {
            if let Some(fatal) = self.lanes.fatal() {
                anyhow::bail!("{fatal}");
            }
            if let Some(lost) = self.producer.as_ref().and_then(|p| p.context().lost()) {
                anyhow::bail!("{lost}");
            }
            if self.lanes.in_flight() >= limit {
                // The engine threads are behind: fetch nothing more until they catch up
                // (librdkafka's prefetch stops at its cap; lag grows, memory does not).
                self.lanes.wait_below(limit, Duration::from_millis(20));
            } else {
                // Drain a batch. A rebalance (run inside `poll`) ends it: records fetched
                // before it are then checked against the new assignment below.
                msgs.clear();
                let rebalances = self.stats.rebalances.load(Ordering::Relaxed);
                let mut wait = Duration::from_millis(100);
                while msgs.len() < batch {
                    let Some(msg) = self.consumer.poll(wait) else {
                        break;
                    };
                    wait = Duration::ZERO;
                    match msg {
                        Ok(m) => msgs.push(m),
                        Err(e) => {
                            if let Some(repeats) = consumer_errors.log(&e.to_string()) {
                                tracing::warn!(error = %e, repeats, "consumer");
                            }
                            break;
                        }
                    }
                    if self.stats.rebalances.load(Ordering::Relaxed) != rebalances {
                        break;
                    }
                }
                progress
                    .records
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                // Each partition's records past what its state reflects go to its lane.
                let mut work: BTreeMap<String, Job> = BTreeMap::new();
                // Each partition's bytes and records in the batch: its job's buffers are
                // sized once, not grown (a grown buffer is fresh memory, faulted in page by
                // page).
                let mut sizes: Vec<(&str, i32, usize, usize)> = Vec::new();
                for msg in &msgs {
                    let n = msg.key_len() + msg.payload_len();
                    match sizes
                        .iter_mut()
                        .find(|(t, p, _, _)| *p == msg.partition() && *t == msg.topic())
                    {
                        Some(s) => {
                            s.2 += n;
                            s.3 += 1;
                        }
                        None => sizes.push((msg.topic(), msg.partition(), n, 1)),
                    }
                }
                {
                    let mut run = self.lock();
                    // A partition's records come in runs: its key is written once a run.
                    let mut last: Option<(i32, &str)> = None;
                    for msg in &msgs {
                        let (topic, partition) = (msg.topic(), msg.partition());
                        if last != Some((partition, topic)) {
                            key.clear();
                            let _ = write!(key, "{topic}/{partition}");
                            last = Some((partition, topic));
                        }
                        let Some(part) = run.parts.get_mut(&key) else {
                            // A record of a partition revoked in this very batch: not ours
                            // to process or commit; its next owner reads it.
                            tracing::debug!(partition = %key, offset = msg.offset(), "record of a revoked partition left to its next owner");
                            continue;
                        };
                        if part.admit(&key, msg.offset(), &self.stats) {
                            match work.get_mut(&key) {
                                Some(job) => job.push(msg),
                                None => {
                                    let (bytes, records) = sizes
                                        .iter()
                                        .find(|(t, p, _, _)| *p == partition && *t == topic)
                                        .map_or((0, 0), |s| (s.2, s.3));
                                    let mut job = Job::new(
                                        &key,
                                        msg,
                                        self.spare.take(bytes, records, &self.stats),
                                    );
                                    job.push(msg);
                                    work.insert(key.clone(), job);
                                }
                            }
                        }
                    }
                }
                msgs.clear();
                if !work.is_empty() {
                    before_event(&mut self.engines.lock());
                }
                for (_, job) in work {
                    self.lanes.push(job);
                }
            }
            let t_between = Instant::now();
            if let Some(fatal) = self.lock().fatal.take() {
                anyhow::bail!(
                    "{fatal}; stopping rather than running without the partition's state"
                );
            }
            self.publish_action_results()?;
            if let Some(p) = self.producer.as_ref().filter(|_| !self.reports_served) {
                p.poll(Duration::ZERO);
            }
            while let Ok(d) = done.try_recv() {
                in_flight = false;
                self.lock().settle(d);
            }
            if !in_flight && last_commit.elapsed() >= self.commit_every {
                if let Some(cut) = self.lock().cut_step() {
                    if !cut.parts.is_empty() {
                        in_flight = jobs.send(cut).is_ok();
                    }
                    last_commit = Instant::now();
                }
            }
            let took = t_between.elapsed();
            if took > SLOW {
                tracing::debug!(
                    ms = took.as_millis() as u64,
                    "the loop's work between batches took long"
                );
            }
        }
        // Stopping: every wait for deliveries from here on (the commit in progress, a
        // revocation's, the last) ends within one `shutdown_timeout`.
        {
            let committer = self.lock().committer.clone();
            *committer.stop_by.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + committer.flush_timeout);
        }
        // Stopping: nothing more is fetched. With a state store, everything read goes into
        // the checkpoints (events waiting for the watermark too) and the next owner carries
        // on; without one, the reorder buffers are released and windows closed, since the
        // state would otherwise be lost.
        self.stats.ready.store(false, Ordering::Release);
        self.lanes.settle(None);
        if let Some(fatal) = self.lanes.fatal() {
            anyhow::bail!("{fatal}");
        }
        if !stateful {
            let engines = self.engines.lock();
            for (_, mut e) in engines.each() {
                e.finish(&mut alerts);
            }
            drop(engines);
            self.emit(&mut alerts, progress, on_alert)?;
        }
        {
            let mut run = self.lock();
            run.drop_building();
            if !stateful {
                for (k, p) in run.parts.iter_mut() {
                    p.held.clear();
                    self.lanes.take_held(k);
                }
            }
            // After the committer's last cut: one at a time, in order.
            while in_flight {
                match done.recv() {
                    Ok(d) => {
                        in_flight = false;
                        run.settle(d);
                    }
                    Err(_) => break,
                }
            }
            run.commit_now(&self.consumer, None)?;
            run.closing = true;
        }
        let commits = self.stats.commits.load(Ordering::Relaxed);
        tracing::info!(commits, "kafka input stopped");
        Ok(PipelineStats {
            records: counted(&progress.records) - base[0],
            events: counted(&progress.events) - base[1],
            dead_lettered: counted(&progress.dead_lettered) - base[2],
            alerts: counted(&progress.alerts) - base[3],
            late: counted(&progress.late) - base[4],
            ..PipelineStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_cut_at_a_character_boundary() {
        assert_eq!(capped_key("agent-1"), "agent-1");
        let long = "é".repeat(KEY_MAX);
        let cut = capped_key(&long);
        assert!(cut.len() <= KEY_MAX && cut.len() >= KEY_MAX - 1);
        assert!(long.starts_with(cut));
        // The same key is always cut the same way (it picks one partition).
        assert_eq!(capped_key(&long), cut);
    }

    #[test]
    fn the_record_limit_comes_from_the_properties() {
        let mut c: KafkaConfig = serde_json::from_str(
            r#"{"brokers": "127.0.0.1:9092", "group_id": "g", "topics": ["events"]}"#,
        )
        .unwrap();
        assert_eq!(record_max(&c).unwrap(), MESSAGE_MAX_BYTES);
        c.properties
            .insert("message.max.bytes".into(), "2000000".into());
        assert_eq!(record_max(&c).unwrap(), 2_000_000);
        c.properties
            .insert("message.max.bytes".into(), "2 MB".into());
        let e = record_max(&c).unwrap_err().to_string();
        assert!(e.contains("message.max.bytes") && e.contains("2 MB"), "{e}");
    }

    #[test]
    fn each_topic_gets_its_format() {
        let parse = |extra: &str| -> KafkaConfig {
            serde_json::from_str(&format!(
                r#"{{"brokers": "b:9092", "group_id": "g", "topics": ["events", "agw", "dock"]{extra}}}"#
            ))
            .unwrap()
        };
        let c = parse(r#", "formats": {"agw": "agentgateway", "dock": "docker"}"#);
        let f = c.formats().unwrap();
        assert_eq!(f.of("events"), cordon_ingest::Format::Native);
        assert_eq!(f.of("agw"), cordon_ingest::Format::Agentgateway);
        assert_eq!(f.of("dock"), cordon_ingest::Format::Docker);
        // `format` sets the rest.
        let c = parse(r#", "format": "docker", "formats": {"events": "native"}"#);
        let f = c.formats().unwrap();
        assert_eq!(f.of("events"), cordon_ingest::Format::Native);
        assert_eq!(f.of("agw"), cordon_ingest::Format::Docker);
        // Errors name the table, the topic and what was expected.
        let e = parse(r#", "formats": {"agw": "nginx"}"#)
            .formats()
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("[kafka.formats]") && e.contains("\"agw\"") && e.contains("expected native"),
            "{e}"
        );
        let e = parse(r#", "formats": {"agws": "agentgateway"}"#)
            .formats()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"agws\" is not one of topics"), "{e}");
        let e = parse(r#", "format": "json""#)
            .formats()
            .unwrap_err()
            .to_string();
        assert!(e.contains("[kafka]: format"), "{e}");
        // With a pattern subscription any topic may be named.
        let c: KafkaConfig = serde_json::from_str(
            r#"{"brokers": "b", "group_id": "g", "topics": ["^gw-.*"], "formats": {"gw-a": "docker"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.formats().unwrap().of("gw-a"),
            cordon_ingest::Format::Docker
        );
    }
}
