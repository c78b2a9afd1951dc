//! `revoke_token`: revoke the agent's token at the identity provider.
//!
//! To an `oauth_revocation` target, an RFC 7009 request: a form POST of `token` and
//! `token_type_hint` with the client's authentication (HTTP Basic or in the body). The server
//! answers 200 even for a token it does not know, so the action is idempotent; 503 with
//! `Retry-After` means try again later. To a `webhook` target (an IdP with its own API behind
//! an adapter), a signed `cordon.revoke_token` event with the token and the subject.

use serde_json::json;

use super::{is_webhook, oauth_form, param, webhook, Outgoing};
use crate::config::Target;
use crate::outbox::ActionRecord;

/// The request.
pub fn request(r: &ActionRecord, t: &Target) -> Result<Outgoing, String> {
    let token = param(r, "token")?;
    let hint = r
        .params
        .get("token_type_hint")
        .map_or("access_token", String::as_str);
    if is_webhook(t) {
        return webhook(
            "revoke_token",
            json!({
                "token": token,
                "token_type_hint": hint,
                "subject": r.params.get("subject"),
                "alert_id": r.alert_id,
                "rule_id": r.rule_id,
            }),
        );
    }
    oauth_form(t, &[("token", token), ("token_type_hint", hint)])
}

/// The token is revoked from the alert's trigger on.
pub fn enforcement(r: &ActionRecord) -> Option<cordon_detect::Enforcement> {
    Some(cordon_detect::Enforcement::TokenRevoked {
        token: r.params.get("token")?.clone(),
        from_ms: r.trigger_ms,
    })
}
