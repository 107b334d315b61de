//! The constraints a call site may name, and how each engine reports a violation of them.
//!
//! A write refused by a constraint comes back as a [`DbError`](super::DbError) that knows
//! which constraint refused it, so the API answers "this email is taken" for
//! `users_email_key` and for nothing else (realworld-axum-sqlx's `on_constraint`):
//!
//! ```ignore
//! db.users().create(new).await.on_constraint(Constraint::UsersEmailKey, |_| {
//!     ApiError::conflict("email_taken", "This email is already registered.")
//! })?;
//! ```
//!
//! Postgres names the violated constraint in its error. SQLite only describes it:
//!
//! - a UNIQUE: `UNIQUE constraint failed: templates.name, templates.template_type, …`
//!   (the table and columns of the index, in its order);
//! - a CHECK without a name: `CHECK constraint failed: expiry_date > effective_date` (its
//!   expression);
//! - a foreign key: `FOREIGN KEY constraint failed`, whichever it is, and with the code
//!   SQLITE_CONSTRAINT_TRIGGER instead of SQLITE_CONSTRAINT_FOREIGNKEY for an
//!   `ON DELETE RESTRICT` refusal.
//!
//! So the table below gives each constraint its Postgres name and the exact message SQLite
//! reports. For the foreign keys it lists, SQLite has no message of its own to give:
//! `migrations/sqlite/0007_foreign_key_names.sql` adds triggers that refuse the same
//! writes just before the foreign key would, raising the constraint's Postgres name. A
//! violation matches an entry only by that exact name (Postgres) or message (SQLite), never
//! by its kind alone, so another constraint of the same kind cannot pass for the one a call
//! site names; a violation of a constraint not listed here still says its kind
//! ([`DbError::Conflict`](super::DbError::Conflict), `ForeignKey`, `Check`) without a name,
//! and the API answers it generically.
//!
//! The tests hold the table to both engines' migrated schemas: every UNIQUE of either
//! schema is listed with the name or columns it really has, and each entry is provoked for
//! real on both engines and recognised as itself and nothing else.
//!
//! Rejected: strings at the call sites (`on_constraint("users_email_key", …)`), where a typo
//! compiles and silently never matches, against one enum checked by the compiler; and
//! reading SQLite's anonymous foreign-key failure as whichever foreign key the call site
//! names, which would, for instance, report a vanished template version creator as a
//! missing template.

/// What kind of rule a constraint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    Unique,
    ForeignKey,
    Check,
}

/// Declares [`Constraint`] from one table: variant, kind, Postgres name, SQLite message.
macro_rules! constraints {
    ($($(#[doc = $doc:literal])* $variant:ident: $kind:ident, $postgres:literal, $sqlite:literal;)+) => {
        /// A constraint of the schema that call sites may name (see the module doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Constraint {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Constraint {
            /// Every constraint of the table.
            pub const ALL: &[Constraint] = &[$(Constraint::$variant),+];

            /// Its name in the schema (what Postgres reports).
            pub fn name(self) -> &'static str {
                match self {
                    $(Constraint::$variant => $postgres,)+
                }
            }

            pub fn kind(self) -> ConstraintKind {
                match self {
                    $(Constraint::$variant => ConstraintKind::$kind,)+
                }
            }

            /// The whole message of SQLite's error for a violation.
            pub fn sqlite_message(self) -> &'static str {
                match self {
                    $(Constraint::$variant => $sqlite,)+
                }
            }
        }
    };
}

constraints! {
    /// An email already registered.
    UsersEmailKey: Unique, "users_email_key",
        "UNIQUE constraint failed: users.email";
    /// A refresh token hash already stored.
    RefreshTokensTokenHashKey: Unique, "refresh_tokens_token_hash_key",
        "UNIQUE constraint failed: refresh_tokens.token_hash";
    /// A template with the same name, type and scope.
    UqTemplateNameTypeScope: Unique, "uq_template_name_type_scope",
        "UNIQUE constraint failed: templates.name, templates.template_type, templates.scope";
    /// A template version number already taken.
    UqTemplateVersion: Unique, "uq_template_version",
        "UNIQUE constraint failed: template_versions.template_id, template_versions.version";
    /// An owner's `Idempotency-Key` already used.
    UqGeneratedDocumentsIdempotency: Unique, "uq_generated_documents_idempotency",
        "UNIQUE constraint failed: generated_documents.owner_id, generated_documents.idempotency_key";
    /// An owner's `Idempotency-Key` already used for a batch.
    UqDocumentBatchesIdempotency: Unique, "uq_document_batches_idempotency",
        "UNIQUE constraint failed: document_batches.owner_id, document_batches.idempotency_key";
    /// A company name already taken.
    CompaniesNameKey: Unique, "companies_name_key",
        "UNIQUE constraint failed: companies.name";
    /// A company code already taken.
    CompaniesCodeKey: Unique, "companies_code_key",
        "UNIQUE constraint failed: companies.code";
    /// A policy number already taken.
    PoliciesPolicyNumberKey: Unique, "policies_policy_number_key",
        "UNIQUE constraint failed: policies.policy_number";
    /// A policy whose expiry is not after its effective date.
    PoliciesCheck: Check, "policies_check",
        "CHECK constraint failed: expiry_date > effective_date";
    /// A policy naming a missing client, or a client deleted while it has policies.
    PoliciesClientIdFkey: ForeignKey, "policies_client_id_fkey",
        "policies_client_id_fkey";
    /// A policy naming a missing company.
    PoliciesCompanyIdFkey: ForeignKey, "policies_company_id_fkey",
        "policies_company_id_fkey";
    /// A version added to a missing template.
    TemplateVersionsTemplateIdFkey: ForeignKey, "template_versions_template_id_fkey",
        "template_versions_template_id_fkey";
}

/// SQLite's extended code for a refusal raised by a trigger, which is also how it reports
/// an `ON DELETE RESTRICT` refusal.
const SQLITE_CONSTRAINT_TRIGGER: &str = "1811";

/// SQLite's message for any foreign key's refusal.
const SQLITE_FOREIGN_KEY_MESSAGE: &str = "FOREIGN KEY constraint failed";

impl Constraint {
    /// The kind of constraint a database error reports a violation of, and the constraint
    /// when it is one of the table's; `None` when the error is no constraint's refusal.
    pub(super) fn reported(
        err: &(dyn sqlx::error::DatabaseError + 'static),
    ) -> Option<(ConstraintKind, Option<Constraint>)> {
        use sqlx::error::ErrorKind;
        let is_sqlite = err
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .is_some();
        let matches = |c: &Constraint| {
            if is_sqlite {
                c.sqlite_message() == err.message()
            } else {
                err.constraint() == Some(c.name())
            }
        };
        let kind = match err.kind() {
            ErrorKind::UniqueViolation => ConstraintKind::Unique,
            ErrorKind::ForeignKeyViolation => ConstraintKind::ForeignKey,
            ErrorKind::CheckViolation => ConstraintKind::Check,
            // sqlx leaves SQLite's trigger refusals unclassified: the naming triggers' and
            // SQLite's own `ON DELETE RESTRICT` refusal.
            _ if is_sqlite
                && err.code().as_deref() == Some(SQLITE_CONSTRAINT_TRIGGER)
                && (err.message() == SQLITE_FOREIGN_KEY_MESSAGE
                    || Constraint::ALL
                        .iter()
                        .any(|c| c.kind() == ConstraintKind::ForeignKey && matches(c))) =>
            {
                ConstraintKind::ForeignKey
            }
            _ => return None,
        };
        let constraint = Constraint::ALL
            .iter()
            .copied()
            .find(|c| c.kind() == kind && matches(c));
        Some((kind, constraint))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use chrono::{Duration, Utc};
    use uuid::Uuid;

    use super::{Constraint, ConstraintKind};
    use crate::db::documents::NewDocument;
    use crate::db::fixtures::{postgres, sqlite};
    use crate::db::policies::{PolicyFields, PolicyPatch};
    use crate::db::sessions::ClientInfo;
    use crate::db::templates::NewTemplate;
    use crate::db::users::NewUser;
    use crate::db::{Db, DbError, DbResult, Pool, companies::NewCompany, on_db};
    use crate::model::{OutputFormat, PolicyStatus, Role};

    fn refused<T: std::fmt::Debug>(result: DbResult<T>) -> DbError {
        result.expect_err("the write is refused")
    }

    /// The kind of constraint an error says refused the write.
    fn kind(err: &DbError) -> Option<ConstraintKind> {
        match err {
            DbError::Conflict(_) => Some(ConstraintKind::Unique),
            DbError::ForeignKey(_) => Some(ConstraintKind::ForeignKey),
            DbError::Check(_) => Some(ConstraintKind::Check),
            DbError::UnstorableText(_) | DbError::Unavailable(_) | DbError::Other(_) => None,
        }
    }

    /// Checks that `err` is a refusal by `expected` and by no other constraint, and
    /// records it.
    fn assert_refused_by(err: DbError, expected: Constraint, seen: &mut HashSet<Constraint>) {
        assert_eq!(err.constraint(), Some(expected), "{err:?}");
        assert_eq!(kind(&err), Some(expected.kind()), "{err:?}");
        for other in Constraint::ALL.iter().filter(|c| **c != expected) {
            assert!(!err.is(*other), "{err:?} also passes for {other:?}");
        }
        seen.insert(expected);
    }

    /// Checks that `err` is a refusal of kind `expected` by a constraint the table does not
    /// list: none of the table's may claim it.
    fn assert_unnamed(err: DbError, expected: ConstraintKind) {
        assert_eq!(kind(&err), Some(expected), "{err:?}");
        assert_eq!(err.constraint(), None, "{err:?}");
        for c in Constraint::ALL {
            assert!(!err.is(*c), "{err:?} passes for {c:?}");
        }
    }

    fn new_company<'a>(name: &'a str, code: &'a str) -> NewCompany<'a> {
        NewCompany {
            name,
            code,
            api_mode: false,
            api_endpoint: None,
            api_key: None,
        }
    }

    fn new_document(owner_id: Uuid, key: &str) -> NewDocument<'_> {
        NewDocument {
            idempotency_key: Some(key),
            ..crate::db::fixtures::document(owner_id)
        }
    }

    /// Provokes every constraint of the table (some by more than one kind of write) and a
    /// few the table leaves out, on `db`.
    async fn every_constraint_is_recognised(db: &Db) {
        let mut seen = HashSet::new();

        let new_user = |email| NewUser {
            email,
            full_name: None,
            hashed_password: "x",
            role: Role::Agent,
            is_active: true,
        };
        let user = db.users().create(new_user("a@example.com")).await.unwrap();
        let err = refused(db.users().create(new_user("A@example.com")).await);
        assert_refused_by(err, Constraint::UsersEmailKey, &mut seen);

        let expires = Utc::now() + Duration::days(1);
        let client_info = ClientInfo::default();
        let sessions = db.sessions();
        sessions
            .open(user.id, "h", expires, &client_info)
            .await
            .unwrap();
        let err = refused(sessions.open(user.id, "h", expires, &client_info).await);
        assert_refused_by(err, Constraint::RefreshTokensTokenHashKey, &mut seen);

        let new_template = || NewTemplate {
            name: "t",
            template_type: "attestation",
            format: OutputFormat::Html,
            scope: "global",
            is_active: true,
            options: Default::default(),
            created_by: user.id,
        };
        let (template, _) = db
            .templates()
            .create(new_template(), Some("v1"))
            .await
            .unwrap();
        let err = refused(db.templates().create(new_template(), None).await);
        assert_refused_by(err, Constraint::UqTemplateNameTypeScope, &mut seen);
        let insert_version = |version: i32, created_by: Uuid| async move {
            on_db!(db, pool => sqlx::query(
                "INSERT INTO template_versions (id, template_id, version, storage_backend, content, checksum, created_by, created_at) \
                 VALUES ($1, $2, $3, 'db', 'c', 'x', $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(template.id)
            .bind(version)
            .bind(created_by)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ()))
            .map_err(DbError::from)
        };
        let err = refused(insert_version(1, user.id).await);
        assert_refused_by(err, Constraint::UqTemplateVersion, &mut seen);
        let missing = Uuid::now_v7();
        let err = refused(
            db.templates()
                .add_version(missing, "c", "db", user.id)
                .await,
        );
        assert_refused_by(err, Constraint::TemplateVersionsTemplateIdFkey, &mut seen);
        // The other foreign key of the same table: SQLite's bare "FOREIGN KEY constraint
        // failed" must not pass for the one above.
        assert_unnamed(
            refused(insert_version(2, missing).await),
            ConstraintKind::ForeignKey,
        );

        let documents = db.documents();
        documents.create(new_document(user.id, "k")).await.unwrap();
        let err = refused(documents.create(new_document(user.id, "k")).await);
        assert_refused_by(err, Constraint::UqGeneratedDocumentsIdempotency, &mut seen);
        let batch = |key| crate::db::batches::NewBatch {
            owner_id: user.id,
            document_type: "attestation",
            output_format: OutputFormat::Html,
            template_version_id: None,
            compress: false,
            encrypt: false,
            request_id: None,
            idempotency_key: Some(key),
            request_hash: None,
        };
        db.batches().create(batch("k"), &[]).await.unwrap();
        let err = refused(db.batches().create(batch("k"), &[]).await);
        assert_refused_by(err, Constraint::UqDocumentBatchesIdempotency, &mut seen);

        let company = db.companies().create(new_company("n", "c")).await.unwrap();
        let err = refused(db.companies().create(new_company("n", "other")).await);
        assert_refused_by(err, Constraint::CompaniesNameKey, &mut seen);
        let err = refused(db.companies().create(new_company("other", "c")).await);
        assert_refused_by(err, Constraint::CompaniesCodeKey, &mut seen);
        let same_id = on_db!(db, pool => sqlx::query(
            "INSERT INTO companies (id, name, code, api_mode, created_at, updated_at) VALUES ($1, 'x', 'y', FALSE, $2, $2)",
        )
        .bind(company.id)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(DbError::from);
        assert_unnamed(refused(same_id), ConstraintKind::Unique);

        let client = db
            .clients()
            .create(crate::db::clients::NewClient {
                owner_id: user.id,
                first_name: "f",
                last_name: "l",
                email: None,
                phone: None,
                address: None,
            })
            .await
            .unwrap();
        let now = Utc::now();
        let fields = |number, client_id, company_id| PolicyFields {
            policy_number: number,
            client_id,
            company_id,
            product_name: "Auto",
            premium_amount: 1,
            effective_date: now,
            expiry_date: now + Duration::days(365),
            status: PolicyStatus::Active,
            currency: "XAF",
        };
        let policies = db.policies();
        let policy = policies
            .create(fields("p1", client.id, Some(company.id)))
            .await
            .unwrap();
        let err = refused(policies.create(fields("p1", client.id, None)).await);
        assert_refused_by(err, Constraint::PoliciesPolicyNumberKey, &mut seen);
        let err = refused(
            policies
                .create(fields("p2", missing, Some(company.id)))
                .await,
        );
        assert_refused_by(err, Constraint::PoliciesClientIdFkey, &mut seen);
        let err = refused(
            policies
                .create(fields("p2", client.id, Some(missing)))
                .await,
        );
        assert_refused_by(err, Constraint::PoliciesCompanyIdFkey, &mut seen);
        let moved = |patch| policies.update(policy.id, None, patch);
        let err = refused(
            moved(PolicyPatch {
                client_id: Some(missing),
                ..Default::default()
            })
            .await,
        );
        assert_refused_by(err, Constraint::PoliciesClientIdFkey, &mut seen);
        let err = refused(
            moved(PolicyPatch {
                company_id: Some(missing),
                ..Default::default()
            })
            .await,
        );
        assert_refused_by(err, Constraint::PoliciesCompanyIdFkey, &mut seen);
        let err = refused(
            moved(PolicyPatch {
                effective_date: Some(now + Duration::days(400)),
                ..Default::default()
            })
            .await,
        );
        assert_refused_by(err, Constraint::PoliciesCheck, &mut seen);
        // ON DELETE RESTRICT, which SQLite reports with yet another code.
        let err = refused(db.clients().delete(client.id, None).await);
        assert_refused_by(err, Constraint::PoliciesClientIdFkey, &mut seen);

        // Constraints the table leaves out: a check, and a foreign key with no action
        // (`clients.owner_id`) refusing a delete.
        let bad_role =
            on_db!(db, pool => sqlx::query("UPDATE users SET role = 'nobody' WHERE id = $1")
            .bind(user.id)
            .execute(pool)
            .await
            .map(|_| ()))
            .map_err(DbError::from);
        assert_unnamed(refused(bad_role), ConstraintKind::Check);
        let delete_user = on_db!(db, pool => sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user.id)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(DbError::from);
        assert_unnamed(refused(delete_user), ConstraintKind::ForeignKey);

        let all: HashSet<Constraint> = Constraint::ALL.iter().copied().collect();
        assert_eq!(seen, all, "every constraint of the table is provoked");
    }

    #[tokio::test]
    async fn sqlite_reports_each_constraint_as_itself() {
        every_constraint_is_recognised(&sqlite().await).await;
    }

    #[tokio::test]
    async fn postgres_reports_each_constraint_as_itself() {
        let Some(pg) = postgres().await else { return };
        every_constraint_is_recognised(&pg.db).await;
        pg.drop().await;
    }

    /// The table's UNIQUE entries, as `(Postgres name, SQLite message)`.
    fn listed_uniques() -> (BTreeSet<String>, BTreeSet<String>) {
        let uniques = Constraint::ALL
            .iter()
            .filter(|c| c.kind() == ConstraintKind::Unique);
        (
            uniques.clone().map(|c| c.name().to_owned()).collect(),
            uniques.map(|c| c.sqlite_message().to_owned()).collect(),
        )
    }

    #[tokio::test]
    async fn the_table_lists_every_unique_of_the_sqlite_schema() {
        let db = sqlite().await;
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!()
        };
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.name, il.name FROM sqlite_master m, pragma_index_list(m.name) il \
             WHERE m.type = 'table' AND il.\"unique\" = 1 AND il.origin <> 'pk'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut messages = BTreeSet::new();
        for (table, index) in indexes {
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let columns: Vec<String> = columns.iter().map(|c| format!("{table}.{c}")).collect();
            messages.insert(format!("UNIQUE constraint failed: {}", columns.join(", ")));
        }
        assert_eq!(messages, listed_uniques().1);
    }

    #[tokio::test]
    async fn the_table_names_constraints_of_the_postgres_schema() {
        let Some(pg) = postgres().await else { return };
        let Pool::Postgres(pool) = pg.db.pool() else {
            unreachable!()
        };
        let uniques: BTreeSet<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indisunique AND NOT i.indisprimary AND c.relnamespace = 'public'::regnamespace",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        assert_eq!(uniques, listed_uniques().0);
        let others: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, contype::text FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace AND contype IN ('c', 'f')",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        for c in Constraint::ALL {
            let contype = match c.kind() {
                ConstraintKind::Unique => continue,
                ConstraintKind::Check => "c",
                ConstraintKind::ForeignKey => "f",
            };
            assert!(
                others.contains(&(c.name().to_owned(), contype.to_owned())),
                "{} is not a {contype} constraint of the schema",
                c.name()
            );
        }
        pg.drop().await;
    }

    #[test]
    fn no_two_constraints_share_a_name_or_a_message() {
        let names: HashSet<_> = Constraint::ALL.iter().map(|c| c.name()).collect();
        let messages: HashSet<_> = Constraint::ALL.iter().map(|c| c.sqlite_message()).collect();
        assert_eq!(names.len(), Constraint::ALL.len());
        assert_eq!(messages.len(), Constraint::ALL.len());
    }

    #[tokio::test]
    async fn postgres_refuses_a_nul_character_as_unstorable_text() {
        let Some(pg) = postgres().await else { return };
        let err = refused(pg.db.companies().create(new_company("a\0b", "c")).await);
        assert!(matches!(err, DbError::UnstorableText(_)), "{err:?}");
        pg.drop().await;
    }
}
