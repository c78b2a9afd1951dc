//! Docker MCP gateway policy audit events (`pkg/policy/audit.go`), normalised onto the event
//! schema: `actor_id`/`actor_name` are the agent, `server_name` the target, `tool_name` the tool,
//! `result` (`allowed`/`denied`) the decision, `session_id` the session, `target_type`
//! (`tool`/`prompt`/`server`) gives the MCP method. Other fields are kept under their own names.

use super::take_str;
use crate::decode::{content_id, decode_with, Schema};
use crate::error::DecodeError;
use crate::event::{CoreField, Event};

/// Decodes one audit event.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut raw = decode_with(bytes, Schema::Generic)?;
    let mut ev = Event::new();
    let ts = take_str(&mut raw, "timestamp")?.ok_or(DecodeError::Missing { field: "timestamp" })?;
    ev.set_timestamp_text(&ts).map_err(|e| {
        DecodeError::Data(format!(
            "field `timestamp`: expected an RFC 3339 timestamp, found {ts:?} ({e})"
        ))
    })?;
    for (name, field) in [
        ("actor_id", CoreField::AgentId),
        ("actor_name", CoreField::AgentName),
        ("server_name", CoreField::Target),
        ("tool_name", CoreField::ToolName),
        ("session_id", CoreField::SessionId),
    ] {
        if let Some(v) = take_str(&mut raw, name)? {
            ev.set_str(field, v);
        }
    }
    if raw.get_extra("actor_type").and_then(|v| v.as_str()) == Some("user") {
        if let Some(a) = ev.agent_id().map(str::to_owned) {
            ev.set_str(CoreField::PrincipalSub, a);
        }
    }
    let decision = match take_str(&mut raw, "result")?.as_deref() {
        Some("allowed") => "allow",
        Some("denied") => "deny",
        Some(other) => {
            return Err(DecodeError::Data(format!(
                "field `result`: expected \"allowed\" or \"denied\", found {other:?}"
            )))
        }
        None => return Err(DecodeError::Missing { field: "result" }),
    };
    ev.set_str(CoreField::Decision, decision);
    let method = match raw.get_extra("target_type").and_then(|v| v.as_str()) {
        Some("prompt") => "prompts/get",
        Some("server") => "initialize",
        _ => "tools/call",
    };
    ev.set_str(CoreField::Method, method);
    if let Some(t) = take_str(&mut raw, "trace_id")? {
        ev.set_extra("trace.id", serde_json::Value::String(t));
    }
    ev.set_str(CoreField::EventId, content_id(bytes));
    super::keep_unmapped(&mut ev, &raw, "docker");
    crate::catalogue::label(&mut ev);
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldValue;

    #[test]
    fn denied_tool_call() {
        let ev = decode(br#"{"actor_type":"agent","actor_id":"ag-1","server_name":"github","tool_name":"create_issue","target_type":"tool","result":"denied","outcome_reason":"policy_rule","session_id":"s9","timestamp":"2026-11-20T10:00:00Z","client_name":"claude-code"}"#).unwrap();
        assert_eq!(ev.agent_id(), Some("ag-1"));
        assert_eq!(ev.core(CoreField::Decision), FieldValue::Str("deny"));
        assert_eq!(ev.category().as_str(), "tool");
        assert_eq!(ev.get("client_name"), FieldValue::Str("claude-code"));
    }

    #[test]
    fn bad_result_is_named() {
        let err = decode(br#"{"timestamp":"2026-11-20T10:00:00Z","result":"maybe"}"#).unwrap_err();
        assert!(err.to_string().contains("`result`"), "{err}");
    }
}
