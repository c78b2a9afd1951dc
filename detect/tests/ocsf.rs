//! The alert's OCSF text is written directly, in one pass (`Alert::render_ocsf`). This holds it
//! to the document the earlier `serde_json::Value` builder made — kept here as the oracle —
//! for every alert of a generated day with every attack scenario, and holds the evidences and
//! baseline parts the alert store keeps in columns of their own to the same document.

#![allow(clippy::unwrap_used)]

use cordon_detect::{Alert, AnalyticType, Engine};
use cordon_ingest::generate::{generate, GenConfig};
use cordon_ingest::{BaselineField, BaselineKind, CoreField};
use cordon_rules::{RuleSet, Severity};
use serde_json::{json, Value};

fn last_str(a: &Alert, f: CoreField) -> Option<&str> {
    a.events.iter().rev().find_map(|e| e.str(f))
}

/// The finding as the `Value` builder made it before the direct writer.
fn reference(a: &Alert) -> Value {
    let related: Vec<Value> = a
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
    let evidences: Vec<Value> = a
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
    let mut targets: Vec<&str> = a
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
    for e in &a.events {
        let Some(b) = e.baseline() else { continue };
        let target = json!([{"name": format!("gen_ai.agent.id={}", e.agent_id().unwrap_or("-"))}]);
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
                BaselineKind::Score => (format!("{:.2}", x.expected), format!("{}", x.observed)),
            };
            analyses.push(json!({
                "analysis_targets": target,
                "baselines": [{"observation_parameter": what, "observations": [{"value": expected}]}],
                "anomalies": [{"observation_parameter": what, "observations": [{"value": observed}]}],
                "unmapped": {"feature": field.name(), "score": x.value},
            }));
        }
    }
    let risk = match a.severity {
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
        "time": a.last_seen_ms,
        "severity_id": a.severity.ocsf_id(),
        "severity": a.severity.name(),
        "status_id": 1,
        "status": "New",
        "confidence_id": 3,
        "is_alert": true,
        "message": a.message,
        "risk_score": risk,
        "metadata": {
            "version": "1.8.0",
            "uid": a.id,
            "correlation_uid": a.session_id().or(a.agent_id()),
            "product": {
                "name": "Cordon",
                "vendor_name": "Cordon",
                "version": "0.1.0",
            },
        },
        "finding_info": {
            "uid": a.id,
            "title": a.title,
            "desc": a.description,
            "types": a.tags,
            "analytic": {
                "uid": a.rule_id,
                "name": a.title,
                "type_id": a.analytic as u8,
                "type": match a.analytic {
                    AnalyticType::Rule => "Rule",
                    AnalyticType::Behavioral => "Behavioral",
                    AnalyticType::Statistical => "Statistical",
                },
                "version": a.rule_version.to_string(),
            },
            "first_seen_time": a.first_seen_ms,
            "last_seen_time": a.last_seen_ms,
            "related_events": related,
        },
        "evidences": evidences,
        "anomaly_analyses": analyses,
        "resources": resources,
        "remediation": {
            "desc": match &a.playbook {
                Some(p) => format!("Playbook `{p}` applies. Review the agent's recent calls."),
                None => "Review the agent's recent calls; revoke its tokens if the activity was not intended.".to_owned(),
            },
        },
        "unmapped": {
            "gen_ai.agent.id": a.agent_id(),
            "mcp.session.id": a.session_id(),
            "audit.principal.sub": last_str(a, CoreField::PrincipalSub),
            "audit.token.jti": last_str(a, CoreField::TokenJti),
            "cordon.rule.id": a.rule_id,
            "cordon.rule.version": a.rule_version,
            "cordon.playbook": a.playbook,
            "cordon.baseline": a.events.last().and_then(|e| e.baseline()).map(|b| {
                b.iter()
                    .map(|(f, x)| (f.name().to_owned(), json!(x.value)))
                    .collect::<serde_json::Map<String, Value>>()
            }),
        },
    })
}

#[test]
fn the_direct_text_is_the_document_the_value_builder_made() {
    let events = generate(&GenConfig {
        seed: 3,
        agents: 12,
        duration_nanos: 30 * 3_600_000_000_000,
        sessions_per_attack: 2,
        ..Default::default()
    })
    .events;
    let set = RuleSet::builtin().unwrap();
    let mut engine = Engine::new(&set);
    let mut alerts = Vec::new();
    for e in events {
        engine.push(e, &mut alerts).unwrap();
    }
    engine.finish(&mut alerts);
    let (mut baselines, mut analyses, mut actors) = (0, 0, 0);
    for a in &alerts {
        let text = a.render_ocsf();
        let direct: Value = serde_json::from_str(&text.json).unwrap();
        let want = reference(a);
        assert_eq!(direct, want, "alert {}", a.id);
        assert_eq!(a.to_ocsf(), want);
        let ev: Value = serde_json::from_str(text.evidences()).unwrap();
        assert_eq!(ev, want["evidences"]);
        // Without the evidences: the same document with an empty array.
        let mut short = want.clone();
        short["evidences"] = Value::Array(Vec::new());
        let without: Value = serde_json::from_str(&text.without_evidences()).unwrap();
        assert_eq!(without, short, "alert {}", a.id);
        assert!(text.without_evidences().len() < text.json.len());
        let b = &want["unmapped"]["cordon.baseline"];
        match text.baseline() {
            Some(t) => {
                assert_eq!(&serde_json::from_str::<Value>(t).unwrap(), b);
                baselines += 1;
            }
            None => assert!(b.is_null()),
        }
        analyses += usize::from(!want["anomaly_analyses"].as_array().unwrap().is_empty());
        actors += usize::from(want["evidences"][0].get("actor").is_some());
    }
    // The comparison covered every part of the document.
    assert!(alerts.len() > 20, "{} alerts", alerts.len());
    assert!(
        baselines > 0 && analyses > 0 && actors > 0,
        "{baselines} {analyses} {actors}"
    );
}
