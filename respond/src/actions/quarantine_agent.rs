//! `quarantine_agent`: tell the gateway to deny every call by an agent (and, when known, the
//! principal it acts for) for a TTL, as a signed `cordon.quarantine_agent` event.

use serde_json::json;

use super::{param, ttl_ms, webhook, Outgoing};
use crate::config::Target;
use crate::outbox::ActionRecord;

/// The request.
pub fn request(r: &ActionRecord, _t: &Target) -> Result<Outgoing, String> {
    let agent = param(r, "agent")?;
    webhook(
        "quarantine_agent",
        json!({
            "agent": agent,
            "principal": r.params.get("principal").filter(|p| !p.is_empty()),
            "ttl_seconds": ttl_ms(r) / 1000,
            "reason": r.params.get("reason"),
            "alert_id": r.alert_id,
            "rule_id": r.rule_id,
        }),
    )
}

/// The agent is quarantined for the TTL from the alert's trigger.
pub fn enforcement(r: &ActionRecord) -> Option<cordon_detect::Enforcement> {
    Some(cordon_detect::Enforcement::AgentQuarantined {
        agent: r.params.get("agent")?.clone(),
        from_ms: r.trigger_ms,
        until_ms: r.trigger_ms.saturating_add(ttl_ms(r)),
    })
}
