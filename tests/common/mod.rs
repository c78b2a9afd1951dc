//! Helpers shared by the integration tests that run the `cordon` binary.

#![allow(dead_code, clippy::unwrap_used)]

pub mod broker;
pub mod http;
pub mod oauth;
pub mod sasl;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `cordon` with these arguments to the end.
pub fn cordon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `cordon sql --format json` on `store`; the rows.
pub fn sql_json(store: &Path, q: &str) -> serde_json::Value {
    let o = cordon(&[
        "sql",
        "--store",
        store.to_str().unwrap(),
        "--format",
        "json",
        q,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Creates an API key of `role` (named after it) in `keys`; returns the key.
pub fn api_key(keys: &Path, role: &str) -> String {
    let o = cordon(&[
        "keys",
        "create",
        "--role",
        role,
        "--name",
        role,
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}
