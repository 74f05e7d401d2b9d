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
use crate::config::{AgentConfig, ConfigError, SourceKind};
use crate::error::OpError;
use crate::protocol::ConfigureResult;

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
    let mut bucket_created = false;
    if let Some(s3) = &config.s3 {
        // HeadBucket, and CreateBucket when it is missing.
        bucket_created = state.open_store(s3)?.ensure_bucket().await?;
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
    };
    state.set_config(config);
    state.set_valkey_check(result.valkey_check.clone());
    Ok(result)
}

/// The built-in client reads the TLS files with rustls: a certificate or key it cannot
/// use is a bad request now, not a failed backup at 3 a.m.
pub fn check_native_tls(config: &AgentConfig) -> Result<(), ConfigError> {
    let valkey = &config.valkey;
    match &valkey.tls {
        Some(tls) if tls.enabled && valkey.effective_source() == SourceKind::Native => {
            crate::valkey_tls::client(tls, &valkey.host).map_err(|e| ConfigError::Shape {
                path: "valkey.tls".into(),
                reason: e.to_string(),
            })?;
            Ok(())
        }
        _ => Ok(()),
    }
}
