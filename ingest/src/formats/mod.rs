//! Input formats: Cordon's native events and the logs of real enforcement points, each
//! normalised onto the event schema so that one rule set covers every gateway.

pub mod agentgateway;
pub mod docker;
pub mod native;

use std::str::FromStr;

use crate::error::DecodeError;
use crate::event::Event;

/// The format of input records, selected by config or `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Cordon's event schema (DESIGN.md "Events").
    #[default]
    Native,
    /// agentgateway's JSON access log.
    Agentgateway,
    /// Docker MCP gateway policy audit events.
    Docker,
}

impl Format {
    /// Decodes one record.
    pub fn decode(self, bytes: &[u8]) -> Result<Event, DecodeError> {
        match self {
            Format::Native => native::decode(bytes),
            Format::Agentgateway => agentgateway::decode(bytes),
            Format::Docker => docker::decode(bytes),
        }
    }

    /// The format's name as written in config and flags.
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Agentgateway => "agentgateway",
            Format::Docker => "docker",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "native" => Ok(Format::Native),
            "agentgateway" => Ok(Format::Agentgateway),
            "docker" => Ok(Format::Docker),
            other => Err(format!(
                "unknown format {other:?}: expected native, agentgateway or docker"
            )),
        }
    }
}

/// Takes a string-valued extra field out of a generically decoded record.
pub(crate) fn take_str(ev: &mut Event, name: &str) -> Result<Option<String>, DecodeError> {
    match take(ev, name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(DecodeError::Data(format!(
            "field `{name}`: expected a string, found {}",
            kind(&other)
        ))),
    }
}

/// Takes a field out of a generically decoded record. A JSON object was flattened by the
/// decoder (`{"a":{"b":1}}` became `a.b`): its leaves are gathered back into an object.
pub(crate) fn take(ev: &mut Event, name: &str) -> Option<serde_json::Value> {
    if let Some(v) = ev.get_extra(name).cloned() {
        ev.remove_extra(name);
        return Some(v);
    }
    let prefix = format!("{name}.");
    let leaves: Vec<(String, serde_json::Value)> = ev
        .extra()
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&prefix)
                .map(|rest| (rest.to_owned(), v.clone()))
        })
        .collect();
    if leaves.is_empty() {
        return None;
    }
    let mut root = serde_json::Map::new();
    for (path, v) in leaves {
        ev.remove_extra(&format!("{prefix}{path}"));
        let mut node = &mut root;
        let mut segs = path.split('.').peekable();
        while let Some(seg) = segs.next() {
            if segs.peek().is_none() {
                node.insert(seg.to_owned(), v);
                break;
            }
            let child = node
                .entry(seg.to_owned())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if !child.is_object() {
                *child = serde_json::Value::Object(serde_json::Map::new());
            }
            match child.as_object_mut() {
                Some(m) => node = m,
                None => break,
            }
        }
    }
    Some(serde_json::Value::Object(root))
}

pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Copies the fields a normaliser did not map into the event under their own names. A field
/// whose name is a core field's (the gateway logged, say, its own `audit.decision`) is kept
/// under `FORMAT.NAME` instead: it was not mapped, so it must not pose as the core field.
pub(crate) fn keep_unmapped(ev: &mut Event, raw: &Event, format: &str) {
    for (k, v) in raw.extra() {
        if crate::event::CoreField::from_name(k).is_some() {
            ev.set_extra(format!("{format}.{k}"), v.clone());
        } else {
            ev.set_extra(k.clone(), v.clone());
        }
    }
}
