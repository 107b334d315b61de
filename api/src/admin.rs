//! Creating the first admin.
//!
//! Registration always makes agents, so the first admin comes from the `create-admin`
//! command or from `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD` at start-up. Both
//! go through [`crate::service::accounts`], like every other account.

use common::model::User;
use common::{Db, Settings};
use secrecy::ExposeSecret;

use crate::service::accounts;

/// Creates the bootstrap admin when both variables are set and no user has that email.
/// An existing account is left as it is: the variables never overwrite a password.
pub async fn bootstrap(db: &Db, settings: &Settings) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (
        &settings.auth.bootstrap_admin_email,
        &settings.auth.bootstrap_admin_password,
    ) else {
        return Ok(());
    };
    if db.users().find_by_email(email).await?.is_some() {
        tracing::info!(%email, "bootstrap admin already exists");
        return Ok(());
    }
    create_or_promote(db, email, password.expose_secret(), None, settings).await?;
    tracing::info!(%email, "bootstrap admin created");
    Ok(())
}

/// Creates an admin, or makes an existing user an active admin with this password.
pub async fn create_or_promote(
    db: &Db,
    email: &str,
    password: &str,
    full_name: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<User> {
    let min = settings.auth.password_min_length;
    accounts::create_or_promote_admin(db, min, email, password, full_name)
        .await
        .map_err(|err| anyhow::anyhow!("cannot create the admin: {err}"))
}
