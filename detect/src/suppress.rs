//! Per-rule alert suppression: one alert per rule and key value per window of event time.
//! The table is bounded: past its cap, expired keys are pruned and then the oldest evicted
//! (counted), so a flood of distinct keys cannot exhaust memory.

use std::collections::HashMap;

use cordon_ingest::Event;
use cordon_rules::Suppress;

use crate::keys::push_value;

/// Cap on remembered suppression keys.
pub const MAX_SUPPRESS_KEYS: usize = 100_000;

/// The suppression table of an engine.
#[derive(Clone, Default)]
pub struct Suppressor {
    last_alert: HashMap<(usize, String), (i64, i64)>,
    evicted: u64,
}

impl Suppressor {
    /// Whether rule `rule`'s alert on `ev` is suppressed; records it if not.
    pub fn suppressed(&mut self, rule: usize, s: Option<&Suppress>, ev: &Event) -> bool {
        let Some(s) = s else { return false };
        let now = ev.timestamp_nanos().unwrap_or(0);
        let window = s.window.as_nanos().min(i64::MAX as u128) as i64;
        let mut key = String::new();
        for f in &s.key {
            push_value(&mut key, ev.field(f));
            key.push('\u{1f}');
        }
        let k = (rule, key);
        if let Some(&(last, _)) = self.last_alert.get(&k) {
            if now >= last && now - last < window {
                return true;
            }
        }
        if self.last_alert.len() >= MAX_SUPPRESS_KEYS {
            self.prune(now);
        }
        self.last_alert.insert(k, (now, window));
        false
    }

    fn prune(&mut self, now: i64) {
        self.last_alert.retain(|_, (last, w)| now - *last < *w);
        if self.last_alert.len() >= MAX_SUPPRESS_KEYS {
            let mut by_age: Vec<_> = self
                .last_alert
                .iter()
                .map(|(k, v)| (v.0, k.clone()))
                .collect();
            // Ties by key, so every instance and restored copy evicts the same keys.
            by_age.sort_unstable();
            let excess = self.last_alert.len() - MAX_SUPPRESS_KEYS / 2;
            for (_, k) in by_age.into_iter().take(excess) {
                self.last_alert.remove(&k);
                self.evicted += 1;
            }
        }
    }

    /// Renumbers rules after a reload: `map[old]` is the rule's new index, or `None` when it
    /// was removed (its keys go).
    pub fn remap(&mut self, map: &[Option<usize>]) {
        let old = std::mem::take(&mut self.last_alert);
        self.last_alert = old
            .into_iter()
            .filter_map(|((r, k), v)| map.get(r).copied().flatten().map(|n| ((n, k), v)))
            .collect();
    }

    /// The table, for a checkpoint: (rule index, key, last alert, window).
    pub(crate) fn save(&self) -> Vec<(usize, String, i64, i64)> {
        self.last_alert
            .iter()
            .map(|((r, k), (t, w))| (*r, k.clone(), *t, *w))
            .collect()
    }

    /// Restores saved entries (rules already renumbered by the caller).
    pub(crate) fn load(&mut self, entries: Vec<(usize, String, i64, i64)>, evicted: u64) {
        self.last_alert = entries
            .into_iter()
            .map(|(r, k, t, w)| ((r, k), (t, w)))
            .collect();
        self.evicted = evicted;
    }

    /// Keys evicted because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}
