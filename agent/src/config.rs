//! The agent's configuration: what `configure` accepts, how it is validated, and how it
//! is stored.
//!
//! Field names are the s3-integrator's own (kebab-case), so the charm can pass relation
//! data through unchanged. Every field is validated before anything is stored; the file
//! is replaced atomically (temp file, fsync, rename, fsync of the directory) with mode
//! 0600 because it holds the S3 secret key and the Valkey password.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::codec::{Codec, ZSTD_DEFAULT_LEVEL, ZSTD_LEVELS};
use crate::encrypt;
use crate::metrics::MetricsSettings;
use crate::parts::{DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::schedule::{RetentionSettings, Schedule, ScheduleSettings};
use crate::secret::Secret;

const CONFIG_FILE: &str = "config.json";

/// Why a configuration was refused. Messages name the field, never its secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Shape { path: String, reason: String },
    #[error("cannot store the configuration: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored configuration is unreadable: {0}")]
    Corrupt(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Everything the agent needs to run backups for one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster name: the backups' prefix under the bucket path (`<model>.<app>`).
    pub cluster: String,
    /// The Juju unit this agent serves (`valkey/0`), recorded in ids and manifests.
    pub unit: String,
    /// The object store; `None` while there is no s3 relation.
    #[serde(default)]
    pub s3: Option<S3Settings>,
    pub valkey: ValkeySettings,
    #[serde(default)]
    pub backup: BackupTuning,
    /// Scheduled backups (see [`crate::schedule`]); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSettings>,
    /// Pruning after every successful scheduled backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSettings>,
    /// The Prometheus endpoint (see [`crate::metrics`]); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSettings>,
    /// Client-side encryption (age); `None`: backups are stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSettings>,
}

/// `encryption`: who backups are encrypted to, and which keys open them.
///
/// `recipients` are public keys (`age1…`): every new backup is encrypted to each of them.
/// `identities` are secret keys (`AGE-SECRET-KEY-1…`) used to open backups on verify and
/// restore; they live only in the 0600 configuration file, never in logs, results or
/// objects. Without `recipients`, backups are encrypted to the first identity's public
/// key: `identities: [new, old]` is a rotation in one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EncryptionSettings {
    #[serde(default)]
    pub recipients: Vec<String>,
    #[serde(default)]
    pub identities: Vec<Secret>,
}

impl EncryptionSettings {
    /// The keys new backups are encrypted to (see the type's docs for the default).
    pub fn effective_recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        let explicit = encrypt::parse_recipients(&self.recipients)
            .map_err(|e| invalid("encryption.recipients", e.to_string()))?;
        if !explicit.is_empty() {
            return Ok(explicit);
        }
        Ok(self
            .parsed_identities()?
            .first()
            .map(|i| i.to_public())
            .into_iter()
            .collect())
    }

    /// The identities that open backups, in order.
    pub fn parsed_identities(&self) -> Result<Vec<age::x25519::Identity>, ConfigError> {
        encrypt::parse_identities(&self.identities)
            .map_err(|e| invalid("encryption.identities", e.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.recipients.len() > 32 || self.identities.len() > 32 {
            return Err(invalid(
                "encryption",
                "at most 32 recipients and 32 identities",
            ));
        }
        self.parsed_identities()?;
        if self.effective_recipients()?.is_empty() {
            return Err(invalid(
                "encryption",
                "needs at least one recipient or identity (omit encryption to store backups in clear)",
            ));
        }
        Ok(())
    }
}

/// S3 settings, as the s3-integrator names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct S3Settings {
    #[serde(default)]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub region: Option<String>,
    pub access_key: Secret,
    pub secret_key: Secret,
    #[serde(default)]
    pub s3_uri_style: Option<String>,
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Which integrity header every PutObject and UploadPart carries (see
    /// [`ChecksumChoice`]); `configure` replaces `auto` with what its probe found.
    #[serde(default)]
    pub checksum: ChecksumChoice,
    #[serde(default)]
    pub tls_ca_chain: Option<CaChain>,
    /// Accepted for compatibility with the s3-integrator; only SigV4 is spoken.
    #[serde(default)]
    pub s3_api_version: Option<serde_json::Value>,
    /// The s3-integrator's retention hint; the default `keep-days` for pruning.
    #[serde(default)]
    pub delete_older_than_days: Option<serde_json::Value>,
}

/// `tls-ca-chain` arrives as a list of PEM (or base64-of-PEM) strings, or one string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CaChain {
    One(String),
    Many(Vec<String>),
}

/// How to reach Valkey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValkeySettings {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Which client takes the snapshot (and answers `INFO`/`CONFIG GET`).
    #[serde(default)]
    pub source: SourceKind,
    /// Path to `valkey-cli` or `redis-cli`: required for `source: cli`, else optional
    /// (`verify-backup` with `load` looks for a server binary beside it).
    #[serde(default)]
    pub cli: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<ValkeyTls>,
    /// The Sentinel watching this server, if any: a restore then keeps Sentinel from
    /// failing over while the server is stopped (see [`crate::sentinel`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSettings>,
}

/// `valkey.sentinel`: one Sentinel of the group that watches the server (the unit's own,
/// on Canonical's charm). The agent finds the group's master name and the other
/// Sentinels through it, and logs in to every one of them with these credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SentinelSettings {
    pub host: String,
    #[serde(default = "default_sentinel_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS to every Sentinel of the group (the configured one and the peers it names):
    /// Canonical's charm with client TLS on closes Sentinel's plain port and its
    /// Sentinels announce their TLS port to each other. Same shape as `valkey.tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ValkeyTls>,
}

impl SentinelSettings {
    /// Connection settings for a Sentinel at `host:port` with these credentials (TLS
    /// when `tls` is set, built-in client), so the RESP client of [`crate::connection`]
    /// can talk to it.
    pub fn client_settings(&self, host: &str, port: u16) -> ValkeySettings {
        ValkeySettings {
            host: host.to_owned(),
            port,
            username: self.username.clone(),
            password: self.password.clone(),
            source: SourceKind::Native,
            cli: None,
            tls: self.tls.clone(),
            sentinel: None,
        }
    }
}

impl ValkeySettings {
    /// A password-less local server (scratch servers reached over a Unix socket).
    pub fn local_default() -> Self {
        ValkeySettings {
            host: default_host(),
            port: default_port(),
            username: None,
            password: None,
            source: SourceKind::Native,
            cli: None,
            tls: None,
            sentinel: None,
        }
    }

    /// The source this configuration resolves to (`auto` is the built-in client).
    pub fn effective_source(&self) -> SourceKind {
        match self.source {
            SourceKind::Cli => SourceKind::Cli,
            SourceKind::Auto | SourceKind::Native => SourceKind::Native,
        }
    }
}

/// `valkey.source`: who speaks to the server.
///
/// `native` is the agent's own replication client, which announces the server's version
/// so Valkey 9 sends its native RDB format; `cli` runs `valkey-cli --rdb -` (which cannot
/// back up Valkey 9 datasets with hash-field TTLs); `auto`, the default, is `native`
/// today and follows the agent's recommendation in later versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The agent's recommendation (today: `native`).
    #[default]
    Auto,
    /// The built-in replication client.
    Native,
    /// `valkey-cli --rdb -`.
    Cli,
}

impl SourceKind {
    /// The name used in configuration, manifests and results.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Native => "native",
            SourceKind::Cli => "cli",
        }
    }
}

/// TLS options: handed to the cli, or used by the agent's own client (rustls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValkeyTls {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A directory of CA certificates (OpenSSL layout); used with or instead of `ca-file`.
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure: bool,
}

/// Streaming and upload tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackupTuning {
    #[serde(default = "default_part_size")]
    pub part_size_bytes: u64,
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    /// A backup whose cli sends nothing for this long is failed (a hung server must not
    /// hold the unit's lock forever). Generous by default: with disk-based replication
    /// the server writes the whole snapshot to disk before the first byte.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_seconds: u64,
    /// How the stored object is compressed (`none`, `lz4`, `zstd`).
    #[serde(default)]
    pub compression: Codec,
    /// The Zstandard level (1–19, default 3); only with `compression: zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
}

impl BackupTuning {
    /// The level handed to the compressor (Zstandard's; ignored by the others).
    pub fn level(&self) -> i32 {
        self.compression_level.unwrap_or(ZSTD_DEFAULT_LEVEL)
    }
}

impl Default for BackupTuning {
    fn default() -> Self {
        BackupTuning {
            part_size_bytes: DEFAULT_PART_SIZE,
            upload_concurrency: DEFAULT_CONCURRENCY,
            stall_timeout_seconds: default_stall_timeout(),
            compression: Codec::None,
            compression_level: None,
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    6379
}
fn default_sentinel_port() -> u16 {
    26379
}
fn default_part_size() -> u64 {
    DEFAULT_PART_SIZE
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}
fn default_stall_timeout() -> u64 {
    1800
}

/// `s3.checksum`: the integrity header on every write of a body.
///
/// A store must be able to refuse a body damaged in transit, and Object Lock buckets
/// require an integrity header. `Content-MD5` is understood everywhere but MD5 is the
/// most expensive step of an upload; `x-amz-checksum-crc32c` / `-crc64nvme` cost a
/// fraction of it (hardware CRC) but some S3-compatible stores accept the header
/// without checking it. So `auto` (the default) asks the store once, at `configure`,
/// whether it refuses a part with a wrong CRC32C, and stores the answer: `crc32c`
/// when it does, else `md5`, or `md5-etag` on a store that checks neither header but
/// answers each write with the body's MD5 as its ETag (moto): the agent then compares
/// the two itself. An explicit CRC is probed the same way and refused when the store
/// would not check it; `md5` is probed for the ETag only. A configuration stored
/// without a probe (`auto` in a file written before this field existed) means `md5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumChoice {
    #[default]
    Auto,
    Crc32c,
    Crc64nvme,
    Md5,
    #[serde(rename = "md5-etag")]
    Md5Etag,
}

impl ChecksumChoice {
    /// The name used in params and results.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumChoice::Auto => "auto",
            ChecksumChoice::Crc32c => "crc32c",
            ChecksumChoice::Crc64nvme => "crc64nvme",
            ChecksumChoice::Md5 => "md5",
            ChecksumChoice::Md5Etag => "md5-etag",
        }
    }
}

/// Whether S3 paths are `endpoint/bucket/key` or `bucket.endpoint/key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriStyle {
    Path,
    Host,
}

impl S3Settings {
    /// The addressing style (path by default: most non-AWS stores need it).
    pub fn uri_style(&self) -> UriStyle {
        match self.s3_uri_style.as_deref() {
            Some("host") | Some("virtual") => UriStyle::Host,
            _ => UriStyle::Path,
        }
    }

    /// The region, `us-east-1` when unset.
    pub fn region(&self) -> &str {
        self.region
            .as_deref()
            .filter(|r| !r.is_empty())
            .unwrap_or("us-east-1")
    }

    /// The bucket path with surrounding slashes removed (may be empty).
    pub fn clean_path(&self) -> &str {
        self.path.trim_matches('/')
    }

    /// The CA certificates as PEM text, whichever encoding they arrived in.
    pub fn ca_pems(&self) -> Result<Vec<String>, ConfigError> {
        let items = match &self.tls_ca_chain {
            None => return Ok(Vec::new()),
            Some(CaChain::One(s)) => vec![s.clone()],
            Some(CaChain::Many(v)) => v.clone(),
        };
        items
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| decode_pem(s))
            .collect()
    }
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

fn decode_pem(item: &str) -> Result<String, ConfigError> {
    let pem = pem_text(item)?;
    check_certificates(&pem)?;
    Ok(pem)
}

/// Parses every certificate the way the TLS stack will, so that a malformed one is a
/// `bad-request` at configure time rather than a failure deep inside the HTTP client.
fn check_certificates(pem: &str) -> Result<(), ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("s3.tls-ca-chain", "a certificate is not valid PEM"))?;
    if ders.is_empty() {
        return Err(invalid("s3.tls-ca-chain", "an item holds no certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in ders {
        roots
            .add(der)
            .map_err(|_| invalid("s3.tls-ca-chain", "a certificate cannot be parsed"))?;
    }
    Ok(())
}

fn pem_text(item: &str) -> Result<String, ConfigError> {
    let trimmed = item.trim();
    if trimmed.contains(PEM_BEGIN) {
        return Ok(trimmed.to_owned());
    }
    let compact: String = trimmed.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| {
            invalid(
                "s3.tls-ca-chain",
                "an item is neither PEM nor base64 of PEM",
            )
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid("s3.tls-ca-chain", "base64 item does not decode to PEM text"))?;
    if !text.contains(PEM_BEGIN) {
        return Err(invalid(
            "s3.tls-ca-chain",
            "base64 item does not hold a PEM certificate",
        ));
    }
    Ok(text.trim().to_owned())
}

impl AgentConfig {
    /// Parses and validates `configure` params.
    pub fn from_params(params: serde_json::Value) -> Result<Self, ConfigError> {
        // serde_path_to_error names the field ("valkey.port: invalid type…") so the caller
        // knows what to fix; secrets never reach the message (see `Secret`).
        let config: AgentConfig = serde_path_to_error::deserialize(params).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Shape {
                path,
                reason: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        config.check_paths()?;
        Ok(config)
    }

    /// The files the configuration names exist (the cli is executable, TLS files are
    /// there). Checked when a configuration arrives, not when a stored one is loaded:
    /// a cli that vanished (a snap refresh) must not stop the agent from starting — the
    /// operations that need it fail with a clear error, and a new `configure` can fix it.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        if let Some(cli) = &self.valkey.cli {
            check_executable(cli)?;
        }
        if let Some(tls) = &self.valkey.tls {
            check_tls_paths(VALKEY_TLS_FIELDS, tls)?;
        }
        if let Some(tls) = self.valkey.sentinel.as_ref().and_then(|s| s.tls.as_ref()) {
            check_tls_paths(SENTINEL_TLS_FIELDS, tls)?;
        }
        // Whether the built-in client can use these files is checked by `configure`
        // itself (`ops::configure`), where the TLS setup lives above this module.
        Ok(())
    }

    /// Checks every field that needs no file system; see the README's configuration
    /// reference.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cluster(&self.cluster)?;
        validate_unit(&self.unit)?;
        if let Some(s3) = &self.s3 {
            validate_s3(s3)?;
        }
        validate_valkey(&self.valkey)?;
        let t = &self.backup;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&t.part_size_bytes) {
            return Err(invalid(
                "backup.part-size-bytes",
                format!("must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}"),
            ));
        }
        if !(1..=86_400).contains(&t.stall_timeout_seconds) {
            return Err(invalid(
                "backup.stall-timeout-seconds",
                "must be between 1 and 86400",
            ));
        }
        if !(1..=16).contains(&t.upload_concurrency) {
            return Err(invalid(
                "backup.upload-concurrency",
                "must be between 1 and 16",
            ));
        }
        if let Some(level) = t.compression_level {
            if t.compression != Codec::Zstd {
                return Err(invalid(
                    "backup.compression-level",
                    "applies to compression zstd only",
                ));
            }
            if !ZSTD_LEVELS.contains(&level) {
                return Err(invalid(
                    "backup.compression-level",
                    format!(
                        "must be between {} and {}",
                        ZSTD_LEVELS.start(),
                        ZSTD_LEVELS.end()
                    ),
                ));
            }
        }
        if let Some(e) = &self.encryption {
            e.validate()?;
        }
        validate_automation(self)
    }

    /// The identities that open encrypted backups (none without `encryption`).
    pub fn identities(&self) -> Result<Vec<age::x25519::Identity>, ConfigError> {
        match &self.encryption {
            Some(e) => e.parsed_identities(),
            None => Ok(Vec::new()),
        }
    }

    /// The keys new backups are encrypted to (none: stored in clear).
    pub fn recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        match &self.encryption {
            Some(e) => e.effective_recipients(),
            None => Ok(Vec::new()),
        }
    }

    /// The cluster an op reads: `other` (validated) when given, else this unit's own.
    /// Reading another cluster's prefix is how a restore into a new cluster finds its
    /// source; ops only ever write under their own.
    pub fn cluster_or(&self, other: Option<&str>) -> Result<String, ConfigError> {
        match other {
            Some(c) => {
                validate_cluster(c)?;
                Ok(c.to_owned())
            }
            None => Ok(self.cluster.clone()),
        }
    }

    /// The stored configuration under `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = state_dir.join(CONFIG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let config: AgentConfig =
            serde_json::from_slice(&bytes).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        config.validate()?;
        Ok(Some(config))
    }

    /// Replaces the stored configuration atomically, readable by the owner only
    /// ([`crate::statefile::replace_blocking`]).
    pub fn store(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let mut body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        body.push(b'\n');
        crate::statefile::replace_blocking(
            &state_dir.join(CONFIG_FILE),
            &body,
            crate::statefile::Flush::Durable,
        )?;
        Ok(())
    }
}

/// The `schedule`, `retention` and `metrics` sections.
fn validate_automation(c: &AgentConfig) -> Result<(), ConfigError> {
    if let Some(s) = &c.schedule {
        Schedule::parse(&s.cron).map_err(|e| invalid("schedule.cron", e.to_string()))?;
        if let Some(v) = &s.verify_cron {
            Schedule::parse(v).map_err(|e| invalid("schedule.verify-cron", e.to_string()))?;
        }
        if s.primary_delay_seconds > 86_400 {
            return Err(invalid(
                "schedule.primary-delay-seconds",
                "must be at most 86400",
            ));
        }
    }
    if let Some(r) = &c.retention {
        crate::retention::Policy::new(r.keep_last, r.keep_days)
            .map_err(|e| invalid("retention", e))?;
    }
    if let Some(m) = &c.metrics {
        m.addr().map_err(|e| invalid("metrics.listen", e))?;
    }
    Ok(())
}

fn validate_cluster(c: &str) -> Result<(), ConfigError> {
    let ok = !c.is_empty()
        && c.len() <= 128
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok {
        return Err(invalid(
            "cluster",
            "must be 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        ));
    }
    Ok(())
}

fn validate_unit(u: &str) -> Result<(), ConfigError> {
    let ok = match u.split_once('/') {
        Some((app, n)) => {
            !app.is_empty()
                && app.len() <= 50
                && app
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !app.starts_with('-')
                && !app.ends_with('-')
                && !n.is_empty()
                && n.len() <= 10
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    };
    if !ok {
        return Err(invalid("unit", "must be a Juju unit name such as valkey/0"));
    }
    Ok(())
}

fn validate_s3(s3: &S3Settings) -> Result<(), ConfigError> {
    if let Some(endpoint) = s3.endpoint.as_deref().filter(|e| !e.is_empty()) {
        let url =
            url::Url::parse(endpoint).map_err(|_| invalid("s3.endpoint", "not a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("s3.endpoint", "scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("s3.endpoint", "must not carry credentials"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("s3.endpoint", "has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("s3.endpoint", "must not have a query or fragment"));
        }
    }
    validate_bucket(&s3.bucket)?;
    let path = s3.clean_path();
    if path.len() > 512
        || path.split('/').any(|seg| {
            (!path.is_empty() && seg.is_empty())
                || seg == "."
                || seg == ".."
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
    {
        return Err(invalid(
            "s3.path",
            "segments may hold only A-Z a-z 0-9 . _ - (no empty, '.' or '..' segments)",
        ));
    }
    if let Some(r) = s3.region.as_deref().filter(|r| !r.is_empty()) {
        if r.len() > 64
            || !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("s3.region", "must be letters, digits, '-' or '_'"));
        }
    }
    if s3.access_key.is_empty() {
        return Err(invalid("s3.access-key", "must not be empty"));
    }
    if s3.secret_key.is_empty() {
        return Err(invalid("s3.secret-key", "must not be empty"));
    }
    match s3.s3_uri_style.as_deref() {
        None | Some("") | Some("path") | Some("host") | Some("virtual") => {}
        Some(_) => return Err(invalid("s3.s3-uri-style", "must be path or host")),
    }
    if let Some(sc) = s3.storage_class.as_deref().filter(|s| !s.is_empty()) {
        if sc.len() > 64
            || !sc
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "s3.storage-class",
                "must be an S3 storage class such as STANDARD",
            ));
        }
    }
    match &s3.s3_api_version {
        None | Some(serde_json::Value::Null) => {}
        Some(v)
            if matches!(v.as_str(), Some("4") | Some("v4") | Some("")) || v.as_u64() == Some(4) => {
        }
        Some(_) => {
            return Err(invalid(
                "s3.s3-api-version",
                "only signature version 4 is supported",
            ))
        }
    }
    if let Some(v) = &s3.delete_older_than_days {
        if !v.is_null() && keep_days_hint(v).is_none() {
            return Err(invalid(
                "s3.delete-older-than-days",
                "must be a whole number of days",
            ));
        }
    }
    s3.ca_pems()?;
    Ok(())
}

/// `delete-older-than-days` as a number of days (it arrives as a number or a string).
pub fn keep_days_hint(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn validate_bucket(b: &str) -> Result<(), ConfigError> {
    let bytes = b.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && bytes
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err();
    if !ok {
        return Err(invalid(
            "s3.bucket",
            "must be a valid S3 bucket name (3-63 characters of a-z 0-9 . -)",
        ));
    }
    Ok(())
}

/// The field names of a TLS section: `ca-file`, `cert-file`, `key-file`, `ca-dir`.
type TlsFields = [&'static str; 4];
const VALKEY_TLS_FIELDS: TlsFields = [
    "valkey.tls.ca-file",
    "valkey.tls.cert-file",
    "valkey.tls.key-file",
    "valkey.tls.ca-dir",
];
const SENTINEL_TLS_FIELDS: TlsFields = [
    "valkey.sentinel.tls.ca-file",
    "valkey.sentinel.tls.cert-file",
    "valkey.sentinel.tls.key-file",
    "valkey.sentinel.tls.ca-dir",
];

/// The files and directory a TLS section names exist (`names`: its fields, for errors).
fn check_tls_paths(names: TlsFields, tls: &ValkeyTls) -> Result<(), ConfigError> {
    for (field, path) in [
        (names[0], &tls.ca_file),
        (names[1], &tls.cert_file),
        (names[2], &tls.key_file),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                return Err(invalid(field, "file does not exist"));
            }
        }
    }
    if let Some(d) = &tls.ca_dir {
        if !d.is_dir() {
            return Err(invalid(names[3], "directory does not exist"));
        }
    }
    Ok(())
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

fn valid_username(u: &str) -> bool {
    !u.is_empty() && u.len() <= 256 && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn validate_valkey(v: &ValkeySettings) -> Result<(), ConfigError> {
    if !valid_host(&v.host) {
        return Err(invalid("valkey.host", "must be a host name or IP address"));
    }
    if v.port == 0 {
        return Err(invalid("valkey.port", "must be between 1 and 65535"));
    }
    if v.username.as_deref().is_some_and(|u| !valid_username(u)) {
        return Err(invalid(
            "valkey.username",
            "must be non-empty without spaces",
        ));
    }
    if let Some(s) = &v.sentinel {
        if !valid_host(&s.host) {
            return Err(invalid(
                "valkey.sentinel.host",
                "must be a host name or IP address",
            ));
        }
        if s.port == 0 {
            return Err(invalid(
                "valkey.sentinel.port",
                "must be between 1 and 65535",
            ));
        }
        if s.username.as_deref().is_some_and(|u| !valid_username(u)) {
            return Err(invalid(
                "valkey.sentinel.username",
                "must be non-empty without spaces",
            ));
        }
    }
    match &v.cli {
        Some(cli) if !cli.is_absolute() => {
            return Err(invalid("valkey.cli", "must be an absolute path"))
        }
        None if v.source == SourceKind::Cli => {
            return Err(invalid(
                "valkey.cli",
                "is required when valkey.source is cli",
            ))
        }
        _ => {}
    }
    Ok(())
}

fn check_executable(cli: &Path) -> Result<(), ConfigError> {
    if !cli.is_absolute() {
        return Err(invalid("valkey.cli", "must be an absolute path"));
    }
    let meta = std::fs::metadata(cli).map_err(|_| invalid("valkey.cli", "does not exist"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid("valkey.cli", "is not an executable file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "cluster": "model.valkey", "unit": "valkey/0",
            "s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "backups", "path": "/a/b/",
                   "access-key": "AK", "secret-key": "SK"},
            "valkey": {"cli": "/bin/sh"}
        })
    }

    fn with(mut v: serde_json::Value, ptr: &str, value: serde_json::Value) -> serde_json::Value {
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut v
        } else {
            v.pointer_mut(parent).unwrap()
        };
        target[key] = value;
        v
    }

    #[test]
    fn minimal_config_validates_with_defaults() {
        let c = AgentConfig::from_params(base()).unwrap();
        assert_eq!(c.valkey.port, 6379);
        let s3 = c.s3.as_ref().unwrap();
        assert_eq!(s3.clean_path(), "a/b");
        assert_eq!(s3.region(), "us-east-1");
        assert_eq!(s3.uri_style(), UriStyle::Path);
        assert_eq!(s3.checksum, ChecksumChoice::Auto);
        assert_eq!(c.backup, BackupTuning::default());
    }

    #[test]
    fn bad_values_name_their_field_and_never_the_secret() {
        let not_executable = tempfile::NamedTempFile::new().unwrap();
        let not_executable = not_executable.path().to_str().unwrap().to_owned();
        let cases = [
            ("/cluster", json!("a/b"), "cluster"),
            ("/unit", json!("valkey"), "unit"),
            ("/s3/endpoint", json!("ftp://x"), "s3.endpoint"),
            ("/s3/endpoint", json!("http://user:pw@host"), "s3.endpoint"),
            ("/s3/bucket", json!("Bad_Bucket"), "s3.bucket"),
            ("/s3/path", json!("a/../b"), "s3.path"),
            ("/s3/s3-uri-style", json!("weird"), "s3.s3-uri-style"),
            ("/s3/checksum", json!("sha1"), "s3.checksum"),
            ("/s3/tls-ca-chain", json!(["not a cert"]), "s3.tls-ca-chain"),
            (
                "/valkey/cli",
                json!("/nonexistent/valkey-cli"),
                "valkey.cli",
            ),
            ("/valkey/cli", json!("relative/cli"), "valkey.cli"),
            ("/valkey/cli", json!(not_executable), "valkey.cli"),
            ("/valkey/port", json!(0), "valkey.port"),
        ];
        for (ptr, value, field) in cases {
            let err = AgentConfig::from_params(with(base(), ptr, value.clone())).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(field), "{ptr}={value}: {msg}");
            assert!(!msg.contains("SK"), "{msg}");
        }
    }

    #[test]
    fn source_defaults_to_auto_and_cli_is_needed_only_for_the_cli_source() {
        let mut v = base();
        v["valkey"] = json!({});
        let c = AgentConfig::from_params(v.clone()).unwrap();
        assert_eq!(c.valkey.source, SourceKind::Auto);
        assert_eq!(c.valkey.effective_source(), SourceKind::Native);
        assert_eq!(c.valkey.cli, None);
        v["valkey"]["source"] = json!("cli");
        let err = AgentConfig::from_params(v.clone()).unwrap_err().to_string();
        assert!(err.starts_with("valkey.cli:"), "{err}");
        v["valkey"]["cli"] = json!("/bin/sh");
        let c = AgentConfig::from_params(v.clone()).unwrap();
        assert_eq!(c.valkey.effective_source(), SourceKind::Cli);
        v["valkey"]["source"] = json!("valkey-cli");
        let err = AgentConfig::from_params(v).unwrap_err().to_string();
        assert!(err.starts_with("valkey.source:"), "{err}");
    }

    #[test]
    fn tls_material_the_built_in_client_cannot_use_is_refused_at_configure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "no certificate here").unwrap();
        let mut v = base();
        v["valkey"]["tls"] = json!({"enabled": true, "ca-dir": dir.path()});
        // Checked by `configure` (the TLS setup sits above this module).
        let config = AgentConfig::from_params(v.clone()).unwrap();
        let err = crate::ops::configure::check_native_tls(&config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("valkey.tls.ca-dir"), "{err}");
        v["valkey"]["tls"]["ca-dir"] = json!("/nonexistent/ca");
        let err = AgentConfig::from_params(v).unwrap_err().to_string();
        assert!(err.starts_with("valkey.tls.ca-dir:"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = base();
        v["s3"]["bukket"] = json!("x");
        assert!(AgentConfig::from_params(v).is_err());
    }

    #[test]
    fn type_errors_name_the_field_and_never_a_secret() {
        let mut v = base();
        v["valkey"]["password"] = json!(1234567);
        let msg = AgentConfig::from_params(v).unwrap_err().to_string();
        assert!(msg.starts_with("valkey.password:"), "{msg}");
        assert!(!msg.contains("1234567"), "{msg}");
        let mut v = base();
        v["valkey"]["port"] = json!("six");
        let msg = AgentConfig::from_params(v).unwrap_err().to_string();
        assert!(msg.starts_with("valkey.port:"), "{msg}");
    }

    /// A real (self-signed, test-only) CA certificate.
    const TEST_CA: &str = include_str!("testdata/ca.pem");

    #[test]
    fn ca_chain_accepts_pem_and_base64_of_pem() {
        let pem = TEST_CA.trim();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        for chain in [json!([pem]), json!([b64]), json!(pem)] {
            let c = AgentConfig::from_params(with(base(), "/s3/tls-ca-chain", chain)).unwrap();
            assert_eq!(c.s3.unwrap().ca_pems().unwrap(), vec![pem.to_string()]);
        }
    }

    #[test]
    fn malformed_certificates_are_refused_at_configure() {
        let garbled = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let not_der = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
            base64::engine::general_purpose::STANDARD.encode(b"not a certificate at all")
        );
        for bad in [garbled.to_string(), not_der] {
            let err = AgentConfig::from_params(with(base(), "/s3/tls-ca-chain", json!([bad])))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("s3.tls-ca-chain:"), "{err}");
        }
    }

    #[test]
    fn store_is_atomic_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentConfig::from_params(base()).unwrap();
        c.store(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(AgentConfig::load(dir.path()).unwrap(), Some(c));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn sentinel_is_optional_defaults_its_port_and_validates_its_fields() {
        let c = AgentConfig::from_params(base()).unwrap();
        assert_eq!(c.valkey.sentinel, None);
        let mut v = base();
        v["valkey"]["sentinel"] =
            json!({"host": "10.0.0.5", "username": "op", "password": "sentinelpw"});
        let c = AgentConfig::from_params(v.clone()).unwrap();
        let s = c.valkey.sentinel.clone().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.5", 26379));
        assert!(!format!("{c:?}").contains("sentinelpw"));
        for (ptr, value, field) in [
            (
                "/valkey/sentinel/host",
                json!("bad host"),
                "valkey.sentinel.host",
            ),
            ("/valkey/sentinel/port", json!(0), "valkey.sentinel.port"),
            (
                "/valkey/sentinel/username",
                json!(""),
                "valkey.sentinel.username",
            ),
        ] {
            let msg = AgentConfig::from_params(with(v.clone(), ptr, value))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(field), "{msg}");
            assert!(!msg.contains("sentinelpw"), "{msg}");
        }
        v["valkey"]["sentinel"]["tls"] = json!({"enabled": true, "ca-dir": "/etc/ssl/certs"});
        let c = AgentConfig::from_params(v.clone()).unwrap();
        let s = c.valkey.sentinel.unwrap();
        let peer = s.client_settings("10.0.0.6", 26380);
        assert!(
            peer.tls.as_ref().is_some_and(|t| t.enabled),
            "peers get the TLS too"
        );
        assert_eq!((peer.host.as_str(), peer.port), ("10.0.0.6", 26380));
        v["valkey"]["sentinel"]["tls-port"] = json!(26380);
        assert!(
            AgentConfig::from_params(v).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut v = base();
        v["valkey"]["password"] = json!("valkeypw");
        let c = AgentConfig::from_params(v).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SK") && !dbg.contains("valkeypw"), "{dbg}");
    }
}
