//! Reading a finished backup back: its manifest, and its data checked end to end.
//!
//! Restore and verify both stream the stored object through the same checks before they
//! trust it: the size and SHA-256 the manifest recorded, and the RDB's own structure
//! (header, `0xFF` + CRC64 trailer, nothing after it) via the same [`RdbValidator`] the
//! backup used. A single flipped or missing byte fails one of them.

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::backup_id::BackupId;
use crate::error::{Check, OpError};
use crate::progress::ProgressReporter;
use crate::rdb::RdbValidator;
use crate::s3::{S3Error, Store};
use crate::store::{FailureRecord, Layout, ManifestV1};

/// The manifest of a finished backup, or `not-found` saying what exists instead.
pub async fn finished_manifest(
    store: &Store,
    layout: &Layout,
    id: &BackupId,
) -> Result<ManifestV1, OpError> {
    if let Some(m) = store
        .get_record::<ManifestV1>(&layout.manifest_key(id))
        .await?
    {
        // A manifest names its own data key: one that is not this backup's own (copied
        // or forged) would send a restore to read outside the backup's directory.
        if m.backup_id != id.as_str() || m.data_key != layout.data_key(id) {
            return Err(OpError::integrity(
                Check::Object,
                format!("the manifest of {id} does not describe {id}'s own data object"),
            ));
        }
        return Ok(m);
    }
    if let Some(f) = store
        .get_record::<FailureRecord>(&layout.failure_key(id))
        .await?
    {
        return Err(OpError::NotFound(format!(
            "backup {id} failed ({}) and cannot be used; choose a finished backup",
            f.code
        )));
    }
    Err(OpError::NotFound(format!(
        "no finished backup {id} under {} (see list-backups)",
        layout.prefix()
    )))
}

/// What the download proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub bytes: u64,
    pub sha256: String,
    pub crc64: u64,
}

/// Streams the backup's data, writing it to `out` if given, and checks it against the
/// manifest. Any mismatch is an [`OpError::Integrity`] (`stream-invalid`) naming the
/// check that failed.
pub async fn download_checked(
    store: &Store,
    manifest: &ManifestV1,
    mut out: Option<&mut tokio::fs::File>,
    reporter: &mut ProgressReporter,
    phase: &str,
    cancel: &CancellationToken,
) -> Result<Checked, OpError> {
    let key = &manifest.data_key;
    let obj = match store
        .client
        .get_object()
        .bucket(&store.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
            return Err(OpError::integrity(
                Check::Object,
                format!(
                    "the manifest of {} names {key}, which does not exist",
                    manifest.backup_id
                ),
            ))
        }
        Err(e) => return Err(store.classify("GetObject", key, e).into()),
    };
    let mut body = obj.body;
    let mut validator = RdbValidator::new();
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            c = body.next() => c,
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|_| {
            OpError::S3(S3Error::Unreachable {
                endpoint: store.endpoint.clone(),
                detail: "connection lost while downloading the backup".into(),
            })
        })?;
        validator
            .push(&chunk, |_| {})
            .map_err(|e| OpError::integrity(Check::Rdb, e.to_string()))?;
        sha.update(&chunk);
        bytes += chunk.len() as u64;
        if let Some(f) = out.as_deref_mut() {
            f.write_all(&chunk).await.map_err(|e| {
                OpError::Internal(format!("writing the restored file: {}", e.kind()))
            })?;
        }
        reporter.update(phase, bytes, None, false);
    }
    if bytes != manifest.stored_size_bytes {
        return Err(OpError::integrity(
            Check::Size,
            format!(
                "the stored object has {bytes} bytes but the manifest recorded {}: it is truncated or padded",
                manifest.stored_size_bytes
            ),
        ));
    }
    let validated = validator
        .finish()
        .map_err(|e| OpError::integrity(Check::Rdb, e.to_string()))?;
    if validated.eof_mark_stripped {
        return Err(OpError::integrity(
            Check::Rdb,
            "the stored object has bytes after the RDB trailer",
        ));
    }
    let sha256 = hex::encode(sha.finalize());
    if sha256 != manifest.sha256 {
        return Err(OpError::integrity(
            Check::Sha256,
            format!(
                "SHA-256 of the stored object ({sha256}) differs from the manifest ({}): the object was altered",
                manifest.sha256
            ),
        ));
    }
    if format!("{:016x}", validated.crc64) != manifest.crc64 {
        return Err(OpError::integrity(
            Check::Crc64,
            "the RDB's CRC64 differs from the manifest",
        ));
    }
    reporter.update(phase, bytes, None, true);
    Ok(Checked {
        bytes,
        sha256,
        crc64: validated.crc64,
    })
}
