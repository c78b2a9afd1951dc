//! `require_approval`: a gate. When the playbook reaches it, it waits (`awaiting_approval`)
//! until an analyst approves — the following steps then run — or denies — they are cancelled
//! — or its `expires` deadline passes — expired, cancelled too. It sends nothing; the state
//! machine lives in the outbox ([`crate::outbox::Outbox::decide`], [`crate::outbox::Outbox::expire`]),
//! and the API (or `cordon actions approve|deny`) drives it.

/// The default deadline of a gate.
pub const DEFAULT_EXPIRES: &str = "1h";
