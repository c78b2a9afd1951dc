//! The query parser and compiler on arbitrary text, with and without the schema.
#![no_main]

use cordon_rules::{parse_query, Compiler, Library};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(q) = parse_query(text) {
        let lib = Library::default();
        let _ = Compiler::new(&lib, true).query(&q);
        let _ = Compiler::new(&lib, false).query(&q);
    }
});
