//! `sample`: per key, one event for each step, in any order; with `maxspan`, all of them within
//! that span of event time (Sigma's temporal correlation). A completed sample is emitted in
//! step order and the key starts afresh.

use rustc_hash::FxHashMap as HashMap;

use cordon_ingest::Event;
use cordon_rules::stateful::SampleSpec;

use crate::keys::join_key;
use crate::stateful::{Finding, StateStats, Stateful};

/// Default cap on keys with a partly filled sample.
pub const DEFAULT_KEY_CAP: usize = 200_000;

/// Runs one sample rule.
#[derive(Clone)]
pub struct SampleDetector {
    spec: SampleSpec,
    keys: HashMap<String, Vec<Option<Event>>>,
    stats: StateStats,
    last_sweep: i64,
}

impl SampleDetector {
    /// A new detector.
    pub fn new(spec: SampleSpec) -> SampleDetector {
        SampleDetector {
            spec,
            keys: HashMap::default(),
            stats: StateStats::default(),
            last_sweep: i64::MIN,
        }
    }
}

fn ts(e: &Option<Event>) -> Option<i64> {
    e.as_ref().and_then(Event::timestamp_nanos)
}

impl Stateful for SampleDetector {
    fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        let Some(t) = ev.timestamp_nanos() else {
            return;
        };
        let n = self.spec.steps.len();
        for i in 0..n {
            let step = &self.spec.steps[i];
            if !step.matches(ev) {
                continue;
            }
            let Some(key) = join_key(ev, &step.keys) else {
                continue;
            };
            if !self.keys.contains_key(&key) && self.keys.len() >= DEFAULT_KEY_CAP {
                self.keys.clear();
                self.stats.evicted += DEFAULT_KEY_CAP as u64;
            }
            let slots = self
                .keys
                .entry(key.clone())
                .or_insert_with(|| vec![None; n]);
            if let Some(m) = self.spec.maxspan {
                for s in slots.iter_mut() {
                    if ts(s).is_some_and(|x| t.saturating_sub(x) > m) {
                        *s = None;
                        self.stats.expired += 1;
                    }
                }
            }
            if slots[i].is_some() {
                continue;
            }
            slots[i] = Some(ev.clone());
            if slots.iter().all(Option::is_some) {
                let events = self
                    .keys
                    .remove(&key)
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect();
                out.push(Finding {
                    events,
                    missing: Vec::new(),
                });
            }
            // One event fills one slot.
            return;
        }
    }

    fn on_watermark(&mut self, wm: i64, _out: &mut Vec<Finding>) {
        let Some(m) = self.spec.maxspan else { return };
        // A full sweep once per span keeps the cost per event constant.
        if wm.saturating_sub(self.last_sweep) < m {
            return;
        }
        self.last_sweep = wm;
        for slots in self.keys.values_mut() {
            for s in slots.iter_mut() {
                if ts(s).is_some_and(|x| wm.saturating_sub(x) > m) {
                    *s = None;
                    self.stats.expired += 1;
                }
            }
        }
        self.keys.retain(|_, s| s.iter().any(Option::is_some));
    }

    fn finish(&mut self, _out: &mut Vec<Finding>) {
        self.keys.clear();
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        #[derive(serde::Serialize)]
        struct Slots<'a>(#[serde(with = "crate::checkpoint::opt_events")] &'a [Option<Event>]);
        let keys: Vec<(&String, Slots<'_>)> =
            self.keys.iter().map(|(k, v)| (k, Slots(v))).collect();
        crate::checkpoint::to_bytes(&(keys, &self.stats, self.last_sweep))
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Slots(#[serde(with = "crate::checkpoint::opt_events")] Vec<Option<Event>>);
        let (keys, stats, last_sweep): (Vec<(String, Slots)>, StateStats, i64) =
            crate::checkpoint::from_bytes(bytes)?;
        self.keys = keys.into_iter().map(|(k, s)| (k, s.0)).collect();
        self.stats = stats;
        self.last_sweep = last_sweep;
        Ok(())
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
            .map(|(k, v)| k.len() + v.iter().flatten().map(Event::heap_bytes).sum::<usize>())
            .sum();
        s
    }
}
