//! Kafka as the input of `cordon run`: a consumer in a consumer group reads the gateways'
//! audit events, the engine runs them, and offsets are committed only once everything the
//! consumed events caused is durable — alerts in the store and on the alerts topic (delivery
//! confirmed), actions in the outbox — so a crash replays events rather than losing them, and
//! the replay changes nothing (alert ids come from the rule and the evidence event ids; action
//! ids are idempotency keys).
//!
//! Records are drained in batches (one `poll` each, no await per message); undecodable ones go
//! to the dead-letter topic with where they came from and why in headers. SIGTERM or SIGINT
//! stops fetching, finishes the batch, makes everything durable, commits and exits 0.
//!
//! The engine holds events in its reorder buffer until the watermark passes them, so a commit
//! covers, per partition, only the offsets before the first event still held: a crash
//! replays what the rules had not seen yet.
//!
//! This is the first slice of the Kafka issue: one consumer, the engine's state in one
//! process. Per-partition state, its checkpoints and hand-over on rebalance come next.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cordon_detect::{Alert, Engine};
use cordon_ingest::Format;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// What has been read from each partition and not yet processed: the engine holds events in
/// its reorder buffer until the watermark passes them, and an offset may only be committed
/// once every event before it has been through the rules.
#[derive(Default)]
struct Positions {
    /// Per partition: (offset, event time) of events pushed and possibly still held.
    held: HashMap<(String, i32), VecDeque<(i64, i64)>>,
    /// Per partition: the offset after the last record read.
    next: HashMap<(String, i32), i64>,
}

impl Positions {
    fn read(&mut self, topic: &str, partition: i32, offset: i64) {
        let n = self.next.entry((topic.to_owned(), partition)).or_insert(0);
        *n = (*n).max(offset + 1);
    }

    fn hold(&mut self, topic: &str, partition: i32, offset: i64, ts: i64) {
        self.held
            .entry((topic.to_owned(), partition))
            .or_default()
            .push_back((offset, ts));
    }

    /// The offsets safe to commit given the engine's watermark (events at or before it have
    /// been processed): per partition, the first still-held offset, else the next to read.
    fn safe(&mut self, watermark: i64) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.next {
            let held = self.held.entry((topic.clone(), *partition)).or_default();
            while held.front().is_some_and(|&(_, ts)| ts <= watermark) {
                held.pop_front();
            }
            let offset = held.front().map_or(*next, |&(o, _)| o);
            tpl.add_partition_offset(topic, *partition, Offset::Offset(offset))
                .map_err(|e| anyhow::anyhow!("[kafka]: {e}"))?;
        }
        Ok(tpl)
    }
}

use crate::pipeline::{PipelineStats, Progress};

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
    /// Records per batch (default 10 000).
    #[serde(default)]
    pub batch: Option<usize>,
    /// Longest between two commits (default 1s).
    #[serde(default)]
    pub commit_interval: Option<String>,
    /// Bytes librdkafka may prefetch per partition (default 16 MiB).
    #[serde(default)]
    pub prefetch_bytes: Option<usize>,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Counts failed deliveries, so a commit never covers an alert the broker did not take.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "a record was not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running Kafka input.
pub struct KafkaInput {
    consumer: BaseConsumer,
    producer: Option<BaseProducer<Deliveries>>,
    config: KafkaConfig,
    format: Format,
    commit_every: Duration,
}

impl KafkaInput {
    /// Connects (lazily: librdkafka retries brokers in the background) and subscribes.
    pub fn open(config: &KafkaConfig) -> Result<KafkaInput> {
        let format: Format = config
            .format
            .as_deref()
            .unwrap_or("native")
            .parse()
            .map_err(|e: String| anyhow::anyhow!("[kafka]: format: {e}"))?;
        let commit_every = match &config.commit_interval {
            Some(s) => humantime::parse_duration(s)
                .with_context(|| format!("[kafka]: commit_interval {s:?}"))?,
            None => Duration::from_secs(1),
        };
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "true")
            .set("auto.offset.reset", "earliest")
            .set(
                "queued.max.messages.kbytes",
                (config.prefetch_bytes.unwrap_or(16 << 20) / 1024)
                    .max(1)
                    .to_string(),
            );
        for (k, v) in &config.properties {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create().context("[kafka]: consumer")?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("[kafka]: subscribe")?;
        let producer = if config.alerts_topic.is_some() || config.dead_letter_topic.is_some() {
            let mut p = ClientConfig::new();
            p.set("bootstrap.servers", &config.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all");
            for (k, v) in &config.properties {
                p.set(k, v);
            }
            Some(
                p.create_with_context(Deliveries::default())
                    .context("[kafka]: producer")?,
            )
        } else {
            None
        };
        Ok(KafkaInput {
            consumer,
            producer,
            config: config.clone(),
            format,
            commit_every,
        })
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
        let body = serde_json::to_vec(&a.to_ocsf())?;
        self.send(t, a.agent_id().unwrap_or(""), &body, OwnedHeaders::new())
    }

    /// Makes what was produced durable, then commits the offsets up to which every event has
    /// been processed.
    fn commit(
        &self,
        durable: &mut dyn FnMut() -> Result<()>,
        positions: &mut Positions,
        watermark: i64,
        commits: &mut u64,
    ) -> Result<()> {
        durable()?;
        if let Some(p) = &self.producer {
            p.flush(Duration::from_secs(30))
                .context("[kafka]: waiting for deliveries")?;
            let failed = p.context().failed.load(Ordering::Relaxed);
            if failed > 0 {
                anyhow::bail!(
                    "{failed} alert or dead-letter records were not delivered; not committing (they are replayed on restart)"
                );
            }
        }
        let tpl = positions.safe(watermark)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                *commits += 1;
                Ok(())
            }
            // Nothing consumed since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("[kafka]: commit: {e}")),
        }
    }

    /// Runs until `stop` is set: poll a batch, push it through the engine, hand alerts to
    /// `on_alert`; every commit interval, `durable()` then commit.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        engine: &Mutex<Engine>,
        progress: &Progress,
        stop: &AtomicBool,
        mut before_event: impl FnMut(&mut Engine),
        mut on_alert: impl FnMut(Alert) -> Result<()>,
        mut durable: impl FnMut() -> Result<()>,
    ) -> Result<PipelineStats> {
        let mut stats = PipelineStats::default();
        let mut alerts = Vec::new();
        let batch = self.config.batch.unwrap_or(10_000).max(1);
        let mut last_commit = Instant::now();
        let mut commits = 0u64;
        let mut positions = Positions::default();
        while !stop.load(Ordering::Acquire) {
            let mut n = 0;
            let mut wait = Duration::from_millis(100);
            while n < batch {
                let Some(msg) = self.consumer.poll(wait) else {
                    break;
                };
                wait = Duration::ZERO;
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer");
                        break;
                    }
                };
                n += 1;
                stats.records += 1;
                progress.records.fetch_add(1, Ordering::Relaxed);
                let payload = msg.payload().unwrap_or_default();
                positions.read(msg.topic(), msg.partition(), msg.offset());
                let decoded = self.format.decode(payload);
                let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
                before_event(&mut e);
                let reason = match decoded {
                    Ok(ev) => {
                        stats.events += 1;
                        progress.events.fetch_add(1, Ordering::Relaxed);
                        if let Some(ts) = ev.timestamp_nanos() {
                            positions.hold(msg.topic(), msg.partition(), msg.offset(), ts);
                        }
                        let pushed = e.push(ev, &mut alerts);
                        drop(e);
                        let late = pushed.err().map(|l| {
                            stats.late += 1;
                            progress.late.fetch_add(1, Ordering::Relaxed);
                            l.reason(Duration::ZERO)
                        });
                        for a in alerts.drain(..) {
                            stats.alerts += 1;
                            progress.alerts.fetch_add(1, Ordering::Relaxed);
                            self.publish(&a)?;
                            on_alert(a)?;
                        }
                        late
                    }
                    Err(err) => {
                        drop(e);
                        Some(err.to_string())
                    }
                };
                if let Some(reason) = reason {
                    stats.dead_lettered += 1;
                    progress.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    match &self.config.dead_letter_topic {
                        Some(t) => {
                            let partition = msg.partition().to_string();
                            let offset = msg.offset().to_string();
                            let headers = OwnedHeaders::new()
                                .insert(Header {
                                    key: "cordon.source.topic",
                                    value: Some(msg.topic()),
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
                                    value: Some(&reason),
                                });
                            let key = msg
                                .key()
                                .map(|k| String::from_utf8_lossy(k).into_owned())
                                .unwrap_or_default();
                            self.send(t, &key, payload, headers)?;
                        }
                        None => {
                            tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %reason, "record dropped (no dead_letter_topic)")
                        }
                    }
                }
            }
            if let Some(p) = &self.producer {
                p.poll(Duration::ZERO);
            }
            if last_commit.elapsed() >= self.commit_every {
                let wm = engine.lock().unwrap_or_else(|p| p.into_inner()).watermark();
                self.commit(&mut durable, &mut positions, wm, &mut commits)?;
                last_commit = Instant::now();
            }
        }
        // Stopping: nothing more is fetched; events still held for reordering are released,
        // and what was consumed becomes durable and committed.
        engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(&mut alerts);
        for a in alerts.drain(..) {
            stats.alerts += 1;
            progress.alerts.fetch_add(1, Ordering::Relaxed);
            self.publish(&a)?;
            on_alert(a)?;
        }
        // Everything read has now been processed.
        self.commit(&mut durable, &mut positions, i64::MAX, &mut commits)?;
        tracing::info!(commits, "kafka input stopped");
        Ok(stats)
    }
}
