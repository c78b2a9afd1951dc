//! The engine threads' work queue. The poll loop copies each partition's records of a batch
//! into a job and queues it on the partition's lane; engine threads take lanes in turn, one
//! job at a time, so a partition's records reach its engine in offset order while partitions
//! run side by side. Job buffers are kept and reused, and the bytes queued bound what the poll
//! loop fetches next.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message};

use super::group::Part;
use super::KafkaStats;

/// Where an engine thread leaves a copy of a partition's engine for a periodic cut.
pub(super) type Slot = Arc<Mutex<Option<Box<cordon_detect::Engine>>>>;

/// Records an engine thread decodes before it locks the engine and pushes them: few enough
/// that the events are still in the cache when pushed, enough that the lock is taken rarely.
pub(super) const DECODE_CHUNK: usize = 32;

/// One partition's records from one batch, copied out of the client's buffers for an
/// engine thread; or a marker asking for a copy of the engine as it is after the jobs before
/// it.
pub(super) struct Job {
    pub(super) key: String,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// Each record's offset, and where its key and payload are in `bytes`.
    pub(super) records: Vec<(i64, Range<usize>, Range<usize>)>,
    /// Each record's Kafka timestamp (ms since the epoch), when it has one.
    pub(super) times: Vec<Option<i64>>,
    /// When the poll loop received the job's first record.
    pub(super) fetched: Instant,
    pub(super) bytes: Vec<u8>,
    /// A marker: the engine's copy goes here.
    pub(super) snapshot: Option<Slot>,
}

/// A job's buffers, kept from a finished job for a later one (see [`Spare`]).
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) bytes: Vec<u8>,
    pub(super) records: Vec<(i64, Range<usize>, Range<usize>)>,
    pub(super) times: Vec<Option<i64>>,
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
pub(super) struct Spare(Mutex<Vec<Buffers>>);

impl Spare {
    /// Empty buffers for a job of `records` records of `bytes` bytes.
    pub(super) fn take(&self, bytes: usize, records: usize, stats: &KafkaStats) -> Buffers {
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
    pub(super) fn keep(&self, b: Buffers) {
        if b.bytes.capacity() > 0 {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spare.iter().map(|b| b.bytes.capacity()).sum()
    }
}

impl Job {
    /// A job for `msg`'s partition, its records to be copied into `buffers` (empty).
    pub(super) fn new(key: &str, msg: &BorrowedMessage<'_>, buffers: Buffers) -> Job {
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
    pub(super) fn into_buffers(self) -> Buffers {
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

    pub(super) fn marker(key: &str, part: &Part, slot: Slot) -> Job {
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

    pub(super) fn push(&mut self, msg: &BorrowedMessage<'_>) {
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
pub(super) struct Lanes {
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
    pub(super) fn new(stats: Arc<KafkaStats>) -> Lanes {
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
    pub(super) fn push(&self, job: Job) {
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
    pub(super) fn next(&self, worker: usize) -> Option<Job> {
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
    pub(super) fn finished(&self, job: &Job, r: Result<Vec<(i64, i64)>, String>) {
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
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Waits until `key`'s lane (every lane, with `None`) has run every job handed to it
    /// and written their effects: its engine then reflects exactly the records handed out.
    pub(super) fn settle(&self, key: Option<&str>) {
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
    pub(super) fn wait_below(&self, limit: usize, timeout: Duration) {
        let st = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.in_flight >= limit && s.fatal.is_none());
    }

    pub(super) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    pub(super) fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// The (offset, event time) of events run on `key` since the last call.
    pub(super) fn take_held(&self, key: &str) -> Vec<(i64, i64)> {
        self.lock()
            .lanes
            .get_mut(key)
            .map(|l| std::mem::take(&mut l.held))
            .unwrap_or_default()
    }

    /// Forgets a revoked partition's lane (settled first).
    pub(super) fn remove(&self, key: &str) {
        self.lock().lanes.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
