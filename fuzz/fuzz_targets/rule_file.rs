//! Whole rule files (YAML with queries, lists, macros, tests) on arbitrary text.
#![no_main]

use cordon_rules::RuleSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(set) = RuleSet::from_text("fuzz.yaml", text) {
        let _ = set.run_tests();
    }
});
