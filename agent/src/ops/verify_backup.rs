//! `verify-backup`: prove a stored backup is intact, and with `load` that a server loads it.
//!
//! The check re-reads the object through [`download_checked`] (size, SHA-256, RDB
//! trailer, CRC64 against the manifest). With `load`, the file goes to a scratch server
//! that can load the backup's RDB format (`server` when given, else the first
//! `valkey-server`/`redis-server` beside the configured cli or in the system's binary
//! directories whose `--version` says it can, see [`crate::rdb_compat`]), which listens
//! only on a Unix socket in a temporary directory, and its key counts per database are
//! compared with the manifest. When no server on the machine can load the format, the
//! request fails saying which servers were found and what they load. The outcome is written as a new object
//! `verify/<time>-<hex>.json` — never by changing the manifest — and `list-backups` shows the
//! latest one. Backups of another cluster are verified read-only: no record is written.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{info, warn};

use super::state::{params, AgentState};
use crate::backup_id::BackupId;
use crate::connection::NativeClient;
use crate::error::{Check, OpError};
use crate::fetch::{download_checked, finished_manifest, keys_for};
use crate::layout::{Layout, ManifestV1, VerifyRecord, MANIFEST_FORMAT};
use crate::pipeline::Discard;
use crate::progress::{EventSink, ProgressReporter};
use crate::protocol::{KeyCounts, LoadReport, VerifyBackupParams, VerifyResult};
use crate::rdb::RdbFormat;
use crate::rdb_compat::{self, ServerVersion};
use crate::storage::{put_json, ObjectStore};
use crate::timefmt::rfc3339;

/// Where scratch servers are looked for when neither `server` nor a cli names one.
const SERVER_DIRS: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/snap/bin", "/usr/sbin"];
/// How long `<server> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a scratch server may take to load a backup.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Verifies one backup against its manifest (and with `load`, in a scratch server),
/// recording the verdict for the configured cluster.
pub async fn run(
    state: &Arc<AgentState>,
    raw: Value,
    events: EventSink,
) -> Result<VerifyResult, OpError> {
    let p: VerifyBackupParams = params(raw)?;
    let (config, s3) = state.storage()?;
    let id = BackupId::parse(&p.backup_id).map_err(|e| OpError::BadRequest(e.to_string()))?;
    let cluster = config.cluster_or(p.source_cluster.as_deref())?;
    let own = cluster == config.cluster;
    let store = state.open_store(&s3)?;
    let layout = Layout::new(s3.clean_path(), &cluster);
    let manifest = finished_manifest(&*store, &layout, &id).await?;
    let identities = config.identities()?;
    keys_for(&manifest, &identities)?;
    let server = if p.load {
        let format = rdb_compat::manifest_format(&manifest.rdb_magic, manifest.rdb_version);
        Some(pick_server(p.server.as_deref(), config.valkey.cli.as_deref(), &format).await?)
    } else {
        None
    };
    let mut reporter = ProgressReporter::new(events, Some(id.to_string()));

    let scratch = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(&state.state_dir)
        .map_err(|e| OpError::LocalIo(format!("scratch directory: {}", e.kind())))?;
    let outcome = check(
        &*store,
        &manifest,
        &identities,
        p.load,
        server.as_deref(),
        scratch.path(),
        &mut reporter,
        state,
    )
    .await;

    // Only a verdict is recorded: a pass, or a failed check of the backup itself. A
    // cancelled run or an unreachable store says nothing about the backup.
    let failed_check = match &outcome {
        Ok(_) => None,
        Err(OpError::Integrity { check, .. }) => Some(*check),
        Err(_) => {
            drop_scratch(scratch).await;
            return Err(outcome.expect_err("matched an error"));
        }
    };
    let checked_at = OffsetDateTime::now_utc();
    let ok = failed_check.is_none();
    let record = VerifyRecord {
        format_version: MANIFEST_FORMAT,
        backup_id: id.to_string(),
        checked_at: rfc3339(checked_at),
        unit: config.unit.clone(),
        ok,
        code: outcome.as_ref().err().map(|e| e.code().as_str().to_owned()),
        reason: outcome.as_ref().err().map(ToString::to_string),
        failed_check: failed_check.map(|c| c.as_str().to_owned()),
        size_bytes: manifest.stored_size_bytes,
        load: outcome.as_ref().ok().cloned().flatten(),
        agent_version: crate::AGENT_VERSION.into(),
    };
    drop_scratch(scratch).await;
    let record_key = if own {
        let key = layout.verify_key(&id, checked_at);
        if let Err(e) = put_json(&*store, &key, &record).await {
            warn!(backup_id = %id, error = %e, "could not write the verification record");
            return Err(e.into());
        }
        Some(key)
    } else {
        None
    };
    info!(backup_id = %id, ok, "verification finished");
    outcome?;
    state.metrics.verify_succeeded(checked_at.unix_timestamp());
    state.metrics.save().await;
    Ok(VerifyResult {
        backup_id: id.to_string(),
        ok: true,
        checked_at: record.checked_at,
        size_bytes: manifest.stored_size_bytes,
        sha256: manifest.sha256,
        load: record.load,
        record_key,
    })
}

/// The prefix of scratch directories in the state directory.
const SCRATCH_PREFIX: &str = "verify-";
/// The scratch server's pid, written beside its dump.
const SCRATCH_PIDFILE: &str = "server.pid";

/// At startup: removes the scratch directories (each possibly a full copy of a dump) and
/// kills the scratch servers that an agent killed in the middle of `verify --load` left.
/// A pid counts only while its command line still names that scratch directory. Blocking.
pub fn clean_leftover_scratch(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let dir = entry.path();
        if let Some(pid) = std::fs::read_to_string(dir.join(SCRATCH_PIDFILE))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let needle = dir.as_os_str().as_encoded_bytes();
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                warn!(pid, dir = %dir.display(), "killing a scratch server an earlier agent left");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        warn!(dir = %dir.display(), "removing a scratch directory an earlier agent left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Deletes the scratch directory (possibly a multi-GiB dump) off the async workers.
async fn drop_scratch(scratch: tempfile::TempDir) {
    let _ = tokio::task::spawn_blocking(move || drop(scratch)).await;
}

/// The scratch server for a backup of `format`: `requested` if it can load it, else the
/// first candidate (beside the cli, then [`SERVER_DIRS`]) whose version can.
async fn pick_server(
    requested: Option<&Path>,
    cli: Option<&Path>,
    format: &RdbFormat,
) -> Result<PathBuf, OpError> {
    let wanted = rdb_compat::format_name(format);
    let candidates: Vec<PathBuf> = match requested {
        Some(p) => vec![p.to_owned()],
        None => {
            let mut dirs: Vec<PathBuf> = cli
                .and_then(Path::parent)
                .map(Path::to_owned)
                .into_iter()
                .collect();
            dirs.extend(SERVER_DIRS.iter().map(PathBuf::from));
            dirs.iter()
                .flat_map(|d| [d.join("valkey-server"), d.join("redis-server")])
                .collect()
        }
    };
    let mut found = Vec::new();
    for path in candidates {
        if !path.is_file() {
            if requested.is_some() {
                return Err(OpError::BadRequest(format!(
                    "server {} does not exist",
                    path.display()
                )));
            }
            continue;
        }
        match server_version(&path).await {
            Some(v) if v.can_load(format) => return Ok(path),
            Some(v) => found.push(format!(
                "{} is {} ({})",
                path.display(),
                v.display_name(),
                v.loads()
            )),
            None => found.push(format!("{} does not report a version", path.display())),
        }
    }
    let seen = if found.is_empty() {
        "no valkey-server or redis-server was found".to_owned()
    } else {
        found.join("; ")
    };
    Err(OpError::BadRequest(format!(
        "no server on this machine can load this backup's RDB {wanted}: {seen}. \
         Pass server with the path of one that can (VALKEY formats need Valkey 9 or later)"
    )))
}

/// `<server> --version`, parsed.
async fn server_version(server: &Path) -> Option<ServerVersion> {
    let out = tokio::time::timeout(
        VERSION_TIMEOUT,
        Command::new(server)
            .env_clear()
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    ServerVersion::from_version_output(&String::from_utf8_lossy(&out.stdout))
}

#[allow(clippy::too_many_arguments)]
async fn check(
    store: &dyn ObjectStore,
    manifest: &ManifestV1,
    identities: &[age::x25519::Identity],
    load: bool,
    server: Option<&Path>,
    scratch: &Path,
    reporter: &mut ProgressReporter,
    state: &AgentState,
) -> Result<Option<LoadReport>, OpError> {
    let rdb = scratch.join("dump.rdb");
    if !load {
        download_checked(
            store,
            manifest,
            identities,
            &mut Discard,
            reporter,
            "verifying",
            &state.shutdown,
        )
        .await?;
        return Ok(None);
    }
    let mut file = tokio::fs::File::create(&rdb)
        .await
        .map_err(|e| OpError::LocalIo(format!("scratch file: {}", e.kind())))?;
    download_checked(
        store,
        manifest,
        identities,
        &mut file,
        reporter,
        "verifying",
        &state.shutdown,
    )
    .await?;
    file.flush()
        .await
        .map_err(|e| OpError::LocalIo(format!("scratch file: {}", e.kind())))?;
    drop(file);
    let server = server.expect("resolved when load is set");
    reporter.update("loading", manifest.raw_size_bytes, None, true);
    let keys = load_in_scratch_server(server, scratch, &state.shutdown).await?;
    let expected: KeyCounts = manifest.keyspace_at_start.clone();
    let matches = keys == expected;
    if !matches && manifest.keyspace_exact {
        return Err(OpError::integrity(
            Check::Load,
            format!(
                "the backup loads with key counts {} but the source had {} when it was taken",
                counts_json(&keys),
                counts_json(&expected)
            ),
        ));
    }
    Ok(Some(LoadReport {
        loaded: true,
        keys,
        keys_at_backup: expected,
        keys_match: matches,
        keys_exact_at_backup: manifest.keyspace_exact,
    }))
}

fn counts_json(counts: &KeyCounts) -> String {
    serde_json::to_string(counts).expect("counts serialise")
}

/// Starts a server on `scratch/dump.rdb`, listening only on a Unix socket, waits until it
/// loaded, returns its key counts, and stops it.
async fn load_in_scratch_server(
    server: &Path,
    scratch: &Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<KeyCounts, OpError> {
    let socket = scratch.join("s.sock");
    let log = scratch.join("server.log");
    let mut command = Command::new(server);
    // The scratch server dies with the agent, even a SIGKILLed one (kill_on_drop needs the
    // agent alive to run). If the agent died before the call took effect, exit at once.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        let parent = std::process::id() as libc::pid_t;
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = command
        .env_clear()
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(["--unixsocketperm", "700", "--dir"])
        .arg(scratch)
        .args([
            "--dbfilename",
            "dump.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            OpError::BadRequest(format!("cannot start {}: {}", server.display(), e.kind()))
        })?;
    if let Some(pid) = child.id() {
        // For the next start's cleanup (see `clean_leftover_scratch`).
        let _ = tokio::fs::write(scratch.join(SCRATCH_PIDFILE), pid.to_string()).await;
    }
    let scratch_cli = NativeClient::scratch(socket.clone());
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let result = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let line = tail
                .lines()
                .rev()
                .find(|l| l.contains('#'))
                .unwrap_or("")
                .trim()
                .to_owned();
            break Err(OpError::integrity(
                Check::Load,
                format!("the scratch server could not load the backup ({status}): {line}"),
            ));
        }
        if socket.exists() {
            match scratch_cli.info().await {
                Ok(info) if !info.loading => {
                    break Ok(info
                        .keyspace
                        .iter()
                        .map(|(db, n)| (db.clone(), *n))
                        .collect());
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            break Err(OpError::ScratchServer("did not finish loading".into()));
        }
        if cancel.is_cancelled() {
            break Err(OpError::Cancelled);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}
