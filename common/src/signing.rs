//! Signed download links.
//!
//! A link is `…/documents/{id}/download?exp=<unix seconds>&sig=<kid>.<base64url MAC>`. The
//! MAC is HMAC-SHA256 over the format version, the key id, the document id and the expiry,
//! with the secret the key id names in the key ring. Rotation: add a key, make it active,
//! keep the old one until the links it signed have expired. An unknown key id is refused
//! (the original silently fell back to the JWT secret), and MACs are compared in constant
//! time.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use crate::Settings;

/// The version of the signed message's layout.
const VERSION: &str = "v1";

/// Why a link was refused; every case answers 403.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has expired")]
    Expired,
    #[error("the link signature is malformed")]
    Malformed,
    #[error("the link was signed with an unknown key")]
    UnknownKey,
    #[error("the link signature is invalid")]
    BadSignature,
}

/// The signing keys and the one new links use.
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, SecretString>,
    active_kid: String,
}

impl KeyRing {
    pub fn new(settings: &Settings) -> Self {
        KeyRing {
            keys: settings.signature_keys.clone(),
            active_kid: settings.signature_active_kid.clone(),
        }
    }

    /// Signs a link to `document_id` valid until `exp` (unix seconds); returns the `sig`
    /// parameter.
    pub fn sign(&self, document_id: Uuid, exp: i64) -> String {
        let secret = &self.keys[&self.active_kid];
        let mac = mac(secret, &self.active_kid, document_id, exp)
            .finalize()
            .into_bytes();
        format!("{}.{}", self.active_kid, URL_SAFE_NO_PAD.encode(mac))
    }

    /// Checks a link's `exp` and `sig` for `document_id` at time `now`.
    pub fn verify(
        &self,
        document_id: Uuid,
        exp: i64,
        sig: &str,
        now: i64,
    ) -> Result<(), LinkError> {
        let (kid, encoded) = sig.split_once('.').ok_or(LinkError::Malformed)?;
        let secret = self.keys.get(kid).ok_or(LinkError::UnknownKey)?;
        let given = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| LinkError::Malformed)?;
        mac(secret, kid, document_id, exp)
            .verify_slice(&given)
            .map_err(|_| LinkError::BadSignature)?;
        // The expiry is checked after the MAC so a forged `exp` is reported as forged.
        if now > exp {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

fn mac(secret: &SecretString, kid: &str, document_id: Uuid, exp: i64) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(format!("{VERSION}:{kid}:{document_id}:{exp}").as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, &str)], active: &str) -> KeyRing {
        KeyRing {
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
                .collect(),
            active_kid: active.to_owned(),
        }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let ring = ring(&[("k1", "secret-one")], "k1");
        let doc = Uuid::now_v7();
        let sig = ring.sign(doc, 1_000);
        assert!(sig.starts_with("k1."));
        assert_eq!(ring.verify(doc, 1_000, &sig, 999), Ok(()));
        assert_eq!(ring.verify(doc, 1_000, &sig, 1_000), Ok(()));
        assert_eq!(
            ring.verify(doc, 1_000, &sig, 1_001),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn tampering_with_any_part_is_detected() {
        let ring = ring(&[("k1", "secret-one")], "k1");
        let doc = Uuid::now_v7();
        let sig = ring.sign(doc, 1_000);
        assert_eq!(
            ring.verify(Uuid::now_v7(), 1_000, &sig, 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            ring.verify(doc, 2_000, &sig, 0),
            Err(LinkError::BadSignature)
        );
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            ring.verify(doc, 1_000, &flipped, 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            ring.verify(doc, 1_000, "nodot", 0),
            Err(LinkError::Malformed)
        );
        assert_eq!(
            ring.verify(doc, 1_000, "k1.***", 0),
            Err(LinkError::Malformed)
        );
    }

    #[test]
    fn unknown_key_ids_are_refused_and_old_keys_still_verify_after_rotation() {
        let before = ring(&[("k1", "secret-one")], "k1");
        let after = ring(&[("k1", "secret-one"), ("k2", "secret-two")], "k2");
        let doc = Uuid::now_v7();
        let old_link = before.sign(doc, 1_000);
        let new_link = after.sign(doc, 1_000);
        assert!(new_link.starts_with("k2."));
        assert_eq!(after.verify(doc, 1_000, &old_link, 0), Ok(()));
        assert_eq!(
            before.verify(doc, 1_000, &new_link, 0),
            Err(LinkError::UnknownKey)
        );
        let relabelled = old_link.replacen("k1.", "k2.", 1);
        assert_eq!(
            after.verify(doc, 1_000, &relabelled, 0),
            Err(LinkError::BadSignature)
        );
    }
}
