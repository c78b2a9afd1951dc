//! `notify`: post the alert's summary to a chat or ticketing webhook, signed, with a link to
//! the alert in the console when its URL is configured.

use serde_json::json;

use super::{param, webhook, Context, Outgoing};
use crate::config::Target;
use crate::outbox::ActionRecord;

/// The request.
pub fn request(r: &ActionRecord, _t: &Target, ctx: &Context) -> Result<Outgoing, String> {
    let text = param(r, "text")?;
    let link = ctx
        .console_url
        .as_ref()
        .map(|u| format!("{}/alerts/{}", u.trim_end_matches('/'), r.alert_id));
    webhook(
        "notify",
        json!({
            "text": text,
            "alert_id": r.alert_id,
            "rule_id": r.rule_id,
            "link": link,
        }),
    )
}
