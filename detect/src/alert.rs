//! The alert: what a detector found, with its evidence, rendered as an OCSF 1.8 Detection
//! Finding (`class_uid` 2004) so that SIEMs and data lakes take it as it is.
//!
//! Alert ids are derived from the rule and the evidence event ids, not drawn at random: a replay
//! of the same events (after a crash, from Kafka) yields the same ids, so a store or a receiver
//! can drop duplicates.

use cordon_ingest::{BaselineField, BaselineKind, CoreField, Event};
use cordon_rules::{Rule, Severity};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;
use serde_json::Value;
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

    /// The alert as an OCSF 1.8 Detection Finding (activity Create, status New), as a JSON
    /// value: [`Alert::render_ocsf`]'s text, read back.
    pub fn to_ocsf(&self) -> Value {
        serde_json::from_str(&self.render_ocsf().json).unwrap_or(Value::Null)
    }

    /// The alert as an OCSF 1.8 Detection Finding (activity Create, status New), written
    /// as JSON text in one pass, with where its evidences and baseline figures are in it.
    ///
    /// Every sink writes this text (the alerts file, the alerts topic, the store's columns).
    /// It is written directly from the alert: building a `serde_json::Value` tree first
    /// (every evidence event as a map of owned strings), then writing the tree once per
    /// sink and per store column, was most of what alerts cost while live, where a threshold
    /// alert carries 20 events. Keys come in the order a `Value` map gives them (sorted),
    /// except inside each evidence's `data`, which is the event in its native field order.
    pub fn render_ocsf(&self) -> OcsfText {
        let related: Vec<Related<'_>> = self
            .events
            .iter()
            .map(|e| Related {
                title: e.tool_name().or(e.str(CoreField::Method)),
                type_uid: 600399,
                uid: e.id(),
            })
            .collect();
        let evidences: Vec<Evidence<'_>> = self
            .events
            .iter()
            .map(|e| Evidence {
                actor: e.str(CoreField::PrincipalSub).map(|sub| Actor {
                    app_name: e.agent_id(),
                    user: Uid { uid: sub },
                }),
                api: Api {
                    operation: e.tool_name().or(e.str(CoreField::Method)),
                    service: Name {
                        name: e.str(CoreField::Target),
                    },
                },
                data: e,
            })
            .collect();
        let mut targets: Vec<&str> = self
            .events
            .iter()
            .filter_map(|e| e.str(CoreField::Target))
            .collect();
        targets.dedup();
        let resources: Vec<Resource<'_>> = targets
            .iter()
            .map(|t| Resource {
                name: t,
                r#type: "MCP Server",
                uid: t,
            })
            .collect();
        // Baseline figures behind the alert: what the agent normally does, what departed.
        let mut analyses: Vec<Analysis> = Vec::new();
        for e in &self.events {
            let Some(b) = e.baseline() else { continue };
            let target = format!("gen_ai.agent.id={}", e.agent_id().unwrap_or("-"));
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
                analyses.push(Analysis {
                    analysis_targets: [NameOwned {
                        name: target.clone(),
                    }],
                    anomalies: [Observed::new(what, observed)],
                    baselines: [Observed::new(what, expected)],
                    unmapped: Feature {
                        feature: field.name(),
                        score: x.value,
                    },
                });
            }
        }
        let risk_score = match self.severity {
            Severity::Informational => 10,
            Severity::Low => 30,
            Severity::Medium => 50,
            Severity::High => 75,
            Severity::Critical => 95,
        };
        let session = self.session_id();
        let (at, marks) = (Cell::new(0), RefCell::new(Vec::with_capacity(4)));
        let finding = Finding {
            activity_id: 1,
            activity_name: "Create",
            anomaly_analyses: analyses,
            category_name: "Findings",
            category_uid: 2,
            class_name: "Detection Finding",
            class_uid: 2004,
            confidence_id: 3,
            evidences: Marked {
                value: evidences,
                at: &at,
                marks: &marks,
            },
            finding_info: FindingInfo {
                analytic: Analytic {
                    name: &self.title,
                    r#type: match self.analytic {
                        AnalyticType::Rule => "Rule",
                        AnalyticType::Behavioral => "Behavioral",
                        AnalyticType::Statistical => "Statistical",
                    },
                    type_id: self.analytic as u8,
                    uid: &self.rule_id,
                    version: self.rule_version.to_string(),
                },
                desc: &self.description,
                first_seen_time: self.first_seen_ms,
                last_seen_time: self.last_seen_ms,
                related_events: related,
                title: &self.title,
                types: &self.tags,
                uid: &self.id,
            },
            is_alert: true,
            message: &self.message,
            metadata: Metadata {
                correlation_uid: session.or(self.agent_id()),
                product: Product {
                    name: "Cordon",
                    vendor_name: "Cordon",
                    version: env!("CARGO_PKG_VERSION"),
                },
                uid: &self.id,
                version: "1.8.0",
            },
            remediation: Remediation {
                desc: match &self.playbook {
                    Some(p) => format!("Playbook `{p}` applies. Review the agent's recent calls."),
                    None => "Review the agent's recent calls; revoke its tokens if the activity was not intended.".to_owned(),
                },
            },
            resources,
            risk_score,
            severity: self.severity.name(),
            severity_id: self.severity.ocsf_id(),
            status: "New",
            status_id: 1,
            time: self.last_seen_ms,
            type_uid: 200401,
            unmapped: Unmapped {
                principal_sub: self.last_str(CoreField::PrincipalSub),
                token_jti: self.last_str(CoreField::TokenJti),
                baseline: self.events.last().and_then(|e| e.baseline()).map(|b| {
                    Marked {
                    value: b
                        .iter()
                        .map(|(f, x)| (f.name(), x.value))
                        .collect::<BTreeMap<&'static str, f64>>(),
                    at: &at,
                    marks: &marks,
                }
                }),
                playbook: self.playbook.as_deref(),
                rule_id: &self.rule_id,
                rule_version: self.rule_version,
                agent_id: self.agent_id(),
                session_id: session,
            },
        };
        let mut out = Counted {
            bytes: Vec::with_capacity(2048 + 1536 * self.events.len()),
            at: &at,
        };
        // Writing to a `Vec` fails only on a non-string map key or a failing `Serialize`,
        // and there is neither here.
        let _ = serde_json::to_writer(&mut out, &finding);
        let marks = marks.into_inner();
        let range = |i: usize| Some(*marks.get(2 * i)?..*marks.get(2 * i + 1)?);
        OcsfText {
            // serde_json writes only UTF-8.
            json: String::from_utf8(out.bytes).unwrap_or_default(),
            evidences: range(0).unwrap_or(0..0),
            baseline: range(1),
        }
    }
}

/// An alert rendered as OCSF JSON text ([`Alert::render_ocsf`]).
#[derive(Clone, Debug)]
pub struct OcsfText {
    /// The whole finding.
    pub json: String,
    evidences: Range<usize>,
    baseline: Option<Range<usize>>,
}

impl OcsfText {
    /// The `evidences` array, as it is in the finding.
    pub fn evidences(&self) -> &str {
        self.json.get(self.evidences.clone()).unwrap_or("[]")
    }

    /// The whole finding with an empty `evidences` array: for a sink with a size limit that
    /// the evidences' data would break (`finding_info.related_events` still names every
    /// event).
    pub fn without_evidences(&self) -> String {
        let r = &self.evidences;
        match (self.json.get(..r.start), self.json.get(r.end..)) {
            (Some(head), Some(tail)) if !r.is_empty() => format!("{head}[]{tail}"),
            _ => self.json.clone(),
        }
    }

    /// The `unmapped["cordon.baseline"]` object (the last event's baseline figures), if the
    /// last event has any.
    pub fn baseline(&self) -> Option<&str> {
        self.json.get(self.baseline.clone()?)
    }
}

/// A writer that counts what it has written, so that a [`Marked`] value can note where its
/// text starts and ends. serde_json writes a value's text to the writer while it serialises
/// it, the key and colon first, so the count when the value's `serialize` is called is where
/// the value starts, and the count when it returns is where it ends.
struct Counted<'a> {
    bytes: Vec<u8>,
    at: &'a Cell<usize>,
}

impl std::io::Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.at.set(self.bytes.len());
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write(buf).map(|_| ())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A value whose start and end in the [`Counted`] text are noted in `marks`.
struct Marked<'a, T> {
    value: T,
    at: &'a Cell<usize>,
    marks: &'a RefCell<Vec<usize>>,
}

impl<T: Serialize> Serialize for Marked<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.marks.borrow_mut().push(self.at.get());
        let r = self.value.serialize(s)?;
        self.marks.borrow_mut().push(self.at.get());
        Ok(r)
    }
}

#[derive(Serialize)]
struct Finding<'a> {
    activity_id: u8,
    activity_name: &'static str,
    anomaly_analyses: Vec<Analysis>,
    category_name: &'static str,
    category_uid: u8,
    class_name: &'static str,
    class_uid: u32,
    confidence_id: u8,
    evidences: Marked<'a, Vec<Evidence<'a>>>,
    finding_info: FindingInfo<'a>,
    is_alert: bool,
    message: &'a str,
    metadata: Metadata<'a>,
    remediation: Remediation,
    resources: Vec<Resource<'a>>,
    risk_score: u8,
    severity: &'static str,
    severity_id: u8,
    status: &'static str,
    status_id: u8,
    time: i64,
    type_uid: u32,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Related<'a> {
    title: Option<&'a str>,
    type_uid: u32,
    uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Evidence<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    api: Api<'a>,
    data: &'a Event,
}

#[derive(Serialize)]
struct Actor<'a> {
    app_name: Option<&'a str>,
    user: Uid<'a>,
}

#[derive(Serialize)]
struct Uid<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct Api<'a> {
    operation: Option<&'a str>,
    service: Name<'a>,
}

#[derive(Serialize)]
struct Name<'a> {
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct Resource<'a> {
    name: &'a str,
    r#type: &'static str,
    uid: &'a str,
}

#[derive(Serialize)]
struct Analysis {
    analysis_targets: [NameOwned; 1],
    anomalies: [Observed; 1],
    baselines: [Observed; 1],
    unmapped: Feature,
}

#[derive(Serialize)]
struct NameOwned {
    name: String,
}

#[derive(Serialize)]
struct Observed {
    observation_parameter: &'static str,
    observations: [Observation; 1],
}

impl Observed {
    fn new(what: &'static str, value: String) -> Observed {
        Observed {
            observation_parameter: what,
            observations: [Observation { value }],
        }
    }
}

#[derive(Serialize)]
struct Observation {
    value: String,
}

#[derive(Serialize)]
struct Feature {
    feature: &'static str,
    score: f64,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    analytic: Analytic<'a>,
    desc: &'a str,
    first_seen_time: i64,
    last_seen_time: i64,
    related_events: Vec<Related<'a>>,
    title: &'a str,
    types: &'a [String],
    uid: &'a str,
}

#[derive(Serialize)]
struct Analytic<'a> {
    name: &'a str,
    r#type: &'static str,
    type_id: u8,
    uid: &'a str,
    version: String,
}

#[derive(Serialize)]
struct Metadata<'a> {
    correlation_uid: Option<&'a str>,
    product: Product,
    uid: &'a str,
    version: &'static str,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Remediation {
    desc: String,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    #[serde(rename = "audit.principal.sub")]
    principal_sub: Option<&'a str>,
    #[serde(rename = "audit.token.jti")]
    token_jti: Option<&'a str>,
    #[serde(rename = "cordon.baseline")]
    baseline: Option<Marked<'a, BTreeMap<&'static str, f64>>>,
    #[serde(rename = "cordon.playbook")]
    playbook: Option<&'a str>,
    #[serde(rename = "cordon.rule.id")]
    rule_id: &'a str,
    #[serde(rename = "cordon.rule.version")]
    rule_version: u32,
    #[serde(rename = "gen_ai.agent.id")]
    agent_id: Option<&'a str>,
    #[serde(rename = "mcp.session.id")]
    session_id: Option<&'a str>,
}
