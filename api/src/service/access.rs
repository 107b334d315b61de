//! Who may reach what: the one access rule.
//!
//! An agent reaches the clients they created, the policies of those clients and the
//! documents they asked for; managers and admins reach everything. A [`Scope`] is built
//! from the caller once, and the same value filters the SQL of every list and checks every
//! single row, so a list and a read can never disagree. A row out of scope answers 404,
//! like a missing one, so ids do not reveal what exists.
//!
//! The rule used to be written three ways (a SQL filter for lists, an inline check, a
//! filter over the fetched row in Rust); keeping it in SQL for single rows too means the
//! database never returns a row the caller may not see.

use common::Db;
use common::model::{Client, Document, Policy};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;

/// The owner a caller is limited to, if any.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    owner: Option<Uuid>,
}

impl Scope {
    /// The caller's scope: their own rows for agents, everyone's for managers and admins.
    pub fn of(user: &AuthUser) -> Scope {
        Scope {
            owner: (!user.sees_all()).then(|| user.id()),
        }
    }

    /// The owner filter for repository queries: `None` reaches every owner.
    pub fn owner(&self) -> Option<Uuid> {
        self.owner
    }

    /// The client, if in scope.
    pub async fn client(&self, db: &Db, id: Uuid) -> ApiResult<Client> {
        db.clients()
            .get(id, self.owner)
            .await?
            .ok_or_else(|| ApiError::not_found("Client not found."))
    }

    /// The policy, if its client is in scope.
    pub async fn policy(&self, db: &Db, id: Uuid) -> ApiResult<Policy> {
        db.policies()
            .get(id, self.owner)
            .await?
            .ok_or_else(|| ApiError::not_found("Policy not found."))
    }

    /// The document, if in scope.
    pub async fn document(&self, db: &Db, id: Uuid) -> ApiResult<Document> {
        db.documents()
            .find(id, self.owner)
            .await?
            .ok_or_else(|| ApiError::not_found("Document not found."))
    }
}
