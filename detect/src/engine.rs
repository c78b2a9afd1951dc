//! The engine: runs every detector over the event stream, in event order.
//!
//! Detectors are synchronous and do no I/O ([`Detector`]): the engine can be driven by a file
//! reader, a Kafka consumer or a test alike, and it is tested without an async runtime.
//! Single-event rules run straight from an index of the field values they require; sequence,
//! sample and threshold rules run as [`Stateful`] detectors; and each agent's
//! profile sets an event's baseline features before either sees it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use cordon_ingest::{CoreField, Event, FieldRef};
use cordon_rules::eval::{has_value, Guard};
use cordon_rules::{CompiledQuery, Rule, RuleSet, Verdict};
use rustc_hash::FxHashMap;

use crate::alert::Alert;
use crate::profile::Profiles;
use crate::sample::SampleDetector;
use crate::sequence::SequenceDetector;
use crate::stateful::{Finding, StateStats, Stateful};
use crate::suppress::Suppressor;
use crate::threshold::ThresholdDetector;

/// A streaming detector.
pub trait Detector {
    /// Observes one event; pushes any alerts it completes.
    fn observe(&mut self, ev: &Event, out: &mut Vec<Alert>);

    /// Event time has advanced to `watermark_nanos`: windows ending before it may close.
    fn on_watermark(&mut self, _watermark_nanos: i64, _out: &mut Vec<Alert>) {}

    /// End of input: close everything that is still open.
    fn finish(&mut self, _out: &mut Vec<Alert>) {}
}

/// Counters of one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleStats {
    /// Events the query matched.
    pub matched: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Matches not raised because an alert with the same key was raised within the window.
    pub suppressed: u64,
    /// Matches not raised because an exception applied.
    pub excepted: u64,
}

/// Rules indexed by their guards (a field value, or a field's presence, each of their
/// conditions requires): an event is tested only against the rules whose guard it satisfies,
/// plus the rules without a guard. A multi-event rule is indexed by the guards of all its
/// steps: it is a candidate when the event may satisfy any of them, and it learns which
/// ([`Steps`]), so its detector tests only those steps. A step without a guard is always
/// among them.
#[derive(Clone)]
struct RuleIndex {
    /// Rules with a step that has no guard, with those steps.
    unguarded: Vec<Candidate>,
    fields: Vec<FieldIndex>,
    /// Rules guarded by a field having a value (baseline features, responses, optional
    /// arguments, extra fields): one presence test per field, not per rule.
    present: Vec<(FieldRef, Vec<Candidate>)>,
}

/// A rule that may match an event, and which of its single-event conditions
/// ([`Rule::event_matchers`]) may.
type Candidate = (usize, Steps);

/// A set of a rule's single-event conditions, by position ([`Rule::event_matchers`]): bit `j`
/// for condition `j`, the last bit for every condition from the 64th on.
pub type Steps = u64;

/// The bit of condition `j` in [`Steps`].
pub fn step_bit(j: usize) -> Steps {
    1 << j.min(63)
}

#[derive(Clone)]
struct FieldIndex {
    field: CoreField,
    insensitive: bool,
    rules: FxHashMap<Box<str>, Vec<Candidate>>,
}

/// Adds `steps` of `rule` to a list of candidates in rule order.
fn add_rule(list: &mut Vec<Candidate>, rule: usize, steps: Steps) {
    match list.last_mut() {
        Some((r, s)) if *r == rule => *s |= steps,
        _ => list.push((rule, steps)),
    }
}

impl RuleIndex {
    fn build(rules: &[Rule]) -> RuleIndex {
        let mut idx = RuleIndex {
            unguarded: Vec::new(),
            fields: Vec::new(),
            present: Vec::new(),
        };
        for (i, r) in rules.iter().enumerate() {
            let mut open: Steps = 0;
            for (j, m) in r.event_matchers().iter().enumerate() {
                let bit = step_bit(j);
                let Some(guards) = m.pred.guards() else {
                    open |= bit;
                    continue;
                };
                for g in guards {
                    let g = match g {
                        Guard::Value(g) => g,
                        Guard::Present(f) => {
                            match idx.present.iter_mut().find(|(p, _)| *p == f) {
                                Some((_, list)) => add_rule(list, i, bit),
                                None => idx.present.push((f, vec![(i, bit)])),
                            }
                            continue;
                        }
                    };
                    let pos = match idx
                        .fields
                        .iter()
                        .position(|f| f.field == g.field && f.insensitive == g.insensitive)
                    {
                        Some(p) => p,
                        None => {
                            idx.fields.push(FieldIndex {
                                field: g.field,
                                insensitive: g.insensitive,
                                rules: FxHashMap::default(),
                            });
                            idx.fields.len() - 1
                        }
                    };
                    for v in g.values {
                        add_rule(idx.fields[pos].rules.entry(v).or_default(), i, bit);
                    }
                }
            }
            if open != 0 {
                idx.unguarded.push((i, open));
            }
        }
        idx
    }

    /// The rules that may match `ev`, in rule order, each once with the conditions that may.
    fn candidates(&self, ev: &Event, out: &mut Vec<Candidate>) {
        out.clear();
        out.extend_from_slice(&self.unguarded);
        for f in &self.fields {
            let Some(v) = ev.str(f.field) else { continue };
            let hit = if f.insensitive && v.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
                f.rules.get(v.to_lowercase().as_str())
            } else {
                f.rules.get(v)
            };
            if let Some(rules) = hit {
                out.extend_from_slice(rules);
            }
        }
        for (f, rules) in &self.present {
            if has_value(ev, f) {
                out.extend_from_slice(rules);
            }
        }
        out.sort_unstable_by_key(|c| c.0);
        out.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 |= later.1;
            }
            same
        });
    }
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    /// Events processed by the detectors.
    pub events: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Events that arrived behind the watermark and were refused (see [`Engine::push`]).
    pub late: u64,
    /// Events that arrived out of order but within the allowed lateness (reordered).
    pub reordered: u64,
    /// Events passed to [`Engine::observe`] older than one already processed.
    pub out_of_order: u64,
    /// Events dropped as copies of one already accepted (same `event.id` and time; see
    /// [`crate::dedupe`]).
    #[serde(default)]
    pub duplicates: u64,
}

/// An event refused because it arrived behind the watermark.
#[derive(Debug)]
pub struct Late {
    /// The event.
    pub event: Box<Event>,
    /// Its time (ns).
    pub time: i64,
    /// The watermark it missed (ns).
    pub watermark: i64,
}

impl Late {
    /// A dead-letter reason naming both times.
    pub fn reason(&self, allowed: std::time::Duration) -> String {
        let fmt = |n: i64| {
            jiff::Timestamp::from_nanosecond(n as i128)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| n.to_string())
        };
        format!(
            "late event: its time {} is behind the watermark {} (allowed lateness {})",
            fmt(self.time),
            fmt(self.watermark),
            humantime::format_duration(allowed)
        )
    }
}

/// Counters of one rule.
pub type RuleCounters = RuleStats;

/// What a rule reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reload {
    /// Rules whose id, version and query are unchanged: their open partial matches, counters
    /// and suppression windows carry over.
    pub kept: Vec<String>,
    /// New rule ids.
    pub added: Vec<String>,
    /// Rules whose version or query changed: they start without partial matches.
    pub changed: Vec<String>,
    /// Rule ids no longer present.
    pub removed: Vec<String>,
}

/// The detector of one multi-event rule, with the index of its rule.
struct StatefulRule {
    rule: usize,
    detector: Box<dyn Stateful>,
}

/// The detector of a multi-event rule (none for a single-event one).
fn detector(r: &Rule) -> Option<Box<dyn Stateful>> {
    Some(match &r.query.query {
        CompiledQuery::Event(_) => return None,
        CompiledQuery::Sequence(s) => Box::new(SequenceDetector::new(s.clone())),
        CompiledQuery::Sample(s) => Box::new(SampleDetector::new(s.clone())),
        CompiledQuery::Threshold(t) => Box::new(ThresholdDetector::new(t.clone())),
    })
}

/// One rule's part of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRule {
    id: String,
    version: u32,
    query: String,
    stats: RuleStats,
    #[serde(with = "crate::checkpoint::opt_raw")]
    detector: Option<Vec<u8>>,
}

/// An engine checkpoint ([`crate::checkpoint`]): `(format, version, events, Saved)`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    rules: Vec<SavedRule>,
    /// (rule index in `rules`, key, last alert, window).
    suppress: Vec<(usize, String, i64, i64)>,
    suppress_evicted: u64,
    stats: EngineStats,
    processed: i64,
    last_sweep: i64,
    max_seen: i64,
    released: i64,
    seq: u64,
    /// (time, arrival) and the event, of every event still in the reorder buffer
    /// (`Vec<(i64, u64, BufferedEvent)>`, written before the event table is complete).
    buffer: crate::checkpoint::Bytes,
    #[serde(with = "crate::checkpoint::raw")]
    profiles: Vec<u8>,
    enforced: crate::enforce::Enforced,
    recent: crate::dedupe::Recent,
}

/// A rule's state in a delta checkpoint: what changed, or all of it (a rule new or changed
/// since the previous checkpoint, or one that keeps no deltas).
#[derive(serde::Serialize, serde::Deserialize)]
enum DetectorState {
    Full(#[serde(with = "crate::checkpoint::raw")] Vec<u8>),
    Delta(#[serde(with = "crate::checkpoint::raw")] Vec<u8>),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BufferedEvent(#[serde(with = "crate::checkpoint::event")] Event);

/// What a restore kept and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// Rules whose state was restored.
    pub rules: usize,
    /// Saved rules not in the running set, or changed since (their state was dropped).
    pub dropped: Vec<String>,
    /// Events restored into the reorder buffer.
    pub buffered: usize,
}

/// Sweep stateful detectors for expired spans at most this often (event time).
const SWEEP_EVERY: i64 = 1_000_000_000;

/// All rules over one stream: filter rules through the index, multi-event rules through their
/// detectors, external detectors beside them; exceptions, suppression and counters applied
/// uniformly; events put in event order by a reorder buffer with an allowed lateness.
pub struct Engine {
    rules: Vec<Rule>,
    index: RuleIndex,
    /// The rules that may match the event being observed, sorted ([`RuleIndex::candidates`]).
    candidates: Vec<Candidate>,
    stateful: Vec<StatefulRule>,
    others: Vec<Box<dyn Detector + Send>>,
    rule_stats: Vec<RuleStats>,
    suppressor: Suppressor,
    stats: EngineStats,
    findings: Vec<Finding>,
    /// Latest event time processed.
    processed: i64,
    last_sweep: i64,
    // Reorder buffer.
    lateness: i64,
    max_seen: i64,
    released: i64,
    buffer: Reorder,
    seq: u64,
    profiles: Profiles,
    enforced: crate::enforce::Enforced,
    /// Ids of accepted events a copy of which could still arrive.
    recent: crate::dedupe::Recent,
}

#[derive(Clone)]
struct Pending {
    ts: i64,
    seq: u64,
    event: Event,
}

/// The reorder buffer: events held back until the watermark passes them, handed out in
/// [`Pending`]'s order. Events nearly always arrive in that order, so those go to the back
/// of a queue that stays sorted, and only the others into a heap; the next event is the
/// smaller of the two fronts. Through a heap alone, a push and a pop per event on a few
/// seconds' worth of events were about 2 % of the engine threads' time in the Kafka bench.
#[derive(Clone, Default)]
struct Reorder {
    /// Sorted: each was at least the one before it when it came.
    sorted: VecDeque<Pending>,
    /// The events that came out of order.
    heap: BinaryHeap<Reverse<Pending>>,
}

impl Reorder {
    fn push(&mut self, p: Pending) {
        if self.sorted.back().is_none_or(|last| *last <= p) {
            self.sorted.push_back(p);
        } else {
            self.heap.push(Reverse(p));
        }
    }

    /// Whether the next event comes from the sorted queue (`None`: the buffer is empty).
    fn next_is_sorted(&self) -> Option<bool> {
        match (self.sorted.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) => Some(a <= b),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// Takes the next event if its time is at most `horizon`.
    fn pop_through(&mut self, horizon: i64) -> Option<Pending> {
        if self.next_is_sorted()? {
            if self.sorted.front()?.ts <= horizon {
                return self.sorted.pop_front();
            }
        } else if self.heap.peek()?.0.ts <= horizon {
            return self.heap.pop().map(|Reverse(p)| p);
        }
        None
    }

    /// Takes the next event.
    fn pop(&mut self) -> Option<Pending> {
        self.pop_through(i64::MAX)
    }

    fn is_empty(&self) -> bool {
        self.sorted.is_empty() && self.heap.is_empty()
    }

    /// Every event held, in no particular order.
    fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.sorted
            .iter()
            .chain(self.heap.iter().map(|Reverse(p)| p))
    }
}

impl PartialEq for Pending {
    fn eq(&self, o: &Pending) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Pending) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    /// Event time, then event id (EQL's tiebreaker), then arrival.
    fn cmp(&self, o: &Pending) -> std::cmp::Ordering {
        self.ts
            .cmp(&o.ts)
            .then_with(|| self.event.id().cmp(&o.event.id()))
            .then_with(|| self.seq.cmp(&o.seq))
    }
}

impl Engine {
    /// An engine running the rule set's rules, with no allowed lateness.
    pub fn new(set: &RuleSet) -> Engine {
        let rules = set.rules.clone();
        let stateful = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| detector(r).map(|detector| StatefulRule { rule: i, detector }))
            .collect();
        Engine {
            index: RuleIndex::build(&rules),
            candidates: Vec::new(),
            rule_stats: vec![RuleStats::default(); rules.len()],
            rules,
            stateful,
            others: Vec::new(),
            suppressor: Suppressor::default(),
            stats: EngineStats::default(),
            findings: Vec::new(),
            processed: i64::MIN,
            last_sweep: i64::MIN,
            lateness: 0,
            max_seen: i64::MIN,
            released: i64::MIN,
            buffer: Reorder::default(),
            seq: 0,
            profiles: Profiles::default(),
            enforced: crate::enforce::Enforced::default(),
            recent: crate::dedupe::Recent::default(),
        }
    }

    /// Swaps in a new rule set between two events (hot reload). Unchanged rules (same id,
    /// version and query) keep their partial matches, counters and suppression windows;
    /// changed and new rules start empty; profiles, enforcement and the reorder buffer are
    /// untouched. The set was validated when it was loaded, so this cannot fail.
    pub fn replace_rules(&mut self, set: &RuleSet) -> Reload {
        let rules = set.rules.clone();
        let mut report = Reload::default();
        let old_by_id: HashMap<&str, usize> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        // old index → new index, for rules that carry over unchanged.
        let mut map: Vec<Option<usize>> = vec![None; self.rules.len()];
        for (n, r) in rules.iter().enumerate() {
            match old_by_id.get(r.id.as_str()) {
                Some(&o)
                    if self.rules[o].version == r.version
                        && self.rules[o].query_text == r.query_text =>
                {
                    map[o] = Some(n);
                    report.kept.push(r.id.clone());
                }
                Some(_) => report.changed.push(r.id.clone()),
                None => report.added.push(r.id.clone()),
            }
        }
        let new_ids: std::collections::HashSet<&str> =
            rules.iter().map(|r| r.id.as_str()).collect();
        report.removed = self
            .rules
            .iter()
            .filter(|r| !new_ids.contains(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect();
        let mut old_detectors: HashMap<usize, Box<dyn Stateful>> =
            std::mem::take(&mut self.stateful)
                .into_iter()
                .map(|s| (s.rule, s.detector))
                .collect();
        let carried: HashMap<usize, usize> = map
            .iter()
            .enumerate()
            .filter_map(|(o, n)| n.map(|n| (n, o)))
            .collect();
        self.stateful = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let kept = carried.get(&i).and_then(|o| old_detectors.remove(o));
                kept.or_else(|| detector(r))
                    .map(|detector| StatefulRule { rule: i, detector })
            })
            .collect();
        let mut stats = vec![RuleStats::default(); rules.len()];
        for (n, o) in &carried {
            stats[*n] = self.rule_stats[*o].clone();
        }
        self.suppressor.remap(&map);
        self.rule_stats = stats;
        self.index = RuleIndex::build(&rules);
        self.rules = rules;
        report
    }

    /// A copy of the engine with all its state, for a checkpoint taken off the thread that
    /// runs the rules: copying is several times faster than serialising, so the pipeline
    /// pauses for the copy only. External detectors ([`Engine::add`]) are not copied (they are
    /// not checkpointed either).
    pub fn clone_state(&self) -> Engine {
        Engine {
            rules: self.rules.clone(),
            index: self.index.clone(),
            candidates: Vec::new(),
            stateful: self
                .stateful
                .iter()
                .map(|s| StatefulRule {
                    rule: s.rule,
                    detector: s.detector.boxed_clone(),
                })
                .collect(),
            others: Vec::new(),
            rule_stats: self.rule_stats.clone(),
            suppressor: self.suppressor.clone(),
            stats: self.stats.clone(),
            findings: Vec::new(),
            processed: self.processed,
            last_sweep: self.last_sweep,
            lateness: self.lateness,
            max_seen: self.max_seen,
            released: self.released,
            buffer: self.buffer.clone(),
            seq: self.seq,
            profiles: self.profiles.clone(),
            enforced: self.enforced.clone(),
            recent: self.recent.clone(),
        }
    }

    /// Everything the engine holds, as bytes ([`crate::checkpoint`]): restoring them into an
    /// engine with the same rules gives an engine that behaves exactly as this one.
    pub fn checkpoint(&self) -> Result<Vec<u8>, crate::checkpoint::CheckpointError> {
        Ok(self
            .checkpoint_with(crate::checkpoint::EventLog::default())?
            .bytes)
    }

    /// A checkpoint in a chain: the events in `log` (written by the chain's earlier
    /// checkpoints) are referred to, not written again. Restore it with the chain's earlier
    /// checkpoints ([`Engine::restore_chain`]).
    pub fn checkpoint_with(
        &self,
        log: crate::checkpoint::EventLog,
    ) -> Result<crate::checkpoint::Written, crate::checkpoint::CheckpointError> {
        self.write_checkpoint(None, log)
    }

    /// A delta in a chain: like [`Engine::checkpoint_with`], except that a rule's windows and
    /// partial matches are written only where they changed since `prev`, a copy of this
    /// engine ([`Engine::clone_state`]) that the chain's previous checkpoint was written from.
    /// Unchanged keys cost nothing, so a checkpoint follows what the events since changed,
    /// not how much state the rules hold. Restore it with the chain up to it
    /// ([`Engine::restore_chain`]); the returned log keeps the events of `log`, which the state
    /// left out still refers to.
    pub fn checkpoint_delta(
        &self,
        prev: &Engine,
        log: crate::checkpoint::EventLog,
    ) -> Result<crate::checkpoint::Written, crate::checkpoint::CheckpointError> {
        self.write_checkpoint(Some(prev), log)
    }

    fn write_checkpoint(
        &self,
        prev: Option<&Engine>,
        log: crate::checkpoint::EventLog,
    ) -> Result<crate::checkpoint::Written, crate::checkpoint::CheckpointError> {
        let damaged = crate::checkpoint::CheckpointError::Damaged;
        let saver = match prev {
            None => crate::checkpoint::Saver::start(log),
            Some(_) => crate::checkpoint::Saver::start_delta(log),
        };
        // The copy's detectors, by rule: a rule changed since the copy has none to diff with.
        let before: HashMap<(&str, u32, &str), &dyn crate::stateful::Stateful> = prev
            .map(|p| {
                p.stateful
                    .iter()
                    .map(|s| {
                        let r = &p.rules[s.rule];
                        (
                            (r.id.as_str(), r.version, r.query_text.as_str()),
                            &*s.detector,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut detectors: HashMap<usize, Vec<u8>> = HashMap::new();
        for s in &self.stateful {
            let bytes = if prev.is_none() {
                s.detector.save().map_err(damaged)?
            } else {
                let r = &self.rules[s.rule];
                let delta = before
                    .get(&(r.id.as_str(), r.version, r.query_text.as_str()))
                    .and_then(|p| s.detector.save_delta(*p));
                let state = match delta {
                    Some(d) => DetectorState::Delta(d.map_err(damaged)?),
                    None => DetectorState::Full(s.detector.save().map_err(damaged)?),
                };
                postcard::to_allocvec(&state).map_err(|e| damaged(e.to_string()))?
            };
            detectors.insert(s.rule, bytes);
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| SavedRule {
                id: r.id.clone(),
                version: r.version,
                query: r.query_text.clone(),
                stats: self.rule_stats[i].clone(),
                detector: detectors.remove(&i),
            })
            .collect();
        let mut buffer: Vec<_> = self
            .buffer
            .iter()
            .map(|p| (p.ts, p.seq, BufferedEvent(p.event.clone())))
            .collect();
        buffer.sort_by_key(|(ts, seq, _)| (*ts, *seq));
        let buffer = crate::checkpoint::to_bytes(&buffer).map_err(damaged)?;
        // Everything serialised with `to_bytes` before the saver finishes: the restore reads
        // it all with the chain's events at hand.
        let profiles = self.profiles.save_bytes().map_err(damaged)?;
        let (events, log, new_event_bytes) = saver.finish();
        let saved = Saved {
            rules,
            suppress: self.suppressor.save(),
            suppress_evicted: self.suppressor.evicted(),
            stats: self.stats.clone(),
            processed: self.processed,
            last_sweep: self.last_sweep,
            max_seen: self.max_seen,
            released: self.released,
            seq: self.seq,
            buffer: crate::checkpoint::Bytes(buffer),
            profiles,
            enforced: self.enforced.clone(),
            recent: self.recent.clone(),
        };
        let new_events = events.len();
        let mut largest: Vec<(String, usize)> = saved
            .rules
            .iter()
            .filter_map(|r| Some((r.id.clone(), r.detector.as_ref()?.len())))
            .collect();
        largest.push(("reorder buffer".into(), saved.buffer.0.len()));
        largest.push(("profiles".into(), saved.profiles.len()));
        largest.push((
            "suppression".into(),
            saved.suppress.iter().map(|(_, k, _, _)| k.len() + 12).sum(),
        ));
        largest.push(("new events".into(), new_event_bytes as usize));
        largest.sort_by_key(|l| std::cmp::Reverse(l.1));
        largest.truncate(4);
        let events: Vec<(u64, crate::checkpoint::Bytes)> = events
            .into_iter()
            .map(|(id, b)| (id, crate::checkpoint::Bytes(b)))
            .collect();
        // Plain postcard: the event table is already out of the saver.
        let format = match prev {
            None => crate::checkpoint::FORMAT,
            Some(_) => crate::checkpoint::DELTA_FORMAT,
        };
        // Written into the memory the last checkpoint on this thread was written into
        // ([`crate::checkpoint::recycle`]), sized for the parts up front: a new buffer each
        // time, grown by doubling, was a fifth of a live committer's time in page faults.
        let size = events.iter().map(|(_, b)| b.0.len() + 12).sum::<usize>()
            + saved
                .rules
                .iter()
                .map(|r| r.id.len() + r.query.len() + r.detector.as_ref().map_or(0, Vec::len) + 64)
                .sum::<usize>()
            + saved.buffer.0.len()
            + saved.profiles.len()
            + 4096;
        let bytes = postcard::to_extend(
            &(format, crate::checkpoint::VERSION, events, saved),
            crate::checkpoint::spare_buffer(size),
        )
        .map_err(|e| damaged(e.to_string()))?;
        Ok(crate::checkpoint::Written {
            bytes,
            log,
            new_events,
            new_event_bytes,
            largest,
        })
    }

    /// Replaces this engine's state with a checkpoint's. Rules are matched by id, version
    /// and query: the state of a rule that changed or went since the checkpoint is dropped
    /// (reported), new rules start empty. The allowed lateness and caps stay this engine's.
    pub fn restore(
        &mut self,
        bytes: &[u8],
    ) -> Result<Restored, crate::checkpoint::CheckpointError> {
        self.restore_chain(&[bytes])
    }

    /// [`Engine::restore`] for a chain of checkpoints ([`Engine::checkpoint_with`],
    /// [`Engine::checkpoint_delta`]), oldest first: the rules' state is the last full
    /// checkpoint's with every later delta applied in order, the rest of the state is the last
    /// checkpoint's, and the events come from all of them.
    pub fn restore_chain(
        &mut self,
        chain: &[&[u8]],
    ) -> Result<Restored, crate::checkpoint::CheckpointError> {
        use crate::checkpoint::CheckpointError as E;
        if chain.is_empty() {
            return Err(E::Format("no checkpoint to restore".into()));
        }
        // Every file's event table; each file's state, and whether it is a delta.
        let mut events = Vec::new();
        let mut files: Vec<(bool, &[u8])> = Vec::with_capacity(chain.len());
        for part in chain {
            let (delta, head) = Self::checkpoint_head(part)?;
            let (table, after) =
                postcard::take_from_bytes::<Vec<(u64, crate::checkpoint::Bytes)>>(head)
                    .map_err(|e| E::Damaged(format!("event table: {e}")))?;
            events.extend(table.into_iter().map(|(id, b)| (id, b.0)));
            files.push((delta, after));
        }
        let Some(first) = files.iter().rposition(|(delta, _)| !delta) else {
            return Err(E::Damaged(
                "the chain holds deltas but not the full checkpoint they follow".into(),
            ));
        };
        let loader = crate::checkpoint::Loader::start(events);
        let why = |e: String| loader.error().unwrap_or(e);
        let last_delta = files.last().is_some_and(|(delta, _)| *delta);
        let mut saveds = Vec::with_capacity(files.len() - first);
        for (delta, bytes) in &files[first..] {
            let saved: Saved =
                crate::checkpoint::from_bytes(bytes).map_err(|e| E::Damaged(why(e)))?;
            saveds.push((*delta, saved));
        }
        let Some((_, saved)) = saveds.pop() else {
            return Err(E::Format("no checkpoint to restore".into()));
        };
        let by_key: HashMap<(&str, u32, &str), usize> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.id.as_str(), r.version, r.query_text.as_str()), i))
            .collect();
        // Per running rule, its detector's states in chain order: (from a delta file, bytes).
        let mut states: HashMap<usize, Vec<(bool, Vec<u8>)>> = HashMap::new();
        let earlier = saveds.into_iter().map(|(d, s)| (d, s.rules));
        for (delta, rules) in earlier {
            for r in rules {
                if let (Some(&i), Some(d)) = (
                    by_key.get(&(r.id.as_str(), r.version, r.query.as_str())),
                    r.detector,
                ) {
                    states.entry(i).or_default().push((delta, d));
                }
            }
        }
        let mut report = Restored::default();
        // saved rule index → running rule index
        let mut map: Vec<Option<usize>> = Vec::with_capacity(saved.rules.len());
        let mut stats = vec![RuleStats::default(); self.rules.len()];
        for r in saved.rules {
            match by_key.get(&(r.id.as_str(), r.version, r.query.as_str())) {
                Some(&i) => {
                    map.push(Some(i));
                    stats[i] = r.stats;
                    if let Some(d) = r.detector {
                        states.entry(i).or_default().push((last_delta, d));
                    }
                    report.rules += 1;
                }
                None => {
                    map.push(None);
                    report.dropped.push(r.id);
                }
            }
        }
        self.stateful = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| detector(r).map(|detector| StatefulRule { rule: i, detector }))
            .collect();
        for s in &mut self.stateful {
            let id = &self.rules[s.rule].id;
            for (delta, bytes) in states.remove(&s.rule).unwrap_or_default() {
                let applied = if delta {
                    match postcard::from_bytes::<DetectorState>(&bytes) {
                        Ok(DetectorState::Full(b)) => s.detector.load(&b),
                        Ok(DetectorState::Delta(b)) => s.detector.apply_delta(&b),
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    s.detector.load(&bytes)
                };
                applied.map_err(|e| E::Damaged(format!("rule {id}: {}", why(e))))?;
            }
        }
        self.rule_stats = stats;
        self.suppressor.load(
            saved
                .suppress
                .into_iter()
                .filter_map(|(r, k, t, w)| map.get(r).copied().flatten().map(|n| (n, k, t, w)))
                .collect(),
            saved.suppress_evicted,
        );
        self.stats = saved.stats;
        self.processed = saved.processed;
        self.last_sweep = saved.last_sweep;
        self.max_seen = saved.max_seen;
        self.released = saved.released;
        self.seq = saved.seq;
        let buffer: Vec<(i64, u64, BufferedEvent)> = crate::checkpoint::from_bytes(&saved.buffer.0)
            .map_err(|e| E::Damaged(format!("reorder buffer: {}", why(e))))?;
        report.buffered = buffer.len();
        self.buffer = Reorder::default();
        for (ts, seq, e) in buffer {
            self.buffer.push(Pending {
                ts,
                seq,
                event: e.0,
            });
        }
        self.profiles
            .load_bytes(&saved.profiles)
            .map_err(|e| E::Damaged(format!("profiles: {e}")))?;
        self.enforced = saved.enforced;
        self.recent = saved.recent;
        Ok(report)
    }

    /// A checkpoint's format and version, checked first so that another file or version
    /// gets a clear error, not a decode one; returns whether it is a delta, and the bytes
    /// after them.
    fn checkpoint_head(bytes: &[u8]) -> Result<(bool, &[u8]), crate::checkpoint::CheckpointError> {
        use crate::checkpoint::CheckpointError as E;
        let ((format, version), rest) = postcard::take_from_bytes::<(String, u32)>(bytes)
            .map_err(|e| E::Format(e.to_string()))?;
        let delta = format == crate::checkpoint::DELTA_FORMAT;
        if !(delta || format == crate::checkpoint::FORMAT) || version != crate::checkpoint::VERSION
        {
            return Err(E::Format(format!("it says {format:?} version {version}")));
        }
        Ok((delta, rest))
    }

    /// Sets how far behind the latest event time an event may arrive and still be put in
    /// order ([`Engine::push`]).
    pub fn with_allowed_lateness(mut self, lateness: std::time::Duration) -> Engine {
        self.lateness = lateness.as_nanos().min(i64::MAX as u128) as i64;
        self
    }

    /// Adds a detector.
    pub fn add(&mut self, d: Box<dyn Detector + Send>) {
        self.others.push(d);
    }

    /// The rules, in the order of [`Engine::rule_stats`].
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Per-rule counters.
    pub fn rule_stats(&self) -> &[RuleStats] {
        &self.rule_stats
    }

    /// State counters of each multi-event rule, by rule id.
    pub fn state_stats(&self) -> Vec<(&str, StateStats)> {
        self.stateful
            .iter()
            .map(|s| (self.rules[s.rule].id.as_str(), s.detector.state()))
            .collect()
    }

    /// Counters and open partials of each multi-event rule, without walking the partials
    /// for their size (for metrics scrapes).
    pub fn state_counts(&self) -> Vec<(&str, StateStats)> {
        self.stateful
            .iter()
            .map(|s| (self.rules[s.rule].id.as_str(), s.detector.counts()))
            .collect()
    }

    /// Suppression keys evicted because the table was full.
    pub fn suppression_evictions(&self) -> u64 {
        self.suppressor.evicted()
    }

    /// Engine-wide counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The watermark: events with an earlier time are late.
    pub fn watermark(&self) -> i64 {
        self.released
    }

    /// Accepts an event that may arrive out of order: it is held until the latest event time
    /// seen passes it by the allowed lateness, then processed in event order. An event behind
    /// the watermark is refused and returned (the caller dead-letters it); it is counted.
    pub fn push(&mut self, ev: Event, out: &mut Vec<Alert>) -> Result<(), Late> {
        let Some(ts) = ev.timestamp_nanos() else {
            self.observe(&ev, out);
            return Ok(());
        };
        if ts < self.released {
            self.stats.late += 1;
            return Err(Late {
                event: Box::new(ev),
                time: ts,
                watermark: self.released,
            });
        }
        if let Some(id) = ev.id().filter(|id| !id.is_empty()) {
            if self.recent.seen(id, ts) {
                self.stats.duplicates += 1;
                return Ok(());
            }
        }
        if ts < self.max_seen {
            self.stats.reordered += 1;
        }
        if self.lateness == 0 && ts >= self.max_seen && self.buffer.is_empty() {
            // In order with nothing held back: no need to go through the heap.
            self.max_seen = ts;
            self.seq += 1;
            self.release(
                Pending {
                    ts,
                    seq: self.seq,
                    event: ev,
                },
                out,
            );
            return Ok(());
        }
        self.max_seen = self.max_seen.max(ts);
        self.seq += 1;
        self.buffer.push(Pending {
            ts,
            seq: self.seq,
            event: ev,
        });
        let horizon = self.max_seen.saturating_sub(self.lateness);
        while let Some(p) = self.buffer.pop_through(horizon) {
            self.release(p, out);
        }
        Ok(())
    }

    /// An event leaves the reorder buffer: its agent's baseline features are set (the profile
    /// then learns it), and the rules run.
    fn release(&mut self, p: Pending, out: &mut Vec<Alert>) {
        if p.ts > self.released {
            self.released = p.ts;
            // A copy of anything older would be refused as late.
            self.recent.expire(p.ts);
        }
        let mut ev = p.event;
        self.profiles.annotate(&mut ev);
        self.enforced.mark(&mut ev);
        self.observe(&ev, out);
    }

    /// Records what a playbook enforced: later events under it are flagged (the closed loop;
    /// see [`crate::enforce`]).
    pub fn enforce(&mut self, e: crate::enforce::Enforcement) {
        self.enforced.add(e);
    }

    /// What is enforced.
    pub fn enforced(&self) -> &crate::enforce::Enforced {
        &self.enforced
    }

    /// The per-agent profiles.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Starts from restored profiles.
    pub fn with_profiles(mut self, profiles: Profiles) -> Engine {
        self.profiles = profiles;
        self
    }

    /// Processes one event now, without baseline features (the caller guarantees event order;
    /// [`Engine::push`] sets the features and orders events).
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Alert>) {
        let before = out.len();
        self.stats.events += 1;
        if let Some(ts) = ev.timestamp_nanos() {
            if ts < self.processed {
                self.stats.out_of_order += 1;
            } else {
                self.processed = ts;
            }
        }
        // Filter rules.
        let mut candidates = std::mem::take(&mut self.candidates);
        self.index.candidates(ev, &mut candidates);
        for &(idx, _) in &candidates {
            if self.rules[idx].is_stateful() {
                continue;
            }
            match self.rules[idx].check(ev) {
                Verdict::NoMatch => {}
                Verdict::Excepted => {
                    self.rule_stats[idx].matched += 1;
                    self.rule_stats[idx].excepted += 1;
                }
                Verdict::Match => {
                    self.rule_stats[idx].matched += 1;
                    self.raise(idx, vec![ev.clone()], Vec::new(), out);
                }
            }
        }
        self.candidates = candidates;
        // Multi-event rules.
        let mut findings = std::mem::take(&mut self.findings);
        let sweep = self.processed.saturating_sub(self.last_sweep) >= SWEEP_EVERY;
        if sweep {
            self.last_sweep = self.processed;
        }
        // Both lists are in rule order: one walk pairs each detector with its candidacy.
        debug_assert!(self.stateful.windows(2).all(|w| w[0].rule < w[1].rule));
        let mut next = 0;
        for i in 0..self.stateful.len() {
            let wm = self.processed;
            let s = &mut self.stateful[i];
            if sweep {
                s.detector.on_watermark(wm, &mut findings);
            }
            // A rule the index ruled out would ignore the event: none of its steps can match.
            while self.candidates.get(next).is_some_and(|c| c.0 < s.rule) {
                next += 1;
            }
            if let Some(&(_, steps)) = self.candidates.get(next).filter(|c| c.0 == s.rule) {
                s.detector.observe_steps(ev, steps, &mut findings);
            }
            if !findings.is_empty() {
                let rule = s.rule;
                for f in findings.drain(..) {
                    self.finding(rule, f, out);
                }
            }
        }
        self.findings = findings;
        for d in &mut self.others {
            d.observe(ev, out);
        }
        self.stats.alerts += (out.len() - before) as u64;
    }

    fn finding(&mut self, rule: usize, f: Finding, out: &mut Vec<Alert>) {
        self.rule_stats[rule].matched += 1;
        if f.events.iter().any(|e| self.rules[rule].excepted(e)) {
            self.rule_stats[rule].excepted += 1;
            return;
        }
        self.raise(rule, f.events, f.missing, out);
    }

    fn raise(
        &mut self,
        rule: usize,
        events: Vec<Event>,
        missing: Vec<usize>,
        out: &mut Vec<Alert>,
    ) {
        let Some(last) = events.last() else { return };
        if self
            .suppressor
            .suppressed(rule, self.rules[rule].suppress.as_ref(), last)
        {
            self.rule_stats[rule].suppressed += 1;
            return;
        }
        self.rule_stats[rule].alerts += 1;
        let mut a = Alert::from_rule(&self.rules[rule], events);
        a.missing_steps = missing;
        out.push(a);
    }

    /// End of input: releases every buffered event, then closes every window.
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        // Released events count their own alerts in `observe`.
        while let Some(p) = self.buffer.pop() {
            self.release(p, out);
        }
        let before = out.len();
        let mut findings = Vec::new();
        for i in 0..self.stateful.len() {
            let wm = self.processed;
            let s = &mut self.stateful[i];
            s.detector.on_watermark(wm, &mut findings);
            s.detector.finish(&mut findings);
            let rule = s.rule;
            for f in findings.drain(..) {
                self.finding(rule, f, out);
            }
        }
        for d in &mut self.others {
            d.finish(out);
        }
        self.stats.alerts += (out.len() - before) as u64;
    }
}

/// Runs every inline test of a rule (filter or multi-event) through a one-rule engine;
/// returns one message per failure.
pub fn run_rule_tests(rule: &Rule) -> Vec<String> {
    rule.run_tests_with(&|r, case| {
        let set = RuleSet {
            rules: vec![r.clone()],
            library: Default::default(),
        };
        let mut e = Engine::new(&set);
        let mut out = Vec::new();
        for ev in case {
            if let Err(late) = e.push(ev.clone(), &mut out) {
                // Test events out of order: run them as written.
                e.observe(&late.event, &mut out);
            }
        }
        e.finish(&mut out);
        !out.is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The queue-and-heap buffer hands events out in the order a heap alone would, for
        /// any mix of times (ties among them), ids and takes.
        #[test]
        fn reorder_buffer_orders_as_a_heap(ops in proptest::collection::vec((0i64..12, 0u8..4, any::<bool>()), 0..80)) {
            // A take is up to a horizon: the op's time.
            let (mut both, mut heap) = (Reorder::default(), BinaryHeap::new());
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (seq, (ts, id, take)) in ops.into_iter().enumerate() {
                if take {
                    got.push(both.pop_through(ts).map(|p| p.seq));
                    let due = heap.peek().is_some_and(|Reverse(p): &Reverse<Pending>| p.ts <= ts);
                    want.push(if due { heap.pop().map(|Reverse(p)| p.seq) } else { None });
                } else {
                    let mut event = cordon_ingest::decode_native(
                        format!(r#"{{"event.id":"e{id}","@timestamp":"2026-11-20T10:00:00Z"}}"#).as_bytes(),
                    )
                    .unwrap();
                    event.set_timestamp_nanos(ts);
                    let p = Pending { ts, seq: seq as u64, event };
                    both.push(p.clone());
                    heap.push(Reverse(p));
                }
                prop_assert_eq!(both.is_empty(), heap.is_empty());
                prop_assert_eq!(both.iter().count(), heap.len());
            }
            while let Some(p) = both.pop() {
                got.push(Some(p.seq));
            }
            while let Some(Reverse(p)) = heap.pop() {
                want.push(Some(p.seq));
            }
            prop_assert_eq!(got, want);
        }
    }

    fn ev(ts: &str, agent: &str) -> Event {
        cordon_ingest::decode_native(
            format!(r#"{{"@timestamp":"{ts}","mcp.method.name":"tools/call","gen_ai.tool.name":"send_email","audit.decision":"allow","audit.data_class":"secret","gen_ai.agent.id":"{agent}"}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn suppression_by_key_and_window_in_event_time() {
        let set = RuleSet::from_text(
            "r.yaml",
            "id: r\ntitle: t\nseverity: high\nquery: tool where audit.data_class == \"secret\"\nsuppress: {key: [gen_ai.agent.id], window: 10m}\n",
        )
        .unwrap();
        let mut e = Engine::new(&set);
        let mut out = Vec::new();
        e.observe(&ev("2026-11-20T10:00:00Z", "a"), &mut out);
        e.observe(&ev("2026-11-20T10:05:00Z", "a"), &mut out);
        e.observe(&ev("2026-11-20T10:05:00Z", "b"), &mut out);
        e.observe(&ev("2026-11-20T10:10:00Z", "a"), &mut out);
        assert_eq!(out.len(), 3);
        let s = &e.rule_stats()[0];
        assert_eq!((s.matched, s.alerts, s.suppressed), (4, 3, 1));
    }

    /// The index must never hide a match: every rule of the built-in pack gives the same
    /// verdicts with and without it on generated traffic with all attacks, and every event
    /// that satisfies a step of a multi-event rule reaches that rule.
    #[test]
    fn index_changes_nothing() {
        let set = RuleSet::builtin().unwrap();
        let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
            agents: 8,
            duration_nanos: 6 * 3_600_000_000_000,
            ..Default::default()
        });
        let det = Engine::new(&set);
        let mut cands = Vec::new();
        let mut matched = 0;
        let mut stepped = 0;
        let mut skipped = 0;
        let (mut steps_told, mut steps_all) = (0, 0);
        // With the baseline features the engine sets before rules see an event: rules on
        // them are guarded by their presence.
        let mut profiles = Profiles::default();
        let mut featured = 0;
        for ev in &g.events {
            let mut ev = ev.clone();
            profiles.annotate(&mut ev);
            featured += usize::from(has_value(
                &ev,
                &FieldRef::Baseline(cordon_ingest::BaselineField::Rate),
            ));
            let ev = &ev;
            det.index.candidates(ev, &mut cands);
            assert!(cands.windows(2).all(|w| w[0].0 < w[1].0), "{cands:?}");
            for (i, r) in set.rules.iter().enumerate() {
                let steps = cands.iter().find(|c| c.0 == i).map(|c| c.1);
                let m = r.check(ev) != cordon_rules::Verdict::NoMatch;
                matched += usize::from(m);
                assert!(!m || steps.is_some(), "rule {} hidden from {}", r.id, ev);
                if r.is_stateful() {
                    skipped += usize::from(steps.is_none());
                    let mut told = 0;
                    for (j, c) in r.event_matchers().iter().enumerate() {
                        let may = steps.is_some_and(|s| s & step_bit(j) != 0);
                        told += usize::from(may);
                        if c.matches(ev) {
                            stepped += 1;
                            assert!(may, "step {j} of {} hidden from {}", r.id, ev);
                        }
                    }
                    steps_told += told;
                    steps_all += r.event_matchers().len();
                }
            }
        }
        assert!(matched > 10);
        assert!(stepped > 10);
        let stateful = set.rules.iter().filter(|r| r.is_stateful()).count();
        // Most multi-event rules are spared most events.
        assert!(skipped > g.events.len() * stateful / 2, "{skipped}");
        assert!(det.index.unguarded.len() < set.rules.len() / 2);
        assert!(det.index.unguarded.len() < 2, "{:?}", det.index.unguarded);
        // Of the rules an event reaches, few steps are to be tested.
        assert!(steps_told * 4 < steps_all, "{steps_told} of {steps_all}");
        assert!(det.index.present.len() > 5);
        assert!(featured > g.events.len() / 4, "{featured}");
    }

    /// A multi-event rule the index keeps events from still completes: a sequence whose steps
    /// are guarded by tool names, fed events of other tools between its steps.
    #[test]
    fn indexed_sequences_still_complete() {
        let set = RuleSet::from_text(
            "r.yaml",
            "id: r\ntitle: t\nseverity: high\nquery: |\n  sequence by gen_ai.agent.id with maxspan=5m\n    [tool where gen_ai.tool.name == \"read_secret\"]\n    [tool where gen_ai.tool.name == \"send_email\"]\n  until [tool where gen_ai.tool.name == \"logout\"]\n",
        )
        .unwrap();
        let e = Engine::new(&set);
        assert!(e.index.unguarded.is_empty());
        let call = |ts: &str, tool: &str| {
            cordon_ingest::decode_native(
                format!(r#"{{"@timestamp":"{ts}","mcp.method.name":"tools/call","gen_ai.tool.name":"{tool}","gen_ai.agent.id":"a"}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let run = |tools: &[&str]| {
            let mut e = Engine::new(&set);
            let mut out = Vec::new();
            for (i, t) in tools.iter().enumerate() {
                e.observe(&call(&format!("2026-11-20T10:00:{i:02}Z"), t), &mut out);
            }
            e.finish(&mut out);
            out.len()
        };
        assert_eq!(run(&["read_secret", "list", "search", "send_email"]), 1);
        // `until` is indexed too: it still closes the partial.
        assert_eq!(run(&["read_secret", "logout", "send_email"]), 0);
        assert_eq!(run(&["list", "send_email", "read_secret"]), 0);
    }

    #[test]
    fn alert_ids_are_stable_and_ocsf_shaped() {
        let set = RuleSet::builtin().unwrap();
        let mut out = Vec::new();
        Engine::new(&set).observe(&ev("2026-11-20T10:00:00Z", "a"), &mut out);
        let mut again = Vec::new();
        Engine::new(&set).observe(&ev("2026-11-20T10:00:00Z", "a"), &mut again);
        assert!(!out.is_empty());
        assert_eq!(out[0].id, again[0].id);
        let o = out[0].to_ocsf();
        assert_eq!(o["class_uid"], 2004);
        assert_eq!(o["type_uid"], 200401);
        assert_eq!(o["severity_id"], 5);
        assert_eq!(
            o["finding_info"]["related_events"][0]["uid"],
            out[0].events[0].id().unwrap()
        );
        assert_eq!(o["unmapped"]["gen_ai.agent.id"], "a");
        assert_eq!(o["evidences"][0]["data"]["gen_ai.tool.name"], "send_email");
    }
}
