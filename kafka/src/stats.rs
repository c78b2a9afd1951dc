//! The Kafka input's counters and gauges, kept as atomics that the poll loop, the engine
//! threads, the committer and librdkafka's callbacks update without a lock, and written out
//! in the Prometheus text format on `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cordon_query::metrics::Exposition;

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
    pub(super) fn observe_n(&self, micros: u64, n: u64) {
        self.counts[Self::bucket(micros)].fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    /// A job's records, binned locally first: the engine threads share these counters, and
    /// one add per bucket per job keeps them off the per-record path.
    pub(super) fn observe_all(&self, delays: impl Iterator<Item = u64>) {
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
    /// Records Cordon produced (alerts, dead letters, action results): from handing each to
    /// the producer to the broker's acknowledgement, as the poll loop next sees it.
    pub acks: Delays,
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
    /// Records the broker did not take (the run stops; nothing after the last commit is
    /// committed).
    pub delivery_failures: AtomicU64,
    /// Dead letters whose record was cut to fit `message.max.bytes`.
    pub dead_letters_truncated: AtomicU64,
    /// Alerts put on the alerts topic without their evidences' data, which did not fit
    /// `message.max.bytes` (the alert store and the alerts file have it whole).
    pub alerts_without_evidences: AtomicU64,
    /// Alerts too large for `message.max.bytes` even without their evidences' data, not put
    /// on the alerts topic (the alert store and the alerts file have them).
    pub alerts_not_produced: AtomicU64,
    /// Job buffers made because no kept one was large enough ([`Spare`]).
    pub job_buffers_made: AtomicU64,
    /// Bytes of the job buffers made.
    pub job_buffer_bytes_made: AtomicU64,
    /// Kept job buffers freed (each too small for a job that came).
    pub job_buffers_freed: AtomicU64,
    /// Whether every assigned partition's state is restored.
    pub ready: AtomicBool,
    /// Brokers the consumer is connected to, as librdkafka last reported them.
    pub brokers_up: std::sync::atomic::AtomicI64,
    /// Brokers the consumer knows (bootstrap and coordinator connections aside).
    pub brokers_known: std::sync::atomic::AtomicI64,
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
        // Times are kept in µs and exposed in seconds.
        let secs = |out: &mut Exposition, name: &str, help: &str, v: &AtomicU64| {
            out.counter(name, help, &[], v.load(Ordering::Relaxed) as f64 / 1e6)
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
        self.acks.render(
            out,
            "cordon_kafka_produce_ack_seconds",
            "From handing a record (alert, dead letter, action result) to the producer to the broker acknowledging it, seen at the poll loop's next turn",
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
        secs(
            out,
            "cordon_kafka_commit_seconds_total",
            "Time spent committing: sinks made durable, state checkpointed, offsets committed",
            &self.commit_micros,
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
        secs(
            out,
            "cordon_kafka_checkpoint_seconds_total",
            "Time spent compressing and writing partition checkpoints (beside the poll loop)",
            &self.checkpoint_micros,
        );
        secs(
            out,
            "cordon_kafka_snapshot_seconds_total",
            "Time spent copying engines for checkpoints (by the engine threads for periodic commits, by the poll loop for revocations and the stop)",
            &self.snapshot_micros,
        );
        secs(
            out,
            "cordon_kafka_durable_seconds_total",
            "Time spent making the sinks durable before commits (alerts file, store)",
            &self.durable_micros,
        );
        secs(
            out,
            "cordon_kafka_delivery_wait_seconds_total",
            "Time spent waiting for the broker to confirm deliveries before commits",
            &self.delivery_micros,
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
            "Records the broker did not take (the run stops)",
            &self.delivery_failures,
        );
        c(
            out,
            "cordon_kafka_dead_letters_truncated_total",
            "Dead letters whose record was cut to fit message.max.bytes",
            &self.dead_letters_truncated,
        );
        c(
            out,
            "cordon_kafka_alerts_without_evidences_total",
            "Alerts put on the alerts topic without their evidences' data (too large for message.max.bytes)",
            &self.alerts_without_evidences,
        );
        c(
            out,
            "cordon_kafka_alerts_not_produced_total",
            "Alerts too large for message.max.bytes even without their evidences' data, not put on the alerts topic",
            &self.alerts_not_produced,
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
        let up = self.brokers_up.load(Ordering::Relaxed);
        // Shown from librdkafka's first report that names a broker on.
        if self.brokers_known.load(Ordering::Relaxed) > 0 {
            out.gauge(
                "cordon_kafka_brokers_up",
                "Brokers the consumer is connected to (0 while Kafka is unreachable), as of librdkafka's last report",
                &[],
                up as f64,
            );
            out.gauge(
                "cordon_kafka_brokers_known",
                "Brokers the consumer knows of, as of librdkafka's last report",
                &[],
                self.brokers_known.load(Ordering::Relaxed) as f64,
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
