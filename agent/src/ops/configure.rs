//! `configure`: validate, check the bucket, store — all or nothing — then check Valkey.
//!
//! The previous configuration stays in force unless the new one is valid *and* its
//! bucket is usable, so a typo in a relation never leaves the unit without backups of
//! the old, working kind silently replaced by a broken one.
//!
//! The Valkey check ([`crate::valkey_check`]) reports instead of refusing: a server that
//! is restarting, or a password the principal is still rotating, must not cost the unit
//! its S3 settings, and the charm needs the stored configuration to show *why* backups
//! would fail (`valkey-check` in the result and in `status`).

use std::sync::Arc;

use serde_json::Value;

use super::state::AgentState;
use crate::backup_id::BackupId;
use crate::config::{AgentConfig, ChecksumChoice, ConfigError, SourceKind};
use crate::error::OpError;
use crate::layout::Layout;
use crate::protocol::ConfigureResult;
use crate::storage::{IntegrityHeader, ObjectStore};

/// Validates `raw`, checks (or creates) the bucket, stores the configuration atomically
/// and only then puts it in force.
pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<ConfigureResult, OpError> {
    // One configure at a time: the stored file and the live configuration must agree.
    let _serial = state.configuring.lock().await;
    // Validation stats the cli and TLS files: small blocking I/O, kept off the runtime.
    let config = tokio::task::spawn_blocking(move || {
        let config = AgentConfig::from_params(raw)?;
        check_native_tls(&config)?;
        Ok::<_, ConfigError>(config)
    })
    .await
    .map_err(|e| OpError::Internal(e.to_string()))??;
    let mut config = config;
    let mut bucket_created = false;
    if let Some(s3) = config.s3.as_mut() {
        // HeadBucket, and CreateBucket when it is missing.
        let store = state.open_store(s3)?;
        bucket_created = store.ensure_bucket().await?;
        let layout = Layout::new(s3.clean_path(), &config.cluster);
        s3.checksum = resolve_checksum(&*store, &layout, &config.unit, s3.checksum).await?;
    }
    let dir = state.state_dir.clone();
    let to_store = config.clone();
    tokio::task::spawn_blocking(move || to_store.store(&dir))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))??;
    let result = ConfigureResult {
        configured: true,
        cluster: config.cluster.clone(),
        s3_configured: config.s3.is_some(),
        bucket: config.s3.as_ref().map(|s| s.bucket.clone()),
        bucket_created,
        valkey_source: config.valkey.source.as_str().to_owned(),
        valkey_check: crate::valkey_check::check(&config.valkey).await,
        s3_checksum: config.s3.as_ref().map(|s| s.checksum.as_str().to_owned()),
    };
    state.set_config(config);
    state.set_valkey_check(result.valkey_check.clone());
    Ok(result)
}

/// The object name of the probe's upload, inside a fresh backup id's directory (never
/// a data object's name, so nothing mistakes it for a backup's upload).
pub const PROBE_OBJECT: &str = "checksum-probe";

/// Turns `s3.checksum` into the header the store checks, asking it once.
///
/// The probe is a multipart upload that is always aborted, under a fresh backup id's
/// directory ([`PROBE_OBJECT`]): nothing lasting is written, and should the abort itself
/// fail, prune's sweep of abandoned uploads takes the upload. `auto`
/// takes CRC32C when the store refuses a wrong one; otherwise MD5, compared with the
/// ETag when the store does not check `Content-MD5` itself but its ETags are MD5s. An
/// explicit CRC the store does not check is refused (a damaged part would be stored).
pub async fn resolve_checksum(
    store: &dyn ObjectStore,
    layout: &Layout,
    unit: &str,
    choice: ChecksumChoice,
) -> Result<ChecksumChoice, OpError> {
    let id = BackupId::generate(time::OffsetDateTime::now_utc(), unit)
        .map_err(|e| OpError::Internal(e.to_string()))?;
    let key = format!("{}{PROBE_OBJECT}", layout.backup_prefix(&id));
    let crc = match choice {
        ChecksumChoice::Auto | ChecksumChoice::Crc32c => Some(IntegrityHeader::Crc32c),
        ChecksumChoice::Crc64nvme => Some(IntegrityHeader::Crc64Nvme),
        ChecksumChoice::Md5 | ChecksumChoice::Md5Etag => None,
    };
    if let Some(header) = crc {
        if store.probe_integrity(&key, header).await?.checked {
            return Ok(choice_of(header));
        }
        if choice != ChecksumChoice::Auto {
            return Err(ConfigError::Shape {
                path: "s3.checksum".into(),
                reason: format!(
                    "the store accepted a part with a wrong x-amz-checksum-{}, so it would not refuse a damaged one; use auto or md5",
                    header.as_str()
                ),
            }
            .into());
        }
    }
    let md5 = store.probe_integrity(&key, IntegrityHeader::Md5).await?;
    if md5.checked || !md5.etag_is_md5 {
        if !md5.checked {
            tracing::warn!("the S3 store checks neither Content-MD5 nor x-amz-checksum-crc32c and its ETags are not MD5s: a part damaged in transit cannot be detected");
        }
        return Ok(ChecksumChoice::Md5);
    }
    Ok(ChecksumChoice::Md5Etag)
}

fn choice_of(header: IntegrityHeader) -> ChecksumChoice {
    match header {
        IntegrityHeader::Md5 => ChecksumChoice::Md5,
        IntegrityHeader::Md5Etag => ChecksumChoice::Md5Etag,
        IntegrityHeader::Crc32c => ChecksumChoice::Crc32c,
        IntegrityHeader::Crc64Nvme => ChecksumChoice::Crc64nvme,
    }
}

/// The built-in client reads the TLS files with rustls: a certificate or key it cannot
/// use is a bad request now, not a failed backup at 3 a.m.
pub fn check_native_tls(config: &AgentConfig) -> Result<(), ConfigError> {
    let valkey = &config.valkey;
    if let Some(tls) = &valkey.tls {
        if tls.enabled && valkey.effective_source() == SourceKind::Native {
            crate::valkey_tls::client(tls, &valkey.host).map_err(|e| ConfigError::Shape {
                path: "valkey.tls".into(),
                reason: e.to_string(),
            })?;
        }
    }
    // The Sentinels are always reached with the built-in client.
    match valkey
        .sentinel
        .as_ref()
        .and_then(|s| s.tls.as_ref().map(|t| (s, t)))
    {
        Some((s, tls)) if tls.enabled => {
            crate::valkey_tls::client(tls, &s.host).map_err(|e| ConfigError::Shape {
                path: "valkey.sentinel.tls".into(),
                reason: e.to_string(),
            })?;
            Ok(())
        }
        _ => Ok(()),
    }
}
