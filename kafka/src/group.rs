//! The consumer's side of the group. Each assigned partition is tracked from the offset its
//! state reflects; on assignment its checkpoint is restored before any of its records is read,
//! on revocation its alerts are made durable, its state checkpointed and its offset committed
//! before it goes. Cuts — the offsets to commit with the engines' state at exactly those
//! offsets — are taken here, on the poll thread, and completed by the committer.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::commit::{Committer, Cut, CutPart, Settled};
use super::lanes::{Job, Lanes, Slot};
use super::{oauth_token, KafkaStats};
use cordon_detect::engines::Engines;

/// One assigned partition.
pub(super) struct Part {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The offset after the last record read (or the checkpoint's).
    pub(super) next: Option<i64>,
    /// The first offset read in this assignment (logged when the partition goes).
    pub(super) first: Option<i64>,
    /// Without a state store: (offset, event time) of events pushed and possibly still held.
    pub(super) held: VecDeque<(i64, i64)>,
    /// Read since the last checkpoint.
    pub(super) dirty: bool,
    /// A record the state already reflects came again (warned once).
    pub(super) repeats_seen: bool,
    /// The offset last committed.
    pub(super) committed: Option<i64>,
}

impl Part {
    /// Whether the record at `offset` is to be run: not when the state already reflects it
    /// (a broker or client returning a record twice). Books it as read.
    pub(super) fn admit(&mut self, key: &str, offset: i64, stats: &KafkaStats) -> bool {
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

/// Everything the poll loop and the rebalance callback share (the callback runs inside
/// `poll`, on the loop's thread, when the loop holds no lock).
pub(super) struct RunState {
    pub(super) engines: Arc<Engines>,
    pub(super) lanes: Arc<Lanes>,
    pub(super) committer: Arc<Committer>,
    pub(super) parts: BTreeMap<String, Part>,
    /// Set when the state of an assigned partition cannot be read: the run stops rather than
    /// go on without it.
    pub(super) fatal: Option<String>,
    /// Stopping: the consumer is closing, nothing more to commit.
    pub(super) closing: bool,
    /// Cuts taken so far.
    pub(super) cuts: u64,
    /// The periodic cut being taken ([`RunState::cut_step`]).
    pub(super) building: Option<Building>,
}

/// A periodic cut whose engine copies are being taken by the engine threads.
pub(super) struct Building {
    pub(super) cut: Cut,
    /// The partitions whose copy is awaited, and where it will be.
    pub(super) pending: Vec<(String, Slot)>,
}

impl RunState {
    /// A consistent cut of the partitions in `only` (all when `None`): for each, the offset
    /// to commit and, with a state store, its engine's state at exactly that offset (taken
    /// now, on the poll thread; compressed and written by [`Committer::complete`]).
    pub(super) fn cut(&mut self, only: Option<&HashSet<String>>) -> Cut {
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
    pub(super) fn number(&mut self, cut: &mut Cut) {
        self.cuts += 1;
        cut.seq = self.cuts;
    }

    /// One partition's part of a cut: the offset to commit and, with a state store and
    /// records read since the last checkpoint, a copy of its engine at that offset.
    pub(super) fn cut_part(&mut self, key: &str) -> Option<CutPart> {
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
    pub(super) fn cut_step(&mut self) -> Option<Cut> {
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
    pub(super) fn drop_building(&mut self) {
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
    pub(super) fn settle(&mut self, done: Settled) {
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
    pub(super) fn commit_now(
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
    pub(super) fn assign(&mut self, tpl: &mut TopicPartitionList, stats: &KafkaStats) {
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
    pub(super) fn revoke(
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
pub(super) fn partition_lag(end: i64, next: Option<i64>, consumer_lag: i64) -> Option<i64> {
    match next {
        Some(next) if end >= 0 => Some((end - next).max(0)),
        _ => (consumer_lag >= 0).then_some(consumer_lag),
    }
}

/// The consumer's context: rebalances restore and hand over partition state; statistics
/// give the lag.
pub(super) struct Ctx {
    pub(super) run: Arc<Mutex<RunState>>,
    pub(super) stats: Arc<KafkaStats>,
    pub(super) tokens: Option<Arc<crate::oauthbearer::TokenSource>>,
    /// `isolation.level` is `read_committed` (librdkafka's default): a partition's end is
    /// then its last stable offset, not its high watermark.
    pub(super) read_committed: bool,
    /// librdkafka's client-wide errors, logged once per kind and interval.
    pub(super) errors: Repeats,
}

/// Logs a recurring error once, then again only when it changes or a minute has passed,
/// with how many times it came in between: with the brokers unreachable, librdkafka reports
/// "all broker connections are down" at every reconnection attempt, and a five-minute outage
/// filled the log.
#[derive(Default)]
pub(super) struct Repeats {
    last: Mutex<Option<(String, Instant, u64)>>,
}

impl Repeats {
    /// Whether to log `what` now; `Some(n)`: yes, with `n` repeats left unlogged since.
    pub(super) fn log(&self, what: &str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_mut() {
            Some((w, at, n)) if w == what && at.elapsed() < Duration::from_secs(60) => {
                *n += 1;
                None
            }
            _ => {
                let skipped = last
                    .as_ref()
                    .filter(|(w, _, _)| w == what)
                    .map_or(0, |l| l.2);
                *last = Some((what.to_owned(), Instant::now(), 0));
                Some(skipped)
            }
        }
    }
}

impl Ctx {
    pub(super) fn lock(&self) -> MutexGuard<'_, RunState> {
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

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // By kind: the reason counts the brokers down, and changes as they go.
        if let Some(repeats) = self.errors.log(&error.to_string()) {
            tracing::error!(error = %error, %reason, repeats, "librdkafka");
        }
    }

    fn stats(&self, s: Statistics) {
        // Brokers by node id; the bootstrap and coordinator connections have none of
        // their own (-1) and are the same brokers again.
        let brokers = s.brokers.values().filter(|b| b.nodeid >= 0);
        let (known, up) = brokers.fold((0, 0), |(k, u), b| (k + 1, u + i64::from(b.state == "UP")));
        self.stats.brokers_known.store(known, Ordering::Relaxed);
        self.stats.brokers_up.store(up, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
