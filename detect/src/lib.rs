//! # cordon-detect
//!
//! The streaming engine: detectors that read events in event order and emit [`Alert`]s.
//! Detectors are synchronous, pure and I/O-free — they are driven by whatever source feeds
//! them and tested without an async runtime. This crate holds the [`Detector`] trait, the
//! [`Engine`] that runs them, the filter-rule detector, and the alert type with its OCSF form.

#![deny(missing_docs)]

pub mod alert;
pub mod baseline;
pub mod checkpoint;
mod cow;
pub mod dedupe;
pub mod enforce;
pub mod engine;
pub mod engines;
pub mod keys;
pub mod profile;
pub mod sample;
pub mod sequence;
pub mod stateful;
pub mod suppress;
pub mod threshold;

pub use alert::{Alert, AnalyticType, OcsfText};
pub use cow::copies_on_write;
pub use enforce::{Enforced, Enforcement};
pub use engine::{run_rule_tests, Detector, Engine, EngineStats, Late, RuleStats};
pub use stateful::{Finding, StateStats, Stateful};
