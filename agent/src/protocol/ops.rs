//! The params and results of every op, as types.
//!
//! Ops build these, the server's audit line reads them, the CLI renders them, and a test
//! parses every JSON example of `docs/protocol.md` into them, so the document and the
//! wire cannot drift apart. Keys are kebab-case (Juju action results require it, and the
//! charm passes results through unchanged). Params refuse unknown keys, so a typo is a
//! `bad-request`, never silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A backup's state, derived from the objects that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    /// A manifest exists. (Listing and pruning read it: unless it parses, describes the
    /// backup and its data object has the recorded size, the backup is `Damaged`.)
    Finished,
    /// A manifest exists but the backup cannot be restored (see
    /// `layout::ManifestV1::unrestorable_reason`). Never counted as a finished backup.
    Damaged,
    /// A failure record exists.
    Failed,
    /// A multipart upload is open and nothing else was written yet.
    Running,
    /// A data object exists without manifest or failure record (agent died between the
    /// two writes).
    Incomplete,
    /// `Running`, but every open upload is older than the abandoned-upload age (default
    /// 24 h): its agent is gone. `layout::Found::status` never says this (it needs a clock and
    /// a policy); `list-backups` and `prune-backups` refine `Running` with
    /// `retention::shown_status`.
    Abandoned,
}

/// Params of ops that take none (`status`, `create-backup`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `status` params (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StatusParams {
    /// Run `configure`'s Valkey check again now (otherwise `valkey-check` is the last
    /// `configure`'s and `status` sends nothing to Valkey).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_valkey: bool,
}

// `configure` params are the configuration itself: `crate::config::AgentConfig`, which
// validates them (the protocol module stays below the configuration).

/// `list-backups` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListBackupsParams {
    /// Another cluster's prefix to read (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_after_hours: Option<f64>,
    /// How many backups to describe, newest first (default 100, at most 1000): an
    /// answer stays bounded however long the history is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// How many of the newest (matching) backups to pass over first (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Only backups with this status, as the listing shows it (see `counts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BackupStatus>,
}

/// `prune-backups` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PruneBackupsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<f64>,
    /// Without it the prune is a dry run.
    #[serde(default)]
    pub confirm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_after_hours: Option<f64>,
}

/// The steps of the `restore-backup` conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreStep {
    Prepare,
    Commit,
    Finish,
    Abort,
}

/// What `prepare` does about a Sentinel that watches the server (`valkey.sentinel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SentinelMode {
    /// Raise `down-after-milliseconds` on every Sentinel of the master for the restore
    /// and put the previous values back afterwards (the default).
    #[default]
    Suppress,
    /// Leave Sentinel alone: a stop longer than its `down-after-milliseconds` makes it
    /// promote a replica, which undoes the restore. For tests and for operators who
    /// handle Sentinel themselves.
    Ignore,
}

/// `restore-backup` params (which are required depends on the step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestoreBackupParams {
    pub step: RestoreStep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// `prepare` only: what to do about Sentinel (default `suppress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelMode>,
}

/// `verify-backup` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyBackupParams {
    pub backup_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<String>,
    #[serde(default)]
    pub load: bool,
    /// The server binary for `load` (default: `valkey-server`/`redis-server` beside the cli).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<PathBuf>,
}

/// The operation holding the unit lock, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunningOp {
    pub op: String,
    /// The backup id, or what is being done (`prune of <cluster>`).
    pub backup_id: String,
    pub started_at: String,
}

/// This agent's last backup attempt since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LastBackup {
    pub backup_id: String,
    /// `finished` or `failed`.
    pub status: String,
    pub finished_at: Option<String>,
    pub code: Option<String>,
}

/// `status` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StatusResult {
    pub agent_version: String,
    pub configured: bool,
    pub s3_configured: bool,
    pub cluster: Option<String>,
    pub unit: Option<String>,
    pub bucket: Option<String>,
    /// The configured snapshot source (`auto`, `native` or `cli`).
    pub valkey_source: Option<String>,
    pub busy: bool,
    pub running: Option<RunningOp>,
    pub last_backup: Option<LastBackup>,
    /// Part buffers × (upload concurrency + 1), when configured.
    pub memory_bound_bytes: Option<u64>,
    /// The schedule and what the scheduler did (null without a schedule); its shape is
    /// documented in docs/protocol.md and built by the scheduler.
    pub schedule: Option<serde_json::Value>,
    /// The metrics endpoint, when configured.
    pub metrics: Option<MetricsStatus>,
    /// What the last `configure` found when it tried the server (null before one).
    #[serde(default)]
    pub valkey_check: Option<Box<ValkeyCheck>>,
}

/// What `configure` found when it tried the configured server as a backup would: connect
/// (TCP/TLS), log in, run the commands a backup and a restore need, read the role. A
/// failed check does not refuse the configuration (a server that is down for a minute
/// must not cost the unit its S3 settings): it is stored, and the check says what is
/// wrong so the charm can show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ValkeyCheck {
    /// True when a backup from this server would work now.
    pub ok: bool,
    /// Why not: `valkey-unreachable`, `valkey-auth`, `valkey-permission`, `valkey-error`.
    pub code: Option<String>,
    /// What is wrong and what to do (null when `ok`); never holds a secret.
    pub message: Option<String>,
    /// `host:port` as configured.
    pub addr: String,
    /// `primary` or `replica` (null when the server could not be asked).
    pub role: Option<String>,
    /// `valkey 9.1.2`, `redis 7.0.15` (null when the server could not be asked).
    pub server: Option<String>,
    /// The Sentinel check (null without `valkey.sentinel`).
    pub sentinel: Option<SentinelCheck>,
    /// Set when backups would work but a restore would not: the user may not read the
    /// server's settings (`CONFIG GET dir`) a restore needs. Not a failure: `ok` speaks
    /// for backups only.
    #[serde(default)]
    pub restore_warning: Option<String>,
    pub checked_at: String,
}

/// Whether the configured Sentinel answers and watches this server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SentinelCheck {
    pub ok: bool,
    /// `sentinel-error` when not `ok`.
    pub code: Option<String>,
    pub message: Option<String>,
    /// The Sentinel `host:port` as configured.
    pub addr: String,
    /// The master name whose group this server belongs to (null: not found).
    pub master_name: Option<String>,
    /// How many Sentinels watch that master (the configured one included).
    pub sentinels: Option<u32>,
}

/// Where the metrics endpoint listens, and why it does not serve when it should.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsStatus {
    pub listen: String,
    pub error: Option<String>,
}

/// `configure` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigureResult {
    pub configured: bool,
    pub cluster: String,
    pub s3_configured: bool,
    pub bucket: Option<String>,
    pub bucket_created: bool,
    /// The configured snapshot source (`auto`, `native` or `cli`).
    pub valkey_source: String,
    /// The check of the configured server (see [`ValkeyCheck`]).
    pub valkey_check: ValkeyCheck,
    /// The integrity header the agent's writes carry (`crc32c`, `crc64nvme` or `md5`):
    /// what `s3.checksum` resolved to after the store was probed. Absent without S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_checksum: Option<String>,
}

/// `create-backup` result: the finished backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CreateBackupResult {
    pub backup_id: String,
    pub cluster: String,
    pub status: BackupStatus,
    /// Which client took the snapshot (`native` or `cli`).
    pub source: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub crc64: String,
    /// `REDIS` or `VALKEY`: the snapshot's own format family.
    pub rdb_magic: String,
    pub rdb_version: u16,
    pub source_kind: String,
    pub source_version: String,
    pub parts: u64,
    pub part_size_bytes: u64,
    pub memory_bound_bytes: u64,
    pub duration_seconds: f64,
    pub started_at: String,
    pub finished_at: String,
    pub data_key: String,
    /// `none`, `lz4` or `zstd`.
    #[serde(default = "none_codec")]
    pub compression: String,
    /// Size of the RDB itself (`size-bytes` is what was stored).
    #[serde(default)]
    pub raw_size_bytes: u64,
    /// Whether the stored object is age-encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// Fingerprints of the public keys it was encrypted to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

fn none_codec() -> String {
    "none".into()
}

/// The newest verification of a backup, as `list-backups` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LastVerify {
    pub checked_at: String,
    pub ok: bool,
    pub code: Option<String>,
}

/// One backup in a `list-backups` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupEntry {
    pub backup_id: String,
    pub status: BackupStatus,
    pub unit: Option<String>,
    pub size_bytes: Option<u64>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `<kind> <version>` of the source server (finished backups).
    pub source_version: Option<String>,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub verify_records: usize,
    pub last_verify: Option<LastVerify>,
    /// Finished backups whose manifest was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdb_version: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `none`, `lz4` or `zstd` (finished backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Whether the stored object is encrypted (finished backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// When the store wrote the record that gives the backup its status (manifest,
    /// `failure.json`, data object): the store's clock, which retention ranks and ages
    /// every backup by as well as by its id's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
    /// Set when the backup's id is far from the store's time (a unit's clock was wrong,
    /// or the id is forged); see the README's retention section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `list-backups` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListBackupsResult {
    pub cluster: String,
    /// The page asked for, newest first by the id's time (by `stored-at` instead when the
    /// id is more than an hour after it: see `warning`).
    pub backups: Vec<BackupEntry>,
    /// How many backups match (all pages together).
    #[serde(default)]
    pub total: usize,
    /// Where this page starts among them.
    #[serde(default)]
    pub offset: usize,
    /// Where the next page starts; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// Every backup of the cluster by status, from the listing alone: a manifest whose
    /// data object is missing counts as `damaged`; one that does not parse or does not
    /// match its data is found only when its entry is described (then `damaged` there).
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
    /// The schedule, as in `status` (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<serde_json::Value>,
}

/// The policy a prune applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PrunePolicy {
    pub keep_last: Option<u32>,
    pub keep_days: Option<f64>,
    /// `request`, `s3.delete-older-than-days` or null.
    pub keep_days_from: Option<String>,
    pub abandoned_after_hours: f64,
}

/// A backup a prune deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PrunedBackup {
    pub backup_id: String,
    pub status: BackupStatus,
    pub objects: usize,
    pub versions: usize,
    pub why: String,
    /// As in [`SparedBackup::warning`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A backup a prune kept or skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SparedBackup {
    pub backup_id: String,
    pub status: BackupStatus,
    pub why: String,
    /// Set when the backup's id disagrees with the store's time of its record
    /// (`retention::id_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// An abandoned upload a prune aborted (or would abort).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AbortedUpload {
    pub backup_id: String,
    pub key: String,
    pub initiated: String,
    pub why: String,
}

/// `prune-backups` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PruneResult {
    pub dry_run: bool,
    pub cluster: String,
    pub policy: PrunePolicy,
    pub deleted: Vec<PrunedBackup>,
    pub kept: Vec<SparedBackup>,
    pub skipped: Vec<SparedBackup>,
    pub aborted_uploads: Vec<AbortedUpload>,
}

/// Key counts per database (`db0` → n).
pub type KeyCounts = BTreeMap<String, u64>;

/// `restore-backup` step `prepare` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestorePrepared {
    pub restore_id: String,
    pub backup_id: String,
    pub source_cluster: String,
    pub target: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub appendonly: bool,
    /// What was done about Sentinel (null without `valkey.sentinel`).
    #[serde(default)]
    pub sentinel: Option<SentinelSuppression>,
    pub next: String,
}

/// The Sentinel group of a restored master, and what `prepare` did to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SentinelSuppression {
    pub master_name: String,
    /// `suppress` or `ignore` (the `sentinel` param).
    pub mode: SentinelMode,
    /// The value every Sentinel has for the restore (null with `ignore`).
    pub down_after_milliseconds: Option<u64>,
    /// Every Sentinel of the master, with the value it had before.
    pub sentinels: Vec<SentinelSetting>,
}

/// One Sentinel and its `down-after-milliseconds` for the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SentinelSetting {
    /// `ip:port`.
    pub addr: String,
    pub down_after_milliseconds: u64,
}

/// What `finish` or `abort` did to put Sentinel back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SentinelRestored {
    pub master_name: String,
    /// True when every Sentinel has its previous value again.
    pub restored: bool,
    /// Each Sentinel's value now (the previous one, once restored).
    pub sentinels: Vec<SentinelSetting>,
    /// Why a Sentinel could not be set back (the agent keeps trying in the background and
    /// after a restart); null when `restored`.
    pub error: Option<String>,
}

/// One replica of the restored primary, after `finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaState {
    /// `ip:port` as the primary reports it.
    pub addr: String,
    /// The primary's view: `online`, `wait_bgsave`, `send_bulk`…, or `missing` when a
    /// replica attached at `prepare` did not come back.
    pub state: String,
    /// The replica's acknowledged offset, and whether it reached the primary's.
    pub offset: Option<u64>,
    pub in_sync: bool,
    /// Key counts read from the replica itself (null when it could not be asked).
    pub keys: Option<KeyCounts>,
    /// Whether those match the restored primary's.
    pub keys_match: Option<bool>,
    /// Why the replica could not be asked (null otherwise).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestoreCommitted {
    pub restore_id: String,
    pub target: String,
    pub previous: Option<String>,
    pub previous_aof: Option<String>,
    pub appendonly: bool,
    pub next: String,
}

/// `restore-backup` step `finish` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestoreFinished {
    pub restore_id: String,
    pub backup_id: String,
    pub source_cluster: String,
    pub loaded: bool,
    pub keys: KeyCounts,
    pub keys_at_backup: KeyCounts,
    pub keys_match: bool,
    pub target: String,
    pub previous: Option<String>,
    pub duration_seconds: f64,
    /// `primary` or `replica`: what the restored server is once loaded (a `replica` here
    /// means Sentinel failed over and the restore was undone by a resync).
    #[serde(default)]
    pub role: Option<String>,
    /// Whether the server accepts writes: a `DEL` of a key that cannot exist, which takes
    /// the full write path (`min-replicas-to-write`, read-only replica, disk errors) and
    /// changes nothing.
    #[serde(default)]
    pub writable: bool,
    /// The server's answer when it refused the write (null when `writable`).
    #[serde(default)]
    pub write_error: Option<String>,
    /// Every replica attached to the primary (at `prepare` and now), resynced or not.
    #[serde(default)]
    pub replicas: Vec<ReplicaState>,
    /// How Sentinel was put back (null without `valkey.sentinel` or with `ignore`).
    #[serde(default)]
    pub sentinel: Option<SentinelRestored>,
}

/// `restore-backup` step `abort` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestoreAborted {
    pub restore_id: String,
    pub aborted: bool,
    pub committed: bool,
    pub target: String,
    pub previous: Option<String>,
    pub note: String,
    /// How Sentinel was put back (null when it was not suppressed).
    #[serde(default)]
    pub sentinel: Option<SentinelRestored>,
}

/// The result of one `restore-backup` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RestoreResult {
    Prepared(RestorePrepared),
    Committed(RestoreCommitted),
    Finished(RestoreFinished),
    Aborted(RestoreAborted),
}

/// What loading a backup into a scratch server showed (`verify-backup --load`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoadReport {
    pub loaded: bool,
    pub keys: KeyCounts,
    pub keys_at_backup: KeyCounts,
    pub keys_match: bool,
    pub keys_exact_at_backup: bool,
}

/// `verify-backup` result (a failed verification is an error instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyResult {
    pub backup_id: String,
    pub ok: bool,
    pub checked_at: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub load: Option<LoadReport>,
    /// The verification record written (null for another cluster's backup).
    pub record_key: Option<String>,
}

/// Any op's result, as the server sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(StatusResult),
    Configure(ConfigureResult),
    CreateBackup(CreateBackupResult),
    ListBackups(ListBackupsResult),
    RestoreBackup(RestoreResult),
    VerifyBackup(VerifyResult),
    PruneBackups(PruneResult),
}

impl Reply {
    /// The backup the op was about, for the audit line.
    pub fn backup_id(&self) -> Option<&str> {
        match self {
            Reply::CreateBackup(r) => Some(&r.backup_id),
            Reply::VerifyBackup(r) => Some(&r.backup_id),
            Reply::RestoreBackup(RestoreResult::Prepared(r)) => Some(&r.backup_id),
            Reply::RestoreBackup(RestoreResult::Finished(r)) => Some(&r.backup_id),
            _ => None,
        }
    }

    /// The result as the `data` of a `result` event.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("results always serialise")
    }
}
