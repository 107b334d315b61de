//! Batches: many documents in one request, each an ordinary document in the bulk lane.
//!
//! A batch is checked whole before anything is written: every item's fault is reported
//! at once (`items[17].policy_id`), and a batch with one bad item creates nothing. The
//! batch and its items are then written in one transaction of bulk inserts
//! ([`common::db::batches`]) and no job is pushed on the request path: the feeder
//! ([`common::feeder`]) hands the items to the queue a window at a time, which is what
//! keeps interactive documents quick and shares the workers fairly between owners.
//!
//! The archive is a ZIP written as it is sent ([`archive`]): each ready item decrypted
//! and decompressed under its reference, then `manifest.csv`. Entries are stored, not
//! deflated: PDFs and XLSX files are compressed already, and the archive runs at the
//! speed of storage rather than of a compressor.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::db::audit::AuditEvent;
use common::db::batches::{NewBatch, NewItem};
use common::db::policies::PolicyFilter;
use common::model::{Batch, Document, DocumentStatus, OutputFormat, PolicyStatus, Priority};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::{AuthUser, RequestMeta};
use crate::service::access::Scope;
use crate::service::documents::{self, Admitted, Credential, Idempotency, SignedUrl};

/// The longest `reference`.
const MAX_REFERENCE_CHARS: usize = 100;
/// How many items the archive opens ahead of the one it writes.
const ARCHIVE_PREFETCH: usize = 16;
/// How many items the archive reads from the database at a time.
const ARCHIVE_PAGE: i64 = 500;
/// How many objects a batch deletion deletes at once.
const DELETE_CONCURRENCY: usize = 16;

/// `POST /document-batches`, as sent.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BatchRequest {
    pub document_type: String,
    pub template_id: Option<Uuid>,
    pub template_version_id: Option<Uuid>,
    /// The template's format when absent (HTML for the built-in layout).
    pub output_format: Option<OutputFormat>,
    /// `DEFAULT_COMPRESS` / `DEFAULT_ENCRYPT` when absent.
    pub compress: Option<bool>,
    pub encrypt: Option<bool>,
    /// Shared by every item; an item's own `inline_context` is merged over it.
    #[schema(value_type = Option<Object>)]
    pub inline_context: Option<serde_json::Value>,
    /// The documents to make (1 to `MAX_BATCH_ITEMS`); or give `policy_filter`.
    pub items: Option<Vec<BatchItem>>,
    /// One document per policy the caller can see that matches; or give `items`.
    pub policy_filter: Option<BatchPolicyFilter>,
}

/// One item of a batch.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    /// The item's file name in the archive (without extension), unique within the batch,
    /// at most 100 characters, no `/` or `\`. Default: the policy number, else the
    /// document id.
    pub reference: Option<String>,
    pub policy_id: Option<Uuid>,
    #[schema(value_type = Option<Object>)]
    pub inline_context: Option<serde_json::Value>,
}

/// Which policies a batch covers; each field narrows it.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BatchPolicyFilter {
    pub company_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    pub status: Option<PolicyStatus>,
}

/// What [`submit`] did.
pub enum Accepted {
    Created(Batch),
    /// The batch an earlier request with the same `Idempotency-Key` created.
    Replayed(Batch),
}

/// Checks a batch whole, writes it and its items in one transaction, and starts the
/// feeder. A replayed `Idempotency-Key` answers the first batch instead.
pub async fn submit(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    request: BatchRequest,
    idempotency_key: Option<&str>,
) -> ApiResult<Accepted> {
    let idempotency = match idempotency_key {
        Some(key) => {
            let body = serde_json::to_value(&request).map_err(ApiError::internal)?;
            Some(Idempotency::with_fingerprint(
                key,
                documents::fingerprint(&body),
            )?)
        }
        None => None,
    };
    if let Some(idempotency) = &idempotency
        && let Some(batch) = find_replay(state, caller, idempotency).await?
    {
        return Ok(Accepted::Replayed(batch));
    }
    let document_type = request.document_type.trim().to_owned();
    if document_type.is_empty() || document_type.chars().count() > 30 {
        return Err(ApiError::invalid(
            "document_type",
            "must be 1 to 30 characters long",
        ));
    }
    let shared = documents::inline_context(request.inline_context, || serde_json::json!({}))?;
    let template =
        documents::resolve_template(state, request.template_version_id, request.template_id)
            .await?;
    let format = request
        .output_format
        .or(template.format)
        .unwrap_or(OutputFormat::Html);
    documents::check_format(template.format, format)?;
    let items = match (request.items, request.policy_filter) {
        (Some(items), None) => checked_items(state, caller, items, &shared).await?,
        (None, Some(filter)) => policy_items(state, caller, filter, &shared).await?,
        _ => {
            return Err(ApiError::invalid(
                "items",
                "give exactly one of items and policy_filter",
            ));
        }
    };
    let waiting = state.db.documents().count_queued_in(Priority::Bulk).await?;
    if waiting + items.len() as i64 > state.settings.queue.max_queued_bulk {
        return Err(ApiError::unavailable(
            "unavailable",
            "Too many batch items are waiting to be rendered; try again later.",
            30,
        ));
    }
    let new = NewBatch {
        owner_id: caller.id(),
        document_type: &document_type,
        output_format: format,
        template_version_id: template.version_id,
        compress: request
            .compress
            .unwrap_or(state.settings.storage.default_compress),
        encrypt: request
            .encrypt
            .unwrap_or(state.settings.storage.default_encrypt),
        request_id: meta.request_id.as_deref(),
        idempotency_key: idempotency.as_ref().map(Idempotency::key),
        request_hash: idempotency.as_ref().map(Idempotency::request_hash),
    };
    let created = state.db.batches().create(new, &items).await;
    let row = match created {
        Ok(row) => row,
        Err(err) if err.is(common::db::Constraint::UqDocumentBatchesIdempotency) => {
            // The same key raced in from a parallel request, whose batch won.
            let idempotency = idempotency.expect("only a keyed insert conflicts");
            let winner = find_replay(state, caller, &idempotency).await?;
            return winner.map(Accepted::Replayed).ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("idempotency conflict without a batch"))
            });
        }
        Err(err) => return Err(err.into()),
    };
    state.feed_bulk_lane();
    state.metrics.batch_event("created");
    state.metrics.batch_items.inc_by(items.len() as u64);
    let metadata = serde_json::json!({"total": items.len(), "format": format});
    audit(state, meta, caller, "batch_created", row.id, metadata).await;
    Ok(Accepted::Created(find(state, caller, row.id).await?))
}

/// The batch an earlier request with this key made, if the request is the same.
async fn find_replay(
    state: &AppState,
    caller: &AuthUser,
    idempotency: &Idempotency,
) -> ApiResult<Option<Batch>> {
    let since = documents::idempotency_window_start();
    let Some(row) = state
        .db
        .batches()
        .find_idempotent(caller.id(), idempotency.key(), since)
        .await?
    else {
        return Ok(None);
    };
    idempotency.check_replay(row.request_hash.as_deref())?;
    Ok(Some(find(state, caller, row.id).await?))
}

/// The items as sent, checked: each fault is named by its place (`items[3].reference`),
/// all at once.
async fn checked_items(
    state: &AppState,
    caller: &AuthUser,
    items: Vec<BatchItem>,
    shared: &serde_json::Value,
) -> ApiResult<Vec<NewItem>> {
    let max = state.settings.queue.max_batch_items;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::invalid(
            "items",
            format!("must hold 1 to {max} items"),
        ));
    }
    let mut errors = Vec::new();
    let mut invalid = |i: usize, field: &str, message: String| {
        errors.push(FieldError {
            field: format!("items[{i}].{field}"),
            message,
        })
    };
    let policy_ids: Vec<Uuid> = items
        .iter()
        .filter_map(|item| item.policy_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let numbers: HashMap<Uuid, String> = state
        .db
        .policies()
        .numbers(&policy_ids, Scope::of(caller).owner())
        .await?
        .into_iter()
        .collect();
    let mut references = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(reference) = &item.reference {
            match reference_fault(reference) {
                Some(fault) => invalid(i, "reference", fault),
                None if !references.insert(reference.as_str()) => {
                    invalid(i, "reference", "must be unique within the batch".into())
                }
                None => {}
            }
        }
        if let Some(policy_id) = item.policy_id
            && !numbers.contains_key(&policy_id)
        {
            invalid(i, "policy_id", "policy not found".into());
        }
        if !matches!(
            item.inline_context,
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Object(_))
        ) {
            invalid(i, "inline_context", "must be a JSON object".into());
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let mut taken: HashSet<String> = references.into_iter().map(str::to_owned).collect();
    Ok(items
        .into_iter()
        .map(|item| {
            let id = Uuid::now_v7();
            let reference = item.reference.unwrap_or_else(|| {
                let number = item.policy_id.and_then(|p| numbers.get(&p)).cloned();
                default_reference(number, id, &mut taken)
            });
            NewItem {
                id,
                reference,
                policy_id: item.policy_id,
                inline_context: merged(shared, item.inline_context),
            }
        })
        .collect())
}

/// One item per policy matching `filter` that the caller can see, named by its number.
async fn policy_items(
    state: &AppState,
    caller: &AuthUser,
    filter: BatchPolicyFilter,
    shared: &serde_json::Value,
) -> ApiResult<Vec<NewItem>> {
    let max = state.settings.queue.max_batch_items;
    let filter = PolicyFilter {
        owner_id: Scope::of(caller).owner(),
        client_id: filter.client_id,
        company_id: filter.company_id,
        status: filter.status,
    };
    let page = state.db.policies().list(&filter, max as i64 + 1, 0).await?;
    if page.items.is_empty() {
        return Err(ApiError::invalid(
            "policy_filter",
            "no policy you can see matches",
        ));
    }
    if page.total > max as i64 {
        return Err(ApiError::invalid(
            "policy_filter",
            format!(
                "{} policies match, more than the {max} a batch may hold",
                page.total
            ),
        ));
    }
    // Oldest first, as a portfolio is usually listed.
    let mut taken = HashSet::new();
    Ok(page
        .items
        .into_iter()
        .rev()
        .map(|policy| {
            let id = Uuid::now_v7();
            NewItem {
                id,
                reference: default_reference(Some(policy.policy_number), id, &mut taken),
                policy_id: Some(policy.id),
                inline_context: shared.clone(),
            }
        })
        .collect())
}

/// Why `reference` cannot name a file, if it cannot.
fn reference_fault(reference: &str) -> Option<String> {
    let chars = reference.chars().count();
    if reference.trim().is_empty() || chars > MAX_REFERENCE_CHARS {
        return Some(format!(
            "must be 1 to {MAX_REFERENCE_CHARS} characters long"
        ));
    }
    if reference
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
        || reference == ".."
    {
        return Some("must not contain '/', '\\' or control characters".into());
    }
    None
}

/// The policy number when it is free and names a file, else the document id.
fn default_reference(number: Option<String>, id: Uuid, taken: &mut HashSet<String>) -> String {
    let reference = number
        .filter(|n| reference_fault(n).is_none() && !taken.contains(n))
        .unwrap_or_else(|| id.to_string());
    taken.insert(reference.clone());
    reference
}

/// `shared` with `own`'s keys set over it.
fn merged(shared: &serde_json::Value, own: Option<serde_json::Value>) -> serde_json::Value {
    let mut context = shared.clone();
    if let (Some(base), Some(serde_json::Value::Object(own))) = (context.as_object_mut(), own) {
        base.extend(own);
    }
    context
}

/// The batch, if the caller may see it.
pub async fn find(state: &AppState, caller: &AuthUser, id: Uuid) -> ApiResult<Batch> {
    state
        .db
        .batches()
        .find(id, Scope::of(caller).owner())
        .await?
        .ok_or_else(|| ApiError::not_found("Batch not found."))
}

/// Cancels every queued item; items being rendered finish.
pub async fn cancel(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<Batch> {
    let batch = find(state, caller, id).await?;
    let cancelled = state.db.batches().cancel(&batch).await?;
    state
        .metrics
        .documents_finished(batch.output_format.as_str(), "cancelled", cancelled);
    state.metrics.batch_event("cancelled");
    let metadata = serde_json::json!({"cancelled": cancelled});
    audit(state, meta, caller, "batch_cancelled", id, metadata).await;
    find(state, caller, id).await
}

/// Puts every failed item back in the bulk lane.
pub async fn retry(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<Batch> {
    let batch = find(state, caller, id).await?;
    let retried = state.db.batches().retry(batch.id).await?;
    if retried > 0 {
        state.feed_bulk_lane();
    }
    state.metrics.batch_event("retried");
    let metadata = serde_json::json!({"retried": retried});
    audit(state, meta, caller, "batch_retried", id, metadata).await;
    find(state, caller, id).await
}

/// Deletes the batch and its documents, then their objects (in the background: a
/// 10,000-item batch's objects take a while; one left behind is an orphan the purge
/// removes).
pub async fn delete(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<()> {
    let batch = find(state, caller, id).await?;
    let Some(keys) = state.db.batches().delete(batch.id).await? else {
        return Err(ApiError::not_found("Batch not found."));
    };
    let storage = state.storage.clone();
    tokio::spawn(async move {
        futures::stream::iter(keys)
            .for_each_concurrent(DELETE_CONCURRENCY, |key| {
                let storage = storage.clone();
                async move {
                    if let Err(err) = storage.delete(&key).await {
                        tracing::warn!(error = ?err, %key, "cannot delete a batch item's object");
                    }
                }
            })
            .await;
    });
    state.metrics.batch_event("deleted");
    let metadata = serde_json::json!({"total": batch.total});
    audit(state, meta, caller, "batch_deleted", id, metadata).await;
    Ok(())
}

/// A link that downloads the batch's archive without a token until it expires.
pub async fn sign_link(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    ttl_seconds: i64,
) -> ApiResult<SignedUrl> {
    let expires_at = documents::link_expiry(state, ttl_seconds)?;
    let batch = find(state, caller, id).await?;
    ensure_something_ready(&batch)?;
    let exp = expires_at.timestamp();
    let sig = state.keys.sign(batch.id, exp);
    let url = format!(
        "{}/api/v1/document-batches/{}/archive?exp={exp}&sig={sig}",
        state.public_base_url, batch.id
    );
    Ok(SignedUrl { url, expires_at })
}

fn ensure_something_ready(batch: &Batch) -> ApiResult<()> {
    if batch.ready == 0 {
        return Err(ApiError::conflict(
            "nothing_ready",
            "No document of this batch is ready yet.",
        ));
    }
    Ok(())
}

/// Checks the credential (a signed link, or a bearer token of someone who may see the
/// batch) and the download rate limit, audits the download, and starts the archive.
pub async fn archive(
    state: &AppState,
    meta: &RequestMeta,
    id: Uuid,
    credential: Credential,
) -> ApiResult<(Batch, BoxStream<'static, std::io::Result<Bytes>>)> {
    let (batch, user_id, signed) = match documents::admit(state, id, credential).await? {
        Admitted::User(user) => (find(state, &user, id).await?, user.id(), false),
        Admitted::Link => {
            let batch = state
                .db
                .batches()
                .find(id, None)
                .await?
                .ok_or_else(|| ApiError::not_found("Batch not found."))?;
            let owner = batch.owner_id;
            (batch, owner, true)
        }
    };
    ensure_something_ready(&batch)?;
    let event = AuditEvent {
        user_id: Some(user_id),
        action: "download_batch_archive",
        object_type: Some("document_batch"),
        object_id: Some(id.to_string()),
        metadata: Some(serde_json::json!({"signed": signed, "ready": batch.ready})),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
    let (tx, rx) = tokio::sync::mpsc::channel(ARCHIVE_PREFETCH);
    tokio::spawn(write_archive(state.clone(), batch.id, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((batch, body.boxed()))
}

/// What the ZIP writer has written and the sender has not sent yet.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("never poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Pending {
    /// Sends what was written; false when the client went away.
    async fn send(&self, tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) -> bool {
        let chunk = std::mem::take(&mut *self.0.lock().expect("never poisoned"));
        chunk.is_empty() || tx.send(Ok(Bytes::from(chunk))).await.is_ok()
    }
}

/// Writes the archive into `tx`; an error midway is sent as the stream's error, which
/// cuts the transfer rather than ending it with a truncated archive that looks whole.
async fn write_archive(
    state: AppState,
    batch_id: Uuid,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    if let Err(err) = write_entries(&state, batch_id, &tx).await {
        tracing::error!(error = %format!("{err:#}"), %batch_id, "a batch archive failed midway; the transfer is cut");
        let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
    }
}

async fn write_entries(
    state: &AppState,
    batch_id: Uuid,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> anyhow::Result<()> {
    use zip::write::SimpleFileOptions;
    let pending = Pending::default();
    let mut zip = zip::ZipWriter::new_stream(pending.clone());
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut manifest = Vec::new();
    crate::service::csv::write_record(
        &mut manifest,
        b',',
        [
            "reference",
            "document_id",
            "status",
            "error",
            "size_bytes",
            "checksum",
        ]
        .into_iter(),
    );
    let mut names = HashSet::new();
    let mut after = Uuid::nil();
    loop {
        let page = state
            .db
            .batches()
            .items_after(batch_id, after, ARCHIVE_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for doc in &page {
            write_manifest_row(&mut manifest, doc);
        }
        let ready = page
            .into_iter()
            .filter(|doc| doc.status == DocumentStatus::Ready);
        let mut opened = futures::stream::iter(ready)
            .map(|doc| async move {
                let opened = documents::open(state, &doc).await;
                (doc, opened)
            })
            .buffered(ARCHIVE_PREFETCH);
        while let Some((doc, opened)) = opened.next().await {
            let opened = opened.map_err(|err| anyhow::anyhow!("document {}: {err:?}", doc.id))?;
            let name = entry_name(&doc, &mut names);
            let large = opened.length >= u64::from(u32::MAX);
            zip.start_file(name, stored.large_file(large))?;
            let mut body = opened.body;
            while let Some(chunk) = body.try_next().await? {
                zip.write_all(&chunk)?;
                if !pending.send(tx).await {
                    return Ok(());
                }
            }
        }
    }
    zip.start_file("manifest.csv", stored)?;
    zip.write_all(&manifest)?;
    zip.finish()?;
    pending.send(tx).await;
    Ok(())
}

fn write_manifest_row(out: &mut Vec<u8>, doc: &Document) {
    let id = doc.id.to_string();
    let size = doc.size_bytes.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        doc.reference.as_deref().unwrap_or(&id),
        &id,
        doc.status.as_str(),
        doc.error.as_deref().unwrap_or(""),
        &size,
        doc.checksum.as_deref().unwrap_or(""),
    ];
    crate::service::csv::write_record(out, b',', fields.into_iter());
}

/// `<reference>.<extension>`, with anything that is not a plain file name character made
/// `_`, and the document id added when two items would share a name.
fn entry_name(doc: &Document, taken: &mut HashSet<String>) -> String {
    let reference = doc.reference.clone().unwrap_or_else(|| doc.id.to_string());
    let clean: String = reference
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let extension = doc.output_format.extension();
    let mut name = format!("{clean}.{extension}");
    if !taken.insert(name.clone()) {
        name = format!("{clean}-{}.{extension}", doc.id);
        taken.insert(name.clone());
    }
    name
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    action: &'static str,
    id: Uuid,
    metadata: serde_json::Value,
) {
    let event = AuditEvent {
        user_id: Some(caller.id()),
        action,
        object_type: Some("document_batch"),
        object_id: Some(id.to_string()),
        metadata: Some(metadata),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_must_name_a_file() {
        assert_eq!(reference_fault("POL-0001"), None);
        assert!(reference_fault("").is_some());
        assert!(reference_fault("../etc/passwd").is_some());
        assert!(reference_fault("a\\b").is_some());
        assert!(reference_fault("tab\there").is_some());
        assert!(reference_fault(&"x".repeat(101)).is_some());
        assert_eq!(reference_fault(&"é".repeat(100)), None);
    }

    #[test]
    fn a_default_reference_is_the_policy_number_unless_taken() {
        let mut taken = HashSet::from(["POL-1".to_owned()]);
        let id = Uuid::now_v7();
        assert_eq!(
            default_reference(Some("POL-1".into()), id, &mut taken),
            id.to_string()
        );
        assert_eq!(
            default_reference(Some("POL-2".into()), id, &mut taken),
            "POL-2"
        );
        assert_eq!(
            default_reference(Some("A/B".into()), id, &mut taken),
            id.to_string()
        );
        assert_eq!(default_reference(None, id, &mut taken), id.to_string());
    }

    #[test]
    fn an_items_context_is_merged_over_the_shared_one() {
        let shared = serde_json::json!({"insurer": "Acme", "year": 2026});
        let own = serde_json::json!({"year": 2027, "name": "Jane"});
        assert_eq!(
            merged(&shared, Some(own)),
            serde_json::json!({"insurer": "Acme", "year": 2027, "name": "Jane"})
        );
        assert_eq!(merged(&shared, None), shared);
    }
}
