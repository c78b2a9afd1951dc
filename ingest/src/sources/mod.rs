//! Sources of records. Files, directories and stdin live here; the Kafka source joins them in
//! its own module. A source yields raw records with where they came from, so that a record that
//! fails to decode can be dead-lettered with its origin.

pub mod file;

pub use file::{LineReader, RawRecord};
