//! # cordon-respond
//!
//! What happens once an alert exists: alert sinks (OCSF JSON lines), and responses — playbooks
//! ([`playbook`]) whose steps become actions in a durable outbox ([`outbox`]), delivered to an
//! allow-list of targets ([`config`]) as Standard Webhooks-signed or RFC 7009 requests
//! ([`sign`], [`actions`]) with retries, rate limits and circuit breakers ([`runner`]), with
//! approval gates, and fed back to the engine once they took effect.

#![deny(missing_docs)]

pub mod actions;
pub mod config;
pub mod outbox;
pub mod playbook;
pub mod runner;
pub mod siem;
pub mod sign;
pub mod sinks;

pub use config::{ResponseConfig, Target};
pub use outbox::{ActionRecord, Outbox, State};
pub use playbook::{Playbook, Playbooks};
pub use runner::{Responder, ResponseStats};
pub use sinks::{AlertSink, JsonLinesSink, SinkError};
