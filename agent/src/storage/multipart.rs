//! Write-once upload of one object of unknown length, with bounded memory.
//!
//! [`PartWriter`] takes bytes in any amounts, cuts them into parts of exactly
//! `part_size` bytes (all parts but the last the same size: some stores require it) and
//! keeps at most `concurrency` part uploads in flight. When every slot is busy,
//! [`PartWriter::write`] waits: that backpressure is what bounds the agent's memory to
//! `part_size × (concurrency + 1)` whatever the dataset size. With
//! [`PartWriter::with_sha256`], a part also goes through the hashing thread's one-part
//! queue, and the next part buffer is only taken once every earlier part is hashed, so
//! the hash never keeps a part alive beyond that bound either (the 4 GiB benchmark
//! showed one more part alive when it could); finished parts' buffers are filled again.
//!
//! The multipart upload is created lazily with the first full part, so a stream that
//! fails early costs no request, and a stream that fits in one part is stored with a
//! single write. Nothing becomes visible until [`PartWriter::finish`], which the caller
//! calls only after the whole stream was validated; completion is [`PutMode::Create`],
//! and a completion whose answer was lost counts only when the object then exists with
//! exactly the uploaded size.
//! On failure [`PartWriter::abort`] stops the uploads in flight and aborts the multipart
//! upload, so no partial object remains. A cancelled `write` or `commit_part_buffer`
//! counts as a failure: the part it was handing on is gone, so the only thing left to do
//! with the writer is [`PartWriter::abort`] (create-backup's clean-up does; were the whole
//! operation dropped instead, the open upload would be left to prune).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::api::{abort_uploads_of, put_once, DynStore, PartId, PutMode, PutOptions, StoreError};

/// The most parts one multipart upload may have (S3's limit).
pub const MAX_PARTS: u64 = 10_000;

/// The outcome of a completed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub parts: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the object, when the writer hashed it ([`PartWriter::with_sha256`]).
    pub sha256: Option<String>,
}

/// The SHA-256 of every part, in order, on a thread of its own: the parts are shared with
/// it by reference count (no copy), and hashing runs beside reading and uploading instead
/// of between them. The queue holds at most [`HASH_QUEUE`] parts; when the thread falls
/// behind, the writer waits, which keeps memory bounded.
struct PartHasher {
    parts: tokio::sync::mpsc::Sender<Bytes>,
    digest: tokio::sync::oneshot::Receiver<[u8; 32]>,
    /// Parts hashed (and let go) so far.
    hashed: tokio::sync::watch::Receiver<u64>,
    /// Parts handed over so far.
    fed: u64,
}

/// Parts waiting for the hashing thread, at most.
pub const HASH_QUEUE: usize = 1;

impl PartHasher {
    fn start() -> Result<Self, StoreError> {
        use sha2::Digest;
        let (parts, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let (done, digest) = tokio::sync::oneshot::channel();
        let (hashed_tx, hashed) = tokio::sync::watch::channel(0u64);
        std::thread::Builder::new()
            .name("part-sha256".into())
            .spawn(move || {
                let mut sha = sha2::Sha256::new();
                while let Some(part) = rx.blocking_recv() {
                    sha.update(&part);
                    drop(part);
                    hashed_tx.send_modify(|n| *n += 1);
                }
                let _ = done.send(sha.finalize().into());
            })
            .map_err(|_| StoreError::TaskFailed {
                operation: "SHA-256",
            })?;
        Ok(PartHasher {
            parts,
            digest,
            hashed,
            fed: 0,
        })
    }

    async fn feed(&mut self, part: &Bytes) -> Result<(), StoreError> {
        self.fed += 1;
        self.parts
            .send(part.clone())
            .await
            .map_err(|_| StoreError::TaskFailed {
                operation: "SHA-256",
            })
    }

    /// Waits until every part but the last one fed is hashed and let go, so that the
    /// hash never keeps a part alive that its upload has finished with. SHA-NI hashes a
    /// part in a few milliseconds, far sooner than a part uploads, so this rarely waits.
    async fn caught_up(&mut self) -> Result<(), StoreError> {
        let behind = self.fed.saturating_sub(1);
        self.hashed
            .wait_for(|&n| n >= behind)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::TaskFailed {
                operation: "SHA-256",
            })
    }

    async fn finish(self) -> Result<String, StoreError> {
        drop(self.parts);
        self.digest
            .await
            .map(hex::encode)
            .map_err(|_| StoreError::TaskFailed {
                operation: "SHA-256",
            })
    }
}

/// Starts a write-once upload of `key` on `store`: the multipart entry point of the
/// storage seam. Sends nothing until the first part is full.
pub fn put_multipart(
    store: &DynStore,
    key: String,
    content_type: &'static str,
    part_size: usize,
    concurrency: usize,
) -> PartWriter {
    PartWriter::new(Arc::clone(store), key, content_type, part_size, concurrency)
}

/// One object being uploaded; see the module docs.
pub struct PartWriter {
    store: DynStore,
    key: String,
    opts: PutOptions,
    part_size: usize,
    concurrency: usize,
    buf: BytesMut,
    upload_id: Option<String>,
    /// A CreateMultipartUpload was sent: uploads of the key may exist even when no id
    /// came back (a lost answer the client retried, a shutdown mid-request).
    create_sent: bool,
    in_flight: JoinSet<Result<(PartId, Bytes), StoreError>>,
    completed: Vec<PartId>,
    /// Parts whose upload finished, kept to be filled again once nobody else holds them
    /// (see [`PartWriter::fresh_buffer`]).
    spare: Vec<Bytes>,
    next_part: u32,
    bytes: u64,
    /// Pause between abort attempts (tests shorten it).
    abort_backoff: Duration,
    hasher: Option<PartHasher>,
}

impl PartWriter {
    /// Prepares a write-once upload of `key`; sends nothing yet.
    pub fn new(
        store: DynStore,
        key: String,
        content_type: &'static str,
        part_size: usize,
        concurrency: usize,
    ) -> Self {
        let part_size = part_size.max(1);
        PartWriter {
            store,
            key,
            opts: PutOptions {
                mode: PutMode::Create,
                content_type,
                bulk: true,
            },
            part_size,
            concurrency: concurrency.max(1),
            buf: BytesMut::with_capacity(part_size),
            upload_id: None,
            create_sent: false,
            in_flight: JoinSet::new(),
            completed: Vec::new(),
            spare: Vec::new(),
            next_part: 1,
            bytes: 0,
            abort_backoff: Duration::from_millis(500),
            hasher: None,
        }
    }

    /// Also computes the SHA-256 of the object (see [`Uploaded::sha256`]), on a thread of
    /// its own.
    pub fn with_sha256(mut self) -> Result<Self, StoreError> {
        self.hasher = Some(PartHasher::start()?);
        Ok(self)
    }

    /// Whether the writer hashes what it is given.
    pub fn hashes(&self) -> bool {
        self.hasher.is_some()
    }

    /// Sets the pause between abort attempts.
    pub fn with_abort_backoff(mut self, backoff: Duration) -> Self {
        self.abort_backoff = backoff;
        self
    }

    /// The object key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Parts whose upload has finished.
    pub fn parts_done(&self) -> u64 {
        self.completed.len() as u64
    }

    /// Bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.buf.len() as u64
    }

    /// Whether a multipart upload may exist (and so must be completed or aborted).
    pub fn is_open(&self) -> bool {
        self.upload_id.is_some() || self.create_sent
    }

    /// Takes `data`; every part it fills is handed to an upload slot, waiting for a free
    /// one. The part buffer never grows beyond `part_size`.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            let room = self.part_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.part_size {
                self.push_full_part().await?;
            }
        }
        Ok(())
    }

    /// The part being filled and the room left in it (at least one byte), for a caller
    /// that reads straight into it; [`PartWriter::commit_part_buffer`] takes what it put
    /// there. The buffer never grows beyond `part_size`.
    pub fn part_buffer(&mut self) -> (&mut BytesMut, usize) {
        let room = self.part_size - self.buf.len();
        (&mut self.buf, room)
    }

    /// Takes the bytes added to [`PartWriter::part_buffer`]: a full part goes to an
    /// upload slot (waiting for a free one), as with [`PartWriter::write`].
    pub async fn commit_part_buffer(&mut self) -> Result<(), StoreError> {
        debug_assert!(self.buf.len() <= self.part_size);
        if self.buf.len() >= self.part_size {
            self.push_full_part().await?;
        }
        Ok(())
    }

    /// Hands the full part buffer to an upload slot, then takes an empty one for the next
    /// part (in that order: a part whose upload finished while this one waited for its
    /// slot is the buffer reused, so no more than `concurrency + 1` buffers are alive).
    async fn push_full_part(&mut self) -> Result<(), StoreError> {
        let part = std::mem::take(&mut self.buf).freeze();
        self.push_part(part).await?;
        if let Some(hasher) = &mut self.hasher {
            hasher.caught_up().await?;
        }
        self.buf = self.fresh_buffer();
        Ok(())
    }

    /// An empty buffer for the next part: a finished part's memory when no upload or hash
    /// holds it any more, else a new one. Reusing it spares the kernel mapping and zeroing
    /// `part_size` fresh bytes per part (about a tenth of the agent's CPU in a profile);
    /// the number of part buffers alive is the same either way.
    fn fresh_buffer(&mut self) -> BytesMut {
        while let Some(part) = self.spare.pop() {
            if let Ok(mut buf) = part.try_into_mut() {
                if buf.capacity() >= self.part_size {
                    buf.clear();
                    return buf;
                }
            }
            // Still shared (its hash or retry is not done) or too small: let it go.
        }
        BytesMut::with_capacity(self.part_size)
    }

    /// Records a finished part upload and keeps its buffer for reuse.
    fn part_done(&mut self, (id, part): (PartId, Bytes)) {
        self.completed.push(id);
        if self.spare.len() <= self.concurrency {
            self.spare.push(part);
        }
    }

    async fn push_part(&mut self, part: Bytes) -> Result<(), StoreError> {
        if u64::from(self.next_part) > MAX_PARTS {
            return Err(StoreError::TooManyParts { max: MAX_PARTS });
        }
        if self.upload_id.is_none() {
            self.create_sent = true;
            self.upload_id = Some(self.store.create_multipart(&self.key, &self.opts).await?);
        }
        while self.in_flight.len() >= self.concurrency {
            self.join_one().await?;
        }
        // Collect uploads that already finished, so errors surface early.
        while let Some(done) = self.in_flight.try_join_next() {
            let done = flatten(done)?;
            self.part_done(done);
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.feed(&part).await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        tracing::debug!(key = %self.key, part = number, bytes = part.len(), in_flight = self.in_flight.len(), "uploading part");
        self.bytes += part.len() as u64;
        let store = self.store.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone().expect("created above");
        self.in_flight.spawn(async move {
            let id = store
                .put_part(&key, &upload_id, number, part.clone())
                .await?;
            Ok((id, part))
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        if let Some(done) = self.in_flight.join_next().await {
            let done = flatten(done)?;
            self.part_done(done);
        }
        Ok(())
    }

    /// Uploads what is buffered and makes the object visible, write-once. On error the
    /// writer stays as it was, for [`PartWriter::abort`].
    pub async fn finish(&mut self) -> Result<Uploaded, StoreError> {
        let last = std::mem::take(&mut self.buf).freeze();
        if self.upload_id.is_none() {
            // The whole stream fit in one part: a single conditional write.
            let len = last.len() as u64;
            let sha256 = match self.hasher.take() {
                Some(mut hasher) => {
                    hasher.feed(&last).await?;
                    Some(hasher.finish().await?)
                }
                None => None,
            };
            put_once(&*self.store, &self.key, last, &self.opts).await?;
            self.bytes = len;
            return Ok(Uploaded {
                parts: 1,
                bytes: len,
                sha256,
            });
        }
        if !last.is_empty() {
            self.push_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let sha256 = match self.hasher.take() {
            Some(hasher) => Some(hasher.finish().await?),
            None => None,
        };
        let parts = self.completed.clone();
        let count = parts.len() as u64;
        let upload_id = self.upload_id.clone().expect("open upload");
        let completed = self
            .store
            .complete_multipart(&self.key, &upload_id, parts, self.bytes, &self.opts)
            .await;
        match completed {
            Ok(()) => {}
            // Someone else's object: never taken for ours, whatever its size.
            Err(e @ StoreError::AlreadyExists { .. }) => return Err(e),
            // The answer may have been lost after the store completed the upload (a reset
            // connection, a timeout). The key is unique to this backup, so an object there
            // with exactly our size is our completed upload; anything else is a failure.
            Err(e) => match self.store.head(&self.key, None).await {
                Ok(meta) if meta.size == self.bytes => {
                    tracing::warn!(key = %self.key, error = %e, "completion answer lost, but the object is complete");
                }
                _ => return Err(e),
            },
        }
        self.upload_id = None;
        // A creation whose answer was lost left a second upload of this key open.
        match abort_uploads_of(&*self.store, &self.key).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(key = %self.key, uploads = n, "aborted uploads of this key left by lost answers")
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "could not check for other open uploads of this key; prune will")
            }
        }
        self.create_sent = false;
        Ok(Uploaded {
            parts: count,
            bytes: self.bytes,
            sha256,
        })
    }

    /// Stops in-flight parts and aborts the multipart upload, so nothing partial remains.
    /// Retries a few times: an upload left open costs storage until pruned.
    pub async fn abort(&mut self) -> Result<(), StoreError> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.buf.clear();
        if !self.create_sent {
            return Ok(());
        }
        // Every upload of the key is this writer's: its own, and any whose id a lost
        // answer or a shutdown kept from it.
        let mut last_err = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(self.abort_backoff * attempt).await;
            }
            if let Some(upload_id) = self.upload_id.clone() {
                match self.store.abort_multipart(&self.key, &upload_id).await {
                    Ok(()) | Err(StoreError::NotFound { .. }) => self.upload_id = None,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                }
            }
            match abort_uploads_of(&*self.store, &self.key).await {
                Ok(_) | Err(StoreError::Unsupported { .. }) => {
                    self.create_sent = false;
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }
}

fn flatten(
    joined: Result<Result<(PartId, Bytes), StoreError>, tokio::task::JoinError>,
) -> Result<(PartId, Bytes), StoreError> {
    joined.map_err(|_| StoreError::TaskFailed {
        operation: "UploadPart",
    })?
}
