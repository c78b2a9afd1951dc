//! # cordon-respond
//!
//! What happens once an alert exists. This first part holds the alert sinks — where alerts are
//! written as OCSF JSON lines (a file or stdout). Playbooks, signed webhooks and the durable
//! action outbox build on the same [`AlertSink`] trait.

#![deny(missing_docs)]

pub mod sinks;

pub use sinks::{AlertSink, JsonLinesSink, SinkError};
