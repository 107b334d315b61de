//! Creating the first admin.
//!
//! Registration always makes agents, so the first admin comes from the `create-admin`
//! command or from `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD` at start-up.

use anyhow::Context;
use common::db::users::NewUser;
use common::model::{Role, User};
use common::{Db, Settings};
use secrecy::ExposeSecret;

/// Creates the bootstrap admin when both variables are set and no user has that email.
/// An existing account is left as it is: the variables never overwrite a password.
pub async fn bootstrap(db: &Db, settings: &Settings) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (
        &settings.bootstrap_admin_email,
        &settings.bootstrap_admin_password,
    ) else {
        return Ok(());
    };
    if db.users().find_by_email(email).await?.is_some() {
        tracing::info!(%email, "bootstrap admin already exists");
        return Ok(());
    }
    create_or_promote(
        db,
        email,
        password.expose_secret(),
        None,
        settings.password_min_length,
    )
    .await?;
    tracing::info!(%email, "bootstrap admin created");
    Ok(())
}

/// Creates an admin, or makes an existing user an active admin with this password.
pub async fn create_or_promote(
    db: &Db,
    email: &str,
    password: &str,
    full_name: Option<&str>,
    min_length: usize,
) -> anyhow::Result<User> {
    anyhow::ensure!(
        password.chars().count() >= min_length,
        "the admin password must be at least {min_length} characters long"
    );
    anyhow::ensure!(
        crate::routes::auth::valid_email(email),
        "{email:?} is not a valid email address"
    );
    let hash = common::auth::hash_password(password.to_owned()).await?;
    let user = match db.users().find_by_email(email).await? {
        Some(existing) => db.users().promote(existing.id, Role::Admin, &hash).await?,
        None => db
            .users()
            .create(NewUser {
                email,
                full_name,
                hashed_password: &hash,
                role: Role::Admin,
                is_active: true,
            })
            .await
            .context("cannot create the admin")?,
    };
    Ok(user)
}
