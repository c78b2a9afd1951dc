//! # cordon-query
//!
//! Questions asked of alerts: the in-memory [`AlertIndex`] (filters and summaries for the CLI's
//! live view), [`eval`], which scores detections against labelled traffic, the Parquet alert
//! [`store`] partitioned by day, and read-only, limited [`sql`] over it with DataFusion.

#![deny(missing_docs)]

pub mod api;
pub mod eval;
pub mod index;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod sql;
pub mod store;
pub mod tls;

pub use eval::{evaluate, Label, Labels, Report, ScenarioScore};
pub use index::{AlertFilter, AlertIndex};
