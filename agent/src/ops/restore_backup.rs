//! `restore-backup`: bring a finished backup back as the server's live data.
//!
//! The server must be stopped while its dump is replaced, and the agent does not own the
//! service (the charm or an operator does), so the op is a short conversation the caller
//! drives, each step one request:
//!
//! 1. `prepare` (server running): take the unit lock; read the server's `dir`,
//!    `dbfilename`, AOF settings and role (a replica is refused: it would resync from its
//!    primary); download the backup into a temporary file *in the target directory*,
//!    checking size, SHA-256 and the RDB trailer against the manifest; fsync it.
//! 2. the caller stops the server;
//! 3. `commit` (server stopped — checked): keep the current dump as `<name>.pre-restore`,
//!    rename the verified file over it, and when `appendonly yes` replace the AOF
//!    directory (kept as `<dir>.pre-restore`) with one whose base is the restored RDB —
//!    a server with AOF on ignores dump.rdb at start;
//! 4. the caller starts the server;
//! 5. `finish`: wait until the server has loaded, report the keys per database, release
//!    the lock. `abort` at any point releases the lock (before `commit` it also removes
//!    the temporary file; after it, the restored files stay and the result says where
//!    the previous ones are).
//!
//! A restore reads only the source cluster's prefix and writes nothing to the store.
//! A prepared session that nobody finishes is aborted after an hour, so a vanished
//! caller cannot hold the unit's lock forever.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};

use super::state::{params, AgentState, UnitGuard};
use crate::backup_id::BackupId;
use crate::config::ValkeySettings;
use crate::connection::{NativeClient, MAX_SMALL_REPLY};
use crate::datadir::{DataDir, Ownership};
use crate::error::OpError;
use crate::fetch::{download_checked, finished_manifest, keys_for};
use crate::layout::{Layout, ManifestV1};
use crate::pipeline::file_sink::DurableFile;
use crate::progress::{EventSink, ProgressReporter};
use crate::protocol::{
    KeyCounts, ReplicaState, RestoreAborted, RestoreBackupParams, RestoreCommitted,
    RestoreFinished, RestorePrepared, RestoreResult, RestoreStep as Step, SentinelMode,
    SentinelRestored, SentinelSetting, SentinelSuppression,
};
use crate::rdb_compat::{self, ServerVersion};
use crate::sentinel::{Group, Sentinels, SuppressionRecord, SUPPRESSED_DOWN_AFTER_MS};
use crate::source::ValkeyAdmin;
use crate::storage::ObjectStore;

/// How long a prepared restore may wait for its next step.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long `finish` waits for the server to load by default.
const DEFAULT_LOAD_TIMEOUT_SECS: u64 = 600;
/// The longest `finish` may be told to wait (a day): input never reaches time arithmetic
/// unbounded.
const MAX_LOAD_TIMEOUT_SECS: u64 = 86_400;
/// Free space a restore leaves on the data directory's filesystem beyond the download,
/// so the live server is never starved of room by the restore itself.
const SPACE_HEADROOM: u64 = 64 * 1024 * 1024;

/// Where the server keeps its append-only files.
#[derive(Debug, Clone)]
struct AofLayout {
    dirname: String,
    filename: String,
}

/// A restore between `prepare` and `finish`/`abort`.
pub struct RestoreSession {
    restore_id: String,
    manifest: ManifestV1,
    source_cluster: String,
    /// The server's data directory, opened once: every step below is relative to it.
    dir: DataDir,
    /// `dbfilename`, and the verified download's name beside it until `commit`.
    target_name: String,
    temp_name: String,
    /// The verified download, kept open: `commit` checks that the names still refer to
    /// this very file, and the AOF base is linked from it, not from a name.
    file: File,
    /// Owner and mode the restored files get (those of the dump they replace).
    owner: Ownership,
    target: PathBuf,
    aof: Option<AofLayout>,
    committed: bool,
    previous: Option<PathBuf>,
    previous_aof: Option<PathBuf>,
    /// The server as it was configured at `prepare`: later steps check the same one.
    valkey: ValkeySettings,
    /// The Sentinels suppressed at `prepare`, and what to put back.
    suppressed: Option<(Sentinels, SuppressionRecord)>,
    /// The Sentinel group watching the server at `prepare` (either mode): `finish` asks
    /// it whether the server is still the master.
    watched: Option<(Sentinels, Group)>,
    /// The replicas the primary had at `prepare` (`ip:port`): `finish` expects them back.
    replicas_at_prepare: Vec<String>,
    /// Cancels the session's watchdog when the session ends (finish, abort, timeout).
    _watchdog: tokio_util::sync::DropGuard,
    started: Instant,
    _guard: UnitGuard,
}

/// Runs one step of the restore conversation (see the module docs).
pub async fn run(
    state: &Arc<AgentState>,
    raw: Value,
    events: EventSink,
) -> Result<RestoreResult, OpError> {
    let p: RestoreBackupParams = params(raw)?;
    Ok(match p.step {
        Step::Prepare => RestoreResult::Prepared(prepare(state, p, events).await?),
        Step::Commit => RestoreResult::Committed(commit(state, session_id(&p)?).await?),
        Step::Finish => {
            let timeout = load_timeout(p.timeout_seconds)?;
            RestoreResult::Finished(finish(state, session_id(&p)?, timeout).await?)
        }
        Step::Abort => RestoreResult::Aborted(abort(state, session_id(&p)?, PUT_BACK_WAIT).await?),
    })
}

/// `timeout-seconds` of `finish`: 1 to a day, 600 when absent.
fn load_timeout(param: Option<u64>) -> Result<Duration, OpError> {
    match param.unwrap_or(DEFAULT_LOAD_TIMEOUT_SECS) {
        t @ 1..=MAX_LOAD_TIMEOUT_SECS => Ok(Duration::from_secs(t)),
        t => Err(OpError::BadRequest(format!(
            "timeout-seconds must be from 1 to {MAX_LOAD_TIMEOUT_SECS}, not {t}"
        ))),
    }
}

fn session_id(p: &RestoreBackupParams) -> Result<&str, OpError> {
    p.restore_id
        .as_deref()
        .ok_or_else(|| OpError::BadRequest("restore-id is required for this step".into()))
}

async fn prepare(
    state: &Arc<AgentState>,
    p: RestoreBackupParams,
    events: EventSink,
) -> Result<RestorePrepared, OpError> {
    let (config, s3) = state.storage()?;
    let id = BackupId::parse(
        p.backup_id
            .as_deref()
            .ok_or_else(|| OpError::BadRequest("backup-id is required".into()))?,
    )
    .map_err(|e| OpError::BadRequest(e.to_string()))?;
    let source_cluster = config.cluster_or(p.source_cluster.as_deref())?;
    let store = state.open_store(&s3)?;
    let layout = Layout::new(s3.clean_path(), &source_cluster);
    let restore_id = format!("r{:08x}", rand::random::<u32>());

    let guard = state.lock_unit("restore-backup", id.to_string()).await?;

    let manifest = finished_manifest(&*store, &layout, &id).await?;
    // A backup this unit cannot decrypt is refused before the server is even asked.
    let identities = config.identities()?;
    keys_for(&manifest, &identities)?;
    let cli = ValkeyAdmin::new(&config.valkey);
    let info = cli.info().await?;
    if info.role.as_deref() == Some("slave") {
        return Err(OpError::ValkeyReplica(
            "this server is a replica: restore the primary instead (replicas resync from it)"
                .into(),
        ));
    }
    refuse_unloadable(&manifest, &info)?;
    let dir = PathBuf::from(required_config(&cli, "dir").await?);
    let dbfilename = required_config(&cli, "dbfilename").await?;
    if !dir.is_absolute() || dbfilename.contains('/') || dbfilename.is_empty() {
        return Err(OpError::Internal(format!(
            "unexpected server dir/dbfilename: {}",
            dir.display()
        )));
    }
    let aof = if cli.config_get("appendonly").await?.as_deref() == Some("yes") {
        // Servers before Redis 7.0 keep one AOF file, not a manifest-driven directory; the
        // restored RDB cannot become their AOF's base, so they are refused, not half-done.
        let Some(dirname) = cli.config_get("appenddirname").await? else {
            return Err(OpError::AofNotRestorable);
        };
        if dirname.is_empty() || dirname.contains('/') || dirname == "." || dirname == ".." {
            return Err(OpError::Internal(format!(
                "unexpected server appenddirname {dirname:?}: it must be a plain directory name"
            )));
        }
        Some(AofLayout {
            dirname,
            filename: cli
                .config_get("appendfilename")
                .await?
                .unwrap_or_else(|| "appendonly.aof".into()),
        })
    } else {
        None
    };
    let target = dir.join(&dbfilename);
    let temp_name = format!(".{dbfilename}.restore-{restore_id}.tmp");
    let server_user = info.process_id.and_then(server_process_user);
    let needed = manifest.raw_size_bytes.max(manifest.stored_size_bytes);
    let (data_dir, owner, file) = {
        let (dir, dbfilename, temp_name) = (dir.clone(), dbfilename.clone(), temp_name.clone());
        tokio::task::spawn_blocking(move || {
            open_target(&dir, &dbfilename, &temp_name, server_user, needed)
        })
        .await
        .map_err(|e| OpError::Internal(e.to_string()))??
    };

    let mut reporter = ProgressReporter::new(events, Some(id.to_string()));
    let downloaded = download_to(
        &*store,
        &manifest,
        &identities,
        &file,
        owner,
        &mut reporter,
        &state.shutdown,
    )
    .await;
    let checked = match downloaded {
        Ok(c) => c,
        Err(e) => {
            if let Ok(true) = data_dir.refers_to(&temp_name, &file) {
                let _ = data_dir.remove_file(&temp_name);
            }
            return Err(e);
        }
    };
    // Last, just before the caller stops the server: keep Sentinel from failing over.
    let mode = p.sentinel.unwrap_or_default();
    let (sentinel, suppressed, watched) =
        match handle_sentinel(state, &config.valkey, &info, mode, &restore_id).await {
            Ok(v) => v,
            Err(e) => {
                if let Ok(true) = data_dir.refers_to(&temp_name, &file) {
                    let _ = data_dir.remove_file(&temp_name);
                }
                return Err(e);
            }
        };
    info!(backup_id = %id, restore_id = %restore_id, target = %target.display(), "restore prepared");
    let result = RestorePrepared {
        restore_id: restore_id.clone(),
        backup_id: id.to_string(),
        source_cluster: source_cluster.clone(),
        target: target.display().to_string(),
        size_bytes: checked.bytes,
        sha256: checked.sha256,
        appendonly: aof.is_some(),
        sentinel,
        next: "stop the server, then send step commit".into(),
    };
    let ended = tokio_util::sync::CancellationToken::new();
    let session = RestoreSession {
        restore_id: restore_id.clone(),
        manifest,
        source_cluster,
        dir: data_dir,
        target_name: dbfilename,
        temp_name,
        file,
        owner,
        target,
        aof,
        committed: false,
        previous: None,
        previous_aof: None,
        valkey: config.valkey.clone(),
        suppressed,
        watched,
        replicas_at_prepare: info.replicas.iter().map(|r| r.addr()).collect(),
        _watchdog: ended.clone().drop_guard(),
        started: Instant::now(),
        _guard: guard,
    };
    state.restore.put(session);
    spawn_watchdog(Arc::clone(state), restore_id, ended);
    Ok(result)
}

/// A backup whose RDB format the target server cannot load is refused before anything is
/// downloaded or touched: the server would refuse to start on it.
fn refuse_unloadable(
    manifest: &ManifestV1,
    info: &crate::valkey::ServerInfo,
) -> Result<(), OpError> {
    let format = rdb_compat::manifest_format(&manifest.rdb_magic, manifest.rdb_version);
    let target = ServerVersion {
        kind: info.kind.clone(),
        version: info.version.clone(),
    };
    if target.can_load(&format) {
        return Ok(());
    }
    Err(OpError::BadRequest(format!(
        "backup {} is RDB {} (taken from {} {}); the target server, {}, loads {}: \
         restore it onto a server that can load it (Valkey 9 or later for VALKEY formats)",
        manifest.backup_id,
        rdb_compat::format_name(&format),
        manifest.source_kind,
        manifest.source_version,
        target.display_name(),
        target.loads(),
    )))
}

/// What `prepare` does about Sentinel (see `docs/protocol.md`): nothing without
/// `valkey.sentinel`; with `suppress`, raise `down-after-milliseconds` on every Sentinel of
/// the server's master (all or nothing, recorded first); with `ignore`, only describe the
/// group (best effort).
async fn handle_sentinel(
    state: &Arc<AgentState>,
    valkey: &ValkeySettings,
    info: &crate::valkey::ServerInfo,
    mode: SentinelMode,
    restore_id: &str,
) -> Result<SentinelHandled, OpError> {
    let Some(settings) = valkey.sentinel.clone() else {
        return Ok((None, None, None));
    };
    let sentinels = Sentinels::new(settings);
    let ips = crate::valkey_check::host_ips(&valkey.host, valkey.port).await;
    if mode == SentinelMode::Ignore {
        let Ok(group) = sentinels
            .group_of(info.run_id.as_deref(), &ips, valkey.port)
            .await
        else {
            return Ok((None, None, None));
        };
        let mut now = Vec::new();
        for at in &group.sentinels {
            if let Ok(ms) = sentinels.down_after(at, &group.master_name).await {
                now.push(SentinelSetting {
                    addr: at.to_string(),
                    down_after_milliseconds: ms,
                });
            }
        }
        return Ok((
            Some(SentinelSuppression {
                master_name: group.master_name.clone(),
                mode,
                down_after_milliseconds: None,
                sentinels: now,
            }),
            None,
            Some((sentinels, group)),
        ));
    }
    // Held from reading a leftover record to writing ours: the background put-back cannot
    // run in between, and once the owner is set it leaves our record alone.
    let mut owner = state.sentinel_owner.lock().await;
    // What an earlier, interrupted restore changed goes back first: its "previous" values
    // are the real ones, and reading them now would record the suppressed value instead.
    put_back_leftover(state, &sentinels).await?;
    let group = sentinels
        .group_of(info.run_id.as_deref(), &ips, valkey.port)
        .await?;
    *owner = Some(restore_id.to_owned());
    let record = match sentinels
        .suppress(&state.state_dir, &group, restore_id)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            *owner = None;
            drop(owner);
            if let Ok(Some(_)) = SuppressionRecord::find(&state.state_dir).await {
                spawn_put_back(Arc::clone(state), PUT_BACK_WAIT);
            }
            return Err(e.into());
        }
    };
    drop(owner);
    info!(master = %record.master_name, sentinels = record.sentinels.len(), "Sentinel failover suppressed for the restore");
    let shown = SentinelSuppression {
        master_name: record.master_name.clone(),
        mode,
        down_after_milliseconds: Some(SUPPRESSED_DOWN_AFTER_MS),
        sentinels: record
            .sentinels
            .iter()
            .map(|s| SentinelSetting {
                addr: s.addr().to_string(),
                down_after_milliseconds: s.down_after_milliseconds,
            })
            .collect(),
    };
    Ok((
        Some(shown),
        Some((sentinels.clone(), record)),
        Some((sentinels, group)),
    ))
}

/// What `prepare` reports about Sentinel, what it suppressed, and the group it found.
type SentinelHandled = (
    Option<SentinelSuppression>,
    Option<(Sentinels, SuppressionRecord)>,
    Option<(Sentinels, Group)>,
);

/// Puts back what a record left by an earlier restore names (nothing when there is none).
async fn put_back_leftover(state: &AgentState, sentinels: &Sentinels) -> Result<(), OpError> {
    let leftover = SuppressionRecord::find(&state.state_dir)
        .await
        .map_err(|e| crate::sentinel::SentinelError::Record(e.to_string()))?;
    if let Some(record) = leftover {
        warn!(restore_id = %record.restore_id, "putting back Sentinel settings an interrupted restore left");
        sentinels
            .put_back(&state.state_dir, &record, PUT_BACK_WAIT)
            .await
            .map_err(|(_, e)| {
                crate::sentinel::SentinelError::Record(format!(
                    "an earlier restore ({}) left Sentinel suppressed and its settings cannot be put back ({e}); set down-after-milliseconds of master {} back by hand on every Sentinel, then remove {}",
                    record.restore_id,
                    record.master_name,
                    state.state_dir.join("sentinel-suppression.json").display()
                ))
            })?;
    }
    Ok(())
}

/// Sets every Sentinel of `suppressed` back and says how that went, and ends the
/// restore's ownership of the suppression. When one cannot be set, the record stays and
/// the background put-back keeps trying.
async fn restore_sentinels(
    state: &Arc<AgentState>,
    suppressed: Option<&(Sentinels, SuppressionRecord)>,
    wait: Duration,
) -> Option<SentinelRestored> {
    let (sentinels, record) = suppressed?;
    let mut owner = state.sentinel_owner.lock().await;
    let outcome = sentinels.put_back(&state.state_dir, record, wait).await;
    if owner.as_deref() == Some(record.restore_id.as_str()) {
        *owner = None;
    }
    drop(owner);
    let shown = |now: Vec<crate::sentinel::RecordedSetting>| {
        now.into_iter()
            .map(|s| SentinelSetting {
                addr: s.addr().to_string(),
                down_after_milliseconds: s.down_after_milliseconds,
            })
            .collect()
    };
    Some(match outcome {
        Ok(now) => {
            info!(master = %record.master_name, "Sentinel settings put back");
            SentinelRestored {
                master_name: record.master_name.clone(),
                restored: true,
                sentinels: shown(now),
                error: None,
            }
        }
        Err((now, e)) => {
            warn!(error = %e, "could not put every Sentinel setting back; retrying in the background");
            spawn_put_back(Arc::clone(state), PUT_BACK_WAIT);
            SentinelRestored {
                master_name: record.master_name.clone(),
                restored: false,
                sentinels: shown(now),
                error: Some(e.to_string()),
            }
        }
    })
}

/// How often a Sentinel setting left suppressed is tried again.
const PUT_BACK_RETRY: Duration = Duration::from_secs(3);
/// How long each Sentinel is given to hear a restarted server before its setting is put
/// back anyway (see `Sentinels::put_back`), outside `finish` (which has its own timeout).
const PUT_BACK_WAIT: Duration = Duration::from_secs(60);

/// The least time `finish` gives each Sentinel to hear the restarted server before its
/// setting goes back, however much of the timeout loading used.
const FINISH_HEAR_FLOOR: Duration = Duration::from_secs(10);
/// How long the background put-back lets the Sentinels hear a server that an aborted
/// restore left stopped before it puts their settings back anyway (the caller is expected
/// to start the server right after the abort; one that stays down must fail over).
const STOPPED_HEAR_BOUND: Duration = Duration::from_secs(600);
/// How long the agent, shutting down, gives a put-back (and each Sentinel to hear the
/// server), so the whole stop stays within the service manager's stop timeout.
const SHUTDOWN_PUT_BACK_WAIT: Duration = Duration::from_secs(20);

/// Keeps trying to put back the Sentinel settings of the state directory's record until
/// every one is back (the record is then gone), a restore owns the suppression, or the
/// agent shuts down. Each Sentinel is first given until `hear_within` from now to hear
/// the server answer. Started at agent start (a restore was interrupted by a kill), when
/// a put-back failed, and when a restore was aborted with the server stopped. At most
/// one runs.
pub fn spawn_put_back(state: Arc<AgentState>, hear_within: Duration) {
    use std::sync::atomic::Ordering;
    if state.put_back_running.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        let hear_by = tokio::time::Instant::now() + hear_within;
        // Every 3 s at first, then less often (at most once a minute), so a Sentinel that
        // stays away does not flood the log.
        let mut pause = PUT_BACK_RETRY;
        loop {
            let attempt = tokio::select! {
                r = put_back_once(&state, hear_by) => r,
                _ = state.shutdown.cancelled() => break,
            };
            match attempt {
                Ok(true) => {
                    state.put_back_running.store(false, Ordering::Release);
                    // A record written after this attempt looked, whose spawner saw this
                    // loop still running, is taken on rather than left behind.
                    if leftover_unowned(&state).await
                        && !state.put_back_running.swap(true, Ordering::AcqRel)
                    {
                        continue;
                    }
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, retry_in_s = pause.as_secs(), "Sentinel settings are still suppressed")
                }
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(60));
        }
        state.put_back_running.store(false, Ordering::Release);
    });
}

/// Whether a record exists that no restore owns.
async fn leftover_unowned(state: &AgentState) -> bool {
    let owner = state.sentinel_owner.lock().await;
    owner.is_none() && matches!(SuppressionRecord::find(&state.state_dir).await, Ok(Some(_)))
}

/// One attempt: `Ok(true)` when nothing is (any longer) suppressed by a record nobody
/// owns. The wait for the Sentinels to hear the server runs without the lock; the
/// put-back itself runs under it, on the record as it is then.
async fn put_back_once(
    state: &Arc<AgentState>,
    hear_by: tokio::time::Instant,
) -> Result<bool, String> {
    let Some(record) = unowned_record(state, &*state.sentinel_owner.lock().await).await? else {
        return Ok(true);
    };
    let Some(settings) = state.config_if_any().and_then(|c| c.valkey.sentinel) else {
        return Err("no valkey.sentinel is configured to log in with".into());
    };
    let sentinels = Sentinels::new(settings);
    sentinels.wait_heard(&record, hear_by).await;
    let owner = state.sentinel_owner.lock().await;
    let Some(now) = unowned_record(state, &owner).await? else {
        return Ok(true);
    };
    if now != record {
        // Another record replaced it meanwhile: look again, waiting for that one.
        return Ok(false);
    }
    sentinels
        .set_back(&state.state_dir, &record)
        .await
        .map(|_| {
            info!(restore_id = %record.restore_id, "Sentinel settings of an interrupted restore put back");
            true
        })
        .map_err(|(_, e)| e.to_string())
}

/// The state directory's record, unless a restore in progress owns it (it puts it back
/// itself) or there is none.
async fn unowned_record(
    state: &AgentState,
    owner: &Option<String>,
) -> Result<Option<SuppressionRecord>, String> {
    if owner.is_some() {
        return Ok(None);
    }
    SuppressionRecord::find(&state.state_dir)
        .await
        .map_err(|e| format!("reading the record: {e}"))
}

/// At shutdown, after the restore in progress was aborted: puts back whatever record is
/// left (bounded by [`SHUTDOWN_PUT_BACK_WAIT`]), so a stopped agent — or one whose state
/// directory is removed with the charm — does not leave Sentinel suppressed for a day.
pub async fn put_back_at_shutdown(state: &Arc<AgentState>) {
    let Ok(mut owner) =
        tokio::time::timeout(SHUTDOWN_PUT_BACK_WAIT, state.sentinel_owner.lock()).await
    else {
        warn!("the Sentinel settings are busy; not putting them back at shutdown");
        return;
    };
    let Ok(Some(record)) = SuppressionRecord::find(&state.state_dir).await else {
        return;
    };
    let Some(settings) = state.config_if_any().and_then(|c| c.valkey.sentinel) else {
        return;
    };
    match Sentinels::new(settings)
        .put_back(&state.state_dir, &record, SHUTDOWN_PUT_BACK_WAIT)
        .await
    {
        Ok(_) => info!(restore_id = %record.restore_id, "Sentinel settings put back at shutdown"),
        Err((_, e)) => {
            warn!(error = %e, "could not put every Sentinel setting back at shutdown; the record stays for the next start")
        }
    }
    *owner = None;
}

async fn required_config(cli: &ValkeyAdmin, name: &str) -> Result<String, OpError> {
    cli.config_get(name)
        .await?
        .ok_or_else(|| OpError::Internal(format!("the server did not report its {name} setting")))
}

/// Opens the data directory, decides who will own the restored dump, removes temp
/// files an interrupted restore left, and creates the new temp file (root-owned 0600
/// until it is verified). Blocking I/O.
fn open_target(
    dir: &std::path::Path,
    dbfilename: &str,
    temp_name: &str,
    server_user: Option<(u32, u32)>,
    needed: u64,
) -> Result<(DataDir, Ownership, File), OpError> {
    let io = |what: &str, e: std::io::Error| {
        OpError::Internal(format!("{what} in {}: {e}", dir.display()))
    };
    let data_dir = DataDir::open(dir).map_err(|e| io("opening the data directory", e))?;
    let dir_stat = data_dir
        .stat()
        .map_err(|e| io("reading the data directory", e))?;
    let previous = data_dir
        .entry(dbfilename)
        .map_err(|e| io("looking at the current dump", e))?;
    let owner = Ownership::for_restored_dump(previous.as_ref(), server_user, &dir_stat);
    remove_stale_temps(&data_dir, dbfilename);
    let free = data_dir
        .free_bytes()
        .map_err(|e| io("reading the free space", e))?;
    if free < needed.saturating_add(SPACE_HEADROOM) {
        return Err(OpError::NoSpace(format!(
            "{} has {} MiB free but the backup needs {} MiB (plus {} MiB headroom): free space there, then restore again; nothing was changed",
            dir.display(),
            free >> 20,
            needed.div_ceil(1 << 20),
            SPACE_HEADROOM >> 20,
        )));
    }
    let file = data_dir
        .create_new(temp_name)
        .map_err(|e| io("creating the restore's temporary file", e))?;
    Ok((data_dir, owner, file))
}

/// The user and group the server process runs as, from `/proc/<pid>` (the directory
/// belongs to the process's effective ids). Only a process that is a Valkey or Redis
/// server counts: a server on another host has a pid that means nothing here.
fn server_process_user(pid: u32) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let argv0 = String::from_utf8_lossy(argv0);
    if !(argv0.contains("valkey-server") || argv0.contains("redis-server")) {
        return None;
    }
    let meta = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    Some((meta.uid(), meta.gid()))
}

/// Downloads into the open temp file, checks it, fsyncs it, then gives it the restored
/// dump's owner and mode through the descriptor (the name may have been swapped for a
/// symlink by the directory's owner in the meantime: it is never used here).
async fn download_to(
    store: &dyn ObjectStore,
    manifest: &ManifestV1,
    identities: &[age::x25519::Identity],
    file: &File,
    owner: Ownership,
    reporter: &mut ProgressReporter,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<crate::fetch::Checked, OpError> {
    let io = |e: std::io::Error| {
        OpError::Internal(format!(
            "writing the restore's temporary file: {}",
            e.kind()
        ))
    };
    // Written, hashed and its write-back started on a thread of its own, so the fsync
    // below waits for little more than the last window instead of the whole download.
    let mut out = DurableFile::new(file).map_err(io)?;
    let checked = download_checked(
        store,
        manifest,
        identities,
        &mut out,
        reporter,
        "downloading",
        cancel,
    )
    .await?;
    out.sync().await?;
    let file = file.try_clone().map_err(io)?;
    tokio::task::spawn_blocking(move || owner.apply(&file))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))?
        .map_err(io)?;
    Ok(checked)
}

/// Aborts a prepared restore nobody continues, so a vanished caller cannot hold the
/// unit's lock forever, and cleans up on shutdown. It looks once a minute rather than
/// once at the deadline: a step in progress has the session out of the slot. It ends
/// with the session (the session holds the guard of `ended`).
fn spawn_watchdog(
    state: Arc<AgentState>,
    restore_id: String,
    ended: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = ended.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                // `serve` aborts the restore itself at shutdown, and waits for it.
                _ = state.shutdown.cancelled() => return,
            }
            let expired = state.restore.peek(|s: Option<&RestoreSession>| match s {
                Some(s) if s.restore_id == restore_id => {
                    Some(s.started.elapsed() > SESSION_TIMEOUT)
                }
                Some(_) => None,
                None => Some(false),
            });
            let Some(expired) = expired else { return };
            if expired {
                warn!(restore_id = %restore_id, "restore session timed out; aborting it");
                let _ = abort(&state, &restore_id, PUT_BACK_WAIT).await;
                return;
            }
        }
    });
}

/// On shutdown: aborts whatever restore is prepared (its temp file goes; a committed
/// restore's files stay, its Sentinels are put back), so nothing is left half-way when
/// the agent stops. `serve` awaits it.
pub async fn abort_current(state: &Arc<AgentState>) {
    let id = state
        .restore
        .peek(|s: Option<&RestoreSession>| s.map(|s| s.restore_id.clone()));
    if let Some(id) = id {
        let _ = abort(state, &id, SHUTDOWN_PUT_BACK_WAIT).await;
    }
}

/// Removes temp files of restores that a crash left behind (`.<dbfilename>.restore-*.tmp`).
/// Unlinking never follows a symlink, so whatever has such a name only loses that name.
fn remove_stale_temps(dir: &DataDir, dbfilename: &str) {
    let prefix = format!(".{dbfilename}.restore-");
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            warn!(file = %name, "removing a temp file of an earlier, interrupted restore");
            let _ = dir.remove_file(&name);
        }
    }
}

/// Takes the session out of the state if `restore_id` names it.
fn take_session(state: &AgentState, restore_id: &str) -> Result<RestoreSession, OpError> {
    state
        .restore
        .take_if(|s: &RestoreSession| s.restore_id == restore_id)
        .ok_or_else(|| {
            OpError::NotFound(format!(
                "no restore {restore_id} in progress (it may have timed out)"
            ))
        })
}

fn put_back(state: &AgentState, session: RestoreSession) {
    state.restore.put(session);
}

async fn commit(state: &Arc<AgentState>, restore_id: &str) -> Result<RestoreCommitted, OpError> {
    let mut session = take_session(state, restore_id)?;
    if session.committed {
        put_back(state, session);
        return Err(OpError::BadRequest(
            "this restore is already committed; start the server and send finish".into(),
        ));
    }
    if !ValkeyAdmin::new(&session.valkey).is_stopped().await {
        put_back(state, session);
        return Err(OpError::ValkeyRunning(
            "the server is still running (or its state cannot be told): stop it, then send commit again"
                .into(),
        ));
    }
    let outcome = tokio::task::spawn_blocking(move || {
        let r = place_files(&mut session);
        (session, r)
    })
    .await
    .map_err(|e| OpError::Internal(e.to_string()))?;
    let (session, placed) = outcome;
    let result = placed.map(|()| RestoreCommitted {
        restore_id: session.restore_id.clone(),
        target: session.target.display().to_string(),
        previous: session.previous.as_ref().map(|p| p.display().to_string()),
        previous_aof: session
            .previous_aof
            .as_ref()
            .map(|p| p.display().to_string()),
        appendonly: session.aof.is_some(),
        next: "start the server, then send step finish".into(),
    });
    put_back(state, session);
    result
}

/// Moves the verified file into place (and rebuilds the AOF directory). Blocking I/O.
/// All or nothing: when a step fails, the steps already done are undone in reverse, so
/// the server's files are as they were and the session can still be aborted.
fn place_files(s: &mut RestoreSession) -> Result<(), OpError> {
    let mut done: Vec<Undo> = Vec::new();
    match place_steps(s, &mut done) {
        Ok(()) => {
            s.committed = true;
            info!(restore_id = %s.restore_id, target = %s.target.display(), "restored dump placed");
            Ok(())
        }
        Err(e) => {
            for undo in done.into_iter().rev() {
                if let Err(err) = undo.run(&s.dir) {
                    warn!(error = %err, "could not undo a restore step; check the data directory");
                }
            }
            s.previous = None;
            s.previous_aof = None;
            Err(e)
        }
    }
}

/// One step of `place_files` to take back (names in the data directory).
enum Undo {
    Rename { from: String, to: String },
    RemoveDir(String),
}

impl Undo {
    fn run(self, dir: &DataDir) -> std::io::Result<()> {
        match self {
            Undo::Rename { from, to } => dir.rename(&from, &to),
            Undo::RemoveDir(name) => dir.remove_tree(&name),
        }
    }
}

fn place_steps(s: &mut RestoreSession, done: &mut Vec<Undo>) -> Result<(), OpError> {
    let io = |what: &str, e: std::io::Error| OpError::Internal(format!("{what}: {e}"));
    let dir = &s.dir;
    // The verified file must still be the one under its temp name: the directory's owner
    // could have swapped it since prepare.
    if !dir
        .refers_to(&s.temp_name, &s.file)
        .map_err(|e| io("checking the verified file", e))?
    {
        return Err(OpError::Internal(format!(
            "the verified download {} in {} was moved or replaced since prepare; abort and restore again",
            s.temp_name,
            dir.path().display()
        )));
    }
    if dir
        .entry(&s.target_name)
        .map_err(|e| io("looking at the current dump", e))?
        .is_some()
    {
        let previous = format!("{}.pre-restore", s.target_name);
        dir.rename(&s.target_name, &previous)
            .map_err(|e| io("keeping the previous dump", e))?;
        done.push(Undo::Rename {
            from: previous.clone(),
            to: s.target_name.clone(),
        });
        s.previous = Some(dir.path().join(previous));
    }
    dir.rename(&s.temp_name, &s.target_name)
        .map_err(|e| io("placing the restored dump", e))?;
    done.push(Undo::Rename {
        from: s.target_name.clone(),
        to: s.temp_name.clone(),
    });
    if let Some(aof) = s.aof.clone() {
        let name = aof.dirname.clone();
        if dir
            .entry(&name)
            .map_err(|e| io("looking at the AOF directory", e))?
            .is_some()
        {
            // The older backup of the AOF is replaced only after the current one is safe.
            let previous = format!("{name}.pre-restore");
            let older = format!("{name}.pre-restore.old");
            if dir
                .entry(&previous)
                .map_err(|e| io("looking at an older AOF backup", e))?
                .is_some()
            {
                dir.rename(&previous, &older)
                    .map_err(|e| io("keeping an older AOF backup", e))?;
                done.push(Undo::Rename {
                    from: older.clone(),
                    to: previous.clone(),
                });
            }
            dir.rename(&name, &previous)
                .map_err(|e| io("keeping the previous AOF", e))?;
            done.push(Undo::Rename {
                from: previous.clone(),
                to: name.clone(),
            });
            s.previous_aof = Some(dir.path().join(previous));
        }
        if let Err(e) = build_aof_dir(dir, &aof, &s.file, s.owner) {
            if let Ok(Some(_)) = dir.entry(&name) {
                let _ = dir.remove_tree(&name);
            }
            return Err(io("building the AOF directory", e));
        }
        done.push(Undo::RemoveDir(name.clone()));
        let older = format!("{name}.pre-restore.old");
        if let Ok(Some(_)) = dir.entry(&older) {
            let _ = dir.remove_tree(&older);
        }
    }
    dir.sync().map_err(|e| io("syncing the data directory", e))
}

/// A multi-part AOF directory whose base is the restored RDB: what the server itself
/// writes after a rewrite with an RDB preamble, so it loads exactly that dataset. The
/// base is linked from the verified file's descriptor, and every file is created new
/// inside a directory this process just made and checked.
fn build_aof_dir(
    dir: &DataDir,
    aof: &AofLayout,
    rdb: &File,
    owner: Ownership,
) -> std::io::Result<()> {
    let aof_dir = dir.create_dir(&aof.dirname, 0o750)?;
    let base_name = format!("{}.1.base.rdb", aof.filename);
    aof_dir.link_or_copy(rdb, &base_name, owner)?;
    aof_dir.write_new(
        &format!("{}.manifest", aof.filename),
        format!("file {base_name} seq 1 type b\n").as_bytes(),
        owner,
    )?;
    aof_dir.chown(owner)?;
    aof_dir.sync()
}

async fn finish(
    state: &Arc<AgentState>,
    restore_id: &str,
    timeout: Duration,
) -> Result<RestoreFinished, OpError> {
    let session = take_session(state, restore_id)?;
    if !session.committed {
        put_back(state, session);
        return Err(OpError::BadRequest(
            "commit the restore before finishing it".into(),
        ));
    }
    let cli = ValkeyAdmin::new(&session.valkey);
    let deadline = Instant::now() + timeout;
    let info = loop {
        let last = match cli.info().await {
            Ok(info) if !info.loading => break info,
            Ok(_) => "still loading".to_owned(),
            Err(e) => e.to_string(),
        };
        if state.shutdown.is_cancelled() {
            put_back(state, session);
            return Err(OpError::Cancelled);
        }
        if Instant::now() >= deadline {
            put_back(state, session);
            return Err(OpError::RestoreNotLoaded { last });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let keys: KeyCounts = info.keyspace.iter().cloned().collect();
    let expected: KeyCounts = session.manifest.keyspace_at_start.clone();
    // The server answers again: Sentinel may count it as down once more. Each Sentinel
    // gets at least FINISH_HEAR_FLOOR to hear it, even when loading used the timeout up.
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(FINISH_HEAR_FLOOR);
    let sentinel = restore_sentinels(state, session.suppressed.as_ref(), wait).await;
    let role = crate::valkey_check::role_name(&info);
    let is_primary = info.role.as_deref() == Some("master");
    let client = NativeClient::new(session.valkey.clone());
    let (writable, write_error) = if is_primary {
        match wait_writable(&client, restore_id, deadline, &state.shutdown).await {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        }
    } else {
        (false, Some("the server is a replica: Sentinel failed over while it was stopped, and it resynced from the new primary".into()))
    };
    let replicas = if is_primary {
        wait_replicas(
            &client,
            &session.valkey,
            &session.replicas_at_prepare,
            &keys,
            deadline,
            &state.shutdown,
        )
        .await
    } else {
        Vec::new()
    };
    // Whether the restore still stands: the server is the primary now (Sentinel turns a
    // returning old master into a replica only some seconds after it is back, so the role
    // read after loading is not enough), and no Sentinel names another master.
    if let Some(why) = overridden(&cli, session.watched.as_ref()).await {
        warn!(restore_id = %restore_id, reason = %why, "restore overridden by a failover");
        return Err(OpError::RestoreOverridden(format!(
            "{why}; the server follows another primary and resyncs from it, discarding the restored data (restore {} of backup {})",
            session.restore_id, session.manifest.backup_id
        )));
    }
    info!(restore_id = %restore_id, backup_id = %session.manifest.backup_id, writable, "restore finished");
    Ok(RestoreFinished {
        restore_id: session.restore_id.clone(),
        backup_id: session.manifest.backup_id.clone(),
        source_cluster: session.source_cluster.clone(),
        loaded: true,
        keys_match: keys == expected,
        keys,
        keys_at_backup: expected,
        target: session.target.display().to_string(),
        previous: session.previous.as_ref().map(|p| p.display().to_string()),
        duration_seconds: (session.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        role,
        writable,
        write_error,
        replicas,
        sentinel,
    })
}

/// Aborts the restore `restore_id`; a running server's Sentinels get up to `wait` to hear
/// it before their settings go back.
/// Why the restore does not stand, if it does not: the server's role now, then each
/// Sentinel of the group (`SENTINEL GET-MASTER-ADDR-BY-NAME`) against the master's
/// address at `prepare`. A Sentinel that cannot be asked says nothing either way.
async fn overridden(cli: &ValkeyAdmin, watched: Option<&(Sentinels, Group)>) -> Option<String> {
    if let Ok(info) = cli.info().await {
        if info.role.as_deref() != Some("master") {
            // Name the primary it follows (and the master's name, when watched), so the
            // operator knows where the data now comes from.
            let of = match (&info.master_host, info.master_port) {
                (Some(host), Some(port)) => format!(" of {host}:{port}"),
                _ => String::new(),
            };
            let name = watched
                .map(|(_, group)| format!(" master {}", group.master_name))
                .unwrap_or_default();
            return Some(format!(
                "the server is a {}{of} now (Sentinel failed over{name} while it was stopped)",
                crate::valkey_check::role_name(&info).unwrap_or_else(|| "replica".into())
            ));
        }
    }
    let (sentinels, group) = watched?;
    for at in &group.sentinels {
        if let Ok(Some((ip, port))) = sentinels.master_addr(at, &group.master_name).await {
            if ip != group.master_ip || port != group.master_port {
                return Some(format!(
                    "Sentinel {at} names {ip}:{port} as master {}, not this server ({}:{})",
                    group.master_name, group.master_ip, group.master_port
                ));
            }
        }
    }
    None
}

async fn abort(
    state: &Arc<AgentState>,
    restore_id: &str,
    wait: Duration,
) -> Result<RestoreAborted, OpError> {
    let session = take_session(state, restore_id)?;
    if !session.committed {
        // Only the file this restore created goes; whatever else has its name now stays.
        if let Ok(true) = session.dir.refers_to(&session.temp_name, &session.file) {
            let _ = session.dir.remove_file(&session.temp_name);
        }
    }
    // A running server gets its Sentinels' fresh replies first. A stopped one cannot give
    // them: putting the short value back now would make them fail over at once, so the
    // record stays and the background put-back sets each Sentinel back once it hears the
    // restarted server (or after STOPPED_HEAR_BOUND, when nobody starts it).
    let stopped =
        session.suppressed.is_some() && ValkeyAdmin::new(&session.valkey).is_stopped().await;
    let sentinel = if stopped {
        leave_to_background(state, session.suppressed.as_ref()).await
    } else {
        restore_sentinels(state, session.suppressed.as_ref(), wait).await
    };
    info!(restore_id = %restore_id, committed = session.committed, "restore aborted");
    Ok(RestoreAborted {
        restore_id: session.restore_id.clone(),
        aborted: true,
        committed: session.committed,
        target: session.target.display().to_string(),
        previous: session.previous.as_ref().map(|p| p.display().to_string()),
        note: if session.committed {
            "the restored files stay in place; the previous dump (and AOF) are kept with the .pre-restore suffix"
        } else {
            "nothing was changed"
        }
        .into(),
        sentinel,
    })
}

/// Hands a suppression whose server is stopped to the background put-back (see `abort`).
async fn leave_to_background(
    state: &Arc<AgentState>,
    suppressed: Option<&(Sentinels, SuppressionRecord)>,
) -> Option<SentinelRestored> {
    let (_, record) = suppressed?;
    {
        let mut owner = state.sentinel_owner.lock().await;
        if owner.as_deref() == Some(record.restore_id.as_str()) {
            *owner = None;
        }
    }
    spawn_put_back(Arc::clone(state), STOPPED_HEAR_BOUND);
    warn!(restore_id = %record.restore_id, "restore aborted with the server stopped; Sentinel settings go back once Sentinel hears it again");
    Some(SentinelRestored {
        master_name: record.master_name.clone(),
        restored: false,
        sentinels: record
            .sentinels
            .iter()
            .map(|s| SentinelSetting {
                addr: s.addr().to_string(),
                down_after_milliseconds: record.suppressed_to,
            })
            .collect(),
        error: Some(format!(
            "the server is stopped: start it; each Sentinel gets its setting back once it hears the server again (at the latest in {} s)",
            STOPPED_HEAR_BOUND.as_secs()
        )),
    })
}

/// The key a write probe deletes: never created by anyone, so the `DEL` changes nothing.
fn probe_key(restore_id: &str) -> String {
    format!("__valkey-backup:write-probe:{restore_id}")
}

/// Waits until the server takes a write (see `docs/protocol.md`): retried while it
/// answers `NOREPLICAS` (replicas still reconnecting), `MISCONF`, `LOADING` or cannot be
/// reached; anything else (`READONLY`, `NOPERM`) is final. Returns the last answer.
async fn wait_writable(
    client: &NativeClient,
    restore_id: &str,
    deadline: Instant,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let key = probe_key(restore_id);
    loop {
        let attempt = async {
            let mut conn = client.connect().await?;
            conn.call(&[b"DEL", key.as_bytes()], MAX_SMALL_REPLY).await
        }
        .await;
        let last = match attempt {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        let upper = last.to_ascii_uppercase();
        let transient = [
            "NOREPLICAS",
            "MISCONF",
            "LOADING",
            "CANNOT CONNECT",
            "CONNECT",
        ]
        .iter()
        .any(|w| upper.contains(w));
        if !transient || Instant::now() >= deadline || shutdown.is_cancelled() {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (until `deadline`) for every replica — those of `prepare` and those attached
/// now — to be online at the primary's offset, then asks each one for its key counts.
async fn wait_replicas(
    client: &NativeClient,
    valkey: &ValkeySettings,
    at_prepare: &[String],
    primary_keys: &KeyCounts,
    deadline: Instant,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Vec<ReplicaState> {
    let mut last = None;
    loop {
        if let Ok(info) = client.info().await {
            let offset = info.master_repl_offset.unwrap_or(0);
            let all_back = at_prepare
                .iter()
                .all(|a| info.replicas.iter().any(|r| &r.addr() == a));
            let in_sync = info
                .replicas
                .iter()
                .all(|r| r.state == "online" && r.offset >= offset);
            let done = all_back && in_sync;
            last = Some(info);
            if done {
                break;
            }
        }
        if Instant::now() >= deadline || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(info) = last else {
        return Vec::new();
    };
    let offset = info.master_repl_offset.unwrap_or(0);
    let mut out = Vec::new();
    for r in &info.replicas {
        let in_sync = r.state == "online" && r.offset >= offset;
        let mut settings = valkey.clone();
        settings.host = r.ip.clone();
        settings.port = r.port;
        let (keys, error) = match NativeClient::new(settings).info().await {
            Ok(ri) => (Some(ri.keyspace.into_iter().collect::<KeyCounts>()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(ReplicaState {
            addr: r.addr(),
            state: r.state.clone(),
            offset: Some(r.offset),
            in_sync,
            keys_match: keys.as_ref().map(|k| k == primary_keys),
            keys,
            error,
        });
    }
    for a in at_prepare {
        if !info.replicas.iter().any(|r| &r.addr() == a) {
            out.push(ReplicaState {
                addr: a.clone(),
                state: "missing".into(),
                offset: None,
                in_sync: false,
                keys: None,
                keys_match: None,
                error: Some("attached at prepare, not attached now".into()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_timeout_is_bounded_before_any_arithmetic() {
        assert_eq!(load_timeout(None).unwrap(), Duration::from_secs(600));
        assert_eq!(load_timeout(Some(1)).unwrap(), Duration::from_secs(1));
        assert_eq!(
            load_timeout(Some(86_400)).unwrap(),
            Duration::from_secs(86_400)
        );
        for bad in [0, 86_401, u64::MAX] {
            let err = load_timeout(Some(bad)).unwrap_err();
            assert_eq!(err.code().as_str(), "bad-request", "{bad}");
        }
    }
}
