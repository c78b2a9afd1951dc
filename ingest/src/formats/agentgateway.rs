//! agentgateway's JSON access log, normalised onto the event schema.
//!
//! Field names are agentgateway's (`crates/agentgateway/src/telemetry/log.rs`): `mcp.method.name`,
//! `mcp.target`, `gen_ai.tool.name`, `mcp.session.id`, `jwt.sub`, `src.identity`, `http.status`,
//! `duration` (`"87ms"`), `trace.id`, `span.id`, and the deployment-added `mcp.tool.arguments` /
//! `mcp.tool.result`. agentgateway has no agent id of its own: the agent is the JWT's client
//! (`jwt.client_id`, `jwt.azp`), else the workload identity (`src.identity`), else `jwt.sub`.
//! An authorization refusal shows as HTTP 401/403 and becomes `audit.decision: deny`. Fields
//! not mapped are kept under their own names.

use serde_json::Value;

use super::{take, take_str};
use crate::decode::{content_id, decode_with, Schema};
use crate::error::DecodeError;
use crate::event::{CoreField, Event};
use crate::fingerprint::fingerprints_of_args;

/// Decodes one access-log line.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut raw = decode_with(bytes, Schema::Generic)?;
    let mut ev = Event::new();

    let ts = ["timestamp", "time", "@timestamp", "start_time"]
        .into_iter()
        .find(|k| raw.get_extra(k).is_some())
        .ok_or(DecodeError::Missing { field: "timestamp" })?;
    let ts_text = take_str(&mut raw, ts)?.unwrap_or_default();
    ev.set_timestamp_text(&ts_text).map_err(|e| {
        DecodeError::Data(format!(
            "field `{ts}`: expected an RFC 3339 timestamp, found {ts_text:?} ({e})"
        ))
    })?;

    let simple = [
        ("mcp.method.name", CoreField::Method),
        ("mcp.target", CoreField::Target),
        ("gen_ai.tool.name", CoreField::ToolName),
        ("mcp.session.id", CoreField::SessionId),
        ("jwt.sub", CoreField::PrincipalSub),
        ("jwt.jti", CoreField::TokenJti),
        ("jwt.aud", CoreField::TokenAud),
        ("jwt.scope", CoreField::TokenScope),
        ("src.identity", CoreField::PrincipalSpiffeId),
        ("gen_ai.agent.id", CoreField::AgentId),
        ("gen_ai.agent.name", CoreField::AgentName),
    ];
    for (name, field) in simple {
        if let Some(v) = take_str(&mut raw, name)? {
            ev.set_str(field, v);
        }
    }
    let client = match take_str(&mut raw, "jwt.client_id")? {
        Some(c) => Some(c),
        None => take_str(&mut raw, "jwt.azp")?,
    };
    if let Some(c) = &client {
        ev.set_str(CoreField::PrincipalClientId, c.as_str());
    }
    if ev.agent_id().is_none() {
        let agent = client
            .or_else(|| ev.str(CoreField::PrincipalSpiffeId).map(str::to_owned))
            .or_else(|| ev.str(CoreField::PrincipalSub).map(str::to_owned));
        if let Some(a) = agent {
            ev.set_str(CoreField::AgentId, a);
        }
    }
    if ev.str(CoreField::Method).is_none() && ev.tool_name().is_some() {
        ev.set_str(CoreField::Method, "tools/call");
    }

    let status = match raw.get_extra("http.status") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let decision = match status {
        Some(401 | 403) => "deny",
        _ => "allow",
    };
    ev.set_str(CoreField::Decision, decision);
    if let Some(code) = raw.get_extra("mcp.error.code") {
        let code = match code {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        ev.set_str(CoreField::ErrorType, code);
    } else if let Some(s) = status.filter(|s| *s >= 400) {
        ev.set_str(CoreField::ErrorType, s.to_string());
    }

    if let Some(d) = take_str(&mut raw, "duration")? {
        let ms = parse_duration_ms(&d).ok_or_else(|| {
            DecodeError::Data(format!(
                "field `duration`: expected a duration like \"87ms\", found {d:?}"
            ))
        })?;
        ev.set_duration_ms(ms);
    }
    if let Some(args) = take(&mut raw, "mcp.tool.arguments") {
        let args = json_or_text(args);
        ev.set_fingerprints(CoreField::ArgsFp, fingerprints_of_args(&args));
        ev.set_arguments(args);
    }
    if let Some(result) = take(&mut raw, "mcp.tool.result") {
        let result = json_or_text(result);
        let bytes = match &result {
            Value::String(s) => s.len(),
            other => other.to_string().len(),
        };
        ev.set_result_bytes(bytes as i64);
        ev.set_fingerprints(CoreField::ResultFp, fingerprints_of_args(&result));
    }

    let id = match (raw.get_extra("trace.id"), raw.get_extra("span.id")) {
        (Some(Value::String(t)), Some(Value::String(s))) => format!("agw-{t}-{s}"),
        _ => content_id(bytes),
    };
    ev.set_str(CoreField::EventId, id);
    super::keep_unmapped(&mut ev, &raw, "agentgateway");
    crate::catalogue::label(&mut ev);
    Ok(ev)
}

/// Arguments logged through CEL may arrive as a JSON text; parse it when it is one.
fn json_or_text(v: Value) -> Value {
    match v {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(parsed @ (Value::Object(_) | Value::Array(_))) => parsed,
            _ => Value::String(s),
        },
        other => other,
    }
}

/// Parses agentgateway's duration text (`"87ms"`, `"1.5s"`, `"250µs"`) to milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 1e-6,
        "us" | "µs" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldValue;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("87ms"), Some(87.0));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_duration_ms("250µs"), Some(0.25));
        assert_eq!(parse_duration_ms("fast"), None);
        assert_eq!(parse_duration_ms("12parsecs"), None);
    }

    #[test]
    fn denied_call() {
        let ev = decode(br#"{"timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","mcp.target":"github","gen_ai.tool.name":"delete_repo","jwt.sub":"alice","jwt.client_id":"agent-7","http.status":403,"duration":"3ms","trace.id":"t1","span.id":"s1"}"#).unwrap();
        assert_eq!(ev.agent_id(), Some("agent-7"));
        assert_eq!(ev.core(CoreField::Decision), FieldValue::Str("deny"));
        assert_eq!(ev.core(CoreField::Target), FieldValue::Str("github"));
        assert_eq!(ev.id(), Some("agw-t1-s1"));
        assert_eq!(ev.get("trace.id"), FieldValue::Str("t1"));
        assert_eq!(ev.get("http.status"), FieldValue::Int(403));
    }

    #[test]
    fn arguments_as_object_or_json_text() {
        for args in [
            r#"{"url":"https://x.example/a","opts":{"n":1}}"#,
            r#""{\"url\":\"https://x.example/a\",\"opts\":{\"n\":1}}""#,
        ] {
            let line = format!(
                r#"{{"timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.name":"http_post","mcp.tool.arguments":{args}}}"#
            );
            let ev = decode(line.as_bytes()).unwrap();
            assert_eq!(
                ev.get("gen_ai.tool.call.arguments.url"),
                FieldValue::Str("https://x.example/a"),
                "{line}"
            );
            assert_eq!(
                ev.get("gen_ai.tool.call.arguments.opts.n"),
                FieldValue::Int(1)
            );
            assert!(ev.args_fp().is_some_and(|f| !f.is_empty()));
            assert_eq!(ev.category().as_str(), "tool");
        }
    }
}
