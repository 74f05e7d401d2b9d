//! The Unix-socket server: accept, check the peer, read one request, dispatch, answer,
//! and shut down cleanly.
//!
//! * The peer's uid is checked with `SO_PEERCRED` and decides what it may do
//!   ([`crate::access`]). The socket is mode 0600, or 0666 when `--allow-uid` names
//!   operators (the peer check, not the file mode, keeps everyone else out; a socket
//!   directory the agent creates is then 0711 so that they can reach it).
//! * A request line is read with a hard 1 MiB cap and a deadline, and every response
//!   line is written with a deadline, so a slow or hostile client can hold neither
//!   memory nor a task forever.
//! * Every connection runs in its own task; a bad request gets an error line and the
//!   server carries on.
//! * SIGTERM cancels the shared token: the accept loop stops, running operations abort
//!   the way any failed operation does (cli killed, upload aborted, failure recorded),
//!   and `serve` returns once they finished.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::access::{authorize, role_of};
use crate::config::AgentConfig;
use crate::ops::{self, AgentState};
use crate::protocol::{parse_request, ErrorCode, Event, RequestError, MAX_REQUEST_BYTES};

/// Default socket path (DESIGN.md).
pub const DEFAULT_SOCKET: &str = "/run/valkey-backup-agent/agent.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/valkey-backup-agent";
/// How long a client may take to send its request line.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long one response line may take to reach a client.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// How long shutdown waits for operations to abort and record their failure. The charm's
/// systemd unit (charm/src/service.py) allows 30 s more before it kills the agent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Peer uids that are served; the agent's own uid and root are always allowed.
    pub allowed_uids: Vec<u32>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn serve(opts: ServeOptions, shutdown: CancellationToken) -> Result<(), ServeError> {
    prepare_dir(&opts.state_dir, 0o700)?;
    let operators = !opts.allowed_uids.is_empty();
    if let Some(parent) = opts.socket.parent() {
        if !parent.exists() {
            prepare_dir(parent, if operators { 0o711 } else { 0o700 })?;
        }
    }
    // A stored configuration that cannot be used must not keep the agent from serving:
    // it starts unconfigured and says why, and the next `configure` replaces it.
    let config = match AgentConfig::load(&opts.state_dir) {
        Ok(Some(c)) => {
            info!(state_dir = %opts.state_dir.display(), "loaded stored configuration");
            if let Err(e) = c.check_paths() {
                warn!(error = %e, "the stored configuration names a missing file");
            }
            Some(c)
        }
        Ok(None) => None,
        Err(e) => {
            error!(error = %e, "ignoring the stored configuration; send configure again");
            None
        }
    };
    let listener = bind(&opts.socket, if operators { 0o666 } else { 0o600 }).await?;
    // Before serving: what an agent killed mid-verify left (a scratch server, a dump copy).
    // And the temp files of state writes it was killed in the middle of.
    let state_dir = opts.state_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        ops::verify_backup::clean_leftover_scratch(&state_dir);
        match crate::statefile::clean_leftovers(&state_dir) {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "removed temp files an earlier agent left"),
            Err(e) => warn!(error = %e, "could not clean up temp files an earlier agent left"),
        }
    })
    .await;
    let allowed = Arc::new(Peers {
        own_uid: nix::unistd::geteuid().as_raw(),
        operators: opts.allowed_uids.clone(),
    });
    let state = AgentState::new(opts.state_dir.clone(), config, shutdown.clone());
    // Sentinel settings a restore raised and an agent killed mid-restore never put back.
    // The server may still be stopped (the agent was killed mid-restore): each Sentinel
    // gets its value back once it hears the server, or after the bound.
    ops::restore_backup::spawn_put_back(Arc::clone(&state), Duration::from_secs(600));
    let tracker = TaskTracker::new();
    for job in [crate::scheduler::Job::Backup, crate::scheduler::Job::Verify] {
        tracker.spawn(crate::scheduler::run(
            Arc::clone(&state),
            job,
            shutdown.clone(),
        ));
    }
    tracker.spawn(crate::exporter::run_endpoint(
        Arc::clone(&state),
        shutdown.clone(),
    ));
    info!(socket = %opts.socket.display(), version = crate::AGENT_VERSION, "agent serving");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = Arc::clone(&state);
                    let allowed = Arc::clone(&allowed);
                    tracker.spawn(async move { handle(stream, state, &allowed).await });
                }
                Err(e) => {
                    error!(error = %e, "accept failed");
                    // Avoid a hot loop on persistent errors such as EMFILE.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Stop answering at once: new clients get "connection refused", not silence.
    drop(listener);
    let _ = std::fs::remove_file(&opts.socket);
    info!("shutting down: waiting for running operations to stop");
    // A prepared restore is aborted and its Sentinels put back before the process exits
    // (the charm's remove hook deletes the state directory, and the record with it).
    ops::restore_backup::abort_current(&state).await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("operations did not stop within the grace period");
    }
    // A step that was running when the shutdown came put its session back: abort it now,
    // then put back whatever record is left.
    ops::restore_backup::abort_current(&state).await;
    ops::restore_backup::put_back_at_shutdown(&state).await;
    info!("agent stopped");
    Ok(())
}

fn prepare_dir(dir: &Path, mode: u32) -> Result<(), ServeError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

/// Binds the socket, replacing a stale one but never a live agent's.
async fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(listener)
}

/// The uids the socket serves besides root.
struct Peers {
    own_uid: u32,
    /// `--allow-uid`: served with the operator role.
    operators: Vec<u32>,
}

/// Serves one connection: one request, its events, one final line.
async fn handle(stream: UnixStream, state: Arc<AgentState>, allowed: &Peers) {
    let started = Instant::now();
    let (uid, pid) = match stream.peer_cred() {
        Ok(c) => (c.uid(), c.pid()),
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let (read_half, mut write_half) = stream.into_split();
    let Some(role) = role_of(uid, allowed.own_uid, &allowed.operators) else {
        let line = Event::Error {
            code: ErrorCode::PermissionDenied,
            message: "this socket serves only root and the agent's own user".into(),
        }
        .to_line();
        let _ = write_half.write_all(&line).await;
        info!(target: "audit", peer_uid = uid, peer_pid = pid, op = "-", result = "permission-denied", "refused peer");
        return;
    };

    let request = match read_request(read_half, &state.shutdown).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write_half
                .write_all(
                    &Event::Error {
                        code: e.code(),
                        message: e.to_string(),
                    }
                    .to_line(),
                )
                .await;
            info!(target: "audit", peer_uid = uid, peer_pid = pid, op = "-", result = e.code().as_str(), "bad request");
            return;
        }
    };

    if let Err(why) = authorize(role, request.op, &request.params) {
        let line = Event::Error {
            code: ErrorCode::PermissionDenied,
            message: why,
        }
        .to_line();
        let _ = write_half.write_all(&line).await;
        info!(target: "audit", peer_uid = uid, peer_pid = pid, op = request.op.as_str(), result = "permission-denied", "refused operation");
        return;
    }

    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let writer = tokio::spawn(async move {
        // A vanished client must not stop the operation: keep draining, stop writing.
        // A client that stops reading gets WRITE_DEADLINE per line, then is written off.
        let mut open = true;
        while let Some(event) = rx.recv().await {
            if open {
                let line = event.to_line();
                let write = tokio::time::timeout(WRITE_DEADLINE, write_half.write_all(&line));
                open = matches!(write.await, Ok(Ok(())));
            }
        }
        let _ = write_half.shutdown().await;
    });

    let op = request.op;
    tracing::debug!(peer_uid = uid, peer_pid = pid, op = op.as_str(), "request");
    let outcome = ops::dispatch(&state, op, request.params, tx.clone()).await;
    let (final_event, result_code, backup_id) = match outcome {
        Ok(reply) => {
            let id = reply.backup_id().map(str::to_owned);
            (
                Event::Result {
                    data: reply.to_value(),
                },
                "ok",
                id,
            )
        }
        Err(e) => {
            let code = e.code();
            if code == ErrorCode::Internal {
                error!(op = op.as_str(), error = %e, "operation failed");
            }
            (
                Event::Error {
                    code,
                    message: e.to_string(),
                },
                code.as_str(),
                None,
            )
        }
    };
    let _ = tx.send(final_event).await;
    drop(tx);
    let _ = writer.await;
    info!(
        target: "audit",
        peer_uid = uid,
        peer_pid = pid,
        op = op.as_str(),
        result = result_code,
        backup_id = backup_id.as_deref().unwrap_or("-"),
        duration_ms = started.elapsed().as_millis() as u64,
        "operation"
    );
}

/// Reads one request line, at most [`MAX_REQUEST_BYTES`], within the deadline.
async fn read_request(
    read_half: tokio::net::unix::OwnedReadHalf,
    shutdown: &CancellationToken,
) -> Result<crate::protocol::Request, RequestError> {
    let mut reader = BufReader::new(read_half).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    // A silent client must hold up neither its task nor the agent's shutdown.
    let read = tokio::select! {
        _ = shutdown.cancelled() => {
            return Err(RequestError::ShuttingDown);
        }
        r = tokio::time::timeout(REQUEST_DEADLINE, reader.read_until(b'\n', &mut line)) => r,
    };
    match read {
        Err(_) => {
            return Err(RequestError::BadShape(
                "no complete request line within 30 seconds".into(),
            ))
        }
        Ok(Err(_)) => return Err(RequestError::BadShape("could not read the request".into())),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    if line.is_empty() {
        return Err(RequestError::BadShape("empty request".into()));
    }
    parse_request(&line)
}
