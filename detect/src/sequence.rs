//! Streaming EQL sequences, in event time.
//!
//! Per join key, a sequence keeps its open partial matches by stage: a partial at stage `s`
//! has matched the first `s` positive steps and waits for the next. Events arrive in event
//! order (the engine's reorder buffer sees to it), so a partial's events are ordered by
//! construction.
//!
//! Choices, each tested:
//! - **Repeated first steps do not reset a chain.** A new step-1 event opens a new partial
//!   beside the existing ones; it never replaces them. Per key and stage at most
//!   [`PER_KEY_STAGE_CAP`] partials are kept — the earliest ones — and further ones are
//!   rejected and counted, so replaying step 1 can neither reset nor starve an open chain.
//! - When a later step's event arrives, it extends the *earliest* open partial that is still
//!   within `maxspan` and satisfies the step's cross-step conditions; each event extends at
//!   most one partial per stage, and a partial advances at most one stage per event.
//! - `until` closes every partial of its key. A middle `![q]` closes the partials waiting
//!   after the step before it; a leading `![q]` prevents a start when such an event for the key
//!   happened within `maxspan` before; a trailing `![q]` holds completed matches until the span
//!   closes on the watermark (or the input ends) and drops them if such an event arrives.
//! - Memory is bounded globally ([`SequenceDetector::with_caps`]): beyond the cap, expired
//!   partials are dropped, then the oldest are evicted, and every eviction is counted.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use cordon_ingest::Event;
use cordon_rules::stateful::SequenceSpec;

use std::sync::Arc;

use crate::engine::{step_bit, Steps};
use crate::keys::{join_keys, join_keys_into};
use crate::stateful::{Finding, StateStats, Stateful};

/// Open partials kept per key and stage.
pub const PER_KEY_STAGE_CAP: usize = 8;
/// Default cap on open partials of one sequence rule.
pub const DEFAULT_GLOBAL_CAP: usize = 200_000;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Partial {
    start: i64,
    #[serde(with = "crate::checkpoint::events")]
    events: Vec<Event>,
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct KeyState {
    /// `stages[s]`: partials that matched `s` positive steps (index 0 unused).
    stages: Vec<Vec<Partial>>,
    /// Complete matches waiting for a trailing `![…]` span to close.
    pending: Vec<Partial>,
}

impl KeyState {
    fn open(&self) -> usize {
        self.stages.iter().map(Vec::len).sum::<usize>() + self.pending.len()
    }
}

/// Runs one sequence rule.
#[derive(Clone)]
pub struct SequenceDetector {
    spec: SequenceSpec,
    positive: Vec<usize>,
    /// For stage `s` (waiting for positive step `s`): the missing positions that close it.
    guards: Vec<Vec<usize>>,
    leading: Vec<usize>,
    trailing: Vec<usize>,
    /// Shared with a checkpoint's copy until either changes ([`crate::checkpoint::Shared`]).
    keys: crate::checkpoint::Shared<KeyState>,
    /// Keys in the order their partials started (event order, so starts never decrease): the
    /// watermark expires partials from the front without visiting every key.
    expiry: VecDeque<(i64, String)>,
    last_leading: HashMap<(usize, String), i64>,
    leading_sweep: i64,
    open: usize,
    /// `waiting[s]`: the partials in every key's `stages[s]`, so that an event is tested
    /// against positive step `s` only when some partial waits for it (not persisted: counted
    /// again after a restore).
    waiting: Vec<usize>,
    /// Each step's index among the positive steps (`usize::MAX` for a `![…]` step).
    stage_of: Vec<usize>,
    global_cap: usize,
    stats: StateStats,
    empty: Event,
    matched: Vec<bool>,
    /// Reused key strings for lookups.
    pool: Vec<String>,
}

impl SequenceDetector {
    /// A detector with the default caps.
    pub fn new(spec: SequenceSpec) -> SequenceDetector {
        SequenceDetector::with_caps(spec, DEFAULT_GLOBAL_CAP)
    }

    /// A detector keeping at most `global_cap` open partials.
    pub fn with_caps(spec: SequenceSpec, global_cap: usize) -> SequenceDetector {
        let positive: Vec<usize> = (0..spec.steps.len())
            .filter(|&i| !spec.steps[i].missing)
            .collect();
        let first = positive.first().copied().unwrap_or(0);
        let last = positive.last().copied().unwrap_or(0);
        let leading = (0..first).collect();
        let trailing = (last + 1..spec.steps.len()).collect();
        let mut guards = vec![Vec::new(); positive.len()];
        for (s, w) in positive.windows(2).enumerate() {
            guards[s + 1] = (w[0] + 1..w[1]).collect();
        }
        let mut stage_of = vec![usize::MAX; spec.steps.len()];
        for (s, &i) in positive.iter().enumerate() {
            stage_of[i] = s;
        }
        SequenceDetector {
            matched: vec![false; spec.steps.len()],
            waiting: vec![0; positive.len()],
            stage_of,
            spec,
            positive,
            guards,
            leading,
            trailing,
            keys: HashMap::default(),
            expiry: VecDeque::new(),
            last_leading: HashMap::default(),
            leading_sweep: i64::MIN,
            open: 0,
            global_cap: global_cap.max(1),
            stats: StateStats::default(),
            empty: Event::new(),
            pool: Vec::new(),
        }
    }

    /// `n` partials left stage `s`. A count that would go below zero (which no test has
    /// seen) is counted afresh: a count too low would skip a step some partial waits for.
    fn unwait(&mut self, s: usize, n: usize) {
        match self.waiting.get(s).map(|w| w.checked_sub(n)) {
            Some(Some(left)) => self.waiting[s] = left,
            Some(None) => self.waiting = self.count_waiting(),
            // A stage past the rule's steps (a damaged checkpoint) is never waited on.
            None => {}
        }
    }

    /// [`SequenceDetector::waiting`] counted afresh from the keys.
    fn count_waiting(&self) -> Vec<usize> {
        let mut waiting = vec![0; self.positive.len()];
        for ks in self.keys.values() {
            for (s, list) in ks.stages.iter().enumerate() {
                if let Some(w) = waiting.get_mut(s) {
                    *w += list.len();
                }
            }
        }
        waiting
    }

    fn within(&self, start: i64, t: i64) -> bool {
        self.spec
            .maxspan
            .is_none_or(|m| t.saturating_sub(start) <= m)
    }

    fn finding(&self, p: Partial) -> Finding {
        let missing = (0..self.spec.steps.len())
            .filter(|&i| self.spec.steps[i].missing)
            .collect();
        Finding {
            events: p.events,
            missing,
        }
    }

    fn complete(&mut self, key: &str, p: Partial, out: &mut Vec<Finding>) {
        if self.trailing.is_empty() {
            out.push(self.finding(p));
        } else {
            self.open += 1;
            self.key_state(key).pending.push(p);
        }
    }

    /// Stores a partial at stage `s`, unless the key's stage is full.
    fn store(&mut self, key: &str, s: usize, p: Partial) {
        let n = self.positive.len();
        let ks = self.key_state(key);
        if ks.stages.len() < n {
            ks.stages.resize_with(n, Vec::new);
        }
        if ks.stages[s].len() >= PER_KEY_STAGE_CAP {
            self.stats.rejected += 1;
            return;
        }
        ks.stages[s].push(p);
        self.waiting[s] += 1;
        self.open += 1;
        if self.open > self.global_cap {
            self.shed();
        }
    }

    /// The key's state, created empty if absent, copied first if a checkpoint shares it.
    fn key_state(&mut self, key: &str) -> &mut KeyState {
        if !self.keys.contains_key(key) {
            self.keys.insert(Arc::from(key), Arc::default());
        }
        match self.keys.get_mut(key) {
            Some(ks) => crate::cow::unshare(ks),
            None => unreachable!("inserted above"),
        }
    }

    /// Brings the open partials back under the cap: the oldest go first.
    fn shed(&mut self) {
        let target = self.global_cap - self.global_cap / 10;
        let mut starts: Vec<i64> = self
            .keys
            .values()
            .flat_map(|k| k.stages.iter().flatten().chain(&k.pending).map(|p| p.start))
            .collect();
        if starts.len() <= target {
            return;
        }
        let cut = starts.len() - target;
        let (_, cutoff, _) = starts.select_nth_unstable(cut - 1);
        let cutoff = *cutoff;
        let mut removed = 0usize;
        // Partials starting at the cutoff are evicted in key order, not in the map's
        // iteration order, which depends on the map's history: an engine restored from a
        // checkpoint must evict the same partials as the one that wrote it.
        let mut names: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        names.sort_unstable();
        // (stage, partials evicted from it)
        let mut gone = Vec::new();
        for name in &names {
            let Some(ks) = self.keys.get_mut(name) else {
                continue;
            };
            let ks = crate::cow::unshare(ks);
            let stages = ks.stages.len();
            let lists = ks.stages.iter_mut().chain(std::iter::once(&mut ks.pending));
            for (s, list) in lists.enumerate() {
                let before = list.len();
                list.retain(|p| {
                    let keep = removed >= cut || p.start > cutoff;
                    if !keep {
                        removed += 1;
                    }
                    keep
                });
                if s < stages {
                    gone.push((s, before - list.len()));
                }
            }
        }
        for (s, n) in gone {
            self.unwait(s, n);
        }
        self.keys.retain(|_, k| k.open() > 0);
        self.open -= removed;
        self.stats.evicted += removed as u64;
    }

    fn close_key(&mut self, key: &str) {
        if let Some(ks) = self.keys.remove(key) {
            for (s, list) in ks.stages.iter().enumerate() {
                self.unwait(s, list.len());
            }
            let n = ks.open();
            self.open -= n;
            self.stats.closed += n as u64;
        }
    }

    fn advance(&mut self, ev: &Event, t: i64, s: usize, out: &mut Vec<Finding>) {
        if s > 0 && self.open == 0 {
            // Nothing to extend: skip building the keys (the common case for most events).
            return;
        }
        let pos = self.positive[s];
        let step = &self.spec.steps[pos];
        if s == 0 {
            let keys = join_keys(ev, &step.keys);
            'keys: for key in keys {
                for &p in &self.leading {
                    let k = (p, key.clone());
                    if let Some(&seen) = self.last_leading.get(&k) {
                        if self.within(seen, t) {
                            continue 'keys;
                        }
                    }
                }
                let full = self.positive.len() > 1
                    && self
                        .keys
                        .get(key.as_str())
                        .and_then(|ks| ks.stages.get(1))
                        .is_some_and(|l| l.len() >= PER_KEY_STAGE_CAP);
                if full {
                    // Refused before the event is copied.
                    self.stats.rejected += 1;
                    continue;
                }
                let p = Partial {
                    start: t,
                    events: vec![ev.clone()],
                };
                if self.spec.maxspan.is_some() {
                    self.expiry.push_back((t, key.clone()));
                }
                if self.positive.len() == 1 {
                    self.complete(&key, p, out);
                } else {
                    self.store(&key, 1, p);
                }
            }
            return;
        }
        // The earliest valid partial under any of the event's keys.
        let mut keys = std::mem::take(&mut self.pool);
        let n = join_keys_into(ev, &step.keys, &mut keys);
        let mut best: Option<(i64, usize, usize)> = None;
        for (k, key) in keys.iter().take(n).enumerate() {
            let Some(list) = self.keys.get(key.as_str()).and_then(|ks| ks.stages.get(s)) else {
                continue;
            };
            if let Some((i, start)) = self.earliest(list, ev, t, pos) {
                if best.is_none_or(|(b, _, _)| start < b) {
                    best = Some((start, k, i));
                }
            }
        }
        let Some((_, k, i)) = best else {
            self.pool = keys;
            return;
        };
        let key = keys[k].clone();
        self.pool = keys;
        let mut p = match self.keys.get_mut(key.as_str()) {
            Some(ks) => crate::cow::unshare(ks).stages[s].swap_remove(i),
            None => return,
        };
        self.unwait(s, 1);
        self.open -= 1;
        p.events.push(ev.clone());
        if s + 1 == self.positive.len() {
            self.complete(&key, p, out);
        } else {
            self.store(&key, s + 1, p);
        }
    }

    /// The earliest partial of `list` that `ev` (at step position `pos`) may extend.
    fn earliest(&self, list: &[Partial], ev: &Event, t: i64, pos: usize) -> Option<(usize, i64)> {
        let step = &self.spec.steps[pos];
        let mut best: Option<usize> = None;
        for (i, p) in list.iter().enumerate() {
            if !self.within(p.start, t) || best.is_some_and(|b| list[b].start <= p.start) {
                continue;
            }
            if let Some(cross) = &step.cross {
                let mut ctx: Vec<&Event> = Vec::with_capacity(pos);
                let mut it = p.events.iter();
                for q in 0..pos {
                    if self.spec.steps[q].missing {
                        ctx.push(&self.empty);
                    } else if let Some(e) = it.next() {
                        ctx.push(e);
                    }
                }
                if cross.eval_in(ev, &ctx) != Some(true) {
                    continue;
                }
            }
            best = Some(i);
        }
        best.map(|i| (i, list[i].start))
    }
}

impl SequenceDetector {
    /// The state with `keys` (all of them, or a delta) standing for the partial matches.
    fn write(&self, keys: impl serde::Serialize) -> Result<Vec<u8>, String> {
        crate::checkpoint::to_bytes(&(
            keys,
            &self.expiry,
            &self.last_leading,
            self.leading_sweep,
            self.open,
            &self.stats,
        ))
    }

    /// Reads [`SequenceDetector::write`]'s form: sets everything but the keys, returns them.
    fn read<K: serde::de::DeserializeOwned>(&mut self, bytes: &[u8]) -> Result<K, String> {
        type Saved<K> = (
            K,
            VecDeque<(i64, String)>,
            HashMap<(usize, String), i64>,
            i64,
            usize,
            StateStats,
        );
        let (keys, expiry, last_leading, leading_sweep, open, stats): Saved<K> =
            crate::checkpoint::from_bytes(bytes)?;
        self.expiry = expiry;
        self.last_leading = last_leading;
        self.leading_sweep = leading_sweep;
        self.open = open;
        self.stats = stats;
        Ok(keys)
    }
}

impl Stateful for SequenceDetector {
    fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        self.observe_steps(ev, Steps::MAX, out);
    }

    fn observe_steps(&mut self, ev: &Event, steps: Steps, out: &mut Vec<Finding>) {
        let Some(t) = ev.timestamp_nanos() else {
            return;
        };
        // Steps, then `until`, in the order of `Rule::event_matchers`.
        let may = |j: usize| steps & step_bit(j) != 0;
        let mut any = false;
        // A positive step after the first extends the partials waiting for it: with none
        // waiting anywhere, `advance` has nothing to do, and the step's predicate is not
        // worth evaluating.
        for (i, st) in self.spec.steps.iter().enumerate() {
            let s = self.stage_of[i];
            let moot = s != usize::MAX && s > 0 && self.waiting[s] == 0;
            self.matched[i] = may(i) && !moot && st.matches(ev);
            any |= self.matched[i];
        }
        if let Some(u) = &self.spec.until {
            if may(self.spec.steps.len()) && u.matches(ev) {
                for key in join_keys(ev, &u.keys) {
                    self.close_key(&key);
                }
            }
        }
        if !any {
            return;
        }
        // `![…]` steps first: an event that is both a forbidden and a wanted step closes the
        // partials it forbids before it could extend them.
        for p in 0..self.spec.steps.len() {
            if !(self.matched[p] && self.spec.steps[p].missing) {
                continue;
            }
            for key in join_keys(ev, &self.spec.steps[p].keys) {
                if self.leading.contains(&p) {
                    if self.last_leading.len() >= self.global_cap {
                        self.last_leading.clear();
                        self.stats.evicted += 1;
                    }
                    self.last_leading.insert((p, key), t);
                } else if self.trailing.contains(&p) {
                    if let Some(ks) = self.keys.get_mut(key.as_str()) {
                        let ks = crate::cow::unshare(ks);
                        let n = ks.pending.len();
                        ks.pending.clear();
                        self.open -= n;
                        self.stats.closed += n as u64;
                    }
                } else if let Some(s) = self.guards.iter().position(|g| g.contains(&p)) {
                    if let Some(list) = self
                        .keys
                        .get_mut(key.as_str())
                        .and_then(|ks| crate::cow::unshare(ks).stages.get_mut(s))
                    {
                        let n = list.len();
                        list.clear();
                        self.unwait(s, n);
                        self.open -= n;
                        self.stats.closed += n as u64;
                    }
                }
            }
        }
        for s in (0..self.positive.len()).rev() {
            if self.matched[self.positive[s]] {
                self.advance(ev, t, s, out);
            }
        }
        // Tests (debug builds) hold the counts to the partials themselves.
        #[cfg(debug_assertions)]
        if self.keys.len() <= 256 {
            assert_eq!(
                self.waiting,
                self.count_waiting(),
                "partials waiting per stage"
            );
        }
    }

    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Finding>) {
        let Some(maxspan) = self.spec.maxspan else {
            return;
        };
        // Called for every event: most of the time nothing has expired.
        let due = |start: i64| wm.saturating_sub(start) > maxspan;
        if !self.expiry.front().is_some_and(|(start, _)| due(*start)) && !due(self.leading_sweep) {
            return;
        }
        let mut expired = 0usize;
        let mut ready = Vec::new();
        // Counted down here while the keys are borrowed (see `unwait`).
        let mut waiting = std::mem::take(&mut self.waiting);
        let mut miscounted = false;
        // Only keys with a partial old enough to expire are visited: cost follows what
        // expires, not how many keys are open.
        while self
            .expiry
            .front()
            .is_some_and(|(start, _)| wm.saturating_sub(*start) > maxspan)
        {
            let Some((_, key)) = self.expiry.pop_front() else {
                break;
            };
            let Some(ks) = self.keys.get_mut(key.as_str()) else {
                continue;
            };
            let ks = crate::cow::unshare(ks);
            for (s, list) in ks.stages.iter_mut().enumerate() {
                let before = list.len();
                list.retain(|p| wm.saturating_sub(p.start) <= maxspan);
                let gone = before - list.len();
                if let Some(w) = waiting.get_mut(s) {
                    miscounted |= w.checked_sub(gone).map(|left| *w = left).is_none();
                }
                expired += gone;
            }
            if ks
                .pending
                .iter()
                .any(|p| wm.saturating_sub(p.start) > maxspan)
            {
                let (done, wait): (Vec<Partial>, Vec<Partial>) = std::mem::take(&mut ks.pending)
                    .into_iter()
                    .partition(|p| wm.saturating_sub(p.start) > maxspan);
                ks.pending = wait;
                ready.extend(done);
            }
            if ks.open() == 0 {
                self.keys.remove(key.as_str());
            }
        }
        self.waiting = waiting;
        if miscounted {
            self.waiting = self.count_waiting();
        }
        self.open -= expired + ready.len();
        self.stats.expired += expired as u64;
        // Keys are hashed: order by time, then event id, so runs are reproducible.
        ready.sort_by(|a, b| (a.start, a.events[0].id()).cmp(&(b.start, b.events[0].id())));
        for p in ready {
            out.push(self.finding(p));
        }
        if wm.saturating_sub(self.leading_sweep) > maxspan {
            self.leading_sweep = wm;
            self.last_leading
                .retain(|_, seen| wm.saturating_sub(*seen) <= maxspan);
        }
    }

    fn finish(&mut self, out: &mut Vec<Finding>) {
        let mut ready: Vec<Partial> = self
            .keys
            .values_mut()
            .flat_map(|k| std::mem::take(&mut crate::cow::unshare(k).pending))
            .collect();
        // Keys are hashed: order by time, then event id, so runs are reproducible.
        ready.sort_by(|a, b| (a.start, a.events[0].id()).cmp(&(b.start, b.events[0].id())));
        for p in ready {
            out.push(self.finding(p));
        }
        self.keys.clear();
        self.expiry.clear();
        self.open = 0;
        self.waiting.fill(0);
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        self.write(crate::checkpoint::SharedMap(&self.keys))
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), String> {
        let keys: HashMap<String, KeyState> = self.read(bytes)?;
        self.keys = crate::checkpoint::shared(keys);
        self.waiting = self.count_waiting();
        Ok(())
    }

    fn save_delta(&self, prev: &dyn Stateful) -> Option<Result<Vec<u8>, String>> {
        let prev = prev.as_any()?.downcast_ref::<SequenceDetector>()?;
        Some(self.write(crate::checkpoint::SharedDiff::new(&self.keys, &prev.keys)))
    }

    fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), String> {
        let keys: crate::checkpoint::MapDelta<KeyState> = self.read(bytes)?;
        keys.apply(&mut self.keys);
        self.waiting = self.count_waiting();
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn boxed_clone(&self) -> Box<dyn Stateful> {
        Box::new(self.clone())
    }

    fn counts(&self) -> StateStats {
        let mut s = self.stats.clone();
        s.open = self.open;
        s
    }

    fn state(&self) -> StateStats {
        let mut s = self.stats.clone();
        s.open = self.open;
        s.bytes = self
            .keys
            .iter()
            .map(|(k, ks)| {
                k.len()
                    + std::mem::size_of::<KeyState>()
                    + ks.stages
                        .iter()
                        .flatten()
                        .chain(&ks.pending)
                        .map(|p| {
                            std::mem::size_of::<Partial>()
                                + p.events.iter().map(Event::heap_bytes).sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum();
        s
    }
}
