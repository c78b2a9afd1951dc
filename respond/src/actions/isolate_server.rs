//! `isolate_server`: tell the gateway's kill switch to deny every call to an MCP server for a
//! TTL (a signed `cordon.isolate_server` event with the server, the TTL and the reason). The
//! gateway applies it as it can — agentgateway by a deny in its `mcpAuthorization` rules,
//! Kubernetes by a deny-all `NetworkPolicy` on the server's pods.

use serde_json::json;

use super::{param, ttl_ms, webhook, Outgoing};
use crate::config::Target;
use crate::outbox::ActionRecord;

/// The request.
pub fn request(r: &ActionRecord, _t: &Target) -> Result<Outgoing, String> {
    let server = param(r, "server")?;
    webhook(
        "isolate_server",
        json!({
            "server": server,
            "ttl_seconds": ttl_ms(r) / 1000,
            "reason": r.params.get("reason"),
            "alert_id": r.alert_id,
            "rule_id": r.rule_id,
        }),
    )
}

/// Calls to the server are isolated for the TTL from the alert's trigger.
pub fn enforcement(r: &ActionRecord) -> Option<cordon_detect::Enforcement> {
    Some(cordon_detect::Enforcement::ServerIsolated {
        server: r.params.get("server")?.clone(),
        from_ms: r.trigger_ms,
        until_ms: r.trigger_ms.saturating_add(ttl_ms(r)),
    })
}
