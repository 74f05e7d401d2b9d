//! The object layout, the records written beside each backup, and what a listing means.
//!
//! ```text
//! <path>/<cluster>/<backup-id>/data.rdb[.zst|.lz4][.age]  the snapshot (completed only when valid)
//! <path>/<cluster>/<backup-id>/manifest.json   written once after the data: "finished"
//! <path>/<cluster>/<backup-id>/failure.json    written once instead, when it failed
//! <path>/<cluster>/<backup-id>/verify/<t>-<hex>.json one new object per verification
//! ```
//!
//! Pure: the types and key grammar only; reading and writing goes through
//! the storage seam. Every record is written once (`PutMode::Create`) and keys are unique by construction,
//! so nothing is ever overwritten and nothing needs deleting to clean up a failure.
//! A backup's status is derived from which objects exist, never from a mutable flag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backup_id::BackupId;
use crate::codec::Codec;
use crate::storage::ObjectMeta;

/// Name of the plain data object (the uncompressed, clear RDB); a compressed or encrypted
/// one carries the tools' suffixes ([`data_object_name`]).
pub const DATA_OBJECT: &str = "data.rdb";

/// The data object's name for a codec and encryption: `data.rdb`, `data.rdb.zst`,
/// `data.rdb.lz4.age`… — the suffixes say which tools open it, outermost last.
pub fn data_object_name(codec: Codec, encrypted: bool) -> String {
    format!(
        "{DATA_OBJECT}{}{}",
        codec.suffix(),
        if encrypted {
            crate::encrypt::SUFFIX
        } else {
            ""
        }
    )
}

/// Whether `object` (a name inside a backup directory) is a data object of any kind.
pub fn is_data_object(object: &str) -> bool {
    [Codec::None, Codec::Lz4, Codec::Zstd]
        .into_iter()
        .any(|c| object == data_object_name(c, false) || object == data_object_name(c, true))
}
pub const MANIFEST_OBJECT: &str = "manifest.json";
pub const FAILURE_OBJECT: &str = "failure.json";
pub const VERIFY_DIR: &str = "verify";

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

    /// The key of the plain data object (format-1 backups).
    pub fn data_key(&self, id: &BackupId) -> String {
        format!("{}{}/{DATA_OBJECT}", self.prefix, id)
    }

    /// The key of the data object stored with `codec`, encrypted or not.
    pub fn data_key_for(&self, id: &BackupId, codec: Codec, encrypted: bool) -> String {
        format!(
            "{}{}/{}",
            self.prefix,
            id,
            data_object_name(codec, encrypted)
        )
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
        let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
        format!(
            "{}{}/{VERIFY_DIR}/{}-{suffix:06x}.json",
            self.prefix,
            id,
            crate::timefmt::compact(at)
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

/// Format version of a manifest describing the plain RDB (readable by every agent).
pub const MANIFEST_FORMAT: u32 = 1;
/// Format version of a manifest describing a compressed or encrypted object: agents that
/// only know format 1 must not mistake its object for a plain RDB.
pub const MANIFEST_FORMAT_ENCODED: u32 = 2;

/// How a data object is encrypted, as its manifest records it: public facts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EncryptionRecord {
    /// `age-x25519`.
    pub scheme: String,
    /// Fingerprints of the recipients' public keys ([`crate::encrypt::fingerprint`]).
    pub recipients: Vec<String>,
}

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
    /// `none`, `lz4` or `zstd` ([`Codec`]).
    pub compression: String,
    /// The Zstandard level used (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Present when the data object is age-encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
    /// Size of the data object as stored.
    pub stored_size_bytes: u64,
    /// Size of the RDB itself.
    pub raw_size_bytes: u64,
    /// SHA-256 of the stored bytes (the object as it is in the bucket).
    pub sha256: String,
    /// SHA-256 of the raw RDB (format 1 omits it: there it equals `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_sha256: Option<String>,
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
        let Some(codec) = self.codec() else {
            return Some(format!(
                "its manifest names compression {:?}, which this agent does not know (written by a newer agent?)",
                self.compression
            ));
        };
        if self.backup_id != id.as_str()
            || self.data_key != layout.data_key_for(id, codec, self.encryption.is_some())
        {
            return Some(format!(
                "its manifest does not describe {id}'s own data object (copied or forged)"
            ));
        }
        let name = data_object_name(codec, self.encryption.is_some());
        match data_size {
            None => Some(format!("{name} is missing")),
            Some(n) if n != self.stored_size_bytes => Some(format!(
                "{name} has {n} bytes but the manifest recorded {}",
                self.stored_size_bytes
            )),
            Some(_) => None,
        }
    }

    /// The data object's compression; `None` for a name this agent does not know.
    pub fn codec(&self) -> Option<Codec> {
        Codec::from_name(&self.compression)
    }

    /// The SHA-256 of the raw RDB (for format 1, the stored bytes are the RDB).
    pub fn raw_sha256(&self) -> &str {
        self.raw_sha256.as_deref().unwrap_or(&self.sha256)
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
    pub load: Option<crate::protocol::LoadReport>,
    pub agent_version: String,
}

pub use crate::protocol::BackupStatus;

/// What the listing found for one backup id.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub manifest: bool,
    pub failure: bool,
    pub data_size: Option<u64>,
    pub open_uploads: usize,
    pub verify_records: Vec<String>,
    /// The store's LastModified (Unix seconds) of the manifest, `failure.json` and the
    /// data object, when listed with one.
    pub manifest_at: Option<i64>,
    pub failure_at: Option<i64>,
    pub data_at: Option<i64>,
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

    /// The store's time of the record that gives the backup its status ([`Found::status`]):
    /// what retention and listing rank by. `None` for a running backup (nothing written).
    pub fn stored_at(&self) -> Option<time::OffsetDateTime> {
        let secs = if self.manifest {
            self.manifest_at
        } else if self.failure {
            self.failure_at
        } else {
            self.data_at
        };
        secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
    }
}

/// An open multipart upload as listing sees it: its key and when it was initiated
/// (Unix seconds, when the store says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSeen {
    pub key: String,
    pub initiated: Option<i64>,
}

/// When each backup's open data uploads were initiated (Unix seconds, when known).
pub fn upload_times(
    layout: &Layout,
    uploads: &[UploadSeen],
) -> std::collections::HashMap<BackupId, Vec<Option<i64>>> {
    let mut out: std::collections::HashMap<BackupId, Vec<Option<i64>>> = Default::default();
    for u in uploads {
        if let Some((id, object)) = layout.parse_key(&u.key) {
            if is_data_object(object) {
                out.entry(id).or_default().push(u.initiated);
            }
        }
    }
    out
}

/// Groups listed keys and open uploads by backup id (ids sorted newest first).
pub fn group(
    layout: &Layout,
    keys: &[ObjectMeta],
    uploads: &[UploadSeen],
) -> Vec<(BackupId, Found)> {
    let mut by_id: BTreeMap<BackupId, Found> = BTreeMap::new();
    for meta in keys {
        let Some((id, object)) = layout.parse_key(&meta.key) else {
            continue;
        };
        let found = by_id.entry(id).or_default();
        match object {
            MANIFEST_OBJECT => {
                found.manifest = true;
                found.manifest_at = meta.last_modified;
            }
            FAILURE_OBJECT => {
                found.failure = true;
                found.failure_at = meta.last_modified;
            }
            o if is_data_object(o) => {
                found.data_size = Some(meta.size);
                found.data_at = meta.last_modified;
            }
            o if Layout::is_verify_record(o) => found.verify_records.push(o.to_owned()),
            _ => {}
        }
    }
    for u in uploads {
        let Some((id, object)) = layout.parse_key(&u.key) else {
            continue;
        };
        if is_data_object(object) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "20261121T193000Z-valkey-0-aaaaaa";
    const B: &str = "20261121T193100Z-valkey-1-bbbbbb";
    const C: &str = "20261121T193200Z-valkey-0-cccccc";
    const D: &str = "20261121T193300Z-valkey-0-dddddd";

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            last_modified: None,
            lock: Default::default(),
        }
    }

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
        let k = |id: &str, o: &str| meta(&format!("p/c/{id}/{o}"), 10);
        let keys = vec![
            k(A, "data.rdb"),
            k(A, "manifest.json"),
            k(A, "verify/20261122T000000Z-abcdef.json"),
            k(A, "verify/stray.json"),
            k(B, "failure.json"),
            k(C, "data.rdb"),
            meta("p/c/garbage/data.rdb", 1),
            meta("p/other/x", 1),
        ];
        let uploads = vec![UploadSeen {
            key: format!("p/c/{D}/data.rdb"),
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

    #[test]
    fn data_objects_carry_the_tools_suffixes() {
        assert_eq!(data_object_name(Codec::None, false), "data.rdb");
        assert_eq!(data_object_name(Codec::Zstd, false), "data.rdb.zst");
        assert_eq!(data_object_name(Codec::Lz4, false), "data.rdb.lz4");
        assert_eq!(data_object_name(Codec::Zstd, true), "data.rdb.zst.age");
        assert_eq!(data_object_name(Codec::None, true), "data.rdb.age");
        for o in [
            "data.rdb",
            "data.rdb.lz4.age",
            "data.rdb.zst",
            "data.rdb.age",
        ] {
            assert!(is_data_object(o), "{o}");
        }
        for o in [
            "data.rdb.gz",
            "data.rdb.age.zst",
            "data.rdbx",
            "manifest.json",
        ] {
            assert!(!is_data_object(o), "{o}");
        }
        let l = Layout::new("p", "c");
        let id = BackupId::parse(A).unwrap();
        assert_eq!(
            l.data_key_for(&id, Codec::Lz4, true),
            format!("p/c/{A}/data.rdb.lz4.age")
        );
        let keys = vec![meta(&format!("p/c/{A}/data.rdb.zst.age"), 5)];
        let g = group(&l, &keys, &[]);
        assert_eq!(g[0].1.data_size, Some(5));
        assert_eq!(g[0].1.status(), Some(BackupStatus::Incomplete));
    }
}
