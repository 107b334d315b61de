//! Where a secret missing from the environment comes from: nowhere in production, and
//! `DATA_DIR/secrets.json` anywhere else.
//!
//! The file is read (or created, mode 0600, with fresh random secrets) the first time a
//! section asks for a secret that is not configured, and at most once per start-up; an
//! instance whose secrets are all configured never touches it. It holds one JWT secret, one
//! signing key and one encryption key, so a throwaway instance needs no set-up and its
//! tokens, links and documents survive a restart.

use std::cell::OnceCell;
use std::path::Path;

use anyhow::{Context, bail};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::Environment;

/// The key id of the generated encryption key.
pub(super) const GENERATED_ENCRYPTION_KID: &str = "e1";

/// The secrets of the embedded mode, once read or generated.
pub(super) struct Generated {
    /// Stands in for `JWT_SECRET_KEY`.
    pub(super) jwt_secret_key: String,
    /// The id of the one signing key standing in for `SIGNATURE_KEYS`.
    pub(super) signature_kid: String,
    /// That signing key's secret.
    pub(super) signature_secret: String,
    /// Base64 of the 32-byte key standing in for `ENCRYPTION_KEYS`, under
    /// [`GENERATED_ENCRYPTION_KID`].
    pub(super) encryption_key: String,
}

/// Hands out the generated secrets to the sections that need them.
pub(super) struct Fallback<'a> {
    /// Production refuses to generate anything.
    environment: Environment,
    /// Where `secrets.json` lives.
    data_dir: &'a Path,
    /// The secrets, once a section has asked for them.
    generated: OnceCell<Generated>,
}

impl<'a> Fallback<'a> {
    pub(super) fn new(environment: Environment, data_dir: &'a Path) -> Self {
        Fallback {
            environment,
            data_dir,
            generated: OnceCell::new(),
        }
    }

    /// The generated secrets, read or created on the first call; an error in production.
    pub(super) fn generated(&self) -> anyhow::Result<&Generated> {
        if self.environment == Environment::Production {
            bail!(
                "JWT_SECRET_KEY, SIGNATURE_KEYS and ENCRYPTION_KEYS must be set when \
                 ENVIRONMENT=production (generate each secret with `openssl rand -base64 48`, \
                 each encryption key with `openssl rand -base64 32`)"
            );
        }
        if let Some(generated) = self.generated.get() {
            return Ok(generated);
        }
        let generated = load_or_generate(self.data_dir)?;
        Ok(self.generated.get_or_init(|| generated))
    }
}

/// `secrets.json` as written on disk.
#[derive(Serialize, Deserialize)]
struct SecretsFile {
    jwt_secret_key: String,
    signature_kid: String,
    signature_secret: String,
    /// Absent from files written before encryption at rest existed; added on next start.
    #[serde(default)]
    encryption_key: Option<String>,
}

/// Reads `DATA_DIR/secrets.json`, creating it (mode 0600) with fresh random secrets the
/// first time.
fn load_or_generate(data_dir: &Path) -> anyhow::Result<Generated> {
    let path = data_dir.join("secrets.json");
    if let Ok(raw) = std::fs::read_to_string(&path) {
        let file: SecretsFile = serde_json::from_str(&raw)
            .with_context(|| format!("{} is not a valid secrets file", path.display()))?;
        return complete(data_dir, file);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", data_dir.display()))?;
    let file = SecretsFile {
        jwt_secret_key: random_secret(),
        signature_kid: "k1".to_owned(),
        signature_secret: random_secret(),
        encryption_key: Some(random_key_base64()),
    };
    // Written aside, then linked into place: the file appears complete or not at all, and
    // when another process (an API and a worker starting together) links first, its
    // secrets win and are read back.
    let tmp = data_dir.join(format!(".secrets.{}.json", uuid::Uuid::new_v4().simple()));
    write_private_file(&tmp, &serde_json::to_vec_pretty(&file)?)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_or_generate(data_dir);
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
    tracing::warn!(
        path = %path.display(),
        "no JWT_SECRET_KEY or SIGNATURE_KEYS configured: generated random secrets and kept them \
         in a file only this user can read; set them explicitly in production"
    );
    complete(data_dir, file)
}

/// The secrets of `file`, first giving it an encryption key (and saving it) if it predates
/// them.
fn complete(data_dir: &Path, mut file: SecretsFile) -> anyhow::Result<Generated> {
    let encryption_key = match file.encryption_key.clone() {
        Some(key) => key,
        None => {
            let key = random_key_base64();
            file.encryption_key = Some(key.clone());
            let path = data_dir.join("secrets.json");
            let tmp = data_dir.join(format!(".secrets.{}.json", uuid::Uuid::new_v4().simple()));
            write_private_file(&tmp, &serde_json::to_vec_pretty(&file)?)?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot update {}", path.display()))?;
            key
        }
    };
    Ok(Generated {
        jwt_secret_key: file.jwt_secret_key,
        signature_kid: file.signature_kid,
        signature_secret: file.signature_secret,
        encryption_key,
    })
}

fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random 256-bit key, base64, for AES-256-GCM.
fn random_key_base64() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_never_generates() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = Fallback::new(Environment::Production, dir.path());
        let err = fallback.generated().err().unwrap();
        assert!(err.to_string().contains("JWT_SECRET_KEY"), "{err}");
        assert!(!dir.path().join("secrets.json").exists());
    }

    #[test]
    fn secrets_are_generated_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = Fallback::new(Environment::Development, dir.path());
        let first = first.generated().unwrap();
        let second = Fallback::new(Environment::Test, dir.path());
        let second = second.generated().unwrap();
        assert_eq!(first.jwt_secret_key, second.jwt_secret_key);
        assert_eq!(first.signature_secret, second.signature_secret);
        assert_eq!(first.encryption_key, second.encryption_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secrets.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_file_from_before_encryption_gains_a_key_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let old = r#"{"jwt_secret_key":"j","signature_kid":"k1","signature_secret":"s"}"#;
        std::fs::write(&path, old).unwrap();
        let fallback = Fallback::new(Environment::Development, dir.path());
        let generated = fallback.generated().unwrap();
        assert_eq!(generated.jwt_secret_key, "j");
        assert_eq!(generated.encryption_key.len(), 44);
        let saved: SecretsFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            saved.encryption_key.as_deref(),
            Some(generated.encryption_key.as_str())
        );
    }
}
