//! Alert sinks. A sink receives every alert once, in order, and must make it durable (or fail
//! loudly) before [`AlertSink::flush`] returns: the caller commits its input position only
//! after a successful flush.

mod jsonl;

pub use jsonl::JsonLinesSink;

use cordon_detect::Alert;

/// Why a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed.
    #[error("{target}: {source}")]
    Io {
        /// Where the sink writes.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Somewhere alerts go.
pub trait AlertSink {
    /// Accepts one alert.
    fn emit(&mut self, alert: &Alert) -> Result<(), SinkError>;
    /// Makes every accepted alert durable.
    fn flush(&mut self) -> Result<(), SinkError>;
}
