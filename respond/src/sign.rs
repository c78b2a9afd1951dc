//! Standard Webhooks signatures: every request Cordon sends to a gateway, an IdP adapter or a
//! chat hook carries `webhook-id`, `webhook-timestamp` and `webhook-signature`, so the receiver
//! can check that it came from Cordon, is fresh, and is not a replay (it dedupes on the id,
//! which Cordon derives from the alert and the step: the idempotency key).
//!
//! The signed content is `{id}.{timestamp}.{body}`, the MAC is HMAC-SHA256 keyed with the
//! base64-decoded part of a `whsec_…` secret, and the header is `v1,<base64 MAC>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A webhook signing secret. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret was refused (never showing it).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("a webhook secret starts with \"whsec_\" followed by base64")]
    Prefix,
    /// The part after the prefix is not base64.
    #[error("the part of the webhook secret after \"whsec_\" is not valid base64")]
    Base64,
    /// Too short to be a key.
    #[error("the webhook secret is shorter than 16 bytes once decoded")]
    Short,
}

impl Secret {
    /// Parses a `whsec_…` secret.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let b64 = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Prefix)?;
        let key = B64.decode(b64).map_err(|_| SecretError::Base64)?;
        if key.len() < 16 {
            return Err(SecretError::Short);
        }
        Ok(Secret { key })
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", B64.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a `webhook-signature` header (any of its space-separated `v1,` entries) in
    /// constant time, and that `timestamp` is within `tolerance_s` of `now`.
    pub fn verify(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
        now: i64,
        tolerance_s: i64,
    ) -> bool {
        if (now - timestamp).abs() > tolerance_s {
            return false;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        header.split(' ').any(|entry| {
            entry
                .strip_prefix("v1,")
                .and_then(|b| B64.decode(b).ok())
                .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector of the Standard Webhooks specification.
    #[test]
    fn published_vector() {
        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = s.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert!(s.verify(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            &format!("v1,bm90IGl0 {sig}"),
            1649367600,
            300
        ));
        assert!(!s.verify(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            b"{}",
            &sig,
            1649367600,
            300
        ));
        assert!(!s.verify(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            &sig,
            1649367553 + 301,
            300
        ));
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        assert_eq!(Secret::parse("C2FVsBQI").unwrap_err(), SecretError::Prefix);
        assert_eq!(Secret::parse("whsec_!!!").unwrap_err(), SecretError::Base64);
        assert_eq!(Secret::parse("whsec_YWJj").unwrap_err(), SecretError::Short);
        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(…)");
    }
}
