//! Signed download links.
//!
//! A link is `…/documents/{id}/download?exp=<unix seconds>&sig=<kid>.<base64url MAC>`. The
//! MAC is HMAC-SHA256 over the format version, the key id, the document id and the expiry,
//! with the secret the key id names in the key ring. Rotation: add a key, make it active,
//! keep the old one until the links it signed have expired. An unknown key id is refused
//! (the original silently fell back to the JWT secret), and MACs are compared in constant
//! time.
//!
//! A [`KeyRing`] is checked once, when it is built: the settings build it from
//! `SIGNATURE_KEYS` at start-up, and from then on signing cannot miss its active key.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

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

/// Why a set of keys cannot be a ring.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("an active key id is required unless there is exactly one key")]
    ActiveKidRequired,
    #[error("the active key id {0:?} is not among the keys")]
    ActiveKidNotFound(String),
    #[error("key ids must be non-empty and contain no '.'")]
    InvalidKid,
}

/// The signing keys and the one new links use. Only [`KeyRing::new`] builds one, so a ring
/// always holds its active key and only ids that can be written before the `.` of `sig`.
#[derive(Clone)]
pub struct KeyRing {
    /// Every key a link may have been signed with, by id (the active one included).
    keys: BTreeMap<String, SecretString>,
    /// The id new links are signed with.
    active_kid: String,
    /// The secret `active_kid` names, kept beside it so signing needs no lookup.
    active_secret: SecretString,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("active_kid", &self.active_kid)
            .finish()
    }
}

impl KeyRing {
    /// A ring of `keys` signing with `active_kid`, which may be left out when there is
    /// exactly one key. Every id must be non-empty and free of `.`, which ends the id in a
    /// link's `sig`.
    pub fn new(
        keys: BTreeMap<String, SecretString>,
        active_kid: Option<&str>,
    ) -> Result<Self, RingError> {
        let active_kid = match active_kid {
            Some(kid) => kid.to_owned(),
            None => {
                let mut kids = keys.keys();
                match (kids.next(), kids.next()) {
                    (Some(only), None) => only.clone(),
                    _ => return Err(RingError::ActiveKidRequired),
                }
            }
        };
        let active_secret = keys
            .get(&active_kid)
            .cloned()
            .ok_or_else(|| RingError::ActiveKidNotFound(active_kid.clone()))?;
        if keys.keys().any(|kid| kid.is_empty() || kid.contains('.')) {
            return Err(RingError::InvalidKid);
        }
        Ok(KeyRing {
            keys,
            active_kid,
            active_secret,
        })
    }

    /// Signs a link to `document_id` valid until `exp` (unix seconds); returns the `sig`
    /// parameter.
    pub fn sign(&self, document_id: Uuid, exp: i64) -> String {
        let mac = mac(&self.active_secret, &self.active_kid, document_id, exp)
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

    fn secrets(keys: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        keys.iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
            .collect()
    }

    fn ring(keys: &[(&str, &str)], active: &str) -> KeyRing {
        KeyRing::new(secrets(keys), Some(active)).unwrap()
    }

    #[test]
    fn a_ring_holds_its_active_key_and_only_ids_a_link_can_carry() {
        let one = secrets(&[("k1", "secret-one")]);
        let two = secrets(&[("k1", "secret-one"), ("k2", "secret-two")]);
        let doc = Uuid::now_v7();
        let only = KeyRing::new(one.clone(), None).unwrap();
        assert!(only.sign(doc, 1_000).starts_with("k1."));
        assert_eq!(
            KeyRing::new(two.clone(), None).unwrap_err(),
            RingError::ActiveKidRequired
        );
        assert_eq!(
            KeyRing::new(BTreeMap::new(), None).unwrap_err(),
            RingError::ActiveKidRequired
        );
        assert_eq!(
            KeyRing::new(two, Some("k3")).unwrap_err(),
            RingError::ActiveKidNotFound("k3".to_owned())
        );
        for bad in ["", "k.1"] {
            let mut keys = one.clone();
            keys.insert(bad.to_owned(), SecretString::from("s"));
            assert_eq!(
                KeyRing::new(keys, Some("k1")).unwrap_err(),
                RingError::InvalidKid,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", ring(&[("k1", "secret-one")], "k1"));
        assert!(
            shown.contains("k1") && !shown.contains("secret-one"),
            "{shown}"
        );
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
