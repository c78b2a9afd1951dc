//! The native decoder's fast path against the full decoder: the same event or the same error.
#![no_main]

use cordon_ingest::{decode_native, decode_reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fast = decode_native(data);
    let full = decode_reference(data);
    match (&fast, &full) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(a.arguments_bytes(), b.arguments_bytes());
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("{fast:?} against {full:?}"),
    }
});
