//! Alerts held in memory, with the filters an analyst reaches for first.

use std::collections::{BTreeMap, HashSet};

use cordon_detect::Alert;
use cordon_rules::Severity;

/// Which alerts to list.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    /// Minimum severity.
    pub min_severity: Option<Severity>,
    /// Rule id.
    pub rule: Option<String>,
    /// Agent id.
    pub agent: Option<String>,
    /// Alerts whose last event is at or after this time (ms).
    pub since_ms: Option<i64>,
}

impl AlertFilter {
    fn accepts(&self, a: &Alert) -> bool {
        self.min_severity.is_none_or(|s| a.severity >= s)
            && self.rule.as_deref().is_none_or(|r| a.rule_id == r)
            && self
                .agent
                .as_deref()
                .is_none_or(|g| a.agent_id() == Some(g))
            && self.since_ms.is_none_or(|t| a.last_seen_ms >= t)
    }
}

/// Alerts in arrival order.
#[derive(Default)]
pub struct AlertIndex {
    alerts: Vec<Alert>,
    ids: HashSet<String>,
    duplicates: u64,
}

impl AlertIndex {
    /// An empty index.
    pub fn new() -> AlertIndex {
        AlertIndex::default()
    }

    /// Adds an alert; an alert whose id is already present (a replay) is counted and dropped.
    pub fn push(&mut self, a: Alert) -> bool {
        if !self.ids.insert(a.id.clone()) {
            self.duplicates += 1;
            return false;
        }
        self.alerts.push(a);
        true
    }

    /// Number of alerts.
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Replayed alerts that were dropped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// All alerts.
    pub fn all(&self) -> &[Alert] {
        &self.alerts
    }

    /// Alerts passing a filter.
    pub fn filter<'a>(&'a self, f: &'a AlertFilter) -> impl Iterator<Item = &'a Alert> + 'a {
        self.alerts.iter().filter(move |a| f.accepts(a))
    }

    /// Alert counts per rule id.
    pub fn count_by_rule(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.alerts {
            *m.entry(a.rule_id.as_str()).or_insert(0) += 1;
        }
        m
    }

    /// Alert counts per severity, highest first.
    pub fn count_by_severity(&self) -> Vec<(Severity, usize)> {
        let mut m: BTreeMap<Severity, usize> = BTreeMap::new();
        for a in &self.alerts {
            *m.entry(a.severity).or_insert(0) += 1;
        }
        m.into_iter().rev().collect()
    }

    /// Sessions that alerts name: the session of each alert's last evidence event (its
    /// `unmapped.mcp.session.id`) — where the chain completed. Earlier steps of a chain may
    /// lie in other sessions (a baseline listing, a read days before); they are context, not
    /// the flagged activity.
    pub fn flagged_sessions(&self) -> HashSet<String> {
        self.alerts
            .iter()
            .filter_map(|a| a.session_id())
            .map(str::to_owned)
            .collect()
    }
}
