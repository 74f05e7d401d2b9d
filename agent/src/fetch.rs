//! Reading what the bucket holds: a cluster's listing, a finished backup's manifest,
//! and its data checked end to end.
//!
//! Restore and verify both stream the stored object through the same pipeline the
//! backup used ([`crate::pipeline`]) and then hold it to the manifest: the size and
//! SHA-256 it recorded, and the RDB's own structure (header, `0xFF` + CRC64 trailer,
//! nothing after it). A single flipped or missing byte fails one of them.

use tokio_util::sync::CancellationToken;

use crate::backup_id::BackupId;
use crate::codec::Codec;
use crate::encrypt;
use crate::error::{Check, OpError};
use crate::layout::{
    FailureRecord, Layout, ManifestCheck, ManifestV1, UploadSeen, MANIFEST_OBJECT,
};
use crate::pipeline::decode::{decoded_reader, Decoding};
use crate::pipeline::encode::StoredStats;
use crate::pipeline::{
    check_stream, ranged_body, store_reader, RdbSink, StreamLimits, RANGES_IN_FLIGHT, RANGE_BYTES,
};
use crate::progress::ProgressReporter;
use crate::storage::{self, get_json, ObjectMeta, ObjectStore, OpenUpload, StoreError};

/// Every key (with its size and the store's time) and every open upload under the
/// layout's prefix: what a backup's status and rank are derived from.
pub async fn list_prefix(
    store: &dyn ObjectStore,
    layout: &Layout,
) -> Result<(Vec<ObjectMeta>, Vec<OpenUpload>), StoreError> {
    let keys = storage::list(store, layout.prefix()).await?;
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
        let own_key = m
            .codec()
            .map(|c| layout.data_key_for(id, c, m.encryption.is_some()));
        if m.backup_id != id.as_str() || Some(&m.data_key) != own_key.as_ref() {
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
    /// Bytes of the stored object.
    pub bytes: u64,
    /// SHA-256 of the stored object.
    pub sha256: String,
    /// Bytes of the raw RDB (what a restore writes).
    pub raw_bytes: u64,
    pub crc64: u64,
}

/// The identities that open `manifest`'s object: `None` for a backup in clear; for an
/// encrypted one, those of `identities` whose public keys it was encrypted to, or
/// `decrypt-failed` naming the fingerprints it needs (checked before any byte is read,
/// so a wrong key never looks like a damaged backup).
pub fn keys_for(
    manifest: &ManifestV1,
    identities: &[age::x25519::Identity],
) -> Result<Option<Vec<age::x25519::Identity>>, OpError> {
    let Some(enc) = &manifest.encryption else {
        return Ok(None);
    };
    let wanted = enc.recipients.join(", ");
    if identities.is_empty() {
        return Err(OpError::DecryptFailed(format!(
            "backup {} is encrypted (age) to {wanted}, and no identities are configured: add its key to encryption.identities (charm: the encryption-key secret)",
            manifest.backup_id
        )));
    }
    let matching = encrypt::matching(identities, &enc.recipients);
    if matching.is_empty() {
        return Err(OpError::DecryptFailed(format!(
            "backup {} is encrypted (age) to {wanted}; none of the configured identities ({}) is one of them: add the key it was taken with to encryption.identities",
            manifest.backup_id,
            encrypt::identity_fingerprints(identities).join(", ")
        )));
    }
    Ok(Some(matching.into_iter().cloned().collect()))
}

/// Streams the backup's data into `sink` (a file, or nothing) and checks it against the
/// manifest: decrypting and decompressing on the way when the object is encoded, the
/// RDB checker on the raw bytes. Any mismatch is an [`OpError::Integrity`]
/// (`stream-invalid`) naming the check that failed; an encrypted backup none of
/// `identities` opens is `decrypt-failed`, before the object is read.
pub async fn download_checked<S: RdbSink + ?Sized>(
    store: &dyn ObjectStore,
    manifest: &ManifestV1,
    identities: &[age::x25519::Identity],
    sink: &mut S,
    reporter: &mut ProgressReporter,
    phase: &str,
    cancel: &CancellationToken,
) -> Result<Checked, OpError> {
    let key = &manifest.data_key;
    let Some(codec) = manifest.codec() else {
        return Err(OpError::integrity(
            Check::Object,
            format!(
                "the manifest of {} names compression {:?}, which this agent does not know",
                manifest.backup_id, manifest.compression
            ),
        ));
    };
    let keys = keys_for(manifest, identities)?;
    let missing = || {
        OpError::integrity(
            Check::Object,
            format!(
                "the manifest of {} names {key}, which does not exist",
                manifest.backup_id
            ),
        )
    };
    let plain = codec == Codec::None && keys.is_none();
    // A large plain object comes as parallel ranged GETs (its size from the store, not
    // the manifest, so that a padded object shows as one). An encoded one is read in one
    // GET: its decoding (CPU) sets the pace, not the download.
    let size = match store.head(key, None).await {
        Ok(meta) => meta.size,
        Err(StoreError::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let ranged = plain && size > RANGE_BYTES;
    let mut body = None;
    if !ranged {
        match store.get(key).await {
            Ok(o) => body = Some(o.body),
            Err(StoreError::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(e.into()),
        }
    }
    let limits = StreamLimits {
        stall: None,
        source_name: "the store",
        // The stored object is exactly the RDB: nothing may follow its trailer.
        exact: false,
        cancel,
    };
    let (streamed, stored) = if plain {
        let body = match body {
            Some(body) => body,
            None => ranged_body(store, key, size, RANGE_BYTES, RANGES_IN_FLIGHT),
        };
        let streamed = check_stream(
            store_reader(body),
            sink,
            || async { Ok(()) },
            limits,
            |done, _| reporter.update(phase, done, None, false),
        )
        .await;
        (streamed, None)
    } else {
        let body = body.expect("encoded objects are read in one GET");
        let (reader, decoder) = decoded_reader(
            store_reader(body),
            Decoding {
                codec,
                identities: keys,
            },
        );
        let streamed = check_stream(
            reader,
            sink,
            || async { Ok(()) },
            limits,
            |done, _| reporter.update(phase, done, None, false),
        )
        .await;
        let stored = match streamed {
            Ok(_) => Some(
                decoder
                    .await
                    .map_err(|e| OpError::Internal(format!("decoder task: {e}")))??,
            ),
            Err(_) => None,
        };
        (streamed, stored)
    };
    let streamed = streamed.map_err(|e| match e {
        OpError::Stream(e) => OpError::integrity(Check::Rdb, e.to_string()),
        other => other,
    })?;
    let raw_bytes = streamed.received;
    let stored = stored.unwrap_or_else(|| StoredStats {
        bytes: raw_bytes,
        sha256: String::new(),
    });
    if stored.bytes != manifest.stored_size_bytes {
        return Err(OpError::integrity(
            Check::Size,
            format!(
                "the stored object has {} bytes but the manifest recorded {}: it is truncated or padded",
                stored.bytes, manifest.stored_size_bytes
            ),
        ));
    }
    if !plain && stored.sha256 != manifest.sha256 {
        return Err(OpError::integrity(
            Check::Sha256,
            format!(
                "SHA-256 of the stored object ({}) differs from the manifest ({}): the object was altered",
                stored.sha256, manifest.sha256
            ),
        ));
    }
    if raw_bytes != manifest.raw_size_bytes {
        return Err(OpError::integrity(
            Check::Size,
            format!(
                "the RDB has {raw_bytes} bytes but the manifest recorded {}",
                manifest.raw_size_bytes
            ),
        ));
    }
    let mut checked = streamed
        .rdb
        .map_err(|e| OpError::integrity(Check::Rdb, e.to_string()))?;
    if sink.hashes_input() {
        // The sink hashed what it was given (on its own thread): exactly the RDB's bytes.
        checked.sha256 = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = sink.input_sha256() => r?.unwrap_or_default(),
        };
    }
    if checked.eof_mark_stripped {
        return Err(OpError::integrity(
            Check::Rdb,
            "the stored object has bytes after the RDB trailer",
        ));
    }
    if checked.sha256 != manifest.raw_sha256() {
        return Err(OpError::integrity(
            Check::Sha256,
            format!(
                "SHA-256 of the RDB ({}) differs from the manifest ({}): the object was altered",
                checked.sha256,
                manifest.raw_sha256()
            ),
        ));
    }
    if format!("{:016x}", checked.crc64) != manifest.crc64 {
        return Err(OpError::integrity(
            Check::Crc64,
            "the RDB's CRC64 differs from the manifest",
        ));
    }
    reporter.update(phase, raw_bytes, None, true);
    Ok(Checked {
        bytes: stored.bytes,
        sha256: if plain { checked.sha256 } else { stored.sha256 },
        raw_bytes,
        crc64: checked.crc64,
    })
}
