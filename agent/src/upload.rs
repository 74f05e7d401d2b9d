//! Write-once upload of one object with bounded memory.
//!
//! [`ObjectUpload`] takes equal-sized parts as the stream produces them and keeps at most
//! `concurrency` of them in flight; the producer waits for a free slot, which is what
//! bounds the agent's memory whatever the dataset size. The multipart upload is created
//! lazily with the first full part, so a stream that fails early costs no request, and a
//! stream that fits in one part is stored with a single PutObject.
//!
//! Nothing becomes visible until [`ObjectUpload::complete`]: the caller calls it only
//! after the whole stream was validated. Completion (and the single PutObject) carries
//! `If-None-Match: *`, and every part carries `Content-MD5`, which Object Lock buckets
//! require and which lets the store reject a part damaged in transit. On failure
//! [`ObjectUpload::abort`] aborts the multipart upload, so no partial object remains.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::task::JoinSet;

use crate::parts::MAX_PARTS;
use crate::s3::{S3Error, Store};

/// The outcome of a completed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub parts: u64,
    pub bytes: u64,
}

/// One object being uploaded.
pub struct ObjectUpload {
    store: Store,
    key: String,
    content_type: &'static str,
    concurrency: usize,
    upload_id: Option<String>,
    in_flight: JoinSet<Result<CompletedPart, S3Error>>,
    completed: Vec<CompletedPart>,
    next_part: i32,
    bytes: u64,
}

/// `Content-MD5` header value for a body.
pub fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

impl ObjectUpload {
    /// Prepares an upload of `key`; sends nothing yet.
    pub fn new(store: Store, key: String, content_type: &'static str, concurrency: usize) -> Self {
        ObjectUpload {
            store,
            key,
            content_type,
            concurrency: concurrency.max(1),
            upload_id: None,
            in_flight: JoinSet::new(),
            completed: Vec::new(),
            next_part: 1,
            bytes: 0,
        }
    }

    /// The object key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Parts whose upload has finished.
    pub fn parts_done(&self) -> u64 {
        self.completed.len() as u64
    }

    /// Whether a multipart upload was created (and so must be completed or aborted).
    pub fn is_open(&self) -> bool {
        self.upload_id.is_some()
    }

    /// Queues a full (non-final) part, waiting for a free upload slot first.
    pub async fn push_part(&mut self, part: Bytes) -> Result<(), S3Error> {
        if self.next_part as u64 > MAX_PARTS {
            return Err(S3Error::Other {
                operation: "UploadPart",
                detail: format!("more than {MAX_PARTS} parts; raise backup.part-size-bytes"),
            });
        }
        if self.upload_id.is_none() {
            self.create().await?;
        }
        while self.in_flight.len() >= self.concurrency {
            self.join_one().await?;
        }
        // Collect any uploads that already finished, so errors surface early.
        while let Some(done) = self.in_flight.try_join_next() {
            self.completed.push(flatten(done)?);
        }
        let number = self.next_part;
        self.next_part += 1;
        tracing::debug!(key = %self.key, part = number, bytes = part.len(), in_flight = self.in_flight.len(), "uploading part");
        self.bytes += part.len() as u64;
        let store = self.store.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone().expect("created above");
        self.in_flight.spawn(async move {
            // MD5 of a multi-megabyte part is CPU work: keep it off the async workers.
            let part_for_md5 = part.clone();
            let md5 = tokio::task::spawn_blocking(move || content_md5(&part_for_md5))
                .await
                .map_err(|_| S3Error::Other {
                    operation: "UploadPart",
                    detail: "hashing task failed".into(),
                })?;
            let out = store
                .client
                .upload_part()
                .bucket(&store.bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_md5(md5)
                .body(ByteStream::from(part))
                .customize()
                // The signed Content-MD5 header already binds the body to the signature;
                // hashing every part a second time for SigV4 would only cost CPU.
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| store.classify("UploadPart", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build())
        });
        Ok(())
    }

    async fn create(&mut self) -> Result<(), S3Error> {
        let mut req = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .content_type(self.content_type);
        if let Some(sc) = &self.store.storage_class {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.store.classify("CreateMultipartUpload", &self.key, e))?;
        self.upload_id = out.upload_id;
        if self.upload_id.is_none() {
            return Err(S3Error::Other {
                operation: "CreateMultipartUpload",
                detail: "no upload id in the answer".into(),
            });
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), S3Error> {
        if let Some(done) = self.in_flight.join_next().await {
            self.completed.push(flatten(done)?);
        }
        Ok(())
    }

    /// Uploads the final bytes and makes the object visible, write-once.
    pub async fn complete(mut self, last: Bytes) -> Result<Uploaded, (S3Error, Self)> {
        match self.complete_inner(last).await {
            Ok(u) => Ok(u),
            Err(e) => Err((e, self)),
        }
    }

    async fn complete_inner(&mut self, last: Bytes) -> Result<Uploaded, S3Error> {
        if self.upload_id.is_none() {
            // The whole stream fit in one part: a single conditional PutObject.
            let len = last.len() as u64;
            let mut req = self
                .store
                .client
                .put_object()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .content_type(self.content_type)
                .content_md5(content_md5(&last))
                .if_none_match("*")
                .body(ByteStream::from(last));
            if let Some(sc) = &self.store.storage_class {
                req = req.storage_class(StorageClass::from(sc.as_str()));
            }
            req.customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.store.classify("PutObject", &self.key, e))?;
            return Ok(Uploaded {
                parts: 1,
                bytes: len,
            });
        }
        if !last.is_empty() {
            self.push_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let mut parts = std::mem::take(&mut self.completed);
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len() as u64;
        let completed = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().expect("open upload"))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await;
        if let Err(e) = completed {
            // Some stores (moto among them) answer a successful completion with XML the SDK
            // does not accept (`CompleteMultipartUploadResponse` instead of `…Result`). A 200
            // means the store completed it; confirm by size instead of trusting the parse.
            let ok_status = e.raw_response().is_some_and(|r| r.status().as_u16() == 200);
            if !(ok_status && self.object_has_size(self.bytes).await) {
                return Err(self.store.classify("CompleteMultipartUpload", &self.key, e));
            }
        }
        self.upload_id = None;
        Ok(Uploaded {
            parts: count,
            bytes: self.bytes,
        })
    }

    /// Whether the object exists with exactly `size` bytes.
    async fn object_has_size(&self, size: u64) -> bool {
        let head = self
            .store
            .client
            .head_object()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .send()
            .await;
        matches!(head, Ok(h) if h.content_length() == Some(size as i64))
    }

    /// Stops in-flight parts and aborts the multipart upload, so nothing partial remains.
    /// Retries a few times: an upload left open costs storage until pruned.
    pub async fn abort(mut self) -> Result<(), S3Error> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        let mut last_err = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
            }
            match self
                .store
                .client
                .abort_multipart_upload()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last_err = Some(self.store.classify("AbortMultipartUpload", &self.key, e))
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }
}

fn flatten(
    joined: Result<Result<CompletedPart, S3Error>, tokio::task::JoinError>,
) -> Result<CompletedPart, S3Error> {
    joined.map_err(|_| S3Error::Other {
        operation: "UploadPart",
        detail: "upload task failed".into(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // RFC 1321 test vector: MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
