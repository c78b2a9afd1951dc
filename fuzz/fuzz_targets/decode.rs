//! Every input format's decoder on arbitrary bytes: errors are fine, panics are not.
#![no_main]

use cordon_ingest::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for f in [Format::Native, Format::Agentgateway, Format::Docker] {
        if let Ok(ev) = f.decode(data) {
            // A decoded event must serialise and decode again.
            let line = serde_json_line(&ev);
            let _ = Format::Native.decode(line.as_bytes());
        }
    }
});

fn serde_json_line(ev: &cordon_ingest::Event) -> String {
    ev.to_string()
}
