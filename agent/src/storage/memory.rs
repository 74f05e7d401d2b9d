//! [`ObjectStore`] in memory, faithful to S3 where the agent depends on it.
//!
//! It exists so that every operation can be tested in milliseconds without a server, so
//! it keeps the semantics that matter: write-once ([`PutMode::Create`] refused on an
//! existing key, for single writes and for completions alike), uploads invisible until
//! completed, S3's 5 MiB minimum for every part but the last, versions and delete
//! markers on a versioned bucket (`null` version ids otherwise), Object Lock refusing
//! to delete a retained or held version, and listings cut into pages.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::api::{
    GetResult, ObjectLock, ObjectMeta, ObjectStore, OpenUpload, Page, PageToken, PartId, PutMode,
    PutOptions, StoreError, StoredVersion,
};

/// S3's smallest part but the last.
const MIN_PART: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Version {
    id: String,
    /// `None`: a delete marker.
    data: Option<Bytes>,
    lock: ObjectLock,
    /// The store's write time (Unix seconds), as S3's LastModified.
    modified: i64,
}

#[derive(Debug)]
struct Upload {
    key: String,
    parts: BTreeMap<u32, Bytes>,
    initiated: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Per key, oldest version first.
    objects: BTreeMap<String, Vec<Version>>,
    uploads: BTreeMap<String, Upload>,
    next_id: u64,
}

/// An in-memory bucket; see the module docs.
#[derive(Debug)]
pub struct InMemory {
    state: Mutex<State>,
    versioned: bool,
    object_lock: bool,
    batch_delete: bool,
    page_size: usize,
}

impl Default for InMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemory {
    /// An empty, unversioned bucket that lists 1000 items per page (as S3 does).
    pub fn new() -> Self {
        InMemory {
            state: Mutex::new(State::default()),
            versioned: false,
            object_lock: false,
            batch_delete: true,
            page_size: 1000,
        }
    }

    /// A versioned bucket with Object Lock enabled (as S3 requires for locks).
    pub fn with_object_lock() -> Self {
        InMemory {
            object_lock: true,
            ..Self::versioned()
        }
    }

    /// A store without DeleteObjects (answers [`StoreError::Unsupported`]), as some
    /// S3-compatible stores are.
    pub fn without_batch_delete(mut self) -> Self {
        self.batch_delete = false;
        self
    }

    /// A bucket with versioning enabled.
    pub fn versioned() -> Self {
        InMemory {
            versioned: true,
            ..Self::new()
        }
    }

    /// Lists at most `n` items per page, so tests walk several pages.
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("in-memory store lock")
    }

    /// The current bytes of `key` (test helper).
    pub fn object(&self, key: &str) -> Option<Bytes> {
        current(&self.lock(), key).map(|v| v.data.clone().expect("current is data"))
    }

    /// Every key that currently has data, sorted (test helper).
    pub fn keys(&self) -> Vec<String> {
        let s = self.lock();
        s.objects
            .keys()
            .filter(|k| current(&s, k).is_some())
            .cloned()
            .collect()
    }

    /// Open multipart uploads as (key, upload id) (test helper).
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        self.lock()
            .uploads
            .iter()
            .map(|(id, u)| (u.key.clone(), id.clone()))
            .collect()
    }

    /// Number of stored versions and delete markers of `key` (test helper).
    pub fn version_count(&self, key: &str) -> usize {
        self.lock().objects.get(key).map_or(0, Vec::len)
    }

    /// Writes `key` unconditionally (test helper, e.g. a record a test wants to spoil).
    pub fn insert(&self, key: &str, body: impl Into<Bytes>) {
        let mut s = self.lock();
        let versioned = self.versioned;
        store_version(&mut s, versioned, key, body.into());
    }

    /// Puts `lock` on the current version of `key` (test helper). Only a bucket made
    /// [`InMemory::with_object_lock`] can hold locks, as on S3.
    pub fn set_lock(&self, key: &str, lock: ObjectLock) {
        assert!(
            self.object_lock,
            "Object Lock is not enabled on this bucket"
        );
        let mut s = self.lock();
        if let Some(v) = s.objects.get_mut(key).and_then(|vs| vs.last_mut()) {
            v.lock = lock;
        }
    }

    /// Sets the store's write time of the current version of `key` (test helper: an
    /// object written long ago, or a unit whose clock was wrong when it named it).
    pub fn set_modified(&self, key: &str, modified: i64) {
        let mut s = self.lock();
        if let Some(v) = s.objects.get_mut(key).and_then(|vs| vs.last_mut()) {
            v.modified = modified;
        }
    }

    /// Starts an upload whose `Initiated` is `initiated` (test helper: an upload of an
    /// agent that died long ago).
    pub fn start_upload_at(&self, key: &str, initiated: i64) -> String {
        let mut s = self.lock();
        let id = new_id(&mut s, "u");
        s.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_owned(),
                parts: BTreeMap::new(),
                initiated,
            },
        );
        id
    }
}

fn new_id(s: &mut State, prefix: &str) -> String {
    s.next_id += 1;
    format!("{prefix}{:06}", s.next_id)
}

fn current<'s>(s: &'s State, key: &str) -> Option<&'s Version> {
    s.objects
        .get(key)
        .and_then(|vs| vs.last())
        .filter(|v| v.data.is_some())
}

fn store_version(s: &mut State, versioned: bool, key: &str, data: Bytes) {
    let id = if versioned {
        new_id(s, "v")
    } else {
        "null".to_owned()
    };
    let versions = s.objects.entry(key.to_owned()).or_default();
    if !versioned {
        versions.clear();
    }
    versions.push(Version {
        id,
        data: Some(data),
        lock: ObjectLock::default(),
        modified: now(),
    });
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Cuts `items` (in listing order) into a page after `token` (an index).
fn paginate<T: Clone>(items: Vec<T>, token: Option<PageToken>, page_size: usize) -> Page<T> {
    let start = match token {
        Some(t) => t.key.parse::<usize>().unwrap_or(0),
        None => 0,
    };
    let end = (start + page_size).min(items.len());
    let page: Vec<T> = items.get(start..end).unwrap_or_default().to_vec();
    let next = (end < items.len()).then(|| PageToken {
        key: end.to_string(),
        id: None,
    });
    Page { items: page, next }
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound {
        key: key.to_owned(),
    }
}

/// `data` as a body delivered in chunks, as a network answer is.
fn chunked(data: Bytes) -> GetResult {
    let chunks: Vec<Result<Bytes, StoreError>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(data.slice_ref(c)))
        .collect();
    GetResult {
        size: data.len() as u64,
        body: Box::pin(futures::stream::iter(chunks)),
    }
}

#[async_trait::async_trait]
impl ObjectStore for InMemory {
    fn endpoint(&self) -> &str {
        "memory://"
    }

    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        let data = self.object(key).ok_or_else(|| not_found(key))?;
        Ok(chunked(data))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        let data = self.object(key).ok_or_else(|| not_found(key))?;
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        Ok(chunked(data.slice(start..end)))
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectMeta, StoreError> {
        let s = self.lock();
        let version = match version_id {
            None => current(&s, key),
            Some(id) => s
                .objects
                .get(key)
                .and_then(|vs| vs.iter().find(|v| v.id == id)),
        };
        let v = version.ok_or_else(|| not_found(key))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: v.data.as_ref().map_or(0, |d| d.len() as u64),
            last_modified: Some(v.modified),
            lock: v.lock.clone(),
        })
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        let mut s = self.lock();
        if opts.mode == PutMode::Create && current(&s, key).is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        store_version(&mut s, self.versioned, key, body);
        Ok(())
    }

    async fn create_multipart(&self, key: &str, _opts: &PutOptions) -> Result<String, StoreError> {
        Ok(self.start_upload_at(key, now()))
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<PartId, StoreError> {
        let mut s = self.lock();
        let upload = s
            .uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| StoreError::Answer {
                operation: "UploadPart",
                detail: "NoSuchUpload (HTTP 404)".into(),
            })?;
        upload.parts.insert(number, body);
        Ok(PartId {
            number,
            etag: Some(format!("\"{upload_id}-{number}\"")),
            checksum: None,
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartId>,
        _size: u64,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        let answer = |detail: &str| StoreError::Answer {
            operation: "CompleteMultipartUpload",
            detail: detail.to_owned(),
        };
        let upload = s
            .uploads
            .get(upload_id)
            .filter(|u| u.key == key)
            .ok_or_else(|| answer("NoSuchUpload (HTTP 404)"))?;
        let mut numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        numbers.sort_unstable();
        let mut body = Vec::new();
        for (i, n) in numbers.iter().enumerate() {
            let part = upload
                .parts
                .get(n)
                .ok_or_else(|| answer("InvalidPart (HTTP 400)"))?;
            if i + 1 < numbers.len() && part.len() < MIN_PART {
                return Err(answer("EntityTooSmall (HTTP 400)"));
            }
            body.extend_from_slice(part);
        }
        if numbers.is_empty() {
            return Err(answer("MalformedXML (HTTP 400)"));
        }
        if opts.mode == PutMode::Create && current(&s, key).is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        s.uploads.remove(upload_id);
        store_version(&mut s, self.versioned, key, Bytes::from(body));
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.lock().uploads.remove(upload_id);
        Ok(())
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<ObjectMeta>, StoreError> {
        let s = self.lock();
        let items: Vec<ObjectMeta> = s
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, _)| {
                current(&s, k).map(|v| ObjectMeta {
                    key: k.clone(),
                    size: v.data.as_ref().map_or(0, |d| d.len() as u64),
                    last_modified: Some(v.modified),
                    lock: ObjectLock::default(),
                })
            })
            .collect();
        Ok(paginate(items, token, self.page_size))
    }

    async fn list_uploads_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<OpenUpload>, StoreError> {
        let s = self.lock();
        let mut items: Vec<OpenUpload> = s
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| OpenUpload {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: Some(u.initiated),
            })
            .collect();
        items.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(paginate(items, token, self.page_size))
    }

    async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<StoredVersion>, StoreError> {
        let s = self.lock();
        let items: Vec<StoredVersion> = s
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .flat_map(|(k, vs)| {
                vs.iter().rev().map(|v| StoredVersion {
                    key: k.clone(),
                    version_id: Some(v.id.clone()),
                    delete_marker: v.data.is_none(),
                })
            })
            .collect();
        Ok(paginate(items, token, self.page_size))
    }

    async fn delete_version(&self, key: &str, version_id: Option<&str>) -> Result<(), StoreError> {
        let now = now();
        let locked =
            |v: &Version| v.lock.legal_hold || v.lock.retain_until.is_some_and(|t| t > now);
        let denied = || StoreError::AccessDenied {
            detail: "AccessDenied (HTTP 403)".into(),
        };
        let mut s = self.lock();
        if !s.objects.contains_key(key) {
            return Ok(()); // S3 answers 204 for a missing key
        }
        // Without a version id, a versioned bucket gets a delete marker on top.
        let marker_id = (version_id.is_none() && self.versioned).then(|| new_id(&mut s, "v"));
        let versions = s.objects.get_mut(key).expect("checked above");
        match (version_id, marker_id) {
            (Some(id), _) => {
                if let Some(i) = versions.iter().position(|v| v.id == id) {
                    if locked(&versions[i]) {
                        return Err(denied());
                    }
                    versions.remove(i);
                }
            }
            (None, Some(id)) => versions.push(Version {
                id,
                data: None,
                lock: ObjectLock::default(),
                modified: now,
            }),
            (None, None) => {
                if versions.iter().any(locked) {
                    return Err(denied());
                }
                versions.clear();
            }
        }
        if versions.is_empty() {
            s.objects.remove(key);
        }
        Ok(())
    }

    async fn delete_batch(
        &self,
        versions: &[StoredVersion],
    ) -> Result<Vec<(StoredVersion, StoreError)>, StoreError> {
        if !self.batch_delete {
            return Err(StoreError::Unsupported {
                operation: "DeleteObjects",
            });
        }
        if versions.len() > super::api::DELETE_BATCH {
            return Err(StoreError::Answer {
                operation: "DeleteObjects",
                detail: "MalformedXML (HTTP 400)".into(),
            });
        }
        let mut refused = Vec::new();
        for v in versions {
            if let Err(e) = self.delete_version(&v.key, v.version_id.as_deref()).await {
                refused.push((v.clone(), e));
            }
        }
        Ok(refused)
    }

    async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.object_lock)
    }

    async fn versioning(&self) -> Result<bool, StoreError> {
        Ok(self.versioned)
    }

    async fn ensure_bucket(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{list, list_versions};

    #[tokio::test]
    async fn create_mode_refuses_an_existing_key_and_overwrite_does_not() {
        let m = InMemory::new();
        let create = PutOptions::create("text/plain");
        m.put("k", Bytes::from_static(b"1"), &create).await.unwrap();
        let e = m.put("k", Bytes::from_static(b"2"), &create).await;
        assert_eq!(e, Err(StoreError::AlreadyExists { key: "k".into() }));
        let over = PutOptions {
            mode: PutMode::Overwrite,
            ..create
        };
        m.put("k", Bytes::from_static(b"3"), &over).await.unwrap();
        assert_eq!(m.object("k").unwrap(), Bytes::from_static(b"3"));
    }

    #[tokio::test]
    async fn small_parts_but_the_last_are_refused_and_uploads_stay_invisible() {
        let m = InMemory::new();
        let o = PutOptions::create("x");
        let id = m.create_multipart("k", &o).await.unwrap();
        let p1 = m
            .put_part("k", &id, 1, Bytes::from_static(b"ab"))
            .await
            .unwrap();
        let p2 = m
            .put_part("k", &id, 2, Bytes::from_static(b"c"))
            .await
            .unwrap();
        assert!(m.keys().is_empty());
        let e = m.complete_multipart("k", &id, vec![p1, p2], 3, &o).await;
        assert!(
            matches!(e, Err(StoreError::Answer { ref detail, .. }) if detail.contains("EntityTooSmall"))
        );
    }

    #[tokio::test]
    async fn versioned_deletes_leave_markers_and_listings_page() {
        let m = InMemory::versioned().with_page_size(2);
        for k in ["p/a", "p/b", "p/c"] {
            m.insert(k, &b"x"[..]);
        }
        m.insert("p/a", &b"y"[..]);
        assert_eq!(list(&m, "p/").await.unwrap().len(), 3);
        assert_eq!(list_versions(&m, "p/").await.unwrap().len(), 4);
        m.delete_version("p/b", None).await.unwrap();
        assert_eq!(m.version_count("p/b"), 2);
        assert_eq!(list(&m, "p/").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn ranges_and_missing_objects_read_as_s3_answers_them() {
        let m = InMemory::new();
        m.insert("k", &b"0123456789"[..]);
        assert_eq!(
            m.get_range("k", 2..5).await.unwrap().bytes().await.unwrap(),
            b"234"
        );
        assert_eq!(
            m.get("k").await.unwrap().bytes().await.unwrap(),
            b"0123456789"
        );
        assert_eq!(
            m.get("nope").await.err(),
            Some(StoreError::NotFound { key: "nope".into() })
        );
        assert_eq!(m.head("k", None).await.unwrap().size, 10);
    }

    #[tokio::test]
    async fn locked_versions_cannot_be_deleted() {
        let m = InMemory::with_object_lock();
        m.insert("k", &b"x"[..]);
        m.set_lock(
            "k",
            ObjectLock {
                legal_hold: true,
                ..Default::default()
            },
        );
        let v = list_versions(&m, "k").await.unwrap().remove(0);
        let e = m.delete_version("k", v.version_id.as_deref()).await;
        assert!(matches!(e, Err(StoreError::AccessDenied { .. })));
        let refused = m.delete_batch(std::slice::from_ref(&v)).await.unwrap();
        assert_eq!(refused.len(), 1);
        assert!(matches!(refused[0].1, StoreError::AccessDenied { .. }));
        assert!(m.object("k").is_some());
    }
}
