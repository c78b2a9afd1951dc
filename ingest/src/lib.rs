//! # cordon-ingest
//!
//! Everything between the bytes an enforcement point writes and the [`Event`] that the
//! detectors read: the event model, the native single-pass decoder, normalisers for real gateways'
//! logs ([`formats`]), sources ([`sources`]), the dead-letter sink, content fingerprints, and a
//! seeded generator of realistic MCP traffic with labelled attacks ([`generate`]).
//!
//! Decoding is the hottest path of Cordon after rule evaluation, so the event keeps its core
//! fields in typed slots and the decoder writes into them directly from the JSON stream.

#![deny(missing_docs)]

pub mod catalogue;
pub mod deadletter;
pub mod decode;
pub mod error;
pub mod event;
pub mod fingerprint;
pub mod formats;
pub mod generate;
pub mod sources;
pub mod timestamp;

pub use deadletter::DeadLetterSink;
pub use decode::{decode_native, decode_reference, decode_with, full_decodes, Schema};
pub use error::{DecodeError, IngestError};
pub use event::{
    Baseline, BaselineFeatures, BaselineField, BaselineKind, Category, CoreField, Event, FieldKind,
    FieldRef, FieldValue,
};
pub use formats::Format;
pub use sources::{LineReader, RawRecord};
