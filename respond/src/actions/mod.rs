//! The actions, one file each: what request each one sends to its target, and what it
//! enforces once the target confirms it (for the closed loop).

use serde_json::{json, Value};

use crate::config::{ClientAuth, Target, TargetKind};
use crate::outbox::ActionRecord;
use crate::playbook::ActionKind;

pub mod isolate_server;
pub mod notify;
pub mod quarantine_agent;
pub mod require_approval;
pub mod revoke_token;

/// A request ready to send (before the signature headers, which are added at send time).
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The body.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: &'static str,
    /// HTTP Basic credentials (OAuth client authentication).
    pub basic_auth: Option<(String, String)>,
}

/// What the request carries beyond the action record.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The console's base URL, for links.
    pub console_url: Option<String>,
}

/// The request an action sends to its target.
pub fn request(r: &ActionRecord, t: &Target, ctx: &Context) -> Result<Outgoing, String> {
    match r.action {
        ActionKind::RevokeToken => revoke_token::request(r, t),
        ActionKind::IsolateServer => isolate_server::request(r, t),
        ActionKind::QuarantineAgent => quarantine_agent::request(r, t),
        ActionKind::Notify => notify::request(r, t, ctx),
        ActionKind::RequireApproval => Err("an approval gate sends nothing".into()),
    }
}

/// What an action enforces once it succeeded.
pub fn enforcement(r: &ActionRecord) -> Option<cordon_detect::Enforcement> {
    match r.action {
        ActionKind::RevokeToken => revoke_token::enforcement(r),
        ActionKind::IsolateServer => isolate_server::enforcement(r),
        ActionKind::QuarantineAgent => quarantine_agent::enforcement(r),
        ActionKind::Notify | ActionKind::RequireApproval => None,
    }
}

/// A Standard Webhooks JSON body: `{"type", "timestamp", "data"}`.
pub(crate) fn webhook(kind: &str, data: Value) -> Result<Outgoing, String> {
    let body = json!({
        "type": format!("cordon.{kind}"),
        "timestamp": jiff::Timestamp::now().to_string(),
        "data": data,
    });
    Ok(Outgoing {
        body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
        content_type: "application/json",
        basic_auth: None,
    })
}

/// A form body with OAuth client authentication (RFC 6749 §2.3.1).
pub(crate) fn oauth_form(t: &Target, fields: &[(&str, &str)]) -> Result<Outgoing, String> {
    let Some((id, secret)) = &t.client else {
        return Err(format!("target {} has no OAuth client", t.name));
    };
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        form.append_pair(k, v);
    }
    let basic_auth = match t.auth {
        ClientAuth::ClientSecretBasic => Some((id.clone(), secret.0.clone())),
        ClientAuth::ClientSecretPost => {
            form.append_pair("client_id", id);
            form.append_pair("client_secret", &secret.0);
            None
        }
    };
    Ok(Outgoing {
        body: form.finish().into_bytes(),
        content_type: "application/x-www-form-urlencoded",
        basic_auth,
    })
}

/// A TTL parameter in milliseconds.
pub(crate) fn ttl_ms(r: &ActionRecord) -> i64 {
    r.params
        .get("ttl")
        .and_then(|v| humantime::parse_duration(v).ok())
        .map_or(3_600_000, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The parameter, or an error naming it.
pub(crate) fn param<'a>(r: &'a ActionRecord, name: &str) -> Result<&'a str, String> {
    r.params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{} has no {name}", r.action.name()))
}

/// Whether a target is a plain webhook.
pub(crate) fn is_webhook(t: &Target) -> bool {
    t.kind == TargetKind::Webhook
}
