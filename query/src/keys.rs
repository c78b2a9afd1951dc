//! API keys and roles. A key is shown once when created; the keys file keeps only its
//! SHA-256 (keys are 256 random bits, so a fast hash is the right tool — there is nothing to
//! guess), its id, role and name. Roles are ordered: each can do what the one below it can.
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read alerts and actions |
//! | `analyst` | + run SQL, work alerts |
//! | `responder` | + approve or deny actions |
//! | `admin` | + rules and keys |

use std::path::Path;

use sha2::{Digest, Sha256};

/// A role.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads alerts and actions.
    Viewer,
    /// + SQL and alert lifecycle.
    Analyst,
    /// + approvals.
    Responder,
    /// + rules and keys.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Ok(match s {
            "viewer" => Role::Viewer,
            "analyst" => Role::Analyst,
            "responder" => Role::Responder,
            "admin" => Role::Admin,
            _ => {
                return Err(format!(
                    "unknown role {s:?}; expected viewer, analyst, responder or admin"
                ))
            }
        })
    }
}

/// One stored key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    /// A short public id (for audit lines).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Who it is for.
    pub name: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// When it was created.
    pub created: String,
}

/// The keys file.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Keys {
    /// The keys.
    pub keys: Vec<StoredKey>,
}

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Keys {
    /// Reads a keys file (a missing file is no keys).
    pub fn load(path: &Path) -> Result<Keys, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Keys::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the keys file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Creates a key; returns it (the only time it is seen) and its stored form.
    pub fn create(&mut self, role: Role, name: &str) -> (String, StoredKey) {
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("cordon_{secret}");
        let sha = digest(&key);
        let stored = StoredKey {
            id: format!("key_{}", &sha[..10]),
            role,
            name: name.to_owned(),
            sha256: sha,
            created: jiff::Timestamp::now().to_string(),
        };
        self.keys.push(stored.clone());
        (key, stored)
    }

    /// The stored key a presented key matches, comparing digests in constant time.
    pub fn check(&self, presented: &str) -> Option<&StoredKey> {
        let d = digest(presented);
        self.keys.iter().find(|k| {
            k.sha256.len() == d.len()
                && k.sha256
                    .bytes()
                    .zip(d.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut k = Keys::default();
        let (key, stored) = k.create(Role::Analyst, "ana");
        k.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key));
        let k = Keys::load(&path).unwrap();
        assert_eq!(k.check(&key).unwrap().id, stored.id);
        assert!(k.check("cordon_nope").is_none());
        assert!(Role::Admin > Role::Responder && Role::Analyst > Role::Viewer);
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("expected viewer"));
    }
}
