//! The storage interface itself: the [`ObjectStore`] trait, its types and errors, the
//! paginator and the JSON-record helpers. Implementations and the part writer build on
//! this module; see [`crate::storage`] for the contract.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A store shared by an operation and its spawned part uploads.
pub type DynStore = Arc<dyn ObjectStore>;

/// A classified store failure. Messages carry the store's error code and HTTP status but
/// never an SDK's own text, which can include request ids and host details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the S3 store rejected the request ({detail}); check the access key, secret key and bucket policy")]
    AccessDenied { detail: String },
    #[error("bucket {bucket:?} does not exist")]
    NoBucket { bucket: String },
    #[error("bucket {bucket:?} does not exist and cannot be created ({detail})")]
    CannotCreateBucket { bucket: String, detail: String },
    #[error("cannot reach the S3 endpoint {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// A [`PutMode::Create`] write found the key taken.
    #[error("object {key:?} already exists; backups never overwrite objects")]
    AlreadyExists { key: String },
    /// The object (or the version) does not exist.
    #[error("object {key:?} does not exist")]
    NotFound { key: String },
    /// The store does not implement the operation (Garage: ListObjectVersions).
    #[error("the S3 store does not implement {operation}")]
    Unsupported { operation: &'static str },
    /// Any other error answer.
    #[error("the S3 store answered {detail} during {operation}")]
    Answer {
        operation: &'static str,
        detail: String,
    },
    /// A listing said "more follows" but gave the same place to continue from.
    #[error("the S3 store's {operation} listing does not advance (a truncated page with the same marker); refusing to loop")]
    StuckListing { operation: &'static str },
    /// The stream needs more parts than S3 allows.
    #[error("more than {max} parts; raise backup.part-size-bytes")]
    TooManyParts { max: u64 },
    /// A part upload or hashing task died (panic or runtime shutdown).
    #[error("a {operation} task stopped before it finished")]
    TaskFailed { operation: &'static str },
    #[error("object {key:?} is not a valid record")]
    BadRecord { key: String },
    #[error("invalid S3 client settings: {0}")]
    Setup(String),
}

/// Whether a write may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Write only if the key does not exist: [`StoreError::AlreadyExists`] otherwise.
    Create,
    /// Replace whatever is there (only tests use it; the agent writes once).
    Overwrite,
}

/// How an object is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    pub mode: PutMode,
    pub content_type: &'static str,
    /// Bulk data (a snapshot): the configured storage class applies. Small records stay
    /// in the store's default class, so that listing can read them at once whatever the
    /// class of the snapshots (an archive class would make every manifest unreadable).
    pub bulk: bool,
}

impl PutOptions {
    /// Write-once of a small record with the given content type.
    pub fn create(content_type: &'static str) -> Self {
        PutOptions {
            mode: PutMode::Create,
            content_type,
            bulk: false,
        }
    }
}

/// Object Lock state of one object version, as the store reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: Option<String>,
    /// Unix seconds.
    pub retain_until: Option<i64>,
    pub legal_hold: bool,
}

/// What a listing or a head request says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When the store wrote this version (Unix seconds, the store's own clock), when it
    /// says. This, not the time in a backup id, is what retention ranks and ages by: an id
    /// carries the writing unit's clock, which may be wrong (or forged), while the store
    /// stamps every object itself.
    pub last_modified: Option<i64>,
    /// Only filled by [`ObjectStore::head`]; listings leave it empty.
    pub lock: ObjectLock,
}

/// An object being read: its size and its bytes as they arrive.
pub struct GetResult {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl GetResult {
    /// Reads the whole body into memory (only for small objects).
    pub async fn bytes(mut self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.size.min(1 << 20) as usize);
        while let Some(chunk) = self.body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// Unix seconds.
    pub initiated: Option<i64>,
}

/// One stored version of an object, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub key: String,
    /// `None` on stores without versioning (the object is its only version).
    pub version_id: Option<String>,
    pub delete_marker: bool,
}

/// A completed part, as [`ObjectStore::complete_multipart`] needs it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartId {
    pub number: u32,
    pub etag: Option<String>,
    /// The part's `x-amz-checksum-*` value, when the upload uses one (a store that
    /// keeps per-part checksums wants them back at completion).
    pub checksum: Option<String>,
}

/// What [`ObjectStore::probe_integrity`] found out about one header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntegrityProbe {
    /// A wrong value was refused and the right one taken.
    pub checked: bool,
    /// The ETag of the part the store took is the hex MD5 of its body (so comparing
    /// the two after each write shows a body damaged on the way).
    pub etag_is_md5: bool,
}

/// The integrity header on every write of a body: what `s3.checksum` resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityHeader {
    /// `Content-MD5`: every store checks it.
    Md5,
    /// `x-amz-checksum-crc32c` (Castagnoli, hardware CRC).
    Crc32c,
    /// `x-amz-checksum-crc64nvme`.
    Crc64Nvme,
    /// `Content-MD5`, and each write's ETag compared with the MD5 of the body sent: for
    /// a store that ignores the header but answers with MD5 ETags (moto does), so a body
    /// damaged in transit still fails its write.
    Md5Etag,
}

impl IntegrityHeader {
    /// The `s3.checksum` value that names it.
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityHeader::Md5 => "md5",
            IntegrityHeader::Md5Etag => "md5-etag",
            IntegrityHeader::Crc32c => "crc32c",
            IntegrityHeader::Crc64Nvme => "crc64nvme",
        }
    }

    /// The header's value for `body`: base64 of the digest (big-endian for the CRCs,
    /// as S3 defines them).
    pub fn value(self, body: &[u8]) -> String {
        use base64::Engine;
        use md5::Digest;
        let b64 = &base64::engine::general_purpose::STANDARD;
        match self {
            IntegrityHeader::Md5 | IntegrityHeader::Md5Etag => b64.encode(md5::Md5::digest(body)),
            IntegrityHeader::Crc32c => {
                let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32;
                b64.encode(crc.to_be_bytes())
            }
            IntegrityHeader::Crc64Nvme => {
                let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, body);
                b64.encode(crc.to_be_bytes())
            }
        }
    }

    /// Whether `etag` (as the store answered it, quoted or not) is the MD5 whose base64
    /// is `md5_b64`.
    pub fn etag_matches(md5_b64: &str, etag: &str) -> bool {
        use base64::Engine;
        let Ok(digest) = base64::engine::general_purpose::STANDARD.decode(md5_b64) else {
            return false;
        };
        etag.trim_matches('"')
            .eq_ignore_ascii_case(&hex::encode(digest))
    }
}

/// Where a listing continues: ListObjectsV2's continuation token in `key`, or the key
/// and upload/version id markers of the older listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageToken {
    pub key: String,
    pub id: Option<String>,
}

/// One page of a listing; `next` is `Some` exactly when the store said "truncated".
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<PageToken>,
}

/// The operations the agent needs from an object store, and nothing more.
///
/// Implementations classify their own errors into [`StoreError`] and keep every
/// store-specific workaround inside themselves (see `compat`).
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// The endpoint as shown in messages (never with credentials).
    fn endpoint(&self) -> &str;
    /// The whole object, streamed. [`StoreError::NotFound`] when it does not exist.
    async fn get(&self, key: &str) -> Result<GetResult, StoreError>;
    /// The bytes `range` of an object, streamed in the pieces they arrive in; `size` is
    /// the length the store announced for the answer, or the length asked for when it
    /// announced none (a restore checks both against the range).
    /// [`StoreError::NotFound`] when the object does not exist.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError>;
    /// Size and Object Lock state of an object, or of one of its versions.
    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectMeta, StoreError>;
    /// Writes a whole object in one request.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), StoreError>;
    /// Starts a multipart upload; returns its id. Nothing is visible yet.
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError>;
    /// Uploads one part (numbers from 1).
    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<PartId, StoreError>;
    /// Makes the upload visible as one object of `size` bytes, honouring `opts.mode`.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartId>,
        size: u64,
        opts: &PutOptions,
    ) -> Result<(), StoreError>;
    /// Discards an upload and its parts; one that is already gone counts as aborted.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    /// One page of the objects under `prefix`.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<ObjectMeta>, StoreError>;
    /// One page of the open multipart uploads under `prefix`.
    async fn list_uploads_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<OpenUpload>, StoreError>;
    /// One page of every version and delete marker under `prefix`
    /// ([`StoreError::Unsupported`] where the store has no versions).
    async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<StoredVersion>, StoreError>;
    /// Deletes exactly one version (no delete marker), or the object on an unversioned
    /// store.
    async fn delete_version(&self, key: &str, version_id: Option<&str>) -> Result<(), StoreError>;
    /// Deletes up to [`DELETE_BATCH`] versions in one request (S3 DeleteObjects), each
    /// exactly as [`ObjectStore::delete_version`] would; returns the ones the store
    /// refused, with why. [`StoreError::Unsupported`] where the store has no batch delete
    /// (callers fall back to one request per version: [`delete_versions`]).
    async fn delete_batch(
        &self,
        versions: &[StoredVersion],
    ) -> Result<Vec<(StoredVersion, StoreError)>, StoreError>;
    /// Whether the bucket has Object Lock enabled. Only then can a version carry a
    /// retention date or a legal hold, so only then must a delete look at each one
    /// (HeadObject) first. A store without Object Lock answers `false`.
    async fn object_lock_enabled(&self) -> Result<bool, StoreError>;
    /// Whether the bucket keeps versions (versioning enabled or suspended).
    async fn versioning(&self) -> Result<bool, StoreError>;
    /// Makes sure the bucket exists, creating it when missing; whether it was created.
    async fn ensure_bucket(&self) -> Result<bool, StoreError>;
    /// Whether the store checks `header` (it refuses a part whose value is wrong and
    /// takes it when right), and whether the ETag of a part it took is the part's MD5.
    /// Writes nothing lasting: the parts go to a multipart upload of `key` that is
    /// aborted whatever happens (an object would be write-once and could never be taken
    /// back). Stores without integrity headers answer "not checked".
    async fn probe_integrity(
        &self,
        _key: &str,
        _header: IntegrityHeader,
    ) -> Result<IntegrityProbe, StoreError> {
        Ok(IntegrityProbe::default())
    }
}

/// Walks a paginated listing to its end.
///
/// `fetch` gets the token to continue from (`None` first). A page that claims more
/// follows but gives back the token it was asked with would repeat forever, so it is an
/// error ([`StoreError::StuckListing`]), not the end of the listing.
pub async fn collect_pages<T, F, Fut>(
    operation: &'static str,
    mut fetch: F,
) -> Result<Vec<T>, StoreError>
where
    F: FnMut(Option<PageToken>) -> Fut,
    Fut: Future<Output = Result<Page<T>, StoreError>>,
{
    let mut out = Vec::new();
    let mut token: Option<PageToken> = None;
    loop {
        let page = fetch(token.clone()).await?;
        out.extend(page.items);
        match page.next {
            None => return Ok(out),
            Some(next) if next == token.clone().unwrap_or_default() => {
                return Err(StoreError::StuckListing { operation })
            }
            Some(next) => token = Some(next),
        }
    }
}

/// Every object under `prefix`.
pub async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
    collect_pages("ListObjectsV2", |t| store.list_page(prefix, t)).await
}

/// Every open multipart upload under `prefix`.
pub async fn list_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<OpenUpload>, StoreError> {
    collect_pages("ListMultipartUploads", |t| {
        store.list_uploads_page(prefix, t)
    })
    .await
}

/// Every version and delete marker under `prefix`.
pub async fn list_versions(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<StoredVersion>, StoreError> {
    collect_pages("ListObjectVersions", |t| {
        store.list_versions_page(prefix, t)
    })
    .await
}

/// The most keys S3's DeleteObjects takes in one request.
pub const DELETE_BATCH: usize = 1000;

/// Single deletes in flight at once on a store without DeleteObjects.
const DELETE_CONCURRENCY: usize = 16;

/// Deletes `versions`, in batches of [`DELETE_BATCH`] through DeleteObjects, falling back
/// to one DeleteObject per version (a few at a time) on a store that does not implement
/// it. Returns every version that was not deleted, with why; a request that fails as a
/// whole counts against each version it carried (some may be gone: the caller re-lists
/// rather than trusts either answer). Order inside a batch is the store's: callers that
/// need an order issue one call per step.
pub async fn delete_versions(
    store: &dyn ObjectStore,
    versions: &[StoredVersion],
) -> Vec<(StoredVersion, StoreError)> {
    let mut failed = Vec::new();
    let mut batches = versions.chunks(DELETE_BATCH);
    for batch in batches.by_ref() {
        match store.delete_batch(batch).await {
            Ok(refused) => failed.extend(refused),
            Err(StoreError::Unsupported { .. }) => {
                failed.extend(delete_one_by_one(store, batch).await);
                break;
            }
            Err(e) => failed.extend(batch.iter().map(|v| (v.clone(), e.clone()))),
        }
    }
    for batch in batches {
        failed.extend(delete_one_by_one(store, batch).await);
    }
    failed
}

async fn delete_one_by_one(
    store: &dyn ObjectStore,
    versions: &[StoredVersion],
) -> Vec<(StoredVersion, StoreError)> {
    futures::stream::iter(versions.iter().cloned())
        .map(|v| async move {
            match store.delete_version(&v.key, v.version_id.as_deref()).await {
                Ok(()) => None,
                Err(e) => Some((v, e)),
            }
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

/// The largest JSON record the agent will read.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// Writes a small JSON record once ([`PutMode::Create`]), resolving a lost answer by
/// reading back (see [`put_once`]).
pub async fn put_json<T: Serialize>(
    store: &dyn ObjectStore,
    key: &str,
    record: &T,
) -> Result<(), StoreError> {
    let mut body = serde_json::to_vec_pretty(record).expect("records serialise");
    body.push(b'\n');
    put_once(
        store,
        key,
        Bytes::from(body),
        &PutOptions::create("application/json"),
    )
    .await
}

/// The largest object [`put_once`] reads back to resolve an ambiguous write.
const MAX_READ_BACK_BYTES: u64 = 64 * 1024 * 1024;

/// A write-once put whose outcome is never guessed. When the store carried the write out
/// but the answer was lost, the client's retry is refused (`AlreadyExists`) or the error
/// is a reset or a timeout: either way the object may be ours. So on any error the key is
/// read back, and an object with exactly the bytes sent counts as written; anything else
/// (no object, other bytes: someone else's) keeps the error.
pub async fn put_once(
    store: &dyn ObjectStore,
    key: &str,
    body: Bytes,
    opts: &PutOptions,
) -> Result<(), StoreError> {
    let err = match store.put(key, body.clone(), opts).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if body.len() as u64 > MAX_READ_BACK_BYTES {
        return Err(err);
    }
    match store.get(key).await {
        Ok(got) if got.size == body.len() as u64 => match got.bytes().await {
            Ok(stored) if stored == body => {
                tracing::warn!(key, error = %err, "the answer to a write was lost, but the object is exactly what was sent");
                Ok(())
            }
            _ => Err(err),
        },
        _ => Err(err),
    }
}

/// Takes back an object this agent just wrote and that must not stay (its backup failed
/// before the manifest could be written): every version of exactly `key` is deleted by
/// its version id, so no delete marker is left on a versioned bucket; a store without
/// version listings gets a plain delete. Fails on a bucket whose retention forbids it
/// (the object then stays, listed as `incomplete` until prune removes it).
pub async fn withdraw(store: &dyn ObjectStore, key: &str) -> Result<(), StoreError> {
    let versions = match list_versions(store, key).await {
        Ok(v) => v,
        Err(StoreError::Unsupported { .. }) => {
            return store.delete_version(key, None).await;
        }
        Err(e) => return Err(e),
    };
    for v in versions.iter().filter(|v| v.key == key) {
        store.delete_version(key, v.version_id.as_deref()).await?;
    }
    Ok(())
}

/// Aborts every open multipart upload of exactly `key`. Keys of uploads are unique to one
/// backup, so every upload there is this agent's own: among them the ones whose creation
/// answer was lost (the client retried and got a second upload id) or that a shutdown
/// interrupted before the id arrived. Returns how many were aborted.
pub async fn abort_uploads_of(store: &dyn ObjectStore, key: &str) -> Result<usize, StoreError> {
    let open = list_uploads(store, key).await?;
    let mut aborted = 0;
    for u in open.iter().filter(|u| u.key == key) {
        match store.abort_multipart(&u.key, &u.upload_id).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => aborted += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(aborted)
}

/// Reads a small JSON record; `Ok(None)` when it does not exist, [`StoreError::BadRecord`]
/// when it is too large or does not parse as `T`.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let got = match store.get(key).await {
        Ok(g) => g,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Records are a few hundred bytes; anything huge under a record's name is not one
    // (and must not be read into memory).
    if got.size > MAX_RECORD_BYTES {
        return Err(StoreError::BadRecord {
            key: key.to_owned(),
        });
    }
    let body = got.bytes().await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|_| StoreError::BadRecord {
            key: key.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_values_are_base64_of_the_big_endian_digest() {
        // The CRC catalogue's check values for "123456789".
        let crc32c = IntegrityHeader::Crc32c.value(b"123456789");
        assert_eq!(crc32c, "4waSgw==", "0xE3069283");
        let crc64 = IntegrityHeader::Crc64Nvme.value(b"123456789");
        assert_eq!(crc64, "rosUhgp5mIg=", "0xAE8B14860A799888");
        // RFC 1321: MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        let md5 = IntegrityHeader::Md5.value(b"");
        assert_eq!(md5, "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert!(IntegrityHeader::etag_matches(
            &md5,
            "\"d41d8cd98f00b204e9800998ecf8427e\""
        ));
        assert!(IntegrityHeader::etag_matches(
            &md5,
            "D41D8CD98F00B204E9800998ECF8427E"
        ));
        assert!(!IntegrityHeader::etag_matches(
            &md5,
            "\"d41d8cd98f00b204e9800998ecf8427f\""
        ));
        assert!(!IntegrityHeader::etag_matches(
            &md5,
            "\"d41d8cd98f00b204e9800998ecf8427e-2\""
        ));
    }

    fn page(items: &[u32], next: Option<&str>) -> Page<u32> {
        Page {
            items: items.to_vec(),
            next: next.map(|k| PageToken {
                key: k.into(),
                id: None,
            }),
        }
    }

    #[tokio::test]
    async fn paginator_follows_tokens_to_the_end() {
        let got = collect_pages("L", |t| async move {
            Ok(match t.map(|t| t.key).as_deref() {
                None => page(&[1, 2], Some("a")),
                Some("a") => page(&[3], Some("b")),
                _ => page(&[4], None),
            })
        })
        .await
        .unwrap();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn paginator_refuses_a_truncated_page_that_does_not_advance() {
        let err = collect_pages("L", |t| async move {
            Ok(match t.map(|t| t.key).as_deref() {
                None => page(&[1], Some("a")),
                _ => page(&[2], Some("a")),
            })
        })
        .await
        .unwrap_err();
        assert_eq!(err, StoreError::StuckListing { operation: "L" });
        // Truncated with no marker at all on the first page: the same.
        let err = collect_pages("L", |_| async { Ok(page(&[1], Some(""))) })
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::StuckListing { operation: "L" });
    }
}
