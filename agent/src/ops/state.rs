//! What the running agent knows, shared by every operation and connection.

use std::any::Any;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, S3Settings};
use crate::error::OpError;
use crate::lock::{LockHolder, UnitLock};
use crate::protocol::{LastBackup, ValkeyCheck};
use crate::source::{configured_sources, SnapshotSource, SourceFactory};
use crate::storage::{s3::S3Store, DynStore, StoreError};
use crate::timefmt::rfc3339;

pub use crate::protocol::NoParams;

/// Opens the store an op works on, from the configured S3 settings. The agent opens
/// [`S3Store`]s; tests hand in one that returns an in-memory (or fault-wrapped) store.
pub type StoreFactory = Box<dyn Fn(&S3Settings) -> Result<DynStore, StoreError> + Send + Sync>;

/// What the running agent knows, shared by every connection.
pub struct AgentState {
    pub state_dir: PathBuf,
    stores: StoreFactory,
    sources: SourceFactory,
    config: RwLock<Option<AgentConfig>>,
    running: Mutex<Option<LockHolder>>,
    /// Backups a confirmed prune of this unit is deleting right now (see
    /// [`AgentState::claim_for_deletion`]). Taken before `running` whenever both are.
    deleting: Mutex<std::collections::HashSet<String>>,
    /// Held by a confirmed prune from start to end: two prunes of one unit never
    /// interleave their deletes.
    pub pruning: tokio::sync::Mutex<()>,
    last_backup: Mutex<Option<LastBackup>>,
    /// What the last `configure` found when it checked the server.
    valkey_check: Mutex<Option<ValkeyCheck>>,
    /// Serialises `configure` (validate, store, swap).
    pub configuring: tokio::sync::Mutex<()>,
    /// The restore between its `prepare` and `finish`/`abort` steps (it holds the lock).
    pub restore: SessionSlot,
    /// Serialises every change to Sentinel settings and the suppression record
    /// (read record → set Sentinels → delete record) between a restore's steps and the
    /// background put-back, so one never undoes the other's suppression. It holds the id
    /// of the restore that owns the current suppression, set before the record is written
    /// and cleared after that restore's own put-back: while it is set the background
    /// put-back leaves the record alone.
    pub sentinel_owner: tokio::sync::Mutex<Option<String>>,
    /// Whether the background put-back loop runs (at most one does).
    pub put_back_running: std::sync::atomic::AtomicBool,
    /// Cancelled on SIGTERM: every long operation watches it.
    pub shutdown: CancellationToken,
    /// What this unit's backups did, for `/metrics` (see [`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    /// Why the metrics endpoint is not serving, when it should.
    metrics_error: Mutex<Option<String>>,
    /// What the scheduler tasks last did, for `status` and `list-backups`.
    pub schedule: Mutex<crate::schedule::Report>,
    /// Bumped on every `configure`, so the scheduler and the endpoint follow it.
    config_changed: tokio::sync::watch::Sender<u64>,
}

impl AgentState {
    /// The agent's state: S3 stores and the cli as the snapshot source.
    pub fn new(
        state_dir: PathBuf,
        config: Option<AgentConfig>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Self::with_backends(
            state_dir,
            config,
            shutdown,
            Box::new(|s3| Ok(Arc::new(S3Store::new(s3)?) as DynStore)),
            configured_sources(),
        )
    }

    /// Like [`AgentState::new`], with `stores` opening every store and `sources` every
    /// snapshot source (tests: in-memory stores, fixed bytes).
    pub fn with_backends(
        state_dir: PathBuf,
        config: Option<AgentConfig>,
        shutdown: CancellationToken,
        stores: StoreFactory,
        sources: SourceFactory,
    ) -> Arc<Self> {
        let state_dir_for_metrics = state_dir.clone();
        Arc::new(AgentState {
            metrics: crate::metrics::Metrics::load(&state_dir_for_metrics),
            metrics_error: Mutex::new(None),
            schedule: Mutex::new(crate::schedule::Report::default()),
            config_changed: tokio::sync::watch::Sender::new(0),
            state_dir,
            stores,
            sources,
            config: RwLock::new(config),
            running: Mutex::new(None),
            deleting: Mutex::new(Default::default()),
            pruning: tokio::sync::Mutex::new(()),
            last_backup: Mutex::new(None),
            valkey_check: Mutex::new(None),
            restore: SessionSlot::default(),
            configuring: tokio::sync::Mutex::new(()),
            sentinel_owner: tokio::sync::Mutex::new(None),
            put_back_running: std::sync::atomic::AtomicBool::new(false),
            shutdown,
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

    /// Opens the store for `s3` (sends no request).
    pub fn open_store(&self, s3: &S3Settings) -> Result<DynStore, OpError> {
        Ok((self.stores)(s3)?)
    }

    /// The snapshot source for the configured server.
    pub fn open_source(&self, valkey: &crate::config::ValkeySettings) -> Box<dyn SnapshotSource> {
        (self.sources)(valkey)
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

    /// Why the metrics endpoint is not serving, when it should.
    pub fn metrics_error(&self) -> Option<String> {
        self.metrics_error
            .lock()
            .expect("metrics error lock")
            .clone()
    }

    /// Records why the metrics endpoint is not serving (`None`: it is).
    pub fn set_metrics_error(&self, error: Option<String>) {
        *self.metrics_error.lock().expect("metrics error lock") = error;
    }

    /// What the scheduler tasks last did.
    pub fn schedule_report(&self) -> crate::schedule::Report {
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
        {
            // A backup a prune is deleting cannot be restored (or be the subject of any
            // other locked operation) until the prune is done with it.
            let deleting = self.deleting.lock().expect("deleting lock");
            if deleting.contains(&holder.backup_id) {
                return Err(OpError::Lock(crate::lock::LockError::Busy(Some(
                    LockHolder {
                        op: "prune-backups".into(),
                        backup_id: format!("deleting {}", holder.backup_id),
                        started_at: holder.started_at,
                        pid: holder.pid,
                    },
                ))));
            }
            self.set_running(Some(holder));
        }
        Ok(UnitGuard {
            _lock: lock,
            state: Arc::clone(self),
        })
    }

    /// Marks `ids` as being deleted by this unit's prune, all but the one the unit lock's
    /// holder names (a restore reading it: that backup is returned as `in_use`). Until
    /// the claim is dropped, [`AgentState::lock_unit`] refuses an operation on a claimed
    /// backup with `busy`. Checking the holder and marking happen under one lock, so a
    /// restore either started first (and its backup is not deleted) or waits its turn.
    pub fn claim_for_deletion(
        self: &Arc<Self>,
        ids: Vec<String>,
    ) -> (DeletionClaim, Option<String>) {
        let mut deleting = self.deleting.lock().expect("deleting lock");
        let in_use = self.running().map(|h| h.backup_id);
        let (hit, claimed): (Vec<String>, Vec<String>) =
            ids.into_iter().partition(|id| Some(id) == in_use.as_ref());
        deleting.extend(claimed.iter().cloned());
        let hit = hit.into_iter().next();
        (
            DeletionClaim {
                ids: claimed,
                state: Arc::clone(self),
            },
            hit,
        )
    }

    pub fn running(&self) -> Option<LockHolder> {
        self.running.lock().expect("running lock").clone()
    }

    pub fn set_running(&self, holder: Option<LockHolder>) {
        *self.running.lock().expect("running lock") = holder;
    }

    pub fn last_backup(&self) -> Option<LastBackup> {
        self.last_backup.lock().expect("last lock").clone()
    }

    pub fn set_last_backup(&self, summary: LastBackup) {
        *self.last_backup.lock().expect("last lock") = Some(summary);
    }

    /// What the last `configure` found when it checked the server (for `status`).
    pub fn valkey_check(&self) -> Option<ValkeyCheck> {
        self.valkey_check.lock().expect("check lock").clone()
    }

    pub fn set_valkey_check(&self, check: ValkeyCheck) {
        *self.valkey_check.lock().expect("check lock") = Some(check);
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

/// Backups a prune is deleting; dropping the claim frees them (see
/// [`AgentState::claim_for_deletion`]).
pub struct DeletionClaim {
    ids: Vec<String>,
    state: Arc<AgentState>,
}

impl DeletionClaim {
    /// Whether `id` is among the claimed backups.
    pub fn holds(&self, id: &str) -> bool {
        self.ids.iter().any(|i| i == id)
    }
}

impl Drop for DeletionClaim {
    fn drop(&mut self) {
        let mut deleting = self.state.deleting.lock().expect("deleting lock");
        for id in &self.ids {
            deleting.remove(id);
        }
    }
}

/// Parses an op's params into `T`, refusing unknown keys (`bad-request`).
pub fn params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, OpError> {
    crate::protocol::parse_params(params).map_err(OpError::BadRequest)
}

/// One op's session kept between requests (the restore between its steps). The op that
/// owns the session type is the only one that puts it in and takes it out; the shared
/// state only holds it, so it needs to know nothing about that op.
#[derive(Default)]
pub struct SessionSlot(Mutex<Option<Box<dyn Any + Send>>>);

impl SessionSlot {
    /// Stores `session`, replacing whatever was there.
    pub fn put<T: Any + Send>(&self, session: T) {
        *self.0.lock().expect("session slot") = Some(Box::new(session));
    }

    /// Takes the session out if it is a `T` and `matches` says so; otherwise leaves the
    /// slot as it was and returns `None`.
    pub fn take_if<T: Any + Send>(&self, matches: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut slot = self.0.lock().expect("session slot");
        let hit = slot
            .as_ref()
            .and_then(|s| s.downcast_ref::<T>())
            .is_some_and(matches);
        if !hit {
            return None;
        }
        slot.take().and_then(|s| s.downcast::<T>().ok()).map(|b| *b)
    }

    /// Looks at the session (`None` when the slot is empty or holds another type).
    pub fn peek<T: Any + Send, R>(&self, look: impl FnOnce(Option<&T>) -> R) -> R {
        let slot = self.0.lock().expect("session slot");
        look(slot.as_ref().and_then(|s| s.downcast_ref::<T>()))
    }
}
