//! Clients, each owned by the user who created it.
//!
//! Every read and write takes an `owner`: `Some(user)` restricts it to that user's clients
//! (agents), `None` reaches all of them (managers and admins). Filtering in SQL rather than
//! after the fetch keeps another agent's client indistinguishable from a missing one.

use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::Client;

macro_rules! client_columns {
    () => {
        "id, owner_id, first_name, last_name, email, phone, address, created_at, updated_at"
    };
}

/// The search: the lowercase `LIKE` pattern in placeholder `$p` matches a name, the email
/// or the phone.
macro_rules! search_filter {
    ($p:literal) => {
        concat!(
            "(LOWER(first_name) LIKE ",
            $p,
            " ESCAPE '\\' OR LOWER(last_name) LIKE ",
            $p,
            " ESCAPE '\\' OR LOWER(email) LIKE ",
            $p,
            " ESCAPE '\\' OR LOWER(phone) LIKE ",
            $p,
            " ESCAPE '\\')"
        )
    };
}

/// The page and the count of the list for one combination of filters: `(filter, limit
/// placeholder, offset placeholder)`. The total comes with every row from a subquery that
/// runs once per statement.
macro_rules! list_queries {
    ($filter:expr, $limit:literal, $offset:literal) => {
        (
            concat!(
                "SELECT ",
                client_columns!(),
                ", (SELECT COUNT(*) FROM clients WHERE ",
                $filter,
                ") AS total_count FROM clients WHERE ",
                $filter,
                " ORDER BY created_at DESC, id DESC LIMIT ",
                $limit,
                " OFFSET ",
                $offset
            ),
            concat!("SELECT COUNT(*) FROM clients WHERE ", $filter),
        )
    };
}

/// The fields of a new client.
pub struct NewClient<'a> {
    pub owner_id: Uuid,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub address: Option<&'a str>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Default)]
pub struct ClientPatch {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
}

/// A case-insensitive substring pattern for `LIKE … ESCAPE '\'`: the search text's own
/// `%`, `_` and `\` match themselves.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub struct Clients<'a>(pub(super) &'a Db);

impl Clients<'_> {
    pub async fn create(&self, new: NewClient<'_>) -> DbResult<Client> {
        on_db!(self.0, pool => sqlx::query_as::<_, Client>(concat!(
            "INSERT INTO clients (id, owner_id, first_name, last_name, email, phone, address, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING ",
            client_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(new.owner_id)
        .bind(new.first_name)
        .bind(new.last_name)
        .bind(new.email)
        .bind(new.phone)
        .bind(new.address)
        .bind(crate::now())
        .fetch_one(pool)
        .await)
        .db()
    }

    /// Clients of `owner` (all with `None`), newest first, those matching `q` (a
    /// case-insensitive substring of a name, the email or the phone) when given.
    ///
    /// One query: the total comes with every row. Only a page with no rows (nothing
    /// matches, or an offset past the end) needs a second query for the total. Each
    /// combination of filters has its own statement rather than one with
    /// `($1 IS NULL OR owner_id = $1)`: Postgres cannot use the owner index in a generic
    /// plan of such a statement, so it planned it anew on every execution, while fixed
    /// clauses keep one cached plan per connection.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        q: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Client>> {
        let pattern = q.map(contains_pattern);
        let (page_sql, count_sql) = match (owner, &pattern) {
            (None, None) => list_queries!("TRUE", "$1", "$2"),
            (Some(_), None) => list_queries!("owner_id = $1", "$2", "$3"),
            (None, Some(_)) => list_queries!(search_filter!("$1"), "$2", "$3"),
            (Some(_), Some(_)) => {
                list_queries!(
                    concat!("owner_id = $1 AND ", search_filter!("$2")),
                    "$3",
                    "$4"
                )
            }
        };
        on_db!(self.0, pool => {
            let mut page = sqlx::query(page_sql);
            let mut count = sqlx::query_scalar(count_sql);
            if let Some(owner) = owner {
                page = page.bind(owner);
                count = count.bind(owner);
            }
            if let Some(pattern) = &pattern {
                page = page.bind(pattern.as_str());
                count = count.bind(pattern.as_str());
            }
            let rows = page.bind(limit).bind(offset).fetch_all(pool).await.db()?;
            let total: i64 = match rows.first() {
                Some(row) => row.try_get("total_count").db()?,
                None if offset == 0 && limit > 0 => 0,
                None => count.fetch_one(pool).await.db()?,
            };
            let items = rows.iter().map(Client::from_row).collect::<Result<Vec<_>, _>>().db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// A client, if it exists and `owner` (when given) owns it.
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<Client>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Client>(concat!(
            "SELECT ", client_columns!(), " FROM clients WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Applies a partial update in one statement, so that concurrent updates of different
    /// fields all stay; `None` when the client does not exist or is not `owner`'s.
    pub async fn update(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
        patch: ClientPatch,
    ) -> DbResult<Option<Client>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Client>(concat!(
            "UPDATE clients SET first_name = COALESCE($3, first_name), last_name = COALESCE($4, last_name), \
             email = COALESCE($5, email), phone = COALESCE($6, phone), address = COALESCE($7, address), \
             updated_at = $8 WHERE id = $1 AND ($2 IS NULL OR owner_id = $2) RETURNING ",
            client_columns!()
        ))
        .bind(id)
        .bind(owner)
        .bind(patch.first_name)
        .bind(patch.last_name)
        .bind(patch.email)
        .bind(patch.phone)
        .bind(patch.address)
        .bind(crate::now())
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Deletes a client; false when it does not exist or is not `owner`'s. A client that
    /// still has policies is refused by
    /// [`Constraint::PoliciesClientIdFkey`](super::Constraint::PoliciesClientIdFkey).
    pub async fn delete(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM clients WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)")
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .db()
        .map(|n| n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("DuP"), "%dup%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
