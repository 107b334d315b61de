//! Credentials: password hashes, access tokens and refresh-token material.
//!
//! - Passwords are hashed with argon2id. Hashing costs tens of milliseconds of CPU on
//!   purpose, so callers on the async runtime go through [`hash_password`] and
//!   [`verify_password`], which run it on the blocking pool.
//! - Access tokens are JWTs signed with one pinned HMAC algorithm, carrying `iss`, `aud`,
//!   `typ`, `sub` (user id), `role`, `sid` (session id) and `jti`; a token signed with any
//!   other algorithm, issuer, audience or type is refused.
//! - Refresh tokens are 256 random bits, given to the client once and stored as SHA-256.

use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Settings;
use crate::model::Role;

/// The `typ` claim of access tokens; a refresh or other token type is never accepted as
/// an access token.
const ACCESS_TYPE: &str = "access";

/// Hashes a password with argon2id and a random salt, off the async runtime.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    let _permit = argon2_permits().acquire().await?;
    tokio::task::spawn_blocking(move || hash_password_blocking(&password)).await?
}

/// One argon2 computation per core at a time. Each takes 19 MiB of memory and a core for
/// ~20 ms: sixteen at once on two cores (a burst of logins) finished no sooner, but
/// with sixteen times the memory (2.4 GB of RSS measured by `scripts/bench-api`, glibc
/// keeping each blocking thread's block in its arena). Waiting for a permit on the async
/// side keeps the blocking pool to as many argon2 computations as cores.
fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// The blocking form of [`hash_password`], for command-line tools.
pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// Checks a password against a stored hash, off the async runtime. A malformed stored
/// hash counts as a mismatch.
pub async fn verify_password(password: String, hash: String) -> anyhow::Result<bool> {
    let _permit = argon2_permits().acquire().await?;
    Ok(tokio::task::spawn_blocking(move || verify_password_blocking(&password, &hash)).await?)
}

/// The blocking form of [`verify_password`] (the same parameters: those in the stored
/// hash), for command-line tools and the argon2 cost baseline of `scripts/bench-api`.
///
/// It computes what `Argon2::verify_password` computes (the algorithm, version,
/// parameters and salt of the stored hash; a constant-time comparison of the outputs),
/// in a memory block taken from [`BLOCKS`] instead of a fresh 19 MiB allocation: the
/// API's allocator hands such large blocks back to the kernel when they are freed (see
/// `tune_allocator` in the API's main.rs), so a fresh one would be paid again in page faults
/// at every login (+13 ms per check on the benchmark machine).
pub fn verify_password_blocking(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let mut blocks = BLOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop()
        .unwrap_or_default();
    blocks.resize(params.block_count(), Block::new());
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let out = &mut buffer[..expected.len()];
    let matches = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut blocks[..])
        .is_ok()
        && Output::new(out).is_ok_and(|computed| &computed == expected);
    BLOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(blocks);
    matches
}

/// argon2 memory blocks kept between password checks: one per check that ran at once,
/// so at most one per core (the permits of [`argon2_permits`]), 19 MiB each with the
/// default parameters; a single login at a time keeps a single one.
static BLOCKS: std::sync::Mutex<Vec<Vec<Block>>> = std::sync::Mutex::new(Vec::new());

/// A precomputed hash used to spend the same time on unknown emails as on wrong
/// passwords, so login timing does not reveal which emails exist.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password_blocking("not a real password").expect("argon2 works"))
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub typ: String,
    /// The user id.
    pub sub: Uuid,
    pub role: Role,
    /// The session (device) the token belongs to.
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks access tokens with the configured secret and algorithm.
#[derive(Clone)]
pub struct TokenCodec {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

/// Why an access token was refused; all of them answer 401.
#[derive(Debug, thiserror::Error)]
#[error("invalid access token: {0}")]
pub struct TokenError(String);

impl TokenCodec {
    pub fn new(settings: &Settings) -> Self {
        let mut validation = Validation::new(settings.auth.jwt_algorithm);
        validation.set_issuer(&[&settings.auth.jwt_issuer]);
        validation.set_audience(&[&settings.auth.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        TokenCodec {
            encoding: EncodingKey::from_secret(settings.auth.jwt_secret_bytes()),
            decoding: DecodingKey::from_secret(settings.auth.jwt_secret_bytes()),
            header: Header::new(settings.auth.jwt_algorithm),
            validation,
            issuer: settings.auth.jwt_issuer.clone(),
            audience: settings.auth.jwt_audience.clone(),
            ttl: settings.auth.access_token_ttl,
        }
    }

    /// How long an access token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues an access token for a user's session.
    pub fn issue(&self, user_id: Uuid, role: Role, session_id: Uuid) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ: ACCESS_TYPE.to_owned(),
            sub: user_id,
            role,
            sid: session_id,
            jti: Uuid::new_v4(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.encoding)?)
    }

    /// Checks signature, algorithm, expiry, issuer, audience and type.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError(e.to_string()))?;
        if data.claims.typ != ACCESS_TYPE {
            return Err(TokenError("not an access token".to_owned()));
        }
        Ok(data.claims)
    }
}

/// A fresh refresh token: 256 random bits, URL-safe base64 with an `rt_` prefix.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "rt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the database keeps of a refresh token: its SHA-256, hex.
pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut map: HashMap<String, String> = [
            ("JWT_SECRET_KEY", "a-test-secret-that-is-long-enough-0123"),
            ("SIGNATURE_KEYS", r#"{"k1":"sig"}"#),
            (
                "ENCRYPTION_KEYS",
                r#"{"e1":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            map.insert(k.to_string(), v.to_string());
        }
        Settings::from_lookup(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn access_token_round_trip_keeps_every_claim() {
        let codec = TokenCodec::new(&settings(&[]));
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = codec.issue(user, Role::Manager, session).unwrap();
        let claims = codec.verify(&token).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.sid, session);
        assert_eq!(claims.role, Role::Manager);
        assert_eq!(claims.iss, "monassurance");
        assert_eq!(claims.aud, "monassurance-api");
        assert_eq!(claims.typ, "access");
    }

    #[test]
    fn tokens_from_another_secret_algorithm_or_audience_are_refused() {
        let codec = TokenCodec::new(&settings(&[]));
        let token = |s: &Settings| {
            TokenCodec::new(s)
                .issue(Uuid::now_v7(), Role::Agent, Uuid::now_v7())
                .unwrap()
        };
        let other_secret = settings(&[("JWT_SECRET_KEY", "another-secret-that-is-long-enough-99")]);
        let other_alg = settings(&[("JWT_ALGORITHM", "HS512")]);
        let other_aud = settings(&[("JWT_AUDIENCE", "someone-else")]);
        assert!(codec.verify(&token(&other_secret)).is_err());
        assert!(codec.verify(&token(&other_alg)).is_err());
        assert!(codec.verify(&token(&other_aud)).is_err());
        assert!(codec.verify("not.a.jwt").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let codec = TokenCodec::new(&settings(&[]));
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: "monassurance".into(),
            aud: "monassurance-api".into(),
            typ: "access".into(),
            sub: Uuid::now_v7(),
            role: Role::Agent,
            sid: Uuid::now_v7(),
            jti: Uuid::new_v4(),
            iat: now - 3600,
            exp: now - 60,
        };
        let token = jsonwebtoken::encode(&codec.header, &claims, &codec.encoding).unwrap();
        assert!(codec.verify(&token).is_err());
    }

    #[tokio::test]
    async fn password_hash_verifies_only_the_right_password() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong horse".into(), hash).await.unwrap());
        assert!(!verify_password("x".into(), "garbage".into()).await.unwrap());
    }

    #[test]
    fn pooled_verifier_agrees_with_the_library_on_other_parameters() {
        use argon2::password_hash::PasswordVerifier;
        // A hash the app did not make: argon2i, version 0x10, small memory, 16-byte output.
        let params = Params::new(1024, 1, 1, Some(16)).unwrap();
        let argon = Argon2::new(Algorithm::Argon2i, Version::V0x10, params);
        let hash = argon.hash_password(b"s3cret").unwrap().to_string();
        for (password, expected) in [("s3cret", true), ("s3cret ", false), ("", false)] {
            let parsed = PasswordHash::new(&hash).unwrap();
            let library = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            assert_eq!(library, expected, "{password:?}");
            assert_eq!(
                verify_password_blocking(password, &hash),
                expected,
                "{password:?}"
            );
        }
        // And the app's own hashes, one after another on the kept memory.
        let ours = hash_password_blocking("correct horse").unwrap();
        assert!(verify_password_blocking("correct horse", &ours));
        assert!(!verify_password_blocking("correct horsf", &ours));
        assert!(verify_password_blocking("s3cret", &hash));
        assert!(!verify_password_blocking(
            "s3cret",
            "$argon2id$v=19$m=19456,t=2,p=1$bm9zYWx0$"
        ));
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a, b);
        assert!(a.len() > 40);
        assert_eq!(refresh_token_hash(&a).len(), 64);
        assert_ne!(refresh_token_hash(&a), refresh_token_hash(&b));
    }
}
