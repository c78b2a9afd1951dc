//! Thresholds: per key, the number of matching events — or of distinct values of a field —
//! in a sliding window of event time. When the threshold is reached an alert carries evidence
//! and the key's window starts afresh, so one burst gives one alert rather than one per
//! further event.
//!
//! Evidence is what makes a window expensive, so it is kept sparingly: for a count, the last
//! events only once the count is within [`EVIDENCE`] of the bound; for a distinct count, the
//! first event of each of the first [`EVIDENCE`] distinct values. Timestamps and values cost
//! a few bytes each.
//!
//! Keys and windows are reference-counted: a checkpoint copies the detector on the thread
//! that runs it (every second, under the partition's lock), and a rule keyed by session holds
//! hundreds of thousands of windows at a high rate. The copy then shares them, and a window is
//! copied only when its key sees an event while the checkpoint is still being written.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use cordon_ingest::Event;
use cordon_rules::stateful::{MeasureSpec, ThresholdSpec};

use crate::keys::{join_key_into, push_value};
use crate::stateful::{Finding, StateStats, Stateful};

/// Evidence events kept per key.
pub const EVIDENCE: usize = 20;
/// Default cap on keys with an open window.
pub const DEFAULT_KEY_CAP: usize = 200_000;
/// Cap on timestamps (or distinct values) remembered per key.
pub const PER_KEY_CAP: usize = 100_000;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Window {
    times: VecDeque<i64>,
    /// Distinct value → (last seen, its first event if among the first [`EVIDENCE`] values).
    #[serde(with = "crate::checkpoint::distinct")]
    distinct: HashMap<String, (i64, Option<Event>)>,
    #[serde(with = "crate::checkpoint::event_deque")]
    recent: VecDeque<Event>,
    last: i64,
    /// No distinct value was last seen before this (a lower bound, not kept in checkpoints:
    /// a restored window starts from `i64::MIN` and learns it at its next event). While the
    /// window's start has not passed it, no value can have left the window, and the scan of
    /// every value for expired ones is skipped: with tens of values per key, that scan ran on
    /// every event the rule matched.
    #[serde(skip, default = "oldest_unknown")]
    oldest: i64,
}

fn oldest_unknown() -> i64 {
    i64::MIN
}

/// Runs one threshold rule.
#[derive(Clone)]
pub struct ThresholdDetector {
    spec: ThresholdSpec,
    keys: crate::checkpoint::Shared<Window>,
    key_cap: usize,
    stats: StateStats,
    last_sweep: i64,
    key_buf: String,
    value_buf: String,
}

impl ThresholdDetector {
    /// A detector with the default caps.
    pub fn new(spec: ThresholdSpec) -> ThresholdDetector {
        ThresholdDetector {
            spec,
            keys: HashMap::default(),
            key_buf: String::new(),
            value_buf: String::new(),
            key_cap: DEFAULT_KEY_CAP,
            stats: StateStats::default(),
            last_sweep: i64::MIN,
        }
    }

    fn shed(&mut self, now: i64) {
        let w = self.spec.window;
        let before = self.keys.len();
        self.keys.retain(|_, win| now.saturating_sub(win.last) <= w);
        self.stats.expired += (before - self.keys.len()) as u64;
        if self.keys.len() >= self.key_cap {
            let mut lasts: Vec<i64> = self.keys.values().map(|w| w.last).collect();
            let cut = self.keys.len() - self.key_cap + self.key_cap / 10;
            let nth = cut.min(lasts.len() - 1);
            let (_, cutoff, _) = lasts.select_nth_unstable(nth);
            let cutoff = *cutoff;
            let before = self.keys.len();
            self.keys.retain(|_, w| w.last > cutoff);
            self.stats.evicted += (before - self.keys.len()) as u64;
        }
    }
}

impl ThresholdDetector {
    /// The state with `keys` (all of the windows, or a delta).
    fn write(&self, keys: impl serde::Serialize) -> Result<Vec<u8>, String> {
        crate::checkpoint::to_bytes(&(keys, &self.stats, self.last_sweep))
    }

    /// Reads [`ThresholdDetector::write`]'s form: sets the rest, returns the keys.
    fn read<K: serde::de::DeserializeOwned>(&mut self, bytes: &[u8]) -> Result<K, String> {
        let (keys, stats, last_sweep): (K, StateStats, i64) = crate::checkpoint::from_bytes(bytes)?;
        self.stats = stats;
        self.last_sweep = last_sweep;
        Ok(keys)
    }
}

/// Adds `ev` (at `t`) to its key's window, first dropping what fell out before `horizon`;
/// returns the window's count (events, or distinct values).
fn count(
    win: &mut Arc<Window>,
    spec: &ThresholdSpec,
    stats: &mut StateStats,
    value_buf: &mut String,
    ev: &Event,
    t: i64,
    horizon: i64,
) -> usize {
    // Copied here only if a checkpoint being written still shares it.
    let win = crate::cow::unshare(win);
    win.last = t;
    while win.times.front().is_some_and(|&x| x < horizon) {
        win.times.pop_front();
    }
    while win
        .recent
        .front()
        .is_some_and(|e| e.timestamp_nanos().unwrap_or(0) < horizon)
    {
        win.recent.pop_front();
    }
    let n = match &spec.measure {
        MeasureSpec::Count => {
            if win.times.len() >= PER_KEY_CAP {
                win.times.pop_front();
                stats.evicted += 1;
            }
            win.times.push_back(t);
            win.times.len()
        }
        MeasureSpec::Distinct(f) => {
            if win.oldest < horizon {
                let mut oldest = i64::MAX;
                win.distinct.retain(|_, (seen, _)| {
                    let keep = *seen >= horizon;
                    if keep {
                        oldest = oldest.min(*seen);
                    }
                    keep
                });
                win.oldest = oldest;
            }
            let v = ev.field(f);
            if v != cordon_ingest::FieldValue::Missing {
                let s = value_buf;
                s.clear();
                push_value(s, v);
                if let Some(seen) = win.distinct.get_mut(s.as_str()) {
                    // A value seen before: refresh its time, keep its first event.
                    seen.0 = t;
                    win.oldest = win.oldest.min(t);
                } else if win.distinct.len() < PER_KEY_CAP {
                    let keep = (win.distinct.len() < EVIDENCE).then(|| ev.clone());
                    win.distinct.insert(s.clone(), (t, keep));
                    win.oldest = win.oldest.min(t);
                } else {
                    stats.rejected += 1;
                }
            }
            win.distinct.len()
        }
    };
    let bound = spec.value as usize;
    if matches!(spec.measure, MeasureSpec::Count) && n + EVIDENCE > bound {
        if win.recent.len() >= EVIDENCE {
            win.recent.pop_front();
        }
        win.recent.push_back(ev.clone());
    }
    n
}

impl Stateful for ThresholdDetector {
    fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        if !self.spec.step.matches(ev) {
            return;
        }
        let Some(t) = ev.timestamp_nanos() else {
            return;
        };
        let mut key = std::mem::take(&mut self.key_buf);
        if !join_key_into(ev, &self.spec.step.keys, &mut key) {
            self.key_buf = key;
            return;
        }
        let horizon = t.saturating_sub(self.spec.window);
        // One lookup for a key with an open window (nearly every event); a new key is
        // counted in a fresh window, then inserted.
        let n = match self.keys.get_mut(key.as_str()) {
            Some(win) => count(
                win,
                &self.spec,
                &mut self.stats,
                &mut self.value_buf,
                ev,
                t,
                horizon,
            ),
            None => {
                if self.keys.len() >= self.key_cap {
                    self.shed(t);
                }
                let mut win = Arc::default();
                let n = count(
                    &mut win,
                    &self.spec,
                    &mut self.stats,
                    &mut self.value_buf,
                    ev,
                    t,
                    horizon,
                );
                self.keys.insert(Arc::from(key.as_str()), win);
                n
            }
        };
        if self.spec.reached(n as u64) {
            let win = self
                .keys
                .remove(key.as_str())
                .map(Arc::unwrap_or_clone)
                .unwrap_or_default();
            let events = match self.spec.measure {
                MeasureSpec::Count => win.recent.into_iter().collect(),
                MeasureSpec::Distinct(_) => {
                    let mut evs: Vec<Event> =
                        win.distinct.into_values().filter_map(|(_, e)| e).collect();
                    evs.sort_by(|a, b| {
                        (a.timestamp_nanos(), a.id()).cmp(&(b.timestamp_nanos(), b.id()))
                    });
                    evs
                }
            };
            out.push(Finding {
                events,
                missing: Vec::new(),
            });
        }
        self.key_buf = key;
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Finding>) {
        let w = self.spec.window;
        // A full sweep once per window length keeps the cost per event constant; windows are
        // also trimmed on each event of their key.
        if wm.saturating_sub(self.last_sweep) < w {
            return;
        }
        self.last_sweep = wm;
        let before = self.keys.len();
        self.keys.retain(|_, win| wm.saturating_sub(win.last) <= w);
        self.stats.expired += (before - self.keys.len()) as u64;
    }

    fn finish(&mut self, _out: &mut Vec<Finding>) {
        self.keys.clear();
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        self.write(crate::checkpoint::SharedMap(&self.keys))
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), String> {
        let keys: HashMap<String, Window> = self.read(bytes)?;
        self.keys = crate::checkpoint::shared(keys);
        Ok(())
    }

    fn save_delta(&self, prev: &dyn Stateful) -> Option<Result<Vec<u8>, String>> {
        let prev = prev.as_any()?.downcast_ref::<ThresholdDetector>()?;
        Some(self.write(crate::checkpoint::SharedDiff::new(&self.keys, &prev.keys)))
    }

    fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), String> {
        let keys: crate::checkpoint::MapDelta<Window> = self.read(bytes)?;
        keys.apply(&mut self.keys);
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
        s.open = self.keys.len();
        s
    }

    fn state(&self) -> StateStats {
        let mut s = self.stats.clone();
        s.open = self.keys.len();
        s.bytes = self
            .keys
            .iter()
            .map(|(k, w)| {
                k.len()
                    + std::mem::size_of::<Window>()
                    + w.times.len() * 8
                    + w.distinct
                        .iter()
                        .map(|(d, (_, e))| d.len() + 32 + e.as_ref().map_or(0, Event::heap_bytes))
                        .sum::<usize>()
                    + w.recent.iter().map(Event::heap_bytes).sum::<usize>()
            })
            .sum();
        s
    }
}
