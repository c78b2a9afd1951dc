//! The alert: what a detector found, with its evidence, rendered as an OCSF 1.8 Detection
//! Finding (`class_uid` 2004) so that SIEMs and data lakes take it as it is.
//!
//! Alert ids are derived from the rule and the evidence event ids, not drawn at random: a replay
//! of the same events (after a crash, from Kafka) yields the same ids, so a store or a receiver
//! can drop duplicates.

use cordon_ingest::{BaselineField, BaselineKind, CoreField, Event};
use cordon_rules::{Rule, Severity};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How the finding was made (OCSF `analytic.type_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalyticType {
    /// 1: a rule.
    Rule = 1,
    /// 2: behavioural.
    Behavioral = 2,
    /// 3: statistical.
    Statistical = 3,
}

/// A finding.
#[derive(Clone, Debug)]
pub struct Alert {
    /// Stable id (see the module docs).
    pub id: String,
    /// The rule's id.
    pub rule_id: String,
    /// The rule's version.
    pub rule_version: u32,
    /// The rule's title.
    pub title: String,
    /// The rule's description.
    pub description: String,
    /// Severity.
    pub severity: Severity,
    /// The rule's tags.
    pub tags: Vec<String>,
    /// The playbook to run.
    pub playbook: Option<String>,
    /// How it was found.
    pub analytic: AnalyticType,
    /// Event time of the first evidence event (ms since epoch).
    pub first_seen_ms: i64,
    /// Event time of the last evidence event (ms since epoch).
    pub last_seen_ms: i64,
    /// The evidence events, in event-time order.
    pub events: Vec<Event>,
    /// One line for humans.
    pub message: String,
    /// Step positions of `![…]` steps (they have no event), for multi-event rules.
    pub missing_steps: Vec<usize>,
}

impl Alert {
    /// An alert of `rule` on `events` (in order; at least one).
    pub fn from_rule(rule: &Rule, events: Vec<Event>) -> Alert {
        let mut h = Sha256::new();
        h.update(rule.id.as_bytes());
        h.update(rule.version.to_le_bytes());
        for e in &events {
            h.update(b"\x1f");
            h.update(e.id().unwrap_or_default().as_bytes());
        }
        let id = format!("cdn-{}", &hex::encode(h.finalize())[..26]);
        let ms = |e: &Event| e.timestamp_nanos().unwrap_or(0).div_euclid(1_000_000);
        let first_seen_ms = events.first().map(ms).unwrap_or(0);
        let last_seen_ms = events.last().map(ms).unwrap_or(0);
        let last = events.last();
        let agent = last.and_then(|e| e.agent_id()).unwrap_or("unknown agent");
        let what = last
            .and_then(|e| e.tool_name().or(e.str(CoreField::Method)))
            .unwrap_or("a call");
        let target = last
            .and_then(|e| e.str(CoreField::Target))
            .map(|t| format!(" on {t}"))
            .unwrap_or_default();
        Alert {
            id,
            rule_id: rule.id.clone(),
            rule_version: rule.version,
            title: rule.title.clone(),
            description: rule.description.trim().to_owned(),
            severity: rule.severity,
            tags: rule.tags.clone(),
            playbook: rule.playbook.clone(),
            analytic: AnalyticType::Rule,
            first_seen_ms,
            last_seen_ms,
            message: format!("{}: {agent} called {what}{target}", rule.title),
            events,
            missing_steps: Vec::new(),
        }
    }

    /// The agent of the last evidence event.
    pub fn agent_id(&self) -> Option<&str> {
        self.last_str(CoreField::AgentId)
    }

    /// The session of the last evidence event.
    pub fn session_id(&self) -> Option<&str> {
        self.last_str(CoreField::SessionId)
    }

    fn last_str(&self, f: CoreField) -> Option<&str> {
        self.events.iter().rev().find_map(|e| e.str(f))
    }

    /// The alert as an OCSF 1.8 Detection Finding (activity Create, status New).
    pub fn to_ocsf(&self) -> Value {
        let related: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                json!({
                    "uid": e.id(),
                    "type_uid": 600399,
                    "title": e.tool_name().or(e.str(CoreField::Method)),
                })
            })
            .collect();
        let evidences: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                let mut ev = json!({
                    "api": {
                        "operation": e.tool_name().or(e.str(CoreField::Method)),
                        "service": {"name": e.str(CoreField::Target)},
                    },
                    "data": e.to_json(),
                });
                if let Some(sub) = e.str(CoreField::PrincipalSub) {
                    ev["actor"] = json!({"user": {"uid": sub}, "app_name": e.agent_id()});
                }
                ev
            })
            .collect();
        let mut targets: Vec<&str> = self
            .events
            .iter()
            .filter_map(|e| e.str(CoreField::Target))
            .collect();
        targets.dedup();
        let resources: Vec<Value> = targets
            .iter()
            .map(|t| json!({"uid": t, "name": t, "type": "MCP Server"}))
            .collect();
        // Baseline figures behind the alert: what the agent normally does, what departed.
        let mut analyses: Vec<Value> = Vec::new();
        for e in &self.events {
            let Some(b) = e.baseline() else { continue };
            let target =
                json!([{"name": format!("gen_ai.agent.id={}", e.agent_id().unwrap_or("-"))}]);
            for (field, x) in b.iter().filter(|(f, x)| f.departs(x)) {
                let what = field.what();
                let (expected, observed) = match field.kind() {
                    BaselineKind::Flag => (
                        "never seen for this agent".to_owned(),
                        match field {
                            BaselineField::FirstTool => e.tool_name(),
                            BaselineField::FirstServer => e.str(CoreField::Target),
                            BaselineField::FirstMethod => e.str(CoreField::Method),
                            _ => None,
                        }
                        .unwrap_or("see evidence arguments")
                        .to_owned(),
                    ),
                    BaselineKind::Frequency => (
                        "share of the agent's recent calls".to_owned(),
                        format!("{:.4}", x.value),
                    ),
                    BaselineKind::Score => {
                        (format!("{:.2}", x.expected), format!("{}", x.observed))
                    }
                };
                analyses.push(json!({
                    "analysis_targets": target,
                    "baselines": [{"observation_parameter": what, "observations": [{"value": expected}]}],
                    "anomalies": [{"observation_parameter": what, "observations": [{"value": observed}]}],
                    "unmapped": {"feature": field.name(), "score": x.value},
                }));
            }
        }
        let risk = match self.severity {
            Severity::Informational => 10,
            Severity::Low => 30,
            Severity::Medium => 50,
            Severity::High => 75,
            Severity::Critical => 95,
        };
        json!({
            "class_uid": 2004,
            "class_name": "Detection Finding",
            "category_uid": 2,
            "category_name": "Findings",
            "activity_id": 1,
            "activity_name": "Create",
            "type_uid": 200401,
            "time": self.last_seen_ms,
            "severity_id": self.severity.ocsf_id(),
            "severity": self.severity.name(),
            "status_id": 1,
            "status": "New",
            "confidence_id": 3,
            "is_alert": true,
            "message": self.message,
            "risk_score": risk,
            "metadata": {
                "version": "1.8.0",
                "uid": self.id,
                "correlation_uid": self.session_id().or(self.agent_id()),
                "product": {
                    "name": "Cordon",
                    "vendor_name": "Cordon",
                    "version": env!("CARGO_PKG_VERSION"),
                },
            },
            "finding_info": {
                "uid": self.id,
                "title": self.title,
                "desc": self.description,
                "types": self.tags,
                "analytic": {
                    "uid": self.rule_id,
                    "name": self.title,
                    "type_id": self.analytic as u8,
                    "type": match self.analytic {
                        AnalyticType::Rule => "Rule",
                        AnalyticType::Behavioral => "Behavioral",
                        AnalyticType::Statistical => "Statistical",
                    },
                    "version": self.rule_version.to_string(),
                },
                "first_seen_time": self.first_seen_ms,
                "last_seen_time": self.last_seen_ms,
                "related_events": related,
            },
            "evidences": evidences,
            "anomaly_analyses": analyses,
            "resources": resources,
            "remediation": {
                "desc": match &self.playbook {
                    Some(p) => format!("Playbook `{p}` applies. Review the agent's recent calls."),
                    None => "Review the agent's recent calls; revoke its tokens if the activity was not intended.".to_owned(),
                },
            },
            "unmapped": {
                "gen_ai.agent.id": self.agent_id(),
                "mcp.session.id": self.session_id(),
                "audit.principal.sub": self.last_str(CoreField::PrincipalSub),
                "audit.token.jti": self.last_str(CoreField::TokenJti),
                "cordon.rule.id": self.rule_id,
                "cordon.rule.version": self.rule_version,
                "cordon.playbook": self.playbook,
                "cordon.baseline": self.events.last().and_then(|e| e.baseline()).map(|b| {
                    b.iter()
                        .map(|(f, x)| (f.name().to_owned(), json!(x.value)))
                        .collect::<serde_json::Map<String, Value>>()
                }),
            },
        })
    }
}
