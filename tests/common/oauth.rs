//! The real OAuth 2.0 authorization server of the tests (`oidc-provider`, in `tests/oauth/`):
//! clients `agent` and `cordon` get tokens by client credentials; `cordon` may revoke and
//! introspect any token.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The OAuth server, killed on drop.
pub struct OAuth {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Drop for OAuth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the OAuth server (installing its npm packages first if they are missing).
pub fn oauth() -> OAuth {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth");
    if !dir.join("node_modules/oidc-provider").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for the OAuth tests");
        assert!(st.success(), "npm ci in tests/oauth failed");
    }
    let mut child = Command::new("node")
        .arg("server.mjs")
        .current_dir(&dir)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the OAuth server said {line:?}"));
    OAuth { child, port }
}
