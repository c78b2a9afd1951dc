//! Cordon's native events: flat dotted keys (or nested objects) named after the OpenTelemetry
//! GenAI/MCP conventions, decoded by the schema-aware single-pass decoder.

use crate::decode::decode_native;
use crate::error::DecodeError;
use crate::event::Event;

/// Decodes one native event.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_native(bytes)
}
