//! The engine: runs every detector over the event stream, in event order.
//!
//! Detectors are synchronous and do no I/O ([`Detector`]): the engine can be driven by a file
//! reader, a Kafka consumer or a test alike, and it is tested without an async runtime. The
//! [`FilterDetector`] runs single-event rules; sequence, threshold and baseline detectors plug
//! in beside it through the same trait.

use std::collections::HashMap;

use cordon_ingest::{CoreField, Event, FieldValue};
use cordon_rules::{Rule, RuleSet, Verdict};
use rustc_hash::FxHashMap;

use crate::alert::Alert;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// Cap on remembered suppression keys; beyond it, expired keys are pruned and, if still too
/// many, the oldest are evicted (counted).
const MAX_SUPPRESS_KEYS: usize = 100_000;

/// Rules indexed by their guard (a field value they require): an event is tested only
/// against the rules whose guard its values satisfy, plus the rules without a guard.
struct RuleIndex {
    unguarded: Vec<usize>,
    fields: Vec<FieldIndex>,
}

struct FieldIndex {
    field: CoreField,
    insensitive: bool,
    rules: FxHashMap<Box<str>, Vec<usize>>,
}

impl RuleIndex {
    fn build(rules: &[Rule]) -> RuleIndex {
        let mut idx = RuleIndex {
            unguarded: Vec::new(),
            fields: Vec::new(),
        };
        for (i, r) in rules.iter().enumerate() {
            let Some(g) = r.event_matcher().pred.guard() else {
                idx.unguarded.push(i);
                continue;
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
                idx.fields[pos].rules.entry(v).or_default().push(i);
            }
        }
        idx
    }

    /// The rules that may match `ev`, in rule order.
    fn candidates(&self, ev: &Event, out: &mut Vec<usize>) {
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
        out.sort_unstable();
        out.dedup();
    }
}

/// Runs single-event (filter) rules with per-rule suppression.
pub struct FilterDetector {
    rules: Vec<Rule>,
    index: RuleIndex,
    candidates: Vec<usize>,
    stats: Vec<RuleStats>,
    last_alert: HashMap<(usize, String), i64>,
    evicted: u64,
}

impl FilterDetector {
    /// A detector for the event rules of a rule set.
    pub fn new(set: &RuleSet) -> FilterDetector {
        let rules = set.rules.clone();
        let stats = vec![RuleStats::default(); rules.len()];
        FilterDetector {
            index: RuleIndex::build(&rules),
            candidates: Vec::new(),
            rules,
            stats,
            last_alert: HashMap::new(),
            evicted: 0,
        }
    }

    /// The rules, in the order of [`FilterDetector::stats`].
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Per-rule counters.
    pub fn stats(&self) -> &[RuleStats] {
        &self.stats
    }

    /// Suppression keys evicted because the table was full.
    pub fn evicted_keys(&self) -> u64 {
        self.evicted
    }

    fn suppressed(&mut self, idx: usize, ev: &Event) -> bool {
        let Some(s) = &self.rules[idx].suppress else {
            return false;
        };
        let now = ev.timestamp_nanos().unwrap_or(0);
        let window = s.window.as_nanos() as i64;
        let mut key = String::new();
        for f in &s.key {
            match ev.field(f) {
                FieldValue::Missing => key.push('\u{0}'),
                FieldValue::Str(v) => key.push_str(v),
                FieldValue::Int(i) => key.push_str(&i.to_string()),
                FieldValue::Float(x) => key.push_str(&x.to_string()),
                FieldValue::Bool(b) => key.push_str(if b { "true" } else { "false" }),
                FieldValue::Fingerprints(l) => {
                    for fp in l {
                        key.push_str(&format!("{fp:016x},"));
                    }
                }
                FieldValue::Json(j) => key.push_str(&j.to_string()),
            }
            key.push('\u{1f}');
        }
        let k = (idx, key);
        if let Some(&last) = self.last_alert.get(&k) {
            if now >= last && now - last < window {
                return true;
            }
        }
        if self.last_alert.len() >= MAX_SUPPRESS_KEYS {
            self.prune(now);
        }
        self.last_alert.insert(k, now);
        false
    }

    fn prune(&mut self, now: i64) {
        let rules = &self.rules;
        self.last_alert.retain(|(idx, _), last| {
            let w = rules[*idx]
                .suppress
                .as_ref()
                .map(|s| s.window.as_nanos() as i64)
                .unwrap_or(0);
            now - *last < w
        });
        if self.last_alert.len() >= MAX_SUPPRESS_KEYS {
            let mut by_age: Vec<_> = self
                .last_alert
                .iter()
                .map(|(k, v)| (*v, k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(t, _)| *t);
            let excess = self.last_alert.len() - MAX_SUPPRESS_KEYS / 2;
            for (_, k) in by_age.into_iter().take(excess) {
                self.last_alert.remove(&k);
                self.evicted += 1;
            }
        }
    }
}

impl Detector for FilterDetector {
    fn observe(&mut self, ev: &Event, out: &mut Vec<Alert>) {
        let mut candidates = std::mem::take(&mut self.candidates);
        self.index.candidates(ev, &mut candidates);
        for &idx in &candidates {
            match self.rules[idx].check(ev) {
                Verdict::NoMatch => {}
                Verdict::Excepted => {
                    self.stats[idx].matched += 1;
                    self.stats[idx].excepted += 1;
                }
                Verdict::Match => {
                    self.stats[idx].matched += 1;
                    if self.suppressed(idx, ev) {
                        self.stats[idx].suppressed += 1;
                    } else {
                        self.stats[idx].alerts += 1;
                        out.push(Alert::from_rule(&self.rules[idx], vec![ev.clone()]));
                    }
                }
            }
        }
        self.candidates = candidates;
    }
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Events observed.
    pub events: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Events older than the watermark at arrival (accepted; counted).
    pub out_of_order: u64,
}

/// All detectors over one stream.
pub struct Engine {
    filters: FilterDetector,
    others: Vec<Box<dyn Detector + Send>>,
    stats: EngineStats,
    watermark: i64,
}

impl Engine {
    /// An engine running the rule set's rules.
    pub fn new(set: &RuleSet) -> Engine {
        Engine {
            filters: FilterDetector::new(set),
            others: Vec::new(),
            stats: EngineStats::default(),
            watermark: i64::MIN,
        }
    }

    /// Adds a detector.
    pub fn add(&mut self, d: Box<dyn Detector + Send>) {
        self.others.push(d);
    }

    /// The filter-rule detector (for its per-rule counters).
    pub fn filters(&self) -> &FilterDetector {
        &self.filters
    }

    /// Engine-wide counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Observes one event.
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Alert>) {
        let before = out.len();
        self.stats.events += 1;
        if let Some(ts) = ev.timestamp_nanos() {
            if ts < self.watermark {
                self.stats.out_of_order += 1;
            } else {
                self.watermark = ts;
            }
        }
        self.filters.observe(ev, out);
        for d in &mut self.others {
            d.observe(ev, out);
        }
        self.stats.alerts += (out.len() - before) as u64;
    }

    /// End of input.
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        let before = out.len();
        self.filters.finish(out);
        for d in &mut self.others {
            d.finish(out);
        }
        self.stats.alerts += (out.len() - before) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = &e.filters().stats()[0];
        assert_eq!((s.matched, s.alerts, s.suppressed), (4, 3, 1));
    }

    /// The index must never hide a match: every rule of the built-in pack gives the same
    /// verdicts with and without it on generated traffic with all attacks.
    #[test]
    fn index_changes_nothing() {
        let set = RuleSet::builtin().unwrap();
        let g = cordon_ingest::generate::generate(&cordon_ingest::generate::GenConfig {
            agents: 8,
            duration_nanos: 6 * 3_600_000_000_000,
            ..Default::default()
        });
        let det = FilterDetector::new(&set);
        let mut cands = Vec::new();
        let mut matched = 0;
        for ev in &g.events {
            det.index.candidates(ev, &mut cands);
            for (i, r) in set.rules.iter().enumerate() {
                let m = r.check(ev) != cordon_rules::Verdict::NoMatch;
                matched += usize::from(m);
                assert!(!m || cands.contains(&i), "rule {} hidden from {}", r.id, ev);
            }
        }
        assert!(matched > 10);
        assert!(det.index.unguarded.len() < set.rules.len() / 2);
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
