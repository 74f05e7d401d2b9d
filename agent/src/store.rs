//! The object layout, the records written beside each backup, and listing.
//!
//! ```text
//! <path>/<cluster>/<backup-id>/data.rdb        the snapshot (completed only when valid)
//! <path>/<cluster>/<backup-id>/manifest.json   written once after the data: "finished"
//! <path>/<cluster>/<backup-id>/failure.json    written once instead, when it failed
//! <path>/<cluster>/<backup-id>/verify/<t>-<hex>.json one new object per verification
//! ```
//!
//! Every record is written with `If-None-Match: *` and keys are unique by construction,
//! so nothing is ever overwritten and nothing needs deleting to clean up a failure.
//! A backup's status is derived from which objects exist, never from a mutable flag.

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use crate::backup_id::BackupId;
use crate::s3::{S3Error, Store};
use crate::upload::content_md5;

/// Name of the data object (uncompressed RDB).
pub const DATA_OBJECT: &str = "data.rdb";
pub const MANIFEST_OBJECT: &str = "manifest.json";
pub const FAILURE_OBJECT: &str = "failure.json";
pub const VERIFY_DIR: &str = "verify";
/// The largest manifest, failure or verify record the agent will read.
const MAX_RECORD_BYTES: i64 = 1024 * 1024;

/// Where one cluster's backups live in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout for `cluster` under the bucket path `path` (already validated).
    pub fn new(path: &str, cluster: &str) -> Self {
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() {
            format!("{cluster}/")
        } else {
            format!("{path}/{cluster}/")
        };
        Layout { prefix }
    }

    /// `<path>/<cluster>/`, with the trailing slash: nothing outside it is ever read.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn backup_prefix(&self, id: &BackupId) -> String {
        format!("{}{}/", self.prefix, id)
    }

    pub fn data_key(&self, id: &BackupId) -> String {
        format!("{}{}/{DATA_OBJECT}", self.prefix, id)
    }

    pub fn manifest_key(&self, id: &BackupId) -> String {
        format!("{}{}/{MANIFEST_OBJECT}", self.prefix, id)
    }

    pub fn failure_key(&self, id: &BackupId) -> String {
        format!("{}{}/{FAILURE_OBJECT}", self.prefix, id)
    }

    /// A new, unique key for one verification of `id` at `at` (time-sortable name plus
    /// random hex, so two runs in the same second never share a key).
    pub fn verify_key(&self, id: &BackupId, at: time::OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
        format!(
            "{}{}/{VERIFY_DIR}/{:04}{:02}{:02}T{:02}{:02}{:02}Z-{suffix:06x}.json",
            self.prefix,
            id,
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )
    }

    /// Whether `object` (a key's part after the backup id) is named like the records
    /// [`Layout::verify_key`] writes: `verify/<YYYYMMDDTHHMMSSZ>-<6 hex>.json`. Anything
    /// else under `verify/` is a stray key and is never read as a verification.
    pub fn is_verify_record(object: &str) -> bool {
        let Some(name) = object
            .strip_prefix(VERIFY_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_suffix(".json"))
        else {
            return false;
        };
        let b = name.as_bytes();
        b.len() == 23
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'Z'
            && b[16] == b'-'
            && b[17..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    }

    /// Splits a listed key into its backup id and the rest; `None` for keys that are not
    /// inside a valid backup directory (they are ignored, never touched).
    pub fn parse_key<'k>(&self, key: &'k str) -> Option<(BackupId, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (id, object) = rest.split_once('/')?;
        Some((BackupId::parse(id).ok()?, object))
    }
}

/// Format version of [`ManifestV1`].
pub const MANIFEST_FORMAT: u32 = 1;

/// What a restore and a verify need to know about a finished backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ManifestV1 {
    pub format_version: u32,
    pub backup_id: String,
    pub cluster: String,
    pub unit: String,
    pub started_at: String,
    pub finished_at: String,
    pub source_kind: String,
    pub source_version: String,
    pub rdb_magic: String,
    pub rdb_version: u16,
    pub data_key: String,
    pub compression: String,
    pub stored_size_bytes: u64,
    pub raw_size_bytes: u64,
    pub sha256: String,
    pub crc64: String,
    pub parts: u64,
    pub part_size_bytes: u64,
    pub eof_mark_stripped: bool,
    /// Which client took the snapshot (`native` or `cli`); absent in manifests written
    /// before the built-in source existed (those were all `cli`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Key counts per database reported by `INFO` just before the snapshot started
    /// (informational: writes during the snapshot can change them).
    pub keyspace_at_start: BTreeMap<String, u64>,
    /// Whether `INFO` gave the same counts before and after the snapshot (an idle
    /// source): then they are the snapshot's exact counts and verify holds them to it.
    #[serde(default)]
    pub keyspace_exact: bool,
    pub agent_version: String,
}

impl ManifestV1 {
    /// Why a backup with this manifest cannot be restored (`None`: it can, as far as the
    /// listing tells): the manifest must describe its own backup and data key, and the
    /// data object must exist with the manifest's size. A manifest alone proves nothing:
    /// the data may have been removed by hand, or the manifest copied from elsewhere.
    pub fn unrestorable_reason(
        &self,
        layout: &Layout,
        id: &BackupId,
        data_size: Option<u64>,
    ) -> Option<String> {
        if self.backup_id != id.as_str() || self.data_key != layout.data_key(id) {
            return Some(format!(
                "its manifest does not describe {id}'s own data object (copied or forged)"
            ));
        }
        match data_size {
            None => Some(format!("{DATA_OBJECT} is missing")),
            Some(n) if n != self.stored_size_bytes => Some(format!(
                "{DATA_OBJECT} has {n} bytes but the manifest recorded {}",
                self.stored_size_bytes
            )),
            Some(_) => None,
        }
    }
}

/// What the manifest of a backup that has one turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestCheck {
    /// It parses, describes the backup, and the data object has its size.
    Restorable(Box<ManifestV1>),
    /// Anything else; the text says what is wrong.
    Damaged(String),
}

/// Why a backup failed, written once instead of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureRecord {
    pub format_version: u32,
    pub backup_id: String,
    pub cluster: String,
    pub unit: String,
    pub started_at: String,
    pub failed_at: String,
    pub phase: String,
    pub code: String,
    pub reason: String,
    pub bytes_streamed: u64,
    pub agent_version: String,
}

impl Store {
    /// Writes a small JSON record once (`If-None-Match: *`, Content-MD5).
    pub async fn put_record<T: Serialize>(&self, key: &str, record: &T) -> Result<(), S3Error> {
        let mut body = serde_json::to_vec_pretty(record).expect("records serialise");
        body.push(b'\n');
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .content_md5(content_md5(&body))
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.classify("PutObject", key, e))?;
        Ok(())
    }

    /// Reads a small JSON record; `Ok(None)` when it does not exist.
    pub async fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, S3Error> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Ok(None);
                }
                return Err(self.classify("GetObject", key, e));
            }
        };
        // Records are a few hundred bytes; anything huge under a record's name is not one
        // (and must not be read into memory).
        if out.content_length().unwrap_or(0) > MAX_RECORD_BYTES {
            return Err(S3Error::BadRecord {
                key: key.to_owned(),
            });
        }
        let body = out.body.collect().await.map_err(|_| S3Error::Unreachable {
            endpoint: self.endpoint.clone(),
            detail: "connection lost while reading an object".into(),
        })?;
        serde_json::from_slice(&body.into_bytes())
            .map(Some)
            .map_err(|_| S3Error::BadRecord {
                key: key.to_owned(),
            })
    }

    /// Reads the manifest of backup `id` and checks it against the data object's listed
    /// size (see [`ManifestV1::unrestorable_reason`]). A manifest that cannot be parsed
    /// is `Damaged`; access and reachability errors are returned.
    pub async fn check_manifest(
        &self,
        layout: &Layout,
        id: &BackupId,
        data_size: Option<u64>,
    ) -> Result<ManifestCheck, S3Error> {
        match self
            .get_record::<ManifestV1>(&layout.manifest_key(id))
            .await
        {
            Ok(Some(m)) => Ok(match m.unrestorable_reason(layout, id, data_size) {
                None => ManifestCheck::Restorable(Box::new(m)),
                Some(why) => ManifestCheck::Damaged(why),
            }),
            Ok(None) => Ok(ManifestCheck::Damaged(format!(
                "{MANIFEST_OBJECT} disappeared while it was being read"
            ))),
            Err(S3Error::BadRecord { .. }) => Ok(ManifestCheck::Damaged(format!(
                "{MANIFEST_OBJECT} cannot be parsed (truncated or not a manifest)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix`.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("ListObjectsV2", prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    keys.push((k.to_owned(), obj.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(keys)
    }

    /// Open multipart uploads under `prefix`: (key, upload id, initiated).
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, S3Error> {
        let mut uploads = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.classify("ListMultipartUploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    uploads.push(OpenUpload {
                        key: key.to_owned(),
                        upload_id: id.to_owned(),
                        initiated: u.initiated().map(|t| t.secs()),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            let next_key = page.next_key_marker().map(str::to_owned);
            let next_id = page.next_upload_id_marker().map(str::to_owned);
            if next_key.is_none() && next_id.is_none() {
                break;
            }
            key_marker = next_key;
            id_marker = next_id;
        }
        Ok(uploads)
    }
}

/// The result of one `verify-backup` run, written once as `verify/<time>-<hex>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyRecord {
    pub format_version: u32,
    pub backup_id: String,
    pub checked_at: String,
    pub unit: String,
    pub ok: bool,
    pub code: Option<String>,
    pub reason: Option<String>,
    /// The check that failed (`object`, `size`, `rdb`, `sha256`, `crc64`, `load`).
    pub failed_check: Option<String>,
    pub size_bytes: u64,
    /// Present when the backup was loaded into a scratch server.
    pub load: Option<serde_json::Value>,
    pub agent_version: String,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// Unix seconds.
    pub initiated: Option<i64>,
}

/// A backup's state, derived from the objects that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    /// A manifest exists. (Listing and pruning read it: unless it parses, describes the
    /// backup and its data object has the recorded size, the backup is `Damaged`.)
    Finished,
    /// A manifest exists but the backup cannot be restored (see
    /// [`ManifestV1::unrestorable_reason`]). Never counted as a finished backup.
    Damaged,
    /// A failure record exists.
    Failed,
    /// A multipart upload is open and nothing else was written yet.
    Running,
    /// A data object exists without manifest or failure record (agent died between the
    /// two writes).
    Incomplete,
    /// `Running`, but every open upload is older than the abandoned-upload age (default
    /// 24 h): its agent is gone. [`Found::status`] never says this (it needs a clock and
    /// a policy); `list-backups` and `prune-backups` refine `Running` with
    /// [`crate::retention::shown_status`].
    Abandoned,
}

/// What the listing found for one backup id.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub manifest: bool,
    pub failure: bool,
    pub data_size: Option<u64>,
    pub open_uploads: usize,
    pub verify_records: Vec<String>,
}

impl Found {
    /// The status implied by what exists (`None`: nothing relevant).
    pub fn status(&self) -> Option<BackupStatus> {
        if self.manifest {
            Some(BackupStatus::Finished)
        } else if self.failure {
            Some(BackupStatus::Failed)
        } else if self.data_size.is_some() {
            Some(BackupStatus::Incomplete)
        } else if self.open_uploads > 0 {
            Some(BackupStatus::Running)
        } else {
            None
        }
    }
}

/// Groups listed keys and open uploads by backup id (ids sorted newest first).
pub fn group(
    layout: &Layout,
    keys: &[(String, u64)],
    uploads: &[OpenUpload],
) -> Vec<(BackupId, Found)> {
    let mut by_id: BTreeMap<BackupId, Found> = BTreeMap::new();
    for (key, size) in keys {
        let Some((id, object)) = layout.parse_key(key) else {
            continue;
        };
        let found = by_id.entry(id).or_default();
        match object {
            MANIFEST_OBJECT => found.manifest = true,
            FAILURE_OBJECT => found.failure = true,
            DATA_OBJECT => found.data_size = Some(*size),
            o if Layout::is_verify_record(o) => found.verify_records.push(o.to_owned()),
            _ => {}
        }
    }
    for u in uploads {
        let Some((id, object)) = layout.parse_key(&u.key) else {
            continue;
        };
        if object == DATA_OBJECT {
            by_id.entry(id).or_default().open_uploads += 1;
        }
    }
    let mut out: Vec<_> = by_id
        .into_iter()
        .filter(|(_, f)| f.status().is_some())
        .collect();
    out.reverse();
    out
}

/// One stored version of an object under a backup's prefix, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub key: String,
    /// `None` on stores without versioning (the object is its only version).
    pub version_id: Option<String>,
    pub delete_marker: bool,
}

/// What `prune-backups` needs beyond writing and listing: versions, their lock state,
/// deleting one exact version, and aborting an upload. Kept apart from the write path:
/// nothing else in the agent deletes.
impl Store {
    /// Whether the bucket has versioning (`Enabled` or `Suspended`). Stores that do not
    /// implement the call, or answer it in a shape the SDK does not read (moto names the
    /// root element `GetBucketVersioningResponse`), count as unversioned; access and
    /// reachability errors are returned.
    pub async fn bucket_versioned(&self) -> Result<bool, S3Error> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.status().is_some()),
            Err(e) => match self.classify("GetBucketVersioning", "", e) {
                S3Error::Other { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Every version and delete marker under `prefix` (ListObjectVersions, all pages).
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<StoredVersion>, S3Error> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.classify("ListObjectVersions", prefix, e))?;
            for v in page.versions() {
                if let Some(key) = v.key() {
                    out.push(StoredVersion {
                        key: key.to_owned(),
                        version_id: v.version_id().map(str::to_owned),
                        delete_marker: false,
                    });
                }
            }
            for m in page.delete_markers() {
                if let Some(key) = m.key() {
                    out.push(StoredVersion {
                        key: key.to_owned(),
                        version_id: m.version_id().map(str::to_owned),
                        delete_marker: true,
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            let next_key = page.next_key_marker().map(str::to_owned);
            let next_id = page.next_version_id_marker().map(str::to_owned);
            if next_key.is_none() && next_id.is_none() {
                break;
            }
            key_marker = next_key;
            id_marker = next_id;
        }
        Ok(out)
    }

    /// The Object Lock state of one version (HeadObject, which reports retention mode,
    /// retain-until date and legal hold together). An error means the state is unknown.
    pub async fn version_lock(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<crate::retention::VersionLock, S3Error> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.classify("HeadObject", key, e))?;
        Ok(crate::retention::VersionLock {
            mode: out.object_lock_mode().map(|m| m.as_str().to_owned()),
            retain_until: out.object_lock_retain_until_date().map(|t| t.secs()),
            legal_hold: out.object_lock_legal_hold_status()
                == Some(&aws_sdk_s3::types::ObjectLockLegalHoldStatus::On),
        })
    }

    /// Deletes exactly one version (DeleteObject with VersionId, so a versioned bucket
    /// gets no delete marker), or the object itself on an unversioned store.
    pub async fn delete_version(&self, key: &str, version_id: Option<&str>) -> Result<(), S3Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.classify("DeleteObject", key, e))?;
        Ok(())
    }

    /// Aborts a multipart upload; one that is already gone counts as aborted.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(self.classify("AbortMultipartUpload", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "20261121T193000Z-valkey-0-aaaaaa";
    const B: &str = "20261121T193100Z-valkey-1-bbbbbb";
    const C: &str = "20261121T193200Z-valkey-0-cccccc";
    const D: &str = "20261121T193300Z-valkey-0-dddddd";

    #[test]
    fn only_names_the_agent_writes_count_as_verification_records() {
        let layout = Layout::new("p", "c");
        let id = BackupId::parse("20261121T193000Z-valkey-0-abcdef").unwrap();
        let key = layout.verify_key(&id, time::OffsetDateTime::now_utc());
        let (_, object) = layout.parse_key(&key).unwrap();
        assert!(Layout::is_verify_record(object), "{object}");
        for stray in [
            "verify/zzzz.json",
            "verify/29991231T235959Z-FFFFFF.json",
            "verify/29991231T235959Z-ffffff.json.bak",
            "verify/x/20261121T193000Z-abcdef.json",
            "verify/20261121T193000Z-abcdeg.json",
            "verify20261121T193000Z-abcdef.json",
        ] {
            assert!(!Layout::is_verify_record(stray), "{stray}");
        }
    }

    #[test]
    fn layout_builds_and_parses_keys_inside_its_prefix_only() {
        let l = Layout::new("/backups/", "m.valkey");
        let id = BackupId::parse(A).unwrap();
        assert_eq!(l.data_key(&id), format!("backups/m.valkey/{A}/data.rdb"));
        assert_eq!(
            l.parse_key(&l.manifest_key(&id)),
            Some((id.clone(), "manifest.json"))
        );
        assert_eq!(
            l.parse_key(&format!("backups/m.valkey2/{A}/data.rdb")),
            None
        );
        assert_eq!(l.parse_key("backups/m.valkey/not-an-id/data.rdb"), None);
        assert_eq!(l.parse_key("backups/m.valkey/stray.txt"), None);
        assert_eq!(Layout::new("", "c").prefix(), "c/");
    }

    #[test]
    fn status_is_derived_from_existing_objects_newest_first() {
        let l = Layout::new("p", "c");
        let k = |id: &str, o: &str| (format!("p/c/{id}/{o}"), 10u64);
        let keys = vec![
            k(A, "data.rdb"),
            k(A, "manifest.json"),
            k(A, "verify/20261122T000000Z-0a1b2c.json"),
            k(A, "verify/not-a-record.json"),
            k(B, "failure.json"),
            k(C, "data.rdb"),
            ("p/c/garbage/data.rdb".into(), 1),
            ("p/other/x".into(), 1),
        ];
        let uploads = vec![OpenUpload {
            key: format!("p/c/{D}/data.rdb"),
            upload_id: "u".into(),
            initiated: None,
        }];
        let g = group(&l, &keys, &uploads);
        let got: Vec<_> = g
            .iter()
            .map(|(id, f)| (id.as_str(), f.status().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (D, BackupStatus::Running),
                (C, BackupStatus::Incomplete),
                (B, BackupStatus::Failed),
                (A, BackupStatus::Finished),
            ]
        );
        assert_eq!(g[3].1.verify_records.len(), 1);
    }
}
