//! The operations, one module each, and the state they share.
//!
//! Every op has the same shape: `run(state, params, events) -> Result<data, OpError>`.
//! Params are parsed by the op itself into a struct that refuses unknown keys, so the
//! dispatcher stays ignorant of any op's details.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, S3Settings};
use crate::error::OpError;
use crate::lock::{LockHolder, UnitLock};
use crate::progress::EventSink;
use crate::protocol::Op;

pub mod configure;
pub mod create_backup;
pub mod list_backups;
pub mod prune_backups;
pub mod restore_backup;
pub mod status;
pub mod verify_backup;

/// What the running agent knows, shared by every connection.
pub struct AgentState {
    pub state_dir: PathBuf,
    config: RwLock<Option<AgentConfig>>,
    running: Mutex<Option<LockHolder>>,
    last_backup: Mutex<Option<Value>>,
    /// Serialises `configure` (validate, store, swap).
    pub configuring: tokio::sync::Mutex<()>,
    /// The restore between its `prepare` and `finish`/`abort` steps (it holds the lock).
    pub restore: Mutex<Option<restore_backup::RestoreSession>>,
    /// Cancelled on SIGTERM: every long operation watches it.
    pub shutdown: CancellationToken,
    /// What this unit's backups did, for `/metrics` (see [`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    /// Why the metrics endpoint is not serving, when it should.
    metrics_error: Mutex<Option<String>>,
    /// What the scheduler tasks last did, for `status` and `list-backups`.
    pub schedule: Mutex<crate::scheduler::Report>,
    /// Bumped on every `configure`, so the scheduler and the endpoint follow it.
    config_changed: tokio::sync::watch::Sender<u64>,
}

impl AgentState {
    pub fn new(
        state_dir: PathBuf,
        config: Option<AgentConfig>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let state_dir_for_metrics = state_dir.clone();
        Arc::new(AgentState {
            state_dir,
            config: RwLock::new(config),
            running: Mutex::new(None),
            last_backup: Mutex::new(None),
            restore: Mutex::new(None),
            configuring: tokio::sync::Mutex::new(()),
            shutdown,
            metrics: crate::metrics::Metrics::load(&state_dir_for_metrics),
            metrics_error: Mutex::new(None),
            schedule: Mutex::new(crate::scheduler::Report::default()),
            config_changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The current configuration, or `not-configured`.
    pub fn config(&self) -> Result<AgentConfig, OpError> {
        self.config
            .read()
            .expect("config lock")
            .clone()
            .ok_or_else(|| {
                OpError::NotConfigured(
                    "the agent has not been configured yet (send configure, or relate the charm)"
                        .into(),
                )
            })
    }

    /// The configuration together with its S3 settings, or `not-configured` saying how to
    /// provide them (the one message every storage op gives).
    pub fn storage(&self) -> Result<(AgentConfig, S3Settings), OpError> {
        let config = self.config()?;
        let s3 = config.s3.clone().ok_or_else(|| {
            OpError::NotConfigured(
                "no S3 storage is configured: relate the charm to an s3-integrator (or send configure with s3 settings)"
                    .into(),
            )
        })?;
        Ok((config, s3))
    }

    pub fn config_if_any(&self) -> Option<AgentConfig> {
        self.config.read().expect("config lock").clone()
    }

    pub fn set_config(&self, config: AgentConfig) {
        *self.config.write().expect("config lock") = Some(config);
        self.config_changed.send_modify(|n| *n += 1);
    }

    /// Tells about every later `configure` (the scheduler and the metrics endpoint
    /// re-read the configuration when it changes).
    pub fn subscribe_config(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_changed.subscribe()
    }

    pub fn metrics_error(&self) -> Option<String> {
        self.metrics_error
            .lock()
            .expect("metrics error lock")
            .clone()
    }

    pub fn set_metrics_error(&self, error: Option<String>) {
        *self.metrics_error.lock().expect("metrics error lock") = error;
    }

    pub fn schedule_report(&self) -> crate::scheduler::Report {
        self.schedule.lock().expect("schedule lock").clone()
    }

    /// Takes the unit lock for `op` on `subject` (a backup id, or what is being done)
    /// off the async workers; `busy` names the holder when another operation has it.
    /// While the guard lives, `status` reports the holder.
    pub async fn lock_unit(
        self: &Arc<Self>,
        op: &str,
        subject: String,
    ) -> Result<UnitGuard, OpError> {
        let holder = LockHolder {
            op: op.to_owned(),
            backup_id: subject,
            started_at: rfc3339(time::OffsetDateTime::now_utc()),
            pid: std::process::id(),
        };
        let dir = self.state_dir.clone();
        let for_lock = holder.clone();
        let lock = tokio::task::spawn_blocking(move || UnitLock::try_acquire(&dir, &for_lock))
            .await
            .map_err(|e| OpError::Internal(e.to_string()))??;
        self.set_running(Some(holder));
        Ok(UnitGuard {
            _lock: lock,
            state: Arc::clone(self),
        })
    }

    pub fn running(&self) -> Option<LockHolder> {
        self.running.lock().expect("running lock").clone()
    }

    pub fn set_running(&self, holder: Option<LockHolder>) {
        *self.running.lock().expect("running lock") = holder;
    }

    pub fn last_backup(&self) -> Option<Value> {
        self.last_backup.lock().expect("last lock").clone()
    }

    pub fn set_last_backup(&self, summary: Value) {
        *self.last_backup.lock().expect("last lock") = Some(summary);
    }
}

/// The unit lock held by one operation. Dropping it — on success, failure or panic —
/// clears what `status` reports as running and releases the lock.
pub struct UnitGuard {
    _lock: UnitLock,
    state: Arc<AgentState>,
}

impl Drop for UnitGuard {
    fn drop(&mut self) {
        self.state.set_running(None);
    }
}

/// Runs `op` with `params`, sending progress to `events`.
pub async fn dispatch(
    state: &Arc<AgentState>,
    op: Op,
    params: Value,
    events: EventSink,
) -> Result<Value, OpError> {
    match op {
        Op::Status => status::run(state, params).await,
        Op::Configure => configure::run(state, params).await,
        Op::CreateBackup => create_backup::run(state, params, events).await,
        Op::ListBackups => list_backups::run(state, params).await,
        Op::RestoreBackup => restore_backup::run(state, params, events).await,
        Op::VerifyBackup => verify_backup::run(state, params, events).await,
        Op::PruneBackups => prune_backups::run(state, params).await,
    }
}

/// Parses an op's params into `T`, refusing unknown keys (`bad-request`).
pub fn params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, OpError> {
    crate::protocol::parse_params(params).map_err(OpError::BadRequest)
}

/// Params of ops that take none.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// RFC 3339 UTC time, second precision, as used in every record.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
