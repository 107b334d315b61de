//! Domain types shared by the API and the worker.
//!
//! Rows decode straight into these structs on both databases. Enumerations are stored as
//! lowercase text and parsed on the way out (`#[sqlx(try_from = "String")]`), so a value
//! the code does not know is an error instead of a silent default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

/// A stored value that is not one of an enumeration's names.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    kind: &'static str,
    value: String,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident: $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialised name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: $kind, value: value.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownVariant;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                value.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Roles, from most to least powerful: admin > manager > agent.
    Role: "role" { Admin => "admin", Manager => "manager", Agent => "agent" }
}

impl Role {
    /// Whether this role may act as `required` (an admin may do what a manager may).
    pub fn at_least(self, required: Role) -> bool {
        self.rank() >= required.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Admin => 3,
            Role::Manager => 2,
            Role::Agent => 1,
        }
    }
}

text_enum! {
    /// Where a document is in its life.
    DocumentStatus: "document status" {
        Queued => "queued",
        Processing => "processing",
        Ready => "ready",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// Which lane a document waits in: `interactive` goes to the queue at once and is taken
    /// first; `bulk` (batch items by default) is fed to the queue a window at a time,
    /// shared fairly between owners.
    Priority: "priority" { Interactive => "interactive", Bulk => "bulk" }
}

text_enum! {
    /// What a document is rendered to.
    OutputFormat: "output format" { Html => "html", Pdf => "pdf", Xlsx => "xlsx" }
}

impl OutputFormat {
    /// The `Content-Type` of a document in this format.
    pub fn mime_type(self) -> &'static str {
        match self {
            OutputFormat::Html => "text/html; charset=utf-8",
            OutputFormat::Pdf => "application/pdf",
            OutputFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
        }
    }

    /// The file extension used in download names and object keys.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

/// A user account.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub full_name: Option<String>,
    #[serde(skip)]
    pub hashed_password: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

/// A login on one device: the family of refresh tokens rotated from it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub device_label: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    #[serde(rename = "issued_at")]
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// Layout options of a template: page size, orientation and margins for PDF output.
pub type TemplateOptions = serde_json::Map<String, serde_json::Value>;

/// What [`TemplateOptions`] may hold, for the OpenAPI description (the worker's
/// `canonical_options` is the check, and a test there keeps the two in step).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LayoutOptions {
    /// `A3`, `A4` (default), `A5`, `Letter` or `Legal`.
    #[schema(pattern = "^(A3|A4|A5|Letter|Legal)$")]
    page_size: Option<String>,
    /// `portrait` (default) or `landscape`.
    #[schema(pattern = "^(portrait|landscape)$")]
    orientation: Option<String>,
    /// Every margin at once, in millimetres.
    #[schema(minimum = 0, maximum = 100)]
    margin_mm: Option<f64>,
    #[schema(minimum = 0, maximum = 100)]
    margin_top: Option<f64>,
    #[schema(minimum = 0, maximum = 100)]
    margin_right: Option<f64>,
    #[schema(minimum = 0, maximum = 100)]
    margin_bottom: Option<f64>,
    #[schema(minimum = 0, maximum = 100)]
    margin_left: Option<f64>,
}

/// A document template; its content lives in numbered versions.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub template_type: String,
    #[sqlx(try_from = "String")]
    pub format: OutputFormat,
    pub scope: String,
    pub is_active: bool,
    #[schema(value_type = LayoutOptions)]
    pub options: Json<TemplateOptions>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One immutable version of a template's content.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct TemplateVersion {
    pub id: Uuid,
    pub template_id: Uuid,
    pub version: i32,
    pub storage_backend: String,
    pub content: String,
    pub checksum: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

text_enum! {
    /// Where a policy stands.
    PolicyStatus: "policy status" {
        Active => "active",
        Suspended => "suspended",
        Expired => "expired",
        Cancelled => "cancelled",
    }
}

/// An insurer. Its `api_key` is write-only: it is stored, never serialised.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Company {
    pub id: Uuid,
    pub name: String,
    pub code: String,
    pub api_mode: bool,
    pub api_endpoint: Option<String>,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A broker's client, owned by the user who created it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Client {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An insurance policy of a client, possibly with an insurer.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Policy {
    pub id: Uuid,
    pub policy_number: String,
    pub client_id: Uuid,
    pub company_id: Option<Uuid>,
    pub product_name: String,
    pub premium_amount: i64,
    pub effective_date: DateTime<Utc>,
    pub expiry_date: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    pub status: PolicyStatus,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Time spent in each stage of a render, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    pub queue_ms: i64,
    pub render_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compress_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub encrypt_ms: f64,
    pub store_ms: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// A generated document: the row is the truth about where its job stands.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Document {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub document_type: String,
    #[sqlx(try_from = "String")]
    pub status: DocumentStatus,
    #[sqlx(try_from = "String")]
    pub output_format: OutputFormat,
    pub mime_type: String,
    pub template_version_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    #[serde(skip)]
    pub inline_context: Json<serde_json::Value>,
    #[serde(rename = "compressed")]
    pub compress: bool,
    #[serde(rename = "encrypted")]
    pub encrypt: bool,
    pub attempts: i32,
    pub error: Option<String>,
    #[serde(skip)]
    pub storage_key: Option<String>,
    pub size_bytes: Option<i64>,
    pub stored_bytes: Option<i64>,
    pub checksum: Option<String>,
    #[schema(value_type = Option<Timings>)]
    pub timings: Option<Json<Timings>>,
    #[serde(skip)]
    pub request_id: Option<String>,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    #[serde(skip)]
    pub request_hash: Option<String>,
    /// Asked for with a template (whose version may since have been deleted).
    #[serde(skip)]
    pub uses_template: bool,
    /// A template preview: rendered like a document, answered, then deleted; never listed.
    #[serde(skip)]
    pub preview: bool,
    #[sqlx(try_from = "String")]
    pub priority: Priority,
    /// The batch this document is an item of.
    pub batch_id: Option<Uuid>,
    /// A batch item's name in the batch's archive.
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

text_enum! {
    /// Where a batch is: `queued` until an item starts, `running` while items are queued
    /// or rendering, `completed` when none is (whether or not some failed), `cancelled`
    /// once cancelled (items already rendering still finish).
    BatchStatus: "batch status" {
        Queued => "queued",
        Running => "running",
        Completed => "completed",
        Cancelled => "cancelled",
    }
}

/// A batch with its items' counts. The counts are read from the items, so they are always
/// those of the rows themselves.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Batch {
    pub id: Uuid,
    pub status: BatchStatus,
    pub document_type: String,
    pub output_format: OutputFormat,
    pub template_version_id: Option<Uuid>,
    pub compressed: bool,
    pub encrypted: bool,
    /// Items asked for.
    pub total: i64,
    pub queued: i64,
    pub processing: i64,
    pub ready: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub created_at: DateTime<Utc>,
    /// When the first item started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the batch completed or was cancelled (and its last running item finished).
    pub finished_at: Option<DateTime<Utc>>,
    pub owner_id: Uuid,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditLog {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub user_id: Option<Uuid>,
    pub action: String,
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub audit_metadata: Option<Json<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.at_least(Role::Manager));
        assert!(Role::Manager.at_least(Role::Manager));
        assert!(!Role::Agent.at_least(Role::Manager));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!("superadmin".parse::<Role>().is_err());
        assert_eq!("pdf".parse::<OutputFormat>().unwrap(), OutputFormat::Pdf);
    }
}
