//! A fault-injecting wrapper around any [`ObjectStore`], for tests.
//!
//! Real stores fail in ways a test cannot provoke on demand: the third part upload
//! times out; a completion takes effect but its answer is lost on the way back; a
//! listing says "more follows" and then repeats itself. [`Faulty`] makes exactly such a
//! call misbehave — by operation and call number — and counts every call, so a test can
//! also prove what was *not* sent.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::api::{
    DynStore, GetResult, IntegrityHeader, IntegrityProbe, ObjectMeta, ObjectStore, OpenUpload,
    Page, PageToken, PartId, PutOptions, StoreError, StoredVersion,
};

/// The operations of [`ObjectStore`], to aim a fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Get,
    GetRange,
    Head,
    Put,
    CreateMultipart,
    PutPart,
    CompleteMultipart,
    AbortMultipart,
    List,
    ListUploads,
    ListVersions,
    DeleteVersion,
    DeleteBatch,
    ObjectLockEnabled,
    Versioning,
    EnsureBucket,
}

/// What happens to the chosen call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fails without reaching the store.
    Fail(StoreError),
    /// Reaches the store and takes effect, then the answer is lost: the caller sees the
    /// error.
    FailAfter(StoreError),
    /// (Listings) the page claims more follows but hands back the token it was given.
    RepeatToken,
}

/// Which calls a rule hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// Only the n-th call (from 1).
    Nth(u32),
    /// The n-th call and every later one.
    From(u32),
}

#[derive(Debug, Clone)]
struct Rule {
    op: Operation,
    calls: Calls,
    fault: Fault,
}

/// A store whose chosen calls fail; see the module docs.
#[derive(Debug)]
pub struct Faulty {
    inner: DynStore,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<HashMap<Operation, u32>>,
}

impl Faulty {
    /// Wraps `inner`; no fault until one is added.
    pub fn new(inner: DynStore) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the matching calls of `op` misbehave.
    pub fn inject(&self, op: Operation, calls: Calls, fault: Fault) {
        self.rules
            .lock()
            .expect("rules")
            .push(Rule { op, calls, fault });
    }

    /// The n-th call of `op` fails with `err` without reaching the store.
    pub fn fail_nth(&self, op: Operation, n: u32, err: StoreError) {
        self.inject(op, Calls::Nth(n), Fault::Fail(err));
    }

    /// The n-th call of `op` takes effect, but the caller gets `err`.
    pub fn fail_after_nth(&self, op: Operation, n: u32, err: StoreError) {
        self.inject(op, Calls::Nth(n), Fault::FailAfter(err));
    }

    /// Every call of `op` fails with `err`.
    pub fn fail_always(&self, op: Operation, err: StoreError) {
        self.inject(op, Calls::From(1), Fault::Fail(err));
    }

    /// Removes every rule.
    pub fn heal(&self) {
        self.rules.lock().expect("rules").clear();
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Operation) -> u32 {
        self.counts
            .lock()
            .expect("counts")
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Counts the call and returns the fault aimed at it, if any.
    fn arm(&self, op: Operation) -> Option<Fault> {
        let n = {
            let mut counts = self.counts.lock().expect("counts");
            let c = counts.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        self.rules
            .lock()
            .expect("rules")
            .iter()
            .find(|r| {
                r.op == op
                    && match r.calls {
                        Calls::Nth(k) => k == n,
                        Calls::From(k) => n >= k,
                    }
            })
            .map(|r| r.fault.clone())
    }

    async fn call<T>(
        &self,
        op: Operation,
        run: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.arm(op) {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::FailAfter(e)) => {
                run.await?;
                Err(e)
            }
            Some(Fault::RepeatToken) | None => run.await,
        }
    }

    async fn page<T>(
        &self,
        op: Operation,
        token: Option<PageToken>,
        run: impl std::future::Future<Output = Result<Page<T>, StoreError>>,
    ) -> Result<Page<T>, StoreError> {
        match self.arm(op) {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::FailAfter(e)) => {
                run.await?;
                Err(e)
            }
            Some(Fault::RepeatToken) => {
                let mut page = run.await?;
                page.next = Some(token.unwrap_or_default());
                Ok(page)
            }
            None => run.await,
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    fn endpoint(&self) -> &str {
        self.inner.endpoint()
    }

    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        self.call(Operation::Get, self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        self.call(Operation::GetRange, self.inner.get_range(key, range))
            .await
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectMeta, StoreError> {
        self.call(Operation::Head, self.inner.head(key, version_id))
            .await
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        self.call(Operation::Put, self.inner.put(key, body, opts))
            .await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.call(
            Operation::CreateMultipart,
            self.inner.create_multipart(key, opts),
        )
        .await
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<PartId, StoreError> {
        self.call(
            Operation::PutPart,
            self.inner.put_part(key, upload_id, number, body),
        )
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartId>,
        size: u64,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        self.call(
            Operation::CompleteMultipart,
            self.inner
                .complete_multipart(key, upload_id, parts, size, opts),
        )
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.call(
            Operation::AbortMultipart,
            self.inner.abort_multipart(key, upload_id),
        )
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<ObjectMeta>, StoreError> {
        self.page(
            Operation::List,
            token.clone(),
            self.inner.list_page(prefix, token),
        )
        .await
    }

    async fn list_uploads_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<OpenUpload>, StoreError> {
        self.page(
            Operation::ListUploads,
            token.clone(),
            self.inner.list_uploads_page(prefix, token),
        )
        .await
    }

    async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<PageToken>,
    ) -> Result<Page<StoredVersion>, StoreError> {
        self.page(
            Operation::ListVersions,
            token.clone(),
            self.inner.list_versions_page(prefix, token),
        )
        .await
    }

    async fn delete_version(&self, key: &str, version_id: Option<&str>) -> Result<(), StoreError> {
        self.call(
            Operation::DeleteVersion,
            self.inner.delete_version(key, version_id),
        )
        .await
    }

    async fn delete_batch(
        &self,
        versions: &[StoredVersion],
    ) -> Result<Vec<(StoredVersion, StoreError)>, StoreError> {
        self.call(Operation::DeleteBatch, self.inner.delete_batch(versions))
            .await
    }

    async fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        self.call(
            Operation::ObjectLockEnabled,
            self.inner.object_lock_enabled(),
        )
        .await
    }

    async fn versioning(&self) -> Result<bool, StoreError> {
        self.call(Operation::Versioning, self.inner.versioning())
            .await
    }

    async fn ensure_bucket(&self) -> Result<bool, StoreError> {
        self.call(Operation::EnsureBucket, self.inner.ensure_bucket())
            .await
    }

    async fn probe_integrity(
        &self,
        key: &str,
        header: IntegrityHeader,
    ) -> Result<IntegrityProbe, StoreError> {
        self.inner.probe_integrity(key, header).await
    }
}
