//! Thresholds: per key, the number of matching events — or of distinct values of a field —
//! in a sliding window of event time. When the threshold is reached an alert carries the most
//! recent events (up to [`EVIDENCE`]) and the key's window starts afresh, so one burst gives
//! one alert rather than one per further event.

use std::collections::{HashMap, VecDeque};

use cordon_ingest::Event;
use cordon_rules::stateful::{MeasureSpec, ThresholdSpec};

use crate::keys::{join_key, push_value};
use crate::stateful::{Finding, StateStats, Stateful};

/// Evidence events kept per key.
pub const EVIDENCE: usize = 20;
/// Default cap on keys with an open window.
pub const DEFAULT_KEY_CAP: usize = 200_000;
/// Cap on timestamps (or distinct values) remembered per key.
pub const PER_KEY_CAP: usize = 100_000;

#[derive(Default)]
struct Window {
    times: VecDeque<i64>,
    distinct: HashMap<String, i64>,
    recent: VecDeque<Event>,
    last: i64,
}

/// Runs one threshold rule.
pub struct ThresholdDetector {
    spec: ThresholdSpec,
    keys: HashMap<String, Window>,
    key_cap: usize,
    stats: StateStats,
    last_sweep: i64,
}

impl ThresholdDetector {
    /// A detector with the default caps.
    pub fn new(spec: ThresholdSpec) -> ThresholdDetector {
        ThresholdDetector {
            spec,
            keys: HashMap::new(),
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

impl Stateful for ThresholdDetector {
    fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        if !self.spec.step.matches(ev) {
            return;
        }
        let (Some(t), Some(key)) = (ev.timestamp_nanos(), join_key(ev, &self.spec.step.keys))
        else {
            return;
        };
        if !self.keys.contains_key(&key) && self.keys.len() >= self.key_cap {
            self.shed(t);
        }
        let horizon = t.saturating_sub(self.spec.window);
        let win = self.keys.entry(key.clone()).or_default();
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
        let n = match &self.spec.measure {
            MeasureSpec::Count => {
                if win.times.len() >= PER_KEY_CAP {
                    win.times.pop_front();
                    self.stats.evicted += 1;
                }
                win.times.push_back(t);
                win.times.len()
            }
            MeasureSpec::Distinct(f) => {
                win.distinct.retain(|_, seen| *seen >= horizon);
                let v = ev.field(f);
                if v != cordon_ingest::FieldValue::Missing {
                    let mut s = String::new();
                    push_value(&mut s, v);
                    if win.distinct.len() < PER_KEY_CAP || win.distinct.contains_key(&s) {
                        win.distinct.insert(s, t);
                    } else {
                        self.stats.rejected += 1;
                    }
                }
                win.distinct.len()
            }
        };
        if win.recent.len() >= EVIDENCE {
            win.recent.pop_front();
        }
        win.recent.push_back(ev.clone());
        if self.spec.reached(n as u64) {
            let win = self.keys.remove(&key).unwrap_or_default();
            out.push(Finding {
                events: win.recent.into_iter().collect(),
                missing: Vec::new(),
            });
        }
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
                    + w.distinct.keys().map(|d| d.len() + 32).sum::<usize>()
                    + w.recent.iter().map(Event::heap_bytes).sum::<usize>()
            })
            .sum();
        s
    }
}
