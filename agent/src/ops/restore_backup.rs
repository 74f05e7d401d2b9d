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

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{params, AgentState, UnitGuard};
use crate::backup_id::BackupId;
use crate::config::ValkeySettings;
use crate::error::OpError;
use crate::fetch::{download_checked, finished_manifest};
use crate::progress::{EventSink, ProgressReporter};
use crate::s3::Store;
use crate::store::{Layout, ManifestV1};
use crate::valkey::ValkeyCli;

/// How long a prepared restore may wait for its next step.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long `finish` waits for the server to load by default.
const DEFAULT_LOAD_TIMEOUT_SECS: u64 = 600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RestoreParams {
    step: Step,
    #[serde(default)]
    backup_id: Option<String>,
    #[serde(default)]
    source_cluster: Option<String>,
    #[serde(default)]
    restore_id: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum Step {
    Prepare,
    Commit,
    Finish,
    Abort,
}

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
    dir: PathBuf,
    target: PathBuf,
    temp: PathBuf,
    aof: Option<AofLayout>,
    committed: bool,
    previous: Option<PathBuf>,
    previous_aof: Option<PathBuf>,
    /// The server as it was configured at `prepare`: later steps check the same one.
    valkey: ValkeySettings,
    started: Instant,
    _guard: UnitGuard,
}

pub async fn run(state: &Arc<AgentState>, raw: Value, events: EventSink) -> Result<Value, OpError> {
    let p: RestoreParams = params(raw)?;
    match p.step {
        Step::Prepare => prepare(state, p, events).await,
        Step::Commit => commit(state, session_id(&p)?).await,
        Step::Finish => finish(state, session_id(&p)?, p.timeout_seconds).await,
        Step::Abort => abort(state, session_id(&p)?).await,
    }
}

fn session_id(p: &RestoreParams) -> Result<&str, OpError> {
    p.restore_id
        .as_deref()
        .ok_or_else(|| OpError::BadRequest("restore-id is required for this step".into()))
}

async fn prepare(
    state: &Arc<AgentState>,
    p: RestoreParams,
    events: EventSink,
) -> Result<Value, OpError> {
    let (config, s3) = state.storage()?;
    let id = BackupId::parse(
        p.backup_id
            .as_deref()
            .ok_or_else(|| OpError::BadRequest("backup-id is required".into()))?,
    )
    .map_err(|e| OpError::BadRequest(e.to_string()))?;
    let source_cluster = config.cluster_or(p.source_cluster.as_deref())?;
    let store = Store::new(&s3)?;
    let layout = Layout::new(s3.clean_path(), &source_cluster);
    let restore_id = format!("r{:08x}", rand::random::<u32>());

    let guard = state.lock_unit("restore-backup", id.to_string()).await?;

    let manifest = finished_manifest(&store, &layout, &id).await?;
    let cli = ValkeyCli::new(config.valkey.clone());
    let info = cli.info().await?;
    if info.role.as_deref() == Some("slave") {
        return Err(OpError::ValkeyReplica(
            "this server is a replica: restore the primary instead (replicas resync from it)"
                .into(),
        ));
    }
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
            return Err(OpError::Valkey(crate::valkey::ValkeyError::Cli {
                detail:
                    "the server runs with appendonly yes but has no multi-part AOF (Redis < 7.0): \
                         set appendonly no for the restore"
                        .into(),
            }));
        };
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
    let temp = dir.join(format!(".{dbfilename}.restore-{restore_id}.tmp"));
    remove_stale_temps(&dir, &dbfilename).await;

    let mut reporter = ProgressReporter::new(events, Some(id.to_string()));
    let downloaded = download_to(
        &store,
        &manifest,
        &temp,
        &dir,
        &mut reporter,
        &state.shutdown,
    )
    .await;
    let checked = match downloaded {
        Ok(c) => c,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    info!(backup_id = %id, restore_id = %restore_id, target = %target.display(), "restore prepared");
    let result = json!({
        "restore-id": restore_id,
        "backup-id": id.to_string(),
        "source-cluster": source_cluster,
        "target": target.display().to_string(),
        "size-bytes": checked.bytes,
        "sha256": checked.sha256,
        "appendonly": aof.is_some(),
        "next": "stop the server, then send step commit",
    });
    let session = RestoreSession {
        restore_id: restore_id.clone(),
        manifest,
        source_cluster,
        dir,
        target,
        temp,
        aof,
        committed: false,
        previous: None,
        previous_aof: None,
        valkey: config.valkey.clone(),
        started: Instant::now(),
        _guard: guard,
    };
    *state.restore.lock().expect("restore lock") = Some(session);
    spawn_watchdog(Arc::clone(state), restore_id);
    Ok(result)
}

async fn required_config(cli: &ValkeyCli, name: &str) -> Result<String, OpError> {
    cli.config_get(name)
        .await?
        .ok_or_else(|| OpError::Internal(format!("the server did not report its {name} setting")))
}

/// Downloads into `temp` (owned like the server's directory, so the server can read it)
/// and fsyncs it.
async fn download_to(
    store: &Store,
    manifest: &ManifestV1,
    temp: &Path,
    dir: &Path,
    reporter: &mut ProgressReporter,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<crate::fetch::Checked, OpError> {
    let io = |e: std::io::Error| {
        OpError::Internal(format!("preparing {}: {}", temp.display(), e.kind()))
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .await
        .map_err(io)?;
    let checked = download_checked(
        store,
        manifest,
        Some(&mut file),
        reporter,
        "downloading",
        cancel,
    )
    .await?;
    file.sync_all().await.map_err(io)?;
    let meta = tokio::fs::metadata(dir).await.map_err(io)?;
    chown(temp, meta.uid(), meta.gid()).map_err(io)?;
    Ok(checked)
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Aborts a prepared restore nobody continues, so a vanished caller cannot hold the
/// unit's lock forever, and cleans up on shutdown. It looks once a minute rather than
/// once at the deadline: a step in progress has the session out of the slot.
fn spawn_watchdog(state: Arc<AgentState>, restore_id: String) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = state.shutdown.cancelled() => {
                    let _ = abort(&state, &restore_id).await;
                    return;
                }
            }
            let expired = match state.restore.lock().expect("restore lock").as_ref() {
                Some(s) if s.restore_id == restore_id => s.started.elapsed() > SESSION_TIMEOUT,
                Some(_) => return,
                None => false,
            };
            if expired {
                warn!(restore_id = %restore_id, "restore session timed out; aborting it");
                let _ = abort(&state, &restore_id).await;
                return;
            }
        }
    });
}

/// On shutdown: aborts whatever restore is prepared (its temp file goes; a committed
/// restore's files stay), so nothing is left half-way when the agent stops.
pub async fn abort_current(state: &Arc<AgentState>) {
    let id = state
        .restore
        .lock()
        .expect("restore lock")
        .as_ref()
        .map(|s| s.restore_id.clone());
    if let Some(id) = id {
        let _ = abort(state, &id).await;
    }
}

/// Removes temp files of restores that a crash left behind (`.<dbfilename>.restore-*.tmp`).
async fn remove_stale_temps(dir: &Path, dbfilename: &str) {
    let prefix = format!(".{dbfilename}.restore-");
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            warn!(file = %name, "removing a temp file of an earlier, interrupted restore");
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// Takes the session out of the state if `restore_id` names it.
fn take_session(state: &AgentState, restore_id: &str) -> Result<RestoreSession, OpError> {
    let mut slot = state.restore.lock().expect("restore lock");
    match slot.take() {
        Some(s) if s.restore_id == restore_id => Ok(s),
        other => {
            *slot = other;
            Err(OpError::NotFound(format!(
                "no restore {restore_id} in progress (it may have timed out)"
            )))
        }
    }
}

fn put_back(state: &AgentState, session: RestoreSession) {
    *state.restore.lock().expect("restore lock") = Some(session);
}

async fn commit(state: &Arc<AgentState>, restore_id: &str) -> Result<Value, OpError> {
    let mut session = take_session(state, restore_id)?;
    if session.committed {
        put_back(state, session);
        return Err(OpError::BadRequest(
            "this restore is already committed; start the server and send finish".into(),
        ));
    }
    if !ValkeyCli::new(session.valkey.clone()).is_stopped().await {
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
    let result = placed.map(|()| {
        json!({
            "restore-id": session.restore_id,
            "target": session.target.display().to_string(),
            "previous": session.previous.as_ref().map(|p| p.display().to_string()),
            "previous-aof": session.previous_aof.as_ref().map(|p| p.display().to_string()),
            "appendonly": session.aof.is_some(),
            "next": "start the server, then send step finish",
        })
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
                if let Err(err) = undo.run() {
                    warn!(error = %err, "could not undo a restore step; check the data directory");
                }
            }
            s.previous = None;
            s.previous_aof = None;
            Err(e)
        }
    }
}

/// One step of `place_files` to take back.
enum Undo {
    Rename { from: PathBuf, to: PathBuf },
    RemoveDir(PathBuf),
}

impl Undo {
    fn run(self) -> std::io::Result<()> {
        match self {
            Undo::Rename { from, to } => std::fs::rename(from, to),
            Undo::RemoveDir(dir) => std::fs::remove_dir_all(dir),
        }
    }
}

fn place_steps(s: &mut RestoreSession, done: &mut Vec<Undo>) -> Result<(), OpError> {
    let io = |what: &str, e: std::io::Error| OpError::Internal(format!("{what}: {}", e.kind()));
    if s.target.exists() {
        let previous = with_suffix(&s.target, ".pre-restore");
        std::fs::rename(&s.target, &previous).map_err(|e| io("keeping the previous dump", e))?;
        done.push(Undo::Rename {
            from: previous.clone(),
            to: s.target.clone(),
        });
        s.previous = Some(previous);
    }
    std::fs::rename(&s.temp, &s.target).map_err(|e| io("placing the restored dump", e))?;
    done.push(Undo::Rename {
        from: s.target.clone(),
        to: s.temp.clone(),
    });
    if let Some(aof) = s.aof.clone() {
        let aof_dir = s.dir.join(&aof.dirname);
        if aof_dir.exists() {
            // The older backup of the AOF is replaced only after the current one is safe.
            let previous = with_suffix(&aof_dir, ".pre-restore");
            let older = with_suffix(&aof_dir, ".pre-restore.old");
            if previous.exists() {
                std::fs::rename(&previous, &older)
                    .map_err(|e| io("keeping an older AOF backup", e))?;
                done.push(Undo::Rename {
                    from: older.clone(),
                    to: previous.clone(),
                });
            }
            std::fs::rename(&aof_dir, &previous).map_err(|e| io("keeping the previous AOF", e))?;
            done.push(Undo::Rename {
                from: previous.clone(),
                to: aof_dir.clone(),
            });
            s.previous_aof = Some(previous);
        }
        if let Err(e) = build_aof_dir(&aof_dir, &aof, &s.target, &s.dir) {
            let _ = std::fs::remove_dir_all(&aof_dir);
            return Err(io("building the AOF directory", e));
        }
        done.push(Undo::RemoveDir(aof_dir.clone()));
        let older = with_suffix(&aof_dir, ".pre-restore.old");
        if older.exists() {
            let _ = std::fs::remove_dir_all(&older);
        }
    }
    std::fs::File::open(&s.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the data directory", e))
}

/// A multi-part AOF directory whose base is the restored RDB: what the server itself
/// writes after a rewrite with an RDB preamble, so it loads exactly that dataset.
fn build_aof_dir(
    aof_dir: &Path,
    aof: &AofLayout,
    rdb: &Path,
    data_dir: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir(aof_dir)?;
    std::fs::set_permissions(aof_dir, std::fs::Permissions::from_mode(0o750))?;
    let base_name = format!("{}.1.base.rdb", aof.filename);
    let base = aof_dir.join(&base_name);
    if std::fs::hard_link(rdb, &base).is_err() {
        std::fs::copy(rdb, &base)?;
    }
    let manifest = aof_dir.join(format!("{}.manifest", aof.filename));
    std::fs::write(&manifest, format!("file {base_name} seq 1 type b\n"))?;
    let owner = std::fs::metadata(data_dir)?;
    for p in [aof_dir, base.as_path(), manifest.as_path()] {
        chown(p, owner.uid(), owner.gid())?;
    }
    std::fs::File::open(&manifest)?.sync_all()?;
    std::fs::File::open(aof_dir)?.sync_all()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn finish(
    state: &Arc<AgentState>,
    restore_id: &str,
    timeout: Option<u64>,
) -> Result<Value, OpError> {
    let session = take_session(state, restore_id)?;
    if !session.committed {
        put_back(state, session);
        return Err(OpError::BadRequest(
            "commit the restore before finishing it".into(),
        ));
    }
    let cli = ValkeyCli::new(session.valkey.clone());
    let deadline =
        Instant::now() + Duration::from_secs(timeout.unwrap_or(DEFAULT_LOAD_TIMEOUT_SECS));
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
            return Err(OpError::Valkey(crate::valkey::ValkeyError::Cli {
                detail: format!(
                    "the server did not finish loading the restored data in time ({last})"
                ),
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let keys: serde_json::Map<String, Value> = info
        .keyspace
        .iter()
        .map(|(db, n)| (db.clone(), json!(n)))
        .collect();
    let expected: serde_json::Map<String, Value> = session
        .manifest
        .keyspace_at_start
        .iter()
        .map(|(db, n)| (db.clone(), json!(n)))
        .collect();
    info!(restore_id = %restore_id, backup_id = %session.manifest.backup_id, "restore finished");
    Ok(json!({
        "restore-id": session.restore_id,
        "backup-id": session.manifest.backup_id,
        "source-cluster": session.source_cluster,
        "loaded": true,
        "keys": keys,
        "keys-at-backup": expected,
        "keys-match": keys == expected,
        "target": session.target.display().to_string(),
        "previous": session.previous.as_ref().map(|p| p.display().to_string()),
        "duration-seconds": (session.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}

async fn abort(state: &Arc<AgentState>, restore_id: &str) -> Result<Value, OpError> {
    let session = take_session(state, restore_id)?;
    if !session.committed {
        let _ = tokio::fs::remove_file(&session.temp).await;
    }
    info!(restore_id = %restore_id, committed = session.committed, "restore aborted");
    Ok(json!({
        "restore-id": session.restore_id,
        "aborted": true,
        "committed": session.committed,
        "target": session.target.display().to_string(),
        "previous": session.previous.as_ref().map(|p| p.display().to_string()),
        "note": if session.committed {
            "the restored files stay in place; the previous dump (and AOF) are kept with the .pre-restore suffix"
        } else {
            "nothing was changed"
        },
    }))
}
