//! Reading what the bucket holds: a cluster's listing, a finished backup's manifest,
//! and its data checked end to end.
//!
//! Restore and verify both stream the stored object through the same pipeline the
//! backup used ([`crate::pipeline`]) and then hold it to the manifest: the size and
//! SHA-256 it recorded, and the RDB's own structure (header, `0xFF` + CRC64 trailer,
//! nothing after it). A single flipped or missing byte fails one of them.

use tokio_util::sync::CancellationToken;

use crate::backup_id::BackupId;
use crate::error::{Check, OpError};
use crate::layout::{
    FailureRecord, Layout, ManifestCheck, ManifestV1, UploadSeen, MANIFEST_OBJECT,
};
use crate::pipeline::{check_stream, store_reader, RdbSink, StreamLimits};
use crate::progress::ProgressReporter;
use crate::storage::{self, get_json, ObjectStore, OpenUpload, StoreError};

/// Every key (with its size) and every open upload under the layout's prefix: what a
/// backup's status is derived from.
pub async fn list_prefix(
    store: &dyn ObjectStore,
    layout: &Layout,
) -> Result<(Vec<(String, u64)>, Vec<OpenUpload>), StoreError> {
    let keys = storage::list(store, layout.prefix())
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let uploads = storage::list_uploads(store, layout.prefix()).await?;
    Ok((keys, uploads))
}

/// Open uploads as the layout's status rules see them.
pub fn seen(uploads: &[OpenUpload]) -> Vec<UploadSeen> {
    uploads
        .iter()
        .map(|u| UploadSeen {
            key: u.key.clone(),
            initiated: u.initiated,
        })
        .collect()
}

/// Reads the manifest of backup `id` and checks it against the data object's listed
/// size (see [`ManifestV1::unrestorable_reason`]). A manifest that cannot be parsed
/// is `Damaged`; access and reachability errors are returned.
pub async fn check_manifest(
    store: &dyn ObjectStore,
    layout: &Layout,
    id: &BackupId,
    data_size: Option<u64>,
) -> Result<ManifestCheck, StoreError> {
    match get_json::<ManifestV1>(store, &layout.manifest_key(id)).await {
        Ok(Some(m)) => Ok(match m.unrestorable_reason(layout, id, data_size) {
            None => ManifestCheck::Restorable(Box::new(m)),
            Some(why) => ManifestCheck::Damaged(why),
        }),
        Ok(None) => Ok(ManifestCheck::Damaged(format!(
            "{MANIFEST_OBJECT} disappeared while it was being read"
        ))),
        Err(StoreError::BadRecord { .. }) => Ok(ManifestCheck::Damaged(format!(
            "{MANIFEST_OBJECT} cannot be parsed (truncated or not a manifest)"
        ))),
        Err(e) => Err(e),
    }
}

/// The manifest of a finished backup, or `not-found` saying what exists instead.
pub async fn finished_manifest(
    store: &dyn ObjectStore,
    layout: &Layout,
    id: &BackupId,
) -> Result<ManifestV1, OpError> {
    if let Some(m) = get_json::<ManifestV1>(store, &layout.manifest_key(id)).await? {
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
    if let Some(f) = get_json::<FailureRecord>(store, &layout.failure_key(id)).await? {
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

/// Streams the backup's data into `sink` (a file, or nothing) and checks it against the
/// manifest. Any mismatch is an [`OpError::Integrity`] (`stream-invalid`) naming the
/// check that failed.
pub async fn download_checked<S: RdbSink + ?Sized>(
    store: &dyn ObjectStore,
    manifest: &ManifestV1,
    sink: &mut S,
    reporter: &mut ProgressReporter,
    phase: &str,
    cancel: &CancellationToken,
) -> Result<Checked, OpError> {
    let key = &manifest.data_key;
    let obj = match store.get(key).await {
        Ok(o) => o,
        Err(StoreError::NotFound { .. }) => {
            return Err(OpError::integrity(
                Check::Object,
                format!(
                    "the manifest of {} names {key}, which does not exist",
                    manifest.backup_id
                ),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let limits = StreamLimits {
        stall: None,
        source_name: "the store",
        // The stored object is exactly the RDB: nothing may follow its trailer.
        exact: false,
        cancel,
    };
    let streamed = check_stream(
        store_reader(obj.body),
        sink,
        || async { Ok(()) },
        limits,
        |done, _| reporter.update(phase, done, None, false),
    )
    .await
    .map_err(|e| match e {
        OpError::Stream(e) => OpError::integrity(Check::Rdb, e.to_string()),
        other => other,
    })?;
    let bytes = streamed.received;
    if bytes != manifest.stored_size_bytes {
        return Err(OpError::integrity(
            Check::Size,
            format!(
                "the stored object has {bytes} bytes but the manifest recorded {}: it is truncated or padded",
                manifest.stored_size_bytes
            ),
        ));
    }
    let checked = streamed
        .rdb
        .map_err(|e| OpError::integrity(Check::Rdb, e.to_string()))?;
    if checked.eof_mark_stripped {
        return Err(OpError::integrity(
            Check::Rdb,
            "the stored object has bytes after the RDB trailer",
        ));
    }
    if checked.sha256 != manifest.sha256 {
        return Err(OpError::integrity(
            Check::Sha256,
            format!(
                "SHA-256 of the stored object ({}) differs from the manifest ({}): the object was altered",
                checked.sha256, manifest.sha256
            ),
        ));
    }
    if format!("{:016x}", checked.crc64) != manifest.crc64 {
        return Err(OpError::integrity(
            Check::Crc64,
            "the RDB's CRC64 differs from the manifest",
        ));
    }
    reporter.update(phase, bytes, None, true);
    Ok(Checked {
        bytes,
        sha256: checked.sha256,
        crc64: checked.crc64,
    })
}
