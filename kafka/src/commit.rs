//! Commits. A cut is the offsets to commit with, when there is a state store, each
//! partition's engine as it was at exactly that offset. Completing it makes the sinks
//! durable, waits until the broker confirmed every alert and dead letter, writes the
//! checkpoints, and only then commits the offsets: an offset is never committed ahead of
//! what its records caused.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::checkpoint::CheckpointStore;
use super::{Ctx, Deliveries, Hooks, KafkaStats};

/// How a cut ended: the offsets committed by partition, or the partitions whose state must
/// be checkpointed again.
pub(super) type Settled = Result<Vec<(String, i64)>, Vec<String>>;

/// One partition in a [`Cut`].
pub(super) struct CutPart {
    pub(super) key: String,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// A copy of the engine at `offset`, when it changed (serialised by the committer).
    pub(super) engine: Option<Box<cordon_detect::Engine>>,
}

/// Offsets to commit and the partition states that go with them.
#[derive(Default)]
pub(super) struct Cut {
    /// Cuts are numbered as they are taken: one completed after a later one is stale.
    pub(super) seq: u64,
    pub(super) parts: Vec<CutPart>,
}

impl Cut {
    pub(super) fn keys(&self) -> Vec<String> {
        self.parts.iter().map(|p| p.key.clone()).collect()
    }
}

/// Waits until every record produced so far is delivered (or failed), at most `timeout`,
/// and never past `stop_by` once the run is stopping.
///
/// `BaseProducer::flush` waits for an event in slices of 100 ms, and another thread serves
/// the same producer's events (the delivery-report thread, or the poll loop without one):
/// when it took the last delivery report, the flush slept out its slice, and a commit took
/// 100 ms longer. Short slices bound that.
///
/// Why `stop_by`: stopping with the broker unreachable, the periodic commit in progress, a
/// revocation's commit and the final one each waited their own `shutdown_timeout`, and the
/// process exited after three times the time it was given.
fn wait_for_deliveries(
    p: &BaseProducer<Deliveries>,
    timeout: Duration,
    stop_by: &Mutex<Option<Instant>>,
) -> Result<()> {
    let start = Instant::now();
    while p.in_flight_count() > 0 {
        let mut deadline = start + timeout;
        if let Some(s) = *stop_by.lock().unwrap_or_else(|p| p.into_inner()) {
            deadline = deadline.min(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "[kafka]: waiting for deliveries: {} records still in flight after {:?}",
                p.in_flight_count(),
                start.elapsed()
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
pub(super) struct Committer {
    pub(super) hooks: Mutex<Option<Hooks>>,
    pub(super) producer: Option<Arc<BaseProducer<Deliveries>>>,
    pub(super) checkpoints: Option<CheckpointStore>,
    pub(super) flush_timeout: Duration,
    /// When the run must be done waiting for deliveries: set when it starts to stop, to
    /// `flush_timeout` from then, for every commit still to come.
    pub(super) stop_by: Mutex<Option<Instant>>,
    pub(super) stats: Arc<KafkaStats>,
    /// Held while a cut completes; holds the number of the last cut completed.
    pub(super) lock: Mutex<u64>,
}

impl Committer {
    /// `mode`: the poll loop's committer thread commits asynchronously (a synchronous commit
    /// from another thread can wait on a rebalance that waits on the poll thread); revocation
    /// and shutdown commit synchronously on the poll thread.
    /// `last`: the number of the last cut completed (under [`Committer::lock`]). A cut older
    /// than it is skipped: a revocation can complete a newer cut on the poll thread while the
    /// committer thread waits for the lock with an older one, and writing the older one
    /// afterwards would take the partition's checkpoint and offset back.
    pub(super) fn complete(
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
            wait_for_deliveries(p, self.flush_timeout, &self.stop_by)?;
            if let Some(lost) = p.context().lost() {
                anyhow::bail!("{lost}");
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
