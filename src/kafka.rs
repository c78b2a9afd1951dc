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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cordon_detect::Alert;
use cordon_ingest::Format;
use cordon_query::metrics::Exposition;
use cordon_query::store::Location;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::engines::{Engines, Inner};
use crate::pipeline::{PipelineStats, Progress};

/// librdkafka's prefetch, and the records queued for the engine threads, by default.
const PREFETCH: usize = 64 << 20;

/// `[kafka]` of `cordon.toml`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,…`.
    pub brokers: String,
    /// The consumer group.
    pub group_id: String,
    /// Topics of audit events.
    pub topics: Vec<String>,
    /// Their format (`native`, `agentgateway`, `docker`; default native).
    #[serde(default)]
    pub format: Option<String>,
    /// Alerts (OCSF JSON, key = agent id) are produced here, delivery confirmed before commit.
    #[serde(default)]
    pub alerts_topic: Option<String>,
    /// Undecodable or late records go here with their origin and reason in headers.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Every response action attempt and its outcome (JSON, key = alert id, tokens
    /// redacted) goes here, when responses are configured.
    #[serde(default)]
    pub actions_topic: Option<String>,
    /// Where each partition's engine state is checkpointed: a directory or an object store
    /// URL. Without it, state is in memory only.
    #[serde(default)]
    pub state_store: Option<String>,
    /// Records per batch (default 10 000).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Threads that run the partitions' engines side by side (default: the machine's
    /// cores). Each partition runs on one thread at a time, so more than the partitions
    /// assigned gain nothing; `1` runs them all on the poll loop's thread.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Longest between two commits (and checkpoints); default 1s.
    #[serde(default)]
    pub commit_interval: Option<String>,
    /// Longest to wait at shutdown for deliveries to the broker (default 30s).
    #[serde(default)]
    pub shutdown_timeout: Option<String>,
    /// Bytes librdkafka may prefetch (default 64 MiB), and bytes of records handed to the
    /// engine threads and not yet run, with the buffers kept for reuse (the same again): the
    /// memory bound when Cordon falls behind.
    #[serde(default)]
    pub prefetch_bytes: Option<usize>,
    /// How often librdkafka reports consumer lag (default 2s).
    #[serde(default)]
    pub stats_interval: Option<String>,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, read from `env:NAME` or `file:PATH`
    /// (e.g. `"sasl.password" = "env:KAFKA_PASSWORD"`), never written in the config itself.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// SASL/OAUTHBEARER with tokens from an OAuth 2.0 token endpoint (client credentials).
    #[serde(default)]
    pub oauthbearer: Option<crate::oauthbearer::OauthConfig>,
}

fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    match v {
        Some(s) => humantime::parse_duration(s).with_context(|| {
            format!("[kafka]: {field}: {s:?} is not a duration (expected e.g. \"1s\", \"500ms\")")
        }),
        None => Ok(default),
    }
}

impl KafkaConfig {
    /// The librdkafka properties common to the consumer and the producer, secrets resolved.
    fn client(&self) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            if self.secrets.contains_key(k) {
                anyhow::bail!("[kafka]: {k:?} is in both [kafka.properties] and [kafka.secrets]");
            }
            c.set(k, v);
        }
        for (k, source) in &self.secrets {
            let value =
                crate::oauthbearer::read_secret(&format!("[kafka.secrets]: {k:?}"), source)?;
            c.set(k, value);
        }
        if self.oauthbearer.is_some() {
            match self.properties.get("sasl.mechanism").map(String::as_str) {
                None | Some("OAUTHBEARER") => {}
                Some(other) => anyhow::bail!(
                    "[kafka]: [kafka.oauthbearer] is set but sasl.mechanism is {other:?}; remove one"
                ),
            }
            c.set("sasl.mechanism", "OAUTHBEARER");
            if !self.properties.contains_key("security.protocol") {
                c.set("security.protocol", "SASL_SSL");
            }
        }
        Ok(c)
    }
}

/// Upper bounds (seconds) of [`Delays`]' buckets.
const DELAY_BOUNDS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];

/// Delays of records as a histogram: from a record's Kafka timestamp (the producer's create
/// time, or the broker's append time) to its engine having run it — detection's delay as a
/// SOC dashboard sees it; and from the poll loop receiving it to the same moment — Cordon's
/// own part (lanes, decode, rules), apart from the producer's and the broker's.
#[derive(Default)]
pub struct Delays {
    counts: [AtomicU64; DELAY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Delays {
    fn bucket(micros: u64) -> usize {
        let secs = micros as f64 / 1e6;
        DELAY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DELAY_BOUNDS.len())
    }

    /// `n` records with the same delay (a job's records all ran when the job did).
    fn observe_n(&self, micros: u64, n: u64) {
        self.counts[Self::bucket(micros)].fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    /// A job's records, binned locally first: the engine threads share these counters, and
    /// one add per bucket per job keeps them off the per-record path.
    fn observe_all(&self, delays: impl Iterator<Item = u64>) {
        let mut counts = [0u64; DELAY_BOUNDS.len() + 1];
        let mut sum = 0u64;
        for micros in delays {
            counts[Self::bucket(micros)] += 1;
            sum = sum.saturating_add(micros);
        }
        for (c, n) in self.counts.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(sum, Ordering::Relaxed);
    }

    fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.histogram(name, help, &DELAY_BOUNDS, &counts, sum);
    }
}

/// Counters and gauges of the Kafka input, for `/metrics` and readiness.
#[derive(Default)]
pub struct KafkaStats {
    /// Records' delay from their Kafka timestamp to being run.
    pub delays: Delays,
    /// Records' delay from being fetched to being run.
    pub run_delays: Delays,
    /// Rebalances (assignments and revocations) seen.
    pub rebalances: AtomicU64,
    /// Partitions assigned now.
    pub assigned: AtomicU64,
    /// Bytes of records handed to the engine threads and not yet run.
    pub queued_bytes: AtomicU64,
    /// Commits made.
    pub commits: AtomicU64,
    /// Commits that failed (retried at the next interval).
    pub commit_failures: AtomicU64,
    /// Cuts skipped because a later one was completed first (a revocation's).
    pub stale_cuts: AtomicU64,
    /// Total time spent committing (make durable, checkpoint, commit), µs.
    pub commit_micros: AtomicU64,
    /// The last commit's time, µs.
    pub last_commit_micros: AtomicU64,
    /// Partition checkpoints written.
    pub checkpoints: AtomicU64,
    /// Bytes of checkpoints written.
    pub checkpoint_bytes: AtomicU64,
    /// Events written into checkpoints (each held event is written once per chain).
    pub checkpoint_events: AtomicU64,
    /// Checkpoint chains started (the first checkpoint of a partition, and each time a
    /// chain's files came to hold mostly events no longer needed).
    pub checkpoint_chains: AtomicU64,
    /// Checkpoints written as deltas: the rules' windows and partial matches that changed
    /// since the chain's previous checkpoint.
    pub checkpoint_deltas: AtomicU64,
    /// Files of finished checkpoint chains deleted.
    pub checkpoint_files_deleted: AtomicU64,
    /// Files of finished checkpoint chains that could not be deleted (left behind).
    pub checkpoint_delete_failures: AtomicU64,
    /// Time spent compressing and writing checkpoints (committer thread), µs.
    pub checkpoint_micros: AtomicU64,
    /// Time spent copying engines for checkpoints, µs.
    pub snapshot_micros: AtomicU64,
    /// Time spent making sinks durable before commits, µs.
    pub durable_micros: AtomicU64,
    /// Time spent waiting for the broker to confirm deliveries before commits, µs.
    pub delivery_micros: AtomicU64,
    /// Partition states restored from a checkpoint.
    pub restores: AtomicU64,
    /// Offsets passed over without a record: where a partition's next record came later
    /// than the offset after the last one (transaction markers and compaction leave such
    /// holes; right after a restore it means the broker did not return records the state
    /// does not hold).
    pub offsets_skipped: AtomicU64,
    /// Records at an offset the partition's state already reflects, dropped (a broker or
    /// client returning a record twice).
    pub records_repeated: AtomicU64,
    /// Checkpoints that could not be decoded (the partition started afresh).
    pub restore_failures: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_letter_records: AtomicU64,
    /// Alerts produced to the alerts topic.
    pub alerts_produced: AtomicU64,
    /// Action results produced to the actions topic.
    pub action_results_produced: AtomicU64,
    /// Records the broker did not take (the commit that would cover them is refused).
    pub delivery_failures: AtomicU64,
    /// Job buffers made because no kept one was large enough ([`Spare`]).
    pub job_buffers_made: AtomicU64,
    /// Bytes of the job buffers made.
    pub job_buffer_bytes_made: AtomicU64,
    /// Kept job buffers freed (each too small for a job that came).
    pub job_buffers_freed: AtomicU64,
    /// Whether every assigned partition's state is restored.
    pub ready: AtomicBool,
    /// Consumer lag by `topic/partition`, as librdkafka last reported it.
    pub lag: Mutex<BTreeMap<String, i64>>,
    /// OAUTHBEARER token requests, when configured.
    pub oauth: std::sync::OnceLock<Arc<crate::oauthbearer::TokenStats>>,
}

impl KafkaStats {
    /// Ready when subscribed and no partition is being restored.
    pub fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("the Kafka input is joining its group or restoring partition state".into())
        }
    }

    /// Appends the metrics.
    pub fn render(&self, out: &mut Exposition) {
        let c = |out: &mut Exposition, name: &str, help: &str, v: &AtomicU64| {
            out.counter(name, help, &[], v.load(Ordering::Relaxed) as f64)
        };
        c(
            out,
            "cordon_kafka_rebalances_total",
            "Partition assignments and revocations",
            &self.rebalances,
        );
        out.gauge(
            "cordon_kafka_assigned_partitions",
            "Partitions assigned to this instance",
            &[],
            self.assigned.load(Ordering::Relaxed) as f64,
        );
        self.delays.render(
            out,
            "cordon_kafka_record_delay_seconds",
            "From a record's Kafka timestamp to its engine having run it (fetch, queues, decode, rules)",
        );
        self.run_delays.render(
            out,
            "cordon_kafka_run_delay_seconds",
            "From the poll loop receiving a record to its engine having run it (lanes, decode, rules)",
        );
        out.gauge(
            "cordon_kafka_queued_bytes",
            "Bytes of the buffers of records fetched and handed to the engine threads, not yet run (bounded by prefetch_bytes)",
            &[],
            self.queued_bytes.load(Ordering::Relaxed) as f64,
        );
        c(
            out,
            "cordon_kafka_commits_total",
            "Offset commits",
            &self.commits,
        );
        c(
            out,
            "cordon_kafka_commit_failures_total",
            "Commits that failed (retried at the next interval)",
            &self.commit_failures,
        );
        c(
            out,
            "cordon_kafka_stale_cuts_total",
            "Periodic commits skipped because a revocation committed a later state first",
            &self.stale_cuts,
        );
        out.counter(
            "cordon_kafka_commit_seconds_total",
            "Time spent committing: sinks made durable, state checkpointed, offsets committed",
            &[],
            self.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.gauge(
            "cordon_kafka_last_commit_seconds",
            "How long the last commit took",
            &[],
            self.last_commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        c(
            out,
            "cordon_kafka_checkpoints_total",
            "Partition state checkpoints written",
            &self.checkpoints,
        );
        c(
            out,
            "cordon_kafka_checkpoint_bytes_total",
            "Bytes of partition state checkpoints written",
            &self.checkpoint_bytes,
        );
        c(
            out,
            "cordon_kafka_checkpoint_events_total",
            "Events written into partition checkpoints (once per chain)",
            &self.checkpoint_events,
        );
        c(
            out,
            "cordon_kafka_checkpoint_chains_total",
            "Checkpoint chains started (a partition's first checkpoint, and when a chain outgrew its state)",
            &self.checkpoint_chains,
        );
        c(
            out,
            "cordon_kafka_checkpoint_deltas_total",
            "Partition checkpoints written as deltas (rule state changed since the chain's previous checkpoint)",
            &self.checkpoint_deltas,
        );
        c(
            out,
            "cordon_kafka_checkpoint_files_deleted_total",
            "Files of finished checkpoint chains deleted",
            &self.checkpoint_files_deleted,
        );
        c(
            out,
            "cordon_kafka_checkpoint_delete_failures_total",
            "Files of finished checkpoint chains that could not be deleted (left behind)",
            &self.checkpoint_delete_failures,
        );
        out.counter(
            "cordon_kafka_checkpoint_seconds_total",
            "Time spent compressing and writing partition checkpoints (beside the poll loop)",
            &[],
            self.checkpoint_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.counter(
            "cordon_kafka_snapshot_seconds_total",
            "Time spent copying engines for checkpoints (by the engine threads for periodic commits, by the poll loop for revocations and the stop)",
            &[],
            self.snapshot_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.counter(
            "cordon_kafka_durable_seconds_total",
            "Time spent making the sinks durable before commits (alerts file, store)",
            &[],
            self.durable_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.counter(
            "cordon_kafka_delivery_wait_seconds_total",
            "Time spent waiting for the broker to confirm deliveries before commits",
            &[],
            self.delivery_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        c(
            out,
            "cordon_kafka_restores_total",
            "Partition states restored from a checkpoint",
            &self.restores,
        );
        c(
            out,
            "cordon_kafka_offsets_skipped_total",
            "Offsets passed over with no record (transaction markers, compaction, or records a broker did not return)",
            &self.offsets_skipped,
        );
        c(
            out,
            "cordon_kafka_records_repeated_total",
            "Records at an offset the partition's state already reflects, dropped",
            &self.records_repeated,
        );
        c(
            out,
            "cordon_kafka_restore_failures_total",
            "Checkpoints that could not be decoded (the partition started afresh)",
            &self.restore_failures,
        );
        c(
            out,
            "cordon_kafka_dead_letter_records_total",
            "Records produced to the dead-letter topic",
            &self.dead_letter_records,
        );
        c(
            out,
            "cordon_kafka_alerts_produced_total",
            "Alerts produced to the alerts topic",
            &self.alerts_produced,
        );
        c(
            out,
            "cordon_kafka_action_results_produced_total",
            "Response action attempts produced to the actions topic",
            &self.action_results_produced,
        );
        c(
            out,
            "cordon_kafka_delivery_failures_total",
            "Records the broker did not take",
            &self.delivery_failures,
        );
        c(
            out,
            "cordon_kafka_job_buffers_made_total",
            "Buffers made to copy fetched records into for the engine threads, because no kept one was large enough",
            &self.job_buffers_made,
        );
        c(
            out,
            "cordon_kafka_job_buffer_bytes_made_total",
            "Bytes of the job buffers made",
            &self.job_buffer_bytes_made,
        );
        c(
            out,
            "cordon_kafka_job_buffers_freed_total",
            "Kept job buffers freed because a larger job came",
            &self.job_buffers_freed,
        );
        out.gauge(
            "cordon_kafka_ready",
            "1 when every assigned partition's state is restored",
            &[],
            f64::from(u8::from(self.ready.load(Ordering::Relaxed))),
        );
        if let Some(t) = self.oauth.get() {
            c(
                out,
                "cordon_kafka_oauth_tokens_total",
                "OAUTHBEARER tokens obtained from the token endpoint",
                &t.issued,
            );
            c(
                out,
                "cordon_kafka_oauth_token_failures_total",
                "OAUTHBEARER token requests that failed (librdkafka retries them)",
                &t.failures,
            );
        }
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        for (part, n) in lag.iter() {
            let (topic, partition) = part.rsplit_once('/').unwrap_or((part, ""));
            out.gauge(
                "cordon_kafka_consumer_lag",
                "Records behind the partition's end (its end as librdkafka last reported it, less the next offset to read)",
                &[("topic", topic), ("partition", partition)],
                *n as f64,
            );
        }
    }
}

/// Counts failed deliveries, so a commit never covers an alert the broker did not take.
struct Deliveries {
    stats: Arc<KafkaStats>,
    failed: AtomicU64,
    tokens: Option<Arc<crate::oauthbearer::TokenSource>>,
}

impl ClientContext for Deliveries {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.tokens.as_deref())
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
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "a record was not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Work on the poll thread slower than this is logged (debug): it holds up every record.
const SLOW: Duration = Duration::from_millis(20);

/// The first bytes of every partition checkpoint head.
const CHECKPOINT_FORMAT: &str = "cordon-partition-checkpoint";
const CHECKPOINT_VERSION: u32 = 2;

/// The head of a partition's checkpoint: the offset the state reflects and the files of its
/// chain, oldest first (the state is the last full one's with the deltas after it applied;
/// every one holds events the state refers to; see [`cordon_detect::checkpoint`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointFile {
    format: String,
    version: u32,
    topic: String,
    partition: i32,
    offset: i64,
    parts: Vec<String>,
}

/// A partition's chain as this instance last wrote it.
#[derive(Default)]
struct Chain {
    /// The chain's files, oldest first.
    parts: Vec<String>,
    /// Bytes of events the chain's files hold (live or not).
    event_bytes: u64,
    /// The events the chain's checkpoints refer to.
    log: cordon_detect::checkpoint::EventLog,
    /// Bytes of the events the state holds, as far as the chain can tell: exact at its
    /// first (full) checkpoint; each delta adds its new events (it refers to the events its
    /// unchanged state held, so the log grows with the chain and cannot tell which died).
    live_bytes: u64,
    /// The copy of the engine the chain's last checkpoint was written from: the next one is
    /// a delta against it. It shares the rules' windows and partial matches with the engine
    /// until either changes one (a change copies that one).
    prev: Option<Box<cordon_detect::Engine>>,
    /// Start a new chain at the next checkpoint (after a restore, or a failed write).
    restart: bool,
    /// Files written whose head was not: deleted when the chain restarts.
    orphans: Vec<String>,
}

/// A new chain is started when the chain's files hold more than this many times the bytes
/// of the events the state holds (plus [`CHAIN_SLACK`]), or have this many files: a restore
/// reads every file of the chain and applies its deltas in turn.
const CHAIN_GROWTH: u64 = 2;
const CHAIN_SLACK: u64 = 8 << 20;
const CHAIN_FILES: usize = 64;

/// Where partition checkpoints live: the head at `<store>/<group>/<topic>/<partition>.ckpt`,
/// the chain's files beside it in `<partition>/`.
struct CheckpointStore {
    location: Location,
    group: String,
    rt: tokio::runtime::Handle,
    /// By `topic/partition`: each partition's chain, as written by this instance.
    chains: Mutex<HashMap<String, Chain>>,
}

fn path_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What writing one partition checkpoint did.
struct Saved {
    bytes: usize,
    events: usize,
    restarted: bool,
    largest: Vec<(String, usize)>,
}

impl CheckpointStore {
    fn name(&self, topic: &str, partition: i32) -> String {
        format!(
            "{}/{}/{partition}.ckpt",
            path_part(&self.group),
            path_part(topic)
        )
    }

    fn part_name(&self, topic: &str, partition: i32) -> String {
        format!(
            "{}/{}/{partition}/{}.part",
            path_part(&self.group),
            path_part(topic),
            ulid::Ulid::new()
        )
    }

    fn chains(&self) -> MutexGuard<'_, HashMap<String, Chain>> {
        self.chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the engine's state at `offset`: the events new since the chain's last file and
    /// the state into a new file of the chain (or of a new chain, when the old one holds
    /// mostly events no longer needed), then the head. A new chain's head replaces the old
    /// one's, whose files are then deleted.
    fn save(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        engine: Box<cordon_detect::Engine>,
        stats: &KafkaStats,
    ) -> Result<Saved> {
        let key = format!("{topic}/{partition}");
        let mut chains = self.chains();
        let chain = chains.entry(key.clone()).or_default();
        let restart = chain.restart
            || chain.parts.is_empty()
            || chain.parts.len() >= CHAIN_FILES
            || chain.prev.is_none()
            || chain.event_bytes > CHAIN_GROWTH * chain.live_bytes + CHAIN_SLACK;
        let log = if restart {
            Default::default()
        } else {
            std::mem::take(&mut chain.log)
        };
        // Until this checkpoint is stored, a failure leaves the chain's log unknown: the
        // next checkpoint starts a new chain.
        chain.restart = true;
        let prev = chain.prev.take();
        let w = match prev.as_deref().filter(|_| !restart) {
            Some(prev) => engine.checkpoint_delta(prev, log),
            None => engine.checkpoint_with(log),
        }
        .with_context(|| format!("checkpointing {key}"))?;
        drop(prev);
        // In one call: the streaming encoder compresses block by block against the blocks
        // before (zstd's slower "extDict" path); one call took 0.72–1.09 of its time (median
        // 0.86) on 1 and 6 MiB of event JSON.
        let part = zstd::bulk::compress(&w.bytes, 1)?;
        cordon_detect::checkpoint::recycle(w.bytes);
        let part_name = self.part_name(topic, partition);
        let mut n = part.len();
        self.rt
            .block_on(self.location.put(&part_name, part))
            .with_context(|| format!("writing the checkpoint of {key}"))?;
        let mut parts = if restart {
            Vec::new()
        } else {
            chain.parts.clone()
        };
        parts.push(part_name.clone());
        let head = postcard::to_allocvec(&CheckpointFile {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            topic: topic.into(),
            partition,
            offset,
            parts: parts.clone(),
        })?;
        n += head.len();
        if let Err(e) = self
            .rt
            .block_on(self.location.put(&self.name(topic, partition), head))
        {
            chain.orphans.push(part_name);
            return Err(e).with_context(|| format!("writing the checkpoint of {key}"));
        }
        let retired = if restart {
            let mut old = std::mem::take(&mut chain.parts);
            old.append(&mut chain.orphans);
            old.sort();
            old.dedup();
            old
        } else {
            Vec::new()
        };
        chain.parts = parts;
        chain.event_bytes = if restart {
            chain.live_bytes = w.log.bytes();
            w.new_event_bytes
        } else {
            stats.checkpoint_deltas.fetch_add(1, Ordering::Relaxed);
            // A delta cannot tell which earlier events its unchanged state still holds; its
            // new ones are counted as held. A chain of deltas then ends at CHAIN_FILES, not
            // at the first 8 MiB of events: rewriting every held event then cost more than
            // the deltas saved (in the Kafka bench, a full rewrite every 7 s per partition).
            chain.live_bytes += w.new_event_bytes;
            chain.event_bytes + w.new_event_bytes
        };
        chain.log = w.log;
        chain.prev = Some(engine);
        chain.restart = false;
        drop(chains);
        for f in &retired {
            match self.rt.block_on(self.location.delete(f)) {
                Ok(()) => stats
                    .checkpoint_files_deleted
                    .fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(file = %f, error = %e, "an old checkpoint file was not deleted");
                    stats
                        .checkpoint_delete_failures
                        .fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        Ok(Saved {
            bytes: n,
            events: w.new_events,
            restarted: restart,
            largest: w.largest,
        })
    }

    /// This instance no longer owns the partition: its chain is the next owner's.
    fn forget(&self, key: &str) {
        self.chains().remove(key);
    }

    /// `Ok(None)`: no checkpoint. `Err`: the store cannot be read (the caller must not go on
    /// without the state). A checkpoint that cannot be decoded is `Ok(Some(Err(..)))`; else
    /// the offset and the chain's files, oldest first, decompressed. The partition's next
    /// checkpoint starts a new chain, which retires these files.
    #[allow(clippy::type_complexity)]
    fn load(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<std::result::Result<(i64, Vec<Vec<u8>>), String>>> {
        let name = self.name(topic, partition);
        let Some(bytes) = self
            .rt
            .block_on(self.location.get_opt(&name))
            .with_context(|| format!("reading the checkpoint of {topic}/{partition}"))?
        else {
            return Ok(None);
        };
        let head = match postcard::from_bytes::<CheckpointFile>(&bytes)
            .map_err(|e| format!("{name}: not a partition checkpoint ({e})"))
            .and_then(|f| {
                if f.format != CHECKPOINT_FORMAT || f.version != CHECKPOINT_VERSION {
                    return Err(format!(
                        "{name}: {:?} version {}, this Cordon reads {CHECKPOINT_FORMAT:?} version {CHECKPOINT_VERSION}",
                        f.format, f.version
                    ));
                }
                if f.topic != topic || f.partition != partition {
                    return Err(format!(
                        "{name}: holds {}/{}, not {topic}/{partition}",
                        f.topic, f.partition
                    ));
                }
                Ok(f)
            }) {
            Ok(h) => h,
            Err(e) => return Ok(Some(Err(e))),
        };
        let mut parts = Vec::with_capacity(head.parts.len());
        for p in &head.parts {
            let Some(raw) = self
                .rt
                .block_on(self.location.get_opt(p))
                .with_context(|| format!("reading the checkpoint of {topic}/{partition}"))?
            else {
                return Ok(Some(Err(format!("{name}: its file {p} is missing"))));
            };
            match zstd::decode_all(&raw[..]) {
                Ok(b) => parts.push(b),
                Err(e) => return Ok(Some(Err(format!("{p}: damaged ({e})")))),
            }
        }
        let mut chains = self.chains();
        let chain = chains.entry(format!("{topic}/{partition}")).or_default();
        // The files are retired when this instance's first checkpoint of the partition
        // (a new chain) is stored.
        chain.orphans.extend(head.parts);
        chain.restart = true;
        chain.prev = None;
        Ok(Some(Ok((head.offset, parts))))
    }
}

/// One assigned partition.
struct Part {
    topic: String,
    partition: i32,
    /// The offset after the last record read (or the checkpoint's).
    next: Option<i64>,
    /// The first offset read in this assignment (logged when the partition goes).
    first: Option<i64>,
    /// Without a state store: (offset, event time) of events pushed and possibly still held.
    held: VecDeque<(i64, i64)>,
    /// Read since the last checkpoint.
    dirty: bool,
    /// A record the state already reflects came again (warned once).
    repeats_seen: bool,
    /// The offset last committed.
    committed: Option<i64>,
}

impl Part {
    /// Whether the record at `offset` is to be run: not when the state already reflects it
    /// (a broker or client returning a record twice). Books it as read.
    fn admit(&mut self, key: &str, offset: i64, stats: &KafkaStats) -> bool {
        match self.next {
            // Earlier than the next expected: the state already holds it.
            Some(n) if offset < n => {
                stats.records_repeated.fetch_add(1, Ordering::Relaxed);
                // Once per assignment at warn: some brokers return the whole batch holding
                // the offset asked for, and the client can pass its earlier records on;
                // logging each would flood the log and slow the loop.
                if std::mem::replace(&mut self.repeats_seen, true) {
                    tracing::debug!(partition = %key, expected = n, offset, "a record the partition's state already reflects, dropped");
                } else {
                    tracing::warn!(partition = %key, expected = n, offset, "a record the partition's state already reflects, dropped (further ones are counted in cordon_kafka_records_repeated_total and logged at debug)");
                }
                return false;
            }
            // Later: offsets with no record (transaction markers, compaction), or records
            // the broker did not return.
            Some(n) if offset > n => {
                stats
                    .offsets_skipped
                    .fetch_add((offset - n) as u64, Ordering::Relaxed);
                if self.first.is_none() {
                    tracing::warn!(partition = %key, expected = n, offset, "the first record read is later than the partition's checkpoint: offsets with no record (transaction markers, compaction) or records the broker did not return");
                } else {
                    tracing::debug!(partition = %key, expected = n, offset, "offsets skipped");
                }
            }
            _ => {}
        }
        self.first.get_or_insert(offset);
        self.next = Some(offset + 1);
        self.dirty = true;
        true
    }
}

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

/// Where an engine thread leaves a copy of a partition's engine for a periodic cut.
type Slot = Arc<Mutex<Option<Box<cordon_detect::Engine>>>>;

/// Records an engine thread decodes before it locks the engine and pushes them: few enough
/// that the events are still in the cache when pushed, enough that the lock is taken rarely.
const DECODE_CHUNK: usize = 32;

/// One partition's records from one batch, copied out of the client's buffers for an
/// engine thread; or a marker asking for a copy of the engine as it is after the jobs before
/// it.
struct Job {
    key: String,
    topic: String,
    partition: i32,
    /// Each record's offset, and where its key and payload are in `bytes`.
    records: Vec<(i64, Range<usize>, Range<usize>)>,
    /// Each record's Kafka timestamp (ms since the epoch), when it has one.
    times: Vec<Option<i64>>,
    /// When the poll loop received the job's first record.
    fetched: Instant,
    bytes: Vec<u8>,
    /// A marker: the engine's copy goes here.
    snapshot: Option<Slot>,
}

/// A job's buffers, kept from a finished job for a later one (see [`Spare`]).
#[derive(Default)]
struct Buffers {
    bytes: Vec<u8>,
    records: Vec<(i64, Range<usize>, Range<usize>)>,
    times: Vec<Option<i64>>,
}

/// Buffers of finished jobs, kept for the next ones. A fresh multi-megabyte buffer per job
/// made the kernel fault in and zero every page the poll loop copied records into: two
/// thirds of the poll loop's CPU in a profile of the Kafka bench, and still 40 % of it when
/// kept buffers counted against the prefetch cap, because the loop refills the lanes to the
/// cap the moment a job finishes, before its buffer could be kept.
///
/// So every finished job's buffers are kept, and the memory bound comes from taking them:
/// a job gets the smallest kept buffers its records fit in; when none fits, every kept one
/// is too small and is freed. A new buffer is thus only made when no kept one waits, and all
/// buffers together stay within the most ever queued for the engine threads, which the loop
/// keeps under `prefetch_bytes` (plus one batch). Buffers are replaced, not grown: growing
/// an emptied buffer copies its old capacity (the allocator does not know it is empty) into
/// fresh pages. Sizes are rounded up to a power of two so that kept ones fit later batches.
#[derive(Default)]
struct Spare(Mutex<Vec<Buffers>>);

impl Spare {
    /// Empty buffers for a job of `records` records of `bytes` bytes.
    fn take(&self, bytes: usize, records: usize, stats: &KafkaStats) -> Buffers {
        let mut b = {
            let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let fit = spare
                .iter()
                .enumerate()
                .filter(|(_, b)| b.bytes.capacity() >= bytes)
                .min_by_key(|(_, b)| b.bytes.capacity())
                .map(|(i, _)| i);
            match fit {
                Some(i) => spare.swap_remove(i),
                None => {
                    stats
                        .job_buffers_freed
                        .fetch_add(spare.len() as u64, Ordering::Relaxed);
                    spare.clear();
                    Buffers::default()
                }
            }
        };
        if b.bytes.capacity() < bytes {
            b.bytes = Vec::with_capacity(bytes.next_power_of_two());
            stats.job_buffers_made.fetch_add(1, Ordering::Relaxed);
            stats
                .job_buffer_bytes_made
                .fetch_add(b.bytes.capacity() as u64, Ordering::Relaxed);
        }
        if b.records.capacity() < records {
            b.records = Vec::with_capacity(records.next_power_of_two());
        }
        if b.times.capacity() < records {
            b.times = Vec::with_capacity(records.next_power_of_two());
        }
        b
    }

    /// Keeps a finished job's (emptied) buffers.
    fn keep(&self, b: Buffers) {
        if b.bytes.capacity() > 0 {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn held(&self) -> usize {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spare.iter().map(|b| b.bytes.capacity()).sum()
    }
}

impl Job {
    /// A job for `msg`'s partition, its records to be copied into `buffers` (empty).
    fn new(key: &str, msg: &BorrowedMessage<'_>, buffers: Buffers) -> Job {
        Job {
            key: key.to_owned(),
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            records: buffers.records,
            times: buffers.times,
            fetched: Instant::now(),
            bytes: buffers.bytes,
            snapshot: None,
        }
    }

    /// Its buffers, emptied, for a later job.
    fn into_buffers(self) -> Buffers {
        let (mut bytes, mut records, mut times) = (self.bytes, self.records, self.times);
        bytes.clear();
        records.clear();
        times.clear();
        Buffers {
            bytes,
            records,
            times,
        }
    }

    fn marker(key: &str, part: &Part, slot: Slot) -> Job {
        Job {
            key: key.to_owned(),
            topic: part.topic.clone(),
            partition: part.partition,
            records: Vec::new(),
            times: Vec::new(),
            fetched: Instant::now(),
            bytes: Vec::new(),
            snapshot: Some(slot),
        }
    }

    fn push(&mut self, msg: &BorrowedMessage<'_>) {
        let k = self.bytes.len();
        self.bytes.extend_from_slice(msg.key().unwrap_or_default());
        let p = self.bytes.len();
        self.bytes
            .extend_from_slice(msg.payload().unwrap_or_default());
        self.records.push((msg.offset(), k..p, p..self.bytes.len()));
        self.times.push(msg.timestamp().to_millis());
    }
}

/// Each partition's lane: the jobs handed to the engine threads and not yet run. A lane
/// runs on one engine thread at a time, its jobs in order, so a partition's records reach
/// its engine in offset order while the partitions run side by side. Lanes with work take
/// turns, one job each, so a busy partition does not starve the others.
struct Lanes {
    state: Mutex<LanesState>,
    stats: Arc<KafkaStats>,
    /// Signalled when a job is queued or finishes, and at closing.
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct LanesState {
    lanes: HashMap<String, Lane>,
    /// Lanes with a job to run, in turn.
    ready: VecDeque<String>,
    /// Bytes of the buffers of jobs queued or running, over all lanes (the poll loop stops
    /// fetching above its limit).
    in_flight: usize,
    /// An alert or dead letter that could not be written: the run stops with it, and
    /// nothing read after the last commit is committed.
    fatal: Option<String>,
    /// The run is over: engine threads return.
    closed: bool,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Job>,
    /// In `ready` or running.
    scheduled: bool,
    /// Without a state store: (offset, event time) of the events run since the last cut.
    held: Vec<(i64, i64)>,
    /// The engine thread that ran the lane's last job.
    last: Option<usize>,
}

impl Lanes {
    fn new(stats: Arc<KafkaStats>) -> Lanes {
        Lanes {
            state: Mutex::default(),
            stats,
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LanesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job on its partition's lane.
    fn push(&self, job: Job) {
        let mut st = self.lock();
        st.in_flight += job.bytes.capacity();
        self.stats
            .queued_bytes
            .store(st.in_flight as u64, Ordering::Relaxed);
        let key = job.key.clone();
        let lane = st.lanes.entry(key.clone()).or_default();
        lane.queue.push_back(job);
        if !std::mem::replace(&mut lane.scheduled, true) {
            st.ready.push_back(key);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The next job for engine thread `worker` (waiting for one); `None` once closed.
    ///
    /// A thread takes the first ready lane it ran last time, or a lane no thread has run,
    /// and only otherwise the first ready lane. A partition's state (its windows, open
    /// matches and baselines, megabytes) then stays in the cache of the core that last
    /// worked on it, and the events it holds are freed by the thread that allocated them;
    /// taking lanes strictly in turn moved each partition between the threads at nearly
    /// every job.
    fn next(&self, worker: usize) -> Option<Job> {
        let mut st = self.lock();
        loop {
            let st_ = &mut *st;
            let own = st_.ready.iter().position(|k| {
                st_.lanes
                    .get(k)
                    .is_none_or(|l| l.last.is_none_or(|w| w == worker))
            });
            if let Some(key) = st_.ready.remove(own.unwrap_or(0)) {
                if let Some(lane) = st_.lanes.get_mut(&key) {
                    match lane.queue.pop_front() {
                        Some(job) => {
                            lane.last = Some(worker);
                            return Some(job);
                        }
                        None => lane.scheduled = false,
                    }
                }
                continue;
            }
            if st.closed {
                return None;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A job has run: its lane takes its turn again if it has more.
    fn finished(&self, job: &Job, r: Result<Vec<(i64, i64)>, String>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.in_flight -= job.bytes.capacity();
        let mut dropped = 0;
        let mut again = false;
        if let Some(lane) = st.lanes.get_mut(&job.key) {
            match r {
                Ok(held) => lane.held.extend(held),
                // The run stops; what is queued is not run, and nothing read since the
                // last commit is committed, so it is read again next time.
                Err(e) => {
                    dropped = lane.queue.drain(..).map(|j| j.bytes.capacity()).sum();
                    st.fatal.get_or_insert(e);
                }
            }
            again = !lane.queue.is_empty();
            lane.scheduled = again;
        }
        st.in_flight -= dropped;
        self.stats
            .queued_bytes
            .store(st.in_flight as u64, Ordering::Relaxed);
        if again {
            st.ready.push_back(job.key.clone());
        }
        drop(guard);
        self.changed.notify_all();
    }

    /// Ends the engine threads (once every lane is settled).
    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Waits until `key`'s lane (every lane, with `None`) has run every job handed to it
    /// and written their effects: its engine then reflects exactly the records handed out.
    fn settle(&self, key: Option<&str>) {
        let mut st = self.lock();
        while !st.closed
            && match key {
                Some(k) => st.lanes.get(k).is_some_and(|l| l.scheduled),
                None => st.lanes.values().any(|l| l.scheduled),
            }
        {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits, at most `timeout`, until fewer than `limit` bytes are in flight.
    fn wait_below(&self, limit: usize, timeout: Duration) {
        let st = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.in_flight >= limit && s.fatal.is_none());
    }

    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// The (offset, event time) of events run on `key` since the last call.
    fn take_held(&self, key: &str) -> Vec<(i64, i64)> {
        self.lock()
            .lanes
            .get_mut(key)
            .map(|l| std::mem::take(&mut l.held))
            .unwrap_or_default()
    }

    /// Forgets a revoked partition's lane (settled first).
    fn remove(&self, key: &str) {
        self.lock().lanes.remove(key);
    }
}

/// How a cut ended: the offsets committed by partition, or the partitions whose state must
/// be checkpointed again.
type Settled = Result<Vec<(String, i64)>, Vec<String>>;

/// One partition in a [`Cut`].
struct CutPart {
    key: String,
    topic: String,
    partition: i32,
    offset: i64,
    /// A copy of the engine at `offset`, when it changed (serialised by the committer).
    engine: Option<Box<cordon_detect::Engine>>,
}

/// Offsets to commit and the partition states that go with them.
#[derive(Default)]
struct Cut {
    /// Cuts are numbered as they are taken: one completed after a later one is stale.
    seq: u64,
    parts: Vec<CutPart>,
}

impl Cut {
    fn keys(&self) -> Vec<String> {
        self.parts.iter().map(|p| p.key.clone()).collect()
    }
}

/// Waits until every record produced so far is delivered (or failed), at most `timeout`.
///
/// `BaseProducer::flush` waits for an event in slices of 100 ms, and the poll loop serves
/// the same producer's events between batches: when it took the last delivery report, the
/// flush slept out its slice, and a commit took 100 ms longer. Short slices bound that.
fn wait_for_deliveries(p: &BaseProducer<Deliveries>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while p.in_flight_count() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "[kafka]: waiting for deliveries: {} records still in flight after {timeout:?}",
                p.in_flight_count()
            );
        }
        p.poll(left.min(Duration::from_millis(2)));
    }
    Ok(())
}

/// Completes cuts: makes the sinks durable, waits for deliveries, writes the checkpoints,
/// commits. The poll loop hands it a cut and reads on while it works (so a commit's disk
/// and network waits do not stall detection); a revocation or shutdown completes one on
/// the poll thread. One cut at a time, in order.
struct Committer {
    hooks: Mutex<Option<Hooks>>,
    producer: Option<Arc<BaseProducer<Deliveries>>>,
    checkpoints: Option<CheckpointStore>,
    flush_timeout: Duration,
    stats: Arc<KafkaStats>,
    /// Held while a cut completes; holds the number of the last cut completed.
    lock: Mutex<u64>,
}

impl Committer {
    /// `mode`: the poll loop's committer thread commits asynchronously (a synchronous commit
    /// from another thread can wait on a rebalance that waits on the poll thread); revocation
    /// and shutdown commit synchronously on the poll thread.
    /// `last`: the number of the last cut completed (under [`Committer::lock`]). A cut older
    /// than it is skipped: a revocation can complete a newer cut on the poll thread while the
    /// committer thread waits for the lock with an older one, and writing the older one
    /// afterwards would take the partition's checkpoint and offset back.
    fn complete(
        &self,
        consumer: &BaseConsumer<Ctx>,
        mut cut: Cut,
        mode: CommitMode,
        last: &mut u64,
    ) -> Result<Vec<(String, i64)>> {
        if cut.seq <= *last {
            self.stats.stale_cuts.fetch_add(1, Ordering::Relaxed);
            return Ok(Vec::new());
        }
        *last = cut.seq;
        let stats = &self.stats;
        let t0 = Instant::now();
        if let Some(h) = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            (h.durable)()?;
        }
        let sinks_us = t0.elapsed().as_micros() as u64;
        if let Some(p) = &self.producer {
            wait_for_deliveries(p, self.flush_timeout)?;
            let failed = p.context().failed.swap(0, Ordering::Relaxed);
            if failed > 0 {
                anyhow::bail!(
                    "{failed} alert or dead-letter records were not delivered; not committing (the events are replayed on restart)"
                );
            }
        }
        stats.durable_micros.fetch_add(sinks_us, Ordering::Relaxed);
        stats.delivery_micros.fetch_add(
            t0.elapsed().as_micros() as u64 - sinks_us,
            Ordering::Relaxed,
        );
        let mut tpl = TopicPartitionList::new();
        let mut committed = Vec::new();
        for p in &mut cut.parts {
            if let (Some(store), Some(engine)) = (&self.checkpoints, p.engine.take()) {
                let t = Instant::now();
                let saved = store.save(&p.topic, p.partition, p.offset, engine, stats)?;
                tracing::debug!(partition = %p.key, offset = p.offset, seq = cut.seq, bytes = saved.bytes, events = saved.events, new_chain = saved.restarted, largest = ?saved.largest, "checkpoint written");
                stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                stats
                    .checkpoint_bytes
                    .fetch_add(saved.bytes as u64, Ordering::Relaxed);
                stats
                    .checkpoint_events
                    .fetch_add(saved.events as u64, Ordering::Relaxed);
                if saved.restarted {
                    stats.checkpoint_chains.fetch_add(1, Ordering::Relaxed);
                }
                stats
                    .checkpoint_micros
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.offset))
                .map_err(|e| anyhow::anyhow!("[kafka]: {e}"))?;
            committed.push((p.key.clone(), p.offset));
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!("[kafka]: commit: {e}");
            }
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        let us = t0.elapsed().as_micros() as u64;
        stats.commit_micros.fetch_add(us, Ordering::Relaxed);
        stats.last_commit_micros.store(us, Ordering::Relaxed);
        Ok(committed)
    }
}

/// What `cordon run` gives the input to make its sinks durable and to learn of new partitions.
pub struct Hooks {
    /// Makes every sink durable (alerts file flushed, store written).
    pub durable: Box<dyn FnMut() -> Result<()> + Send>,
    /// Partitions were assigned (the alert store refreshes the ids it dedupes against).
    pub assigned: Box<dyn FnMut() -> Result<()> + Send>,
}

/// Everything the poll loop and the rebalance callback share (the callback runs inside
/// `poll`, on the loop's thread, when the loop holds no lock).
struct RunState {
    engines: Arc<Engines>,
    lanes: Arc<Lanes>,
    committer: Arc<Committer>,
    parts: BTreeMap<String, Part>,
    /// Set when the state of an assigned partition cannot be read: the run stops rather than
    /// go on without it.
    fatal: Option<String>,
    /// Stopping: the consumer is closing, nothing more to commit.
    closing: bool,
    /// Cuts taken so far.
    cuts: u64,
    /// The periodic cut being taken ([`RunState::cut_step`]).
    building: Option<Building>,
}

/// A periodic cut whose engine copies are being taken by the engine threads.
struct Building {
    cut: Cut,
    /// The partitions whose copy is awaited, and where it will be.
    pending: Vec<(String, Slot)>,
}

impl RunState {
    /// A consistent cut of the partitions in `only` (all when `None`): for each, the offset
    /// to commit and, with a state store, its engine's state at exactly that offset (taken
    /// now, on the poll thread; compressed and written by [`Committer::complete`]).
    fn cut(&mut self, only: Option<&HashSet<String>>) -> Cut {
        let keys: Vec<String> = self
            .parts
            .keys()
            .filter(|k| only.is_none_or(|o| o.contains(*k)))
            .cloned()
            .collect();
        let mut cut = Cut::default();
        for key in keys {
            if let Some(p) = self.cut_part(&key) {
                cut.parts.push(p);
            }
        }
        self.number(&mut cut);
        cut
    }

    /// Numbers a cut, when it is complete: cuts complete in the order they are numbered.
    fn number(&mut self, cut: &mut Cut) {
        self.cuts += 1;
        cut.seq = self.cuts;
    }

    /// One partition's part of a cut: the offset to commit and, with a state store and
    /// records read since the last checkpoint, a copy of its engine at that offset.
    fn cut_part(&mut self, key: &str) -> Option<CutPart> {
        let stateful = self.committer.checkpoints.is_some();
        let part = self.parts.get_mut(key)?;
        let next = part.next?;
        // The engine must reflect exactly the records before `next`, and their alerts be
        // written, before its state and offset are taken.
        self.lanes.settle(Some(key));
        let mut engine = None;
        let offset = if stateful {
            if part.dirty {
                let t = Instant::now();
                let engines = self.engines.lock();
                if let Some(e) = engines.get_existing(key) {
                    engine = Some(Box::new(e.clone_state()));
                }
                drop(engines);
                self.committer
                    .stats
                    .snapshot_micros
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                part.dirty = false;
            }
            next
        } else {
            part.held.extend(self.lanes.take_held(key));
            let wm = self
                .engines
                .lock()
                .get_existing(key)
                .map_or(i64::MAX, |e| e.watermark());
            while part.held.front().is_some_and(|&(_, ts)| ts <= wm) {
                part.held.pop_front();
            }
            part.held.front().map_or(next, |&(o, _)| o)
        };
        if part.committed == Some(offset) && engine.is_none() {
            return None;
        }
        Some(CutPart {
            key: key.to_owned(),
            topic: part.topic.clone(),
            partition: part.partition,
            offset,
            engine,
        })
    }

    /// The periodic cut. Without a state store it is taken at once. With one, each changed
    /// partition's lane gets a marker after the records handed out so far, and the engine
    /// thread that reaches it copies the engine — the state after exactly those records,
    /// whose alerts are written by then — while the loop goes on fetching. `Some` on the turn
    /// every copy is in. Partitions need not be cut at the same instant: each one's offset
    /// and state are taken together, and the sinks are made durable after the last copy.
    fn cut_step(&mut self) -> Option<Cut> {
        if self.committer.checkpoints.is_none() {
            return Some(self.cut(None));
        }
        let Some(mut b) = self.building.take() else {
            let mut b = Building {
                cut: Cut::default(),
                pending: Vec::new(),
            };
            for (key, part) in self.parts.iter_mut() {
                let Some(next) = part.next else {
                    continue;
                };
                if part.dirty {
                    part.dirty = false;
                    let slot = Slot::default();
                    self.lanes.push(Job::marker(key, part, slot.clone()));
                    b.pending.push((key.clone(), slot));
                } else if part.committed == Some(next) {
                    continue;
                }
                b.cut.parts.push(CutPart {
                    key: key.clone(),
                    topic: part.topic.clone(),
                    partition: part.partition,
                    offset: next,
                    engine: None,
                });
            }
            self.building = Some(b);
            return None;
        };
        let lock = |s: &Slot| s.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if !b.pending.iter().all(|(_, s)| lock(s)) {
            self.building = Some(b);
            return None;
        }
        for (key, slot) in b.pending {
            let engine = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(p) = b.cut.parts.iter_mut().find(|p| p.key == key) {
                p.engine = engine;
            }
        }
        self.number(&mut b.cut);
        Some(b.cut)
    }

    /// Drops a periodic cut being built (stopping): its partitions are checkpointed again.
    fn drop_building(&mut self) {
        if let Some(b) = self.building.take() {
            for (key, _) in b.pending {
                if let Some(part) = self.parts.get_mut(&key) {
                    part.dirty = true;
                }
            }
        }
    }

    /// What a finished commit means for the partitions: committed offsets recorded; on
    /// failure, their state is checkpointed again next time.
    fn settle(&mut self, done: Settled) {
        match done {
            Ok(committed) => {
                for (key, offset) in committed {
                    if let Some(p) = self.parts.get_mut(&key) {
                        p.committed = Some(offset);
                    }
                }
            }
            Err(keys) => {
                for key in keys {
                    if let Some(p) = self.parts.get_mut(&key) {
                        p.dirty = true;
                    }
                }
            }
        }
    }

    /// Makes everything durable, checkpoints and commits the partitions in `only` now, on
    /// this thread (revocation, shutdown).
    fn commit_now(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        only: Option<&HashSet<String>>,
    ) -> Result<()> {
        let committer = self.committer.clone();
        let mut last = committer.lock.lock().unwrap_or_else(|p| p.into_inner());
        let cut = self.cut(only);
        let keys = cut.keys();
        match committer.complete(consumer, cut, CommitMode::Sync, &mut last) {
            Ok(done) => {
                self.settle(Ok(done));
                Ok(())
            }
            Err(e) => {
                self.settle(Err(keys));
                Err(e)
            }
        }
    }

    /// Partitions assigned: restore each one's state and start it at its checkpoint's offset.
    fn assign(&mut self, tpl: &mut TopicPartitionList, stats: &KafkaStats) {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in assigned {
            let key = format!("{topic}/{partition}");
            let mut engine = self.engines.lock().fresh();
            let mut start = None;
            if let Some(store) = &self.committer.checkpoints {
                let mut loaded = store.load(&topic, partition);
                for attempt in 1..=3 {
                    if loaded.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                    loaded = store.load(&topic, partition);
                }
                match loaded {
                    Ok(None) => {
                        tracing::info!(partition = %key, "no checkpoint: the partition starts with empty state")
                    }
                    Ok(Some(Ok((offset, parts)))) => match engine
                        .restore_chain(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
                    {
                        Ok(r) => {
                            stats.restores.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(partition = %key, offset, rules = r.rules, dropped = ?r.dropped, buffered = r.buffered, "partition state restored");
                            start = Some(offset);
                        }
                        Err(e) => {
                            stats.restore_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(partition = %key, error = %e, "checkpoint not restored; the partition starts with empty state at the committed offset");
                            engine = self.engines.lock().fresh();
                        }
                    },
                    Ok(Some(Err(e))) => {
                        stats.restore_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(partition = %key, error = %e, "checkpoint not restored; the partition starts with empty state at the committed offset");
                    }
                    Err(e) => {
                        self.fatal = Some(format!("{e:#}"));
                        return;
                    }
                }
            }
            if let Some(o) = start {
                if let Err(e) = tpl.set_partition_offset(&topic, partition, Offset::Offset(o)) {
                    self.fatal = Some(format!("[kafka]: {key}: {e}"));
                    return;
                }
            }
            self.engines.lock().insert(&key, engine);
            self.parts.insert(
                key,
                Part {
                    topic,
                    partition,
                    next: start,
                    first: None,
                    held: VecDeque::new(),
                    dirty: false,
                    repeats_seen: false,
                    committed: start,
                },
            );
        }
        if let Some(h) = self
            .committer
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if let Err(e) = (h.assigned)() {
                tracing::warn!(error = %e, "after assignment");
            }
        }
        stats
            .assigned
            .store(self.parts.len() as u64, Ordering::Relaxed);
    }

    /// Partitions revoked: alerts made durable, state checkpointed, offsets committed; then
    /// their engines go.
    fn revoke(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &TopicPartitionList,
        stats: &KafkaStats,
    ) {
        let keys: HashSet<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        for k in &keys {
            self.lanes.settle(Some(k));
        }
        // A periodic cut being taken leaves them out: the revocation commits them now, and
        // the periodic cut, completed later, must not take their state back.
        if let Some(b) = &mut self.building {
            b.cut.parts.retain(|p| !keys.contains(&p.key));
            b.pending.retain(|(k, _)| !keys.contains(k));
        }
        if !self.closing {
            if let Err(e) = self.commit_now(consumer, Some(&keys)) {
                tracing::warn!(error = %format!("{e:#}"), "revoked partitions not committed; their next owner replays from the last checkpoint");
            }
        }
        let mut lag = stats.lag.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            if let Some(p) = self.parts.get(k) {
                tracing::info!(partition = %k, first = ?p.first, next = ?p.next, committed = ?p.committed, "partition released");
            }
            self.parts.remove(k);
            self.engines.lock().remove(k);
            self.lanes.remove(k);
            if let Some(store) = &self.committer.checkpoints {
                store.forget(k);
            }
            lag.remove(k);
        }
        stats
            .assigned
            .store(self.parts.len() as u64, Ordering::Relaxed);
    }
}

/// A partition's lag: its end (`end`, librdkafka's last stable offset or high watermark,
/// negative while unknown) less the next offset Cordon reads (`next`: after the last record
/// read, or the restored checkpoint's offset). librdkafka's own `consumer_lag` measures from
/// the committed offset, which it does not know for a partition assigned at an offset of
/// Cordon's choosing until Cordon commits one: a partition restored at its end, with nothing
/// new to read, would never report a lag. `consumer_lag` is the fallback while either side
/// is unknown. `None` when nothing is known.
fn partition_lag(end: i64, next: Option<i64>, consumer_lag: i64) -> Option<i64> {
    match next {
        Some(next) if end >= 0 => Some((end - next).max(0)),
        _ => (consumer_lag >= 0).then_some(consumer_lag),
    }
}

/// The consumer's context: rebalances restore and hand over partition state; statistics
/// give the lag.
struct Ctx {
    run: Arc<Mutex<RunState>>,
    stats: Arc<KafkaStats>,
    tokens: Option<Arc<crate::oauthbearer::TokenSource>>,
    /// `isolation.level` is `read_committed` (librdkafka's default): a partition's end is
    /// then its last stable offset, not its high watermark.
    read_committed: bool,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for Ctx {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.tokens.as_deref())
    }

    fn stats(&self, s: Statistics) {
        let assigned = self.lock();
        let mut lag = self.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &s.topics {
            for (p, st) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                let key = format!("{topic}/{p}");
                let Some(part) = assigned.parts.get(&key) else {
                    continue;
                };
                let end = if self.read_committed {
                    st.ls_offset
                } else {
                    st.hi_offset
                };
                if let Some(n) = partition_lag(end, part.next, st.consumer_lag) {
                    lag.insert(key, n);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let Err(e) = result else { return };
        if matches!(
            e,
            rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
        ) {
            return;
        }
        self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "an asynchronous commit failed; the offsets are committed again at the next interval");
        // The callback may run inside a synchronous commit that holds the run state: then the
        // next change to the partition commits it anyway.
        if let Ok(mut run) = self.run.try_lock() {
            for el in offsets.elements() {
                if let Some(p) = run
                    .parts
                    .get_mut(&format!("{}/{}", el.topic(), el.partition()))
                {
                    p.committed = None;
                }
            }
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Ctx>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = %partition_list(tpl), cooperative, "partitions assigned");
                self.stats.ready.store(false, Ordering::Release);
                self.lock().assign(tpl, &self.stats);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "assigning partitions");
                }
                let ok = self.lock().fatal.is_none();
                self.stats.ready.store(ok, Ordering::Release);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = %partition_list(tpl), cooperative, "partitions revoked");
                self.lock().revoke(consumer, tpl, &self.stats);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "unassigning partitions");
                }
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

/// `topic/partition` of each element, comma-separated, for the rebalance log lines (an
/// operator reading why a partition moved, or why an instance reads nothing, starts there).
fn partition_list(tpl: &TopicPartitionList) -> String {
    let names: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    names.join(",")
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
    format: Format,
    commit_every: Duration,
    /// Engine threads: each partition's lane runs on one of them at a time.
    workers: usize,
    lanes: Arc<Lanes>,
    stateful: bool,
    /// Buffers of finished jobs, reused by the next ones.
    spare: Spare,
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
        let format: Format = config
            .format
            .as_deref()
            .unwrap_or("native")
            .parse()
            .map_err(|e: String| anyhow::anyhow!("[kafka]: format: {e}"))?;
        if config.topics.is_empty() {
            anyhow::bail!("[kafka]: topics: expected at least one topic");
        }
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
                anyhow::Ok(CheckpointStore {
                    location,
                    group: config.group_id.clone(),
                    rt: rt.clone(),
                    chains: Mutex::default(),
                })
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
        let producer = if config.alerts_topic.is_some()
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
                    tokens: tokens.clone(),
                })
                .context("[kafka]: producer")?,
            ))
        } else {
            None
        };
        let stateful = checkpoints.is_some();
        let committer = Arc::new(Committer {
            hooks: Mutex::new(None),
            producer: producer.clone(),
            checkpoints,
            flush_timeout,
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
            })
            .context("[kafka]: consumer")?;
        let workers = match config.workers {
            Some(0) => anyhow::bail!("[kafka]: workers: 0 (expected at least 1)"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("[kafka]: subscribe")?;
        Ok(KafkaInput {
            consumer,
            results: Mutex::new(None),
            run,
            stats,
            engines,
            producer,
            config: config.clone(),
            format,
            commit_every,
            workers,
            lanes,
            stateful,
            spare: Spare::default(),
        })
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
        let mut record = BaseRecord::to(topic)
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

    /// Produces an alert to the alerts topic, if there is one (key = agent id).
    fn publish(&self, a: &Alert) -> Result<()> {
        let Some(t) = &self.config.alerts_topic else {
            return Ok(());
        };
        let body = a.render_ocsf().json;
        self.send(
            t,
            a.agent_id().unwrap_or(""),
            body.as_bytes(),
            OwnedHeaders::new(),
        )?;
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
            });
        let key = String::from_utf8_lossy(key);
        self.send(t, &key, payload, headers)?;
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
        for chunk in job.records.chunks(DECODE_CHUNK) {
            decoded.extend(
                chunk
                    .iter()
                    .map(|(_, _, payload)| self.format.decode(&job.bytes[payload.clone()])),
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
        while !stop.load(Ordering::Acquire) {
            if let Some(fatal) = self.lanes.fatal() {
                anyhow::bail!("{fatal}");
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
                            tracing::warn!(error = %e, "consumer");
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
            if let Some(p) = &self.producer {
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
    fn kept_buffers_are_reused_and_only_outgrown_ones_freed() {
        let (spare, stats) = (Spare::default(), KafkaStats::default());
        let a = spare.take(3_000_000, 3_000, &stats);
        assert_eq!(a.bytes.capacity(), 4 << 20, "rounded up to a power of two");
        assert!(a.records.capacity() >= 3_000 && a.times.capacity() >= 3_000);
        let b = spare.take(100_000, 100, &stats);
        let (a_at, b_at) = (a.bytes.as_ptr(), b.bytes.as_ptr());
        spare.keep(a);
        spare.keep(b);
        // The smallest that fits, the very same memory.
        let small = spare.take(50_000, 50, &stats);
        assert_eq!(small.bytes.as_ptr(), b_at);
        let big = spare.take(2_000_000, 2_000, &stats);
        assert_eq!(big.bytes.as_ptr(), a_at);
        assert_eq!(spare.held(), 0);
        assert_eq!(stats.job_buffers_made.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats.job_buffer_bytes_made.load(Ordering::Relaxed),
            (4 << 20) + (128 << 10)
        );
        spare.keep(small);
        spare.keep(big);
        // Nothing fits: every kept buffer is too small and is freed, so the total never
        // passes what was queued at once.
        let bigger = spare.take(5_000_000, 10, &stats);
        assert_eq!(bigger.bytes.capacity(), 8 << 20);
        assert_eq!(spare.held(), 0);
        assert_eq!(stats.job_buffers_freed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.job_buffers_made.load(Ordering::Relaxed), 3);
        spare.keep(Buffers::default());
        assert_eq!(spare.held(), 0, "empty buffers are not kept");
    }

    #[test]
    fn lag_is_the_end_less_the_next_offset_to_read() {
        // Restored at the partition's end with nothing new: librdkafka reports no lag (it
        // knows no committed offset), Cordon knows it is caught up.
        assert_eq!(partition_lag(5_000, Some(5_000), -1), Some(0));
        assert_eq!(partition_lag(5_000, Some(4_000), -1), Some(1_000));
        // An end reported before the last records read caught up with it: not negative.
        assert_eq!(partition_lag(5_000, Some(5_200), 7), Some(0));
        // Either side unknown: librdkafka's figure, if it has one.
        assert_eq!(partition_lag(-1, Some(5_000), 12), Some(12));
        assert_eq!(partition_lag(5_000, None, 30), Some(30));
        assert_eq!(partition_lag(-1001, None, -1), None);
    }

    fn job(key: &str, offset: i64) -> Job {
        Job {
            key: key.to_owned(),
            topic: "t".into(),
            partition: 0,
            records: vec![(offset, 0..0, 0..1)],
            times: vec![None],
            fetched: Instant::now(),
            bytes: vec![b'x'],
            snapshot: None,
        }
    }

    /// Runs `jobs` through `threads` engine threads; returns the (lane, offset) each ran,
    /// in the order they started.
    fn run(jobs: Vec<Job>, threads: usize) -> (Vec<(String, i64)>, usize) {
        let lanes = Lanes::new(Arc::default());
        for j in jobs {
            lanes.push(j);
        }
        let ran = Mutex::new(Vec::new());
        let busy = Mutex::new(HashSet::new());
        std::thread::scope(|s| {
            for w in 0..threads {
                let (lanes, ran, busy) = (&lanes, &ran, &busy);
                s.spawn(move || {
                    while let Some(j) = lanes.next(w) {
                        assert!(
                            busy.lock().unwrap().insert(j.key.clone()),
                            "lane {} on two threads at once",
                            j.key
                        );
                        ran.lock().unwrap().push((j.key.clone(), j.records[0].0));
                        std::thread::sleep(Duration::from_millis(2));
                        busy.lock().unwrap().remove(&j.key);
                        lanes.finished(&j, Ok(vec![(j.records[0].0, 0)]));
                    }
                });
            }
            lanes.settle(None);
            lanes.close();
        });
        let left = lanes.in_flight();
        (ran.into_inner().unwrap(), left)
    }

    #[test]
    fn lanes_keep_each_partitions_order_and_take_turns() {
        // Lane a has ten jobs queued before b's two: b must not wait for all of a's.
        let mut jobs: Vec<Job> = (0..10).map(|o| job("a", o)).collect();
        jobs.extend((0..2).map(|o| job("b", o)));
        let (ran, left) = run(jobs, 1);
        assert_eq!(ran.len(), 12);
        assert_eq!(left, 0, "every byte handed out is accounted for");
        for lane in ["a", "b"] {
            let offsets: Vec<i64> = ran.iter().filter(|r| r.0 == lane).map(|r| r.1).collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{lane}: {offsets:?}"
            );
        }
        let b_done = ran.iter().rposition(|r| r.0 == "b").unwrap();
        assert!(b_done < 5, "lanes take turns: {ran:?}");
    }

    #[test]
    fn a_lane_runs_on_one_thread_at_a_time_and_settles() {
        let jobs: Vec<Job> = (0..40)
            .map(|o| job(["a", "b", "c"][o as usize % 3], o))
            .collect();
        let (ran, left) = run(jobs, 3);
        assert_eq!(ran.len(), 40);
        assert_eq!(left, 0);
        for lane in ["a", "b", "c"] {
            let offsets: Vec<i64> = ran.iter().filter(|r| r.0 == lane).map(|r| r.1).collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{lane}: {offsets:?}"
            );
        }
    }

    #[test]
    fn a_thread_keeps_to_the_lanes_it_ran_and_takes_others_when_idle() {
        let lanes = Lanes::new(Arc::default());
        lanes.push(job("a", 0));
        lanes.push(job("b", 0));
        // No lane has run yet: each thread takes the first ready one.
        let a = lanes.next(0).unwrap();
        let b = lanes.next(1).unwrap();
        assert_eq!((a.key.as_str(), b.key.as_str()), ("a", "b"));
        lanes.finished(&a, Ok(Vec::new()));
        lanes.finished(&b, Ok(Vec::new()));
        lanes.push(job("a", 1));
        lanes.push(job("b", 1));
        // a is first in turn, but thread 1 ran b last.
        let b = lanes.next(1).unwrap();
        assert_eq!((b.key.as_str(), b.records[0].0), ("b", 1));
        lanes.finished(&b, Ok(Vec::new()));
        // Thread 1 has no lane of its own ready: it takes a rather than wait.
        let a = lanes.next(1).unwrap();
        assert_eq!((a.key.as_str(), a.records[0].0), ("a", 1));
        lanes.finished(&a, Ok(Vec::new()));
        lanes.push(job("a", 2));
        assert_eq!(lanes.next(1).unwrap().key, "a", "a is now thread 1's");
        assert_eq!(lanes.in_flight(), job("a", 2).bytes.capacity());
    }

    #[test]
    fn a_failed_job_drops_its_lane_and_stops_the_run() {
        let lanes = Lanes::new(Arc::default());
        for o in 0..3 {
            lanes.push(job("a", o));
        }
        let first = lanes.next(0).unwrap();
        lanes.finished(&first, Err("the alerts file is full".into()));
        assert_eq!(lanes.fatal().as_deref(), Some("the alerts file is full"));
        assert_eq!(lanes.in_flight(), 0, "queued jobs are dropped, not run");
        lanes.settle(Some("a"));
        lanes.close();
        assert!(lanes.next(0).is_none());
    }

    #[test]
    fn settling_a_closed_run_does_not_wait() {
        let lanes = Lanes::new(Arc::default());
        lanes.push(job("a", 0));
        lanes.close();
        // No engine thread will run the job: a closed run must not wait for it.
        lanes.settle(None);
        assert_eq!(lanes.take_held("a"), Vec::<(i64, i64)>::new());
    }
}
