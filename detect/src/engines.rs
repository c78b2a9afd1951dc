//! The engines of a run: one per input partition. A file run has one; a Kafka run has one per
//! assigned partition, so each partition has its own event-time watermark (partitions are read
//! side by side and run at different points in time) and its own state, which moves with the
//! partition when the consumer group rebalances.
//!
//! Agents are the Kafka key, so one agent's events — and every chain, window and baseline keyed
//! by it — live in one partition's engine. The API sees the engines as one: an agent's profile
//! is looked up in each, counters are summed, a rule reload applies to all of them and to
//! engines created later. The counters a run updates as it goes ([`Progress`]) and reports at
//! its end ([`PipelineStats`]) are here too, shared by the file pipeline and the Kafka input.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::engine::{EngineStats, Reload, RuleStats};
use crate::profile::{Profile, ProfileStats, Profiles};
use crate::stateful::StateStats;
use crate::Engine;
use cordon_rules::{Rule, RuleSet};

/// How new engines are built.
#[derive(Clone, Debug, Default)]
pub struct Template {
    /// Allowed lateness.
    pub lateness: Duration,
    /// Peer-group field of the profiles.
    pub peer_field: Option<String>,
    /// Idle time before a profile goes to the cold tier.
    pub idle_after: Option<Duration>,
}

impl Template {
    /// Empty profiles configured as the template says.
    pub fn profiles(&self) -> Profiles {
        let mut p = Profiles::default();
        if let Some(f) = &self.peer_field {
            p = p.with_peer_field(f);
        }
        if let Some(d) = self.idle_after {
            p = p.with_idle_after(d);
        }
        p
    }
}

/// One partition's engine, locked by the thread running its records and briefly by the API.
/// Lock order: the engines' lock, then an engine's; a thread holding an engine's lock never
/// takes the engines'.
pub type SharedEngine = Arc<Mutex<Engine>>;

fn lock(e: &SharedEngine) -> MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engines, behind one lock (taken by the pipeline to find an engine, and by the API),
/// each behind its own (so that partitions run side by side).
pub struct Engines {
    inner: Mutex<Inner>,
}

/// The locked engines.
pub struct Inner {
    set: Arc<RuleSet>,
    template: Template,
    parts: BTreeMap<String, SharedEngine>,
}

impl Engines {
    /// No engine yet; each partition gets one when it is assigned.
    pub fn new(set: RuleSet, template: Template) -> Engines {
        Engines {
            inner: Mutex::new(Inner {
                set: Arc::new(set),
                template,
                parts: BTreeMap::new(),
            }),
        }
    }

    /// Locks the engines.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engines for a reader (metrics, API), taken under the lock and read without it.
    pub fn view(&self) -> View {
        self.lock().view()
    }
}

/// The engines as a reader sees them: the rules in force and a handle on each engine, taken
/// under the engines' lock and read after it is released, one engine locked at a time.
///
/// Why: an engine is locked by its thread for a whole job (thousands of records). A reader
/// that held the engines' lock while it waited for each engine's stalled everything that
/// takes the engines' lock — the poll loop handing out work, and every engine thread
/// starting its next job — behind the busiest engine, once per scrape. With the Kafka bench
/// reading `/metrics` every 20 ms, scheduler tracing showed those waits, and the run was
/// faster in every interleaved pair once readers stopped holding the lock.
pub struct View {
    set: Arc<RuleSet>,
    parts: Vec<SharedEngine>,
}

impl Inner {
    /// A new engine with the current rules and no state.
    pub fn fresh(&self) -> Engine {
        Engine::new(&self.set)
            .with_allowed_lateness(self.template.lateness)
            .with_profiles(self.template.profiles())
    }

    /// The engine of `part`, created empty if there is none.
    pub fn get(&mut self, part: &str) -> MutexGuard<'_, Engine> {
        lock(self.entry(part))
    }

    /// The engine of `part` to run records on from another thread, created empty if there
    /// is none.
    pub fn shared(&mut self, part: &str) -> SharedEngine {
        self.entry(part).clone()
    }

    fn entry(&mut self, part: &str) -> &SharedEngine {
        if !self.parts.contains_key(part) {
            let e = self.fresh();
            self.parts.insert(part.to_owned(), Arc::new(Mutex::new(e)));
        }
        self.parts
            .get(part)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// The engine of `part`, if it has one.
    pub fn get_existing(&self, part: &str) -> Option<MutexGuard<'_, Engine>> {
        self.parts.get(part).map(lock)
    }

    /// Installs an engine for `part`.
    pub fn insert(&mut self, part: &str, e: Engine) {
        self.parts.insert(part.to_owned(), Arc::new(Mutex::new(e)));
    }

    /// Removes the engine of `part` (its partition was revoked).
    pub fn remove(&mut self, part: &str) -> Option<SharedEngine> {
        self.parts.remove(part)
    }

    /// Every engine, by partition, each locked in turn.
    pub fn each(&self) -> impl Iterator<Item = (&String, MutexGuard<'_, Engine>)> {
        self.parts.iter().map(|(k, e)| (k, lock(e)))
    }

    /// The engines for a reader ([`View`]).
    pub fn view(&self) -> View {
        View {
            set: self.set.clone(),
            parts: self.parts.values().cloned().collect(),
        }
    }

    /// Swaps the rules of every engine (and of engines created later).
    pub fn replace_rules(&mut self, set: &RuleSet) -> Reload {
        let mut report = None;
        for (_, mut e) in self.each() {
            let r = e.replace_rules(set);
            report.get_or_insert(r);
        }
        let report = report.unwrap_or_else(|| self.fresh().replace_rules(set));
        self.set = Arc::new(set.clone());
        report
    }

    /// Records an enforcement in every engine (a revoked token or an isolated server concerns
    /// every partition's agents).
    pub fn enforce(&mut self, e: crate::enforce::Enforcement) {
        for (_, mut engine) in self.each() {
            engine.enforce(e.clone());
        }
    }
}

impl View {
    /// Every engine, each locked in turn.
    fn each(&self) -> impl Iterator<Item = MutexGuard<'_, Engine>> {
        self.parts.iter().map(lock)
    }

    /// The rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.set.rules
    }

    /// Per-rule counters summed over the engines, in [`View::rules`] order.
    pub fn rule_stats(&self) -> Vec<RuleStats> {
        let mut sum = vec![RuleStats::default(); self.set.rules.len()];
        for e in self.each() {
            // Matched by id: a reload between taking the view and reading an engine gives
            // that engine other rules, whose counters must not land under these.
            let at = e
                .rules()
                .iter()
                .map(|r| self.set.rules.iter().position(|v| v.id == r.id));
            for (i, r) in at.zip(e.rule_stats()) {
                let Some(s) = i.and_then(|i| sum.get_mut(i)) else {
                    continue;
                };
                s.matched += r.matched;
                s.alerts += r.alerts;
                s.suppressed += r.suppressed;
                s.excepted += r.excepted;
            }
        }
        sum
    }

    /// Engine counters summed.
    pub fn stats(&self) -> EngineStats {
        let mut sum = EngineStats::default();
        for e in self.each() {
            let s = e.stats();
            sum.events += s.events;
            sum.alerts += s.alerts;
            sum.late += s.late;
            sum.reordered += s.reordered;
            sum.out_of_order += s.out_of_order;
            sum.duplicates += s.duplicates;
        }
        sum
    }

    /// Suppression keys evicted, summed.
    pub fn suppression_evictions(&self) -> u64 {
        self.each().map(|e| e.suppression_evictions()).sum()
    }

    /// State counters of each multi-event rule, summed over the engines; `bytes` walks
    /// every partial for its size (slow with much state: not for metrics scrapes).
    pub fn state_stats(&self, bytes: bool) -> Vec<(String, StateStats)> {
        let mut by_rule: BTreeMap<String, StateStats> = BTreeMap::new();
        for e in self.each() {
            let each = if bytes {
                e.state_stats()
            } else {
                e.state_counts()
            };
            for (id, s) in each {
                let t = by_rule.entry(id.to_owned()).or_default();
                t.open += s.open;
                t.bytes += s.bytes;
                t.rejected += s.rejected;
                t.evicted += s.evicted;
                t.expired += s.expired;
                t.closed += s.closed;
            }
        }
        by_rule.into_iter().collect()
    }

    /// Profile counters summed.
    pub fn profile_stats(&self) -> ProfileStats {
        let mut sum = ProfileStats::default();
        for e in self.each() {
            let s = e.profiles().stats();
            sum.hot += s.hot;
            sum.cold += s.cold;
            sum.cold_bytes += s.cold_bytes;
            sum.idled += s.idled;
            sum.evicted += s.evicted;
            sum.revived += s.revived;
            sum.dropped += s.dropped;
            sum.from_peer += s.from_peer;
            sum.damaged += s.damaged;
        }
        sum
    }

    /// An agent's profile, from whichever engine holds it.
    pub fn profile(&self, agent: &str) -> Option<Profile> {
        self.each()
            .find_map(|e| e.profiles().get(agent).map(|p| p.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_taken_before_a_reload_labels_counters_by_rule_id() {
        let set = RuleSet::builtin().expect("built-in rules");
        let engines = Engines::new(set.clone(), Template::default());
        let ev = cordon_ingest::decode_native(
            br#"{"event.id":"e1","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a","mcp.method.name":"tools/call","audit.target":"fs","gen_ai.tool.name":"read_file","gen_ai.tool.call.arguments":{"path":"/home/a/.aws/credentials"},"audit.decision":"allow"}"#,
        )
        .expect("an event");
        let mut out = Vec::new();
        engines.lock().get("p").push(ev, &mut out).expect("pushed");
        engines.lock().get("p").finish(&mut out);
        let before = engines.view().rule_stats();
        let hit = before
            .iter()
            .position(|s| s.matched > 0)
            .expect("a rule matched");
        let id = set.rules[hit].id.clone();
        // The view is taken, then the rules are reloaded in another order.
        let view = engines.view();
        let mut reversed = set.clone();
        reversed.rules.reverse();
        engines.lock().replace_rules(&reversed);
        let after = view.rule_stats();
        let at = view
            .rules()
            .iter()
            .position(|r| r.id == id)
            .expect("the rule");
        assert_eq!(after[at].matched, before[hit].matched, "{id}");
        assert_eq!(
            after.iter().map(|s| s.matched).sum::<u64>(),
            before.iter().map(|s| s.matched).sum::<u64>()
        );
    }
}

/// Counters of one pipeline run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PipelineStats {
    /// Records read.
    pub records: u64,
    /// Records decoded into events.
    pub events: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Events older than an event seen before them.
    pub out_of_order: u64,
    /// Events behind the watermark (dead-lettered; counted in `dead_lettered` too).
    pub late: u64,
    /// Events that arrived out of order within the allowed lateness and were reordered.
    pub reordered: u64,
}

/// Counters a running pipeline updates as it goes, readable from other threads (metrics).
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read.
    pub records: AtomicU64,
    /// Records decoded into events.
    pub events: AtomicU64,
    /// Records dead-lettered (undecodable, too long or late).
    pub dead_lettered: AtomicU64,
    /// Late events.
    pub late: AtomicU64,
    /// Alerts raised.
    pub alerts: AtomicU64,
}
