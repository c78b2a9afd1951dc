//! # cordon-query
//!
//! Questions asked of alerts. This first part holds the in-memory [`AlertIndex`] (filters and
//! summaries for the CLI's live view) and [`eval`], which scores detections against labelled
//! traffic. The Parquet store, DataFusion SQL and the HTTP API build on the same index.

#![deny(missing_docs)]

pub mod eval;
pub mod index;

pub use eval::{evaluate, Label, Labels, Report, ScenarioScore};
pub use index::{AlertFilter, AlertIndex};
