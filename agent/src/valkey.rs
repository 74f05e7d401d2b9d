//! Running `valkey-cli` / `redis-cli` (the `cli` source), and what `INFO` says.
//!
//! With `valkey.source: cli` the operator's own cli speaks the replication protocol
//! (`--rdb -`) and answers `INFO` / `CONFIG GET`. This module builds its command line and
//! environment so that
//!
//! * the password travels only in `REDISCLI_AUTH` and `VALKEYCLI_AUTH` (never argv,
//!   which any local user can read in `/proc`), with a cleared environment otherwise;
//! * stderr is drained concurrently into a bounded tail, so a chatty cli can never block
//!   on a full pipe and never grows the agent's memory;
//! * failures are classified from that tail into unreachable / auth / other.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout, Command};

use crate::config::ValkeySettings;

/// How much of the cli's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// The largest answer read from the cli (`INFO everything` is tens of KiB): the bound the
/// built-in client puts on `INFO` (`connection::MAX_INFO_REPLY`, not imported: that
/// module builds on this one).
pub const MAX_INFO_REPLY: usize = 4 << 20;
/// How long `INFO` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(30);

/// A classified cli failure. Messages hold at most one sanitised line of cli output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValkeyError {
    #[error("cannot connect to Valkey at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("Valkey rejected the credentials: {detail}")]
    Auth { detail: String },
    /// The credentials are right but the ACL user may not run what a backup needs.
    #[error("the Valkey user lacks a permission backups need (grant +sync +replconf +info +config|get, or use a user such as charmed-operator): {detail}")]
    Permission { detail: String },
    #[error("valkey-cli failed: {detail}")]
    Cli { detail: String },
    #[error("cannot run {cli}: {detail}")]
    Spawn { cli: String, detail: String },
    /// The server refused a command the agent needs (`REPLCONF`, `SYNC`, `CONFIG GET`).
    #[error("the server refused {command}: {detail}")]
    Refused { command: String, detail: String },
    /// The peer does not answer in the Valkey protocol (a wrong port, a proxy, a fault).
    #[error("{addr} does not answer like a Valkey server: {detail}")]
    Protocol { addr: String, detail: String },
    /// The replication stream broke off or stalled before the snapshot's end.
    #[error("the snapshot transfer broke off: {detail}")]
    Interrupted { detail: String },
}

/// What `INFO` told us about the server before a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `valkey` or `redis`.
    pub kind: String,
    pub version: String,
    pub used_memory: Option<u64>,
    /// `master` or `slave`.
    pub role: Option<String>,
    /// A replica's `master_link_status` (`up` → true); `None` on a primary.
    pub master_link_up: Option<bool>,
    /// Key counts per database (`db0` → n) at the time of `INFO`.
    pub keyspace: Vec<(String, u64)>,
    /// Whether the server is still loading its dataset.
    pub loading: bool,
    /// The server's pid (in its own pid namespace).
    pub process_id: Option<u32>,
    /// `run_id`: changes at every start (Sentinel reports it as the master's `runid`).
    pub run_id: Option<String>,
    /// A replica's primary (`master_host`, `master_port`).
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    /// A primary's replication offset.
    pub master_repl_offset: Option<u64>,
    /// A primary's replicas as it reports them (`slaveN:` lines).
    pub replicas: Vec<ReplicaLine>,
}

/// One `slaveN:ip=…,port=…,state=…,offset=…,lag=…` line of `INFO replication`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaLine {
    pub ip: String,
    pub port: u16,
    pub state: String,
    pub offset: u64,
}

impl ReplicaLine {
    fn parse(v: &str) -> Option<Self> {
        let mut line = ReplicaLine::default();
        for kv in v.split(',') {
            let (k, v) = kv.split_once('=')?;
            match k {
                "ip" => line.ip = v.to_owned(),
                "port" => line.port = v.parse().ok()?,
                "state" => line.state = v.to_owned(),
                "offset" => line.offset = v.parse().ok()?,
                _ => {}
            }
        }
        (!line.ip.is_empty() && line.port != 0).then_some(line)
    }

    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl ServerInfo {
    /// Parses the text of `INFO`.
    pub fn parse(text: &str) -> Self {
        let mut info = ServerInfo::default();
        let mut redis_version = None;
        let mut valkey_version = None;
        for line in text.lines() {
            let Some((k, v)) = line.trim_end_matches('\r').split_once(':') else {
                continue;
            };
            match k {
                "redis_version" => redis_version = Some(v.to_owned()),
                "valkey_version" => valkey_version = Some(v.to_owned()),
                "server_name" if v == "valkey" => info.kind = "valkey".into(),
                "used_memory" => info.used_memory = v.parse().ok(),
                "role" => info.role = Some(v.to_owned()),
                "master_link_status" => info.master_link_up = Some(v == "up"),
                "loading" => info.loading = v == "1",
                "process_id" => info.process_id = v.parse().ok(),
                "run_id" => info.run_id = Some(v.to_owned()),
                "master_host" => info.master_host = Some(v.to_owned()),
                "master_port" => info.master_port = v.parse().ok(),
                "master_repl_offset" => info.master_repl_offset = v.parse().ok(),
                k if k.starts_with("slave") && k[5..].bytes().all(|b| b.is_ascii_digit()) => {
                    info.replicas.extend(ReplicaLine::parse(v));
                }
                k if k.starts_with("db") && k[2..].bytes().all(|b| b.is_ascii_digit()) => {
                    let keys = v
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("keys="))
                        .and_then(|n| n.parse().ok());
                    if let Some(n) = keys {
                        info.keyspace.push((k.to_owned(), n));
                    }
                }
                _ => {}
            }
        }
        if let Some(v) = valkey_version {
            info.kind = "valkey".into();
            info.version = v;
        } else {
            if info.kind.is_empty() {
                info.kind = "redis".into();
            }
            info.version = redis_version.unwrap_or_default();
        }
        info
    }
}

/// Builds cli invocations for one configured server.
#[derive(Debug, Clone)]
pub struct ValkeyCli {
    settings: ValkeySettings,
}

impl ValkeyCli {
    /// A cli for the configured server (`settings.cli` must be set: `source: cli`).
    pub fn new(settings: ValkeySettings) -> Self {
        ValkeyCli { settings }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// The command with connection flags; the password goes into the environment.
    fn command(&self) -> Command {
        let s = &self.settings;
        let mut cmd = Command::new(self.cli_path());
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C");
        cmd.arg("-h").arg(&s.host).arg("-p").arg(s.port.to_string());
        cmd.arg("--no-auth-warning");
        if let Some(user) = &s.username {
            cmd.arg("--user").arg(user);
        }
        if let Some(pw) = s.password.as_ref().filter(|p| !p.is_empty()) {
            cmd.env("REDISCLI_AUTH", pw.expose())
                .env("VALKEYCLI_AUTH", pw.expose());
        }
        if let Some(tls) = s.tls.as_ref().filter(|t| t.enabled) {
            cmd.arg("--tls");
            if let Some(p) = &tls.ca_file {
                cmd.arg("--cacert").arg(p);
            }
            if let Some(p) = &tls.ca_dir {
                cmd.arg("--cacertdir").arg(p);
            }
            if let Some(p) = &tls.cert_file {
                cmd.arg("--cert").arg(p);
            }
            if let Some(p) = &tls.key_file {
                cmd.arg("--key").arg(p);
            }
            if let Some(sni) = &tls.sni {
                cmd.arg("--sni").arg(sni);
            }
            if tls.insecure {
                cmd.arg("--insecure");
            }
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    fn cli_path(&self) -> PathBuf {
        self.settings.cli.clone().unwrap_or_default()
    }

    fn spawn_error(&self, e: std::io::Error) -> ValkeyError {
        ValkeyError::Spawn {
            cli: self.cli_path().display().to_string(),
            detail: e.kind().to_string(),
        }
    }

    /// Runs one command and returns its output; server errors become [`ValkeyError`].
    /// The cli's stdout is read up to [`MAX_INFO_REPLY`] (the bound the built-in client
    /// puts on `INFO`) and its stderr up to [`STDERR_TAIL`] (the rest is drained and
    /// dropped): a cli or server that answers without end never grows the agent's
    /// memory, and stdout over the bound is an error, not a truncated answer.
    async fn run(&self, args: &[&str]) -> Result<String, ValkeyError> {
        let mut cmd = self.command();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // stderr in its own task: stdout is read (and the cli killed when it says too
        // much) without waiting for the cli to close stderr.
        let err_task = tokio::spawn(read_bounded(stderr, STDERR_TAIL, false));
        let timed_out = || ValkeyError::Unreachable {
            addr: self.addr(),
            detail: format!("{} timed out", args[0]),
        };
        // One deadline for the whole exchange.
        let deadline = tokio::time::Instant::now() + INFO_TIMEOUT;
        let out =
            tokio::time::timeout_at(deadline, read_bounded(stdout, MAX_INFO_REPLY, true)).await;
        let (stdout, stdout_whole) = match out {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(self.spawn_error(e));
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(timed_out());
            }
        };
        if !stdout_whole {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ValkeyError::Cli {
                detail: format!(
                    "the answer to {} exceeds {MAX_INFO_REPLY} bytes; refusing to read more",
                    args[0]
                ),
            });
        }
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(s) => s.map_err(|e| self.spawn_error(e))?,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(timed_out());
            }
        };
        // The cli has exited; a grandchild holding stderr open must not hold us.
        let stderr = match tokio::time::timeout_at(deadline, err_task).await {
            Ok(Ok(Ok((bytes, _)))) => bytes,
            _ => Vec::new(),
        };
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr);
        // Some cli versions print server errors on stdout and still exit 0.
        let looks_failed = !status.success()
            || ["ERR", "NOAUTH", "WRONGPASS", "NOPERM", "LOADING"]
                .iter()
                .any(|p| stdout.starts_with(p))
            || (stdout.is_empty() && !stderr.trim().is_empty());
        if looks_failed {
            return Err(self.classify(&format!("{stderr}\n{stdout}"), status));
        }
        Ok(stdout)
    }

    /// Runs `INFO` (server, memory, replication, persistence, keyspace).
    pub async fn info(&self) -> Result<ServerInfo, ValkeyError> {
        let text = self.run(&["INFO", "everything"]).await?;
        if !text.contains("_version:") {
            return Err(ValkeyError::Cli {
                detail: "INFO returned no server section".into(),
            });
        }
        Ok(ServerInfo::parse(&text))
    }

    /// `CONFIG GET name`: the value, or `None` when the server has no such parameter.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, ValkeyError> {
        let text = self.run(&["CONFIG", "GET", name]).await?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(k), Some(v)) if k.eq_ignore_ascii_case(name) => Ok(Some(v.to_owned())),
            _ => Ok(None),
        }
    }

    /// Whether the server is definitely stopped: only a refused connection (or a missing
    /// socket file) counts. Any answer — PONG, NOAUTH, LOADING, BUSY — a timeout or a cli
    /// that cannot run means "not known to be stopped", because replacing a live
    /// server's dump would be silently undone by its next save.
    pub async fn is_stopped(&self) -> bool {
        match self.run(&["PING"]).await {
            Err(ValkeyError::Unreachable { detail, .. }) => {
                let d = detail.to_ascii_lowercase();
                d.contains("connection refused") || d.contains("no such file")
            }
            _ => false,
        }
    }

    /// Starts `--rdb -`: the snapshot arrives on the returned stdout.
    pub fn spawn_rdb(&self) -> Result<RdbProcess, ValkeyError> {
        let mut cmd = self.command();
        cmd.arg("--rdb")
            .arg("-")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let sink = Arc::clone(&tail);
        let drain = tokio::spawn(async move {
            let mut stderr = stderr;
            let mut buf = [0u8; 1024];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut t = sink.lock().expect("stderr tail lock");
                        for &b in &buf[..n] {
                            if t.len() == STDERR_TAIL {
                                t.pop_front();
                            }
                            t.push_back(b);
                        }
                    }
                }
            }
        });
        Ok(RdbProcess {
            child,
            stdout: Some(stdout),
            tail,
            drain: Some(drain),
            cli: self.clone(),
        })
    }

    /// Classifies cli output into unreachable / auth / other.
    pub fn classify(&self, output: &str, status: std::process::ExitStatus) -> ValkeyError {
        let lower = output.to_ascii_lowercase();
        let line = last_meaningful_line(output);
        if lower.contains("noperm") {
            return ValkeyError::Permission { detail: line };
        }
        if [
            "wrongpass",
            "noauth",
            "auth failed",
            "invalid password",
            "invalid username-password",
        ]
        .iter()
        .any(|p| lower.contains(p))
        {
            return ValkeyError::Auth { detail: line };
        }
        if [
            "could not connect",
            "connection refused",
            "name or service not known",
            "timed out",
            "no route to host",
            "ssl",
            "tls",
        ]
        .iter()
        .any(|p| lower.contains(p))
        {
            return ValkeyError::Unreachable {
                addr: self.addr(),
                detail: line,
            };
        }
        let detail = if line.is_empty() {
            describe_status(status)
        } else {
            format!("{line} ({})", describe_status(status))
        };
        ValkeyError::Cli { detail }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown exit".into(),
    }
}

/// Reads `r` keeping at most `max` bytes; returns them and whether everything fitted.
/// With `stop_over` the read stops at the first byte over the bound (stdout: the caller
/// kills the cli); without, the excess is read and dropped until the end (stderr: nobody
/// wants it, but reading on keeps the cli from blocking on a full pipe).
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    max: usize,
    stop_over: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut whole = true;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, whole));
        }
        let room = max - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            whole = false;
            if stop_over {
                return Ok((kept, false));
            }
        }
    }
}

/// The last non-empty line of cli output, trimmed to printable ASCII and 200 characters.
fn last_meaningful_line(output: &str) -> String {
    let line = output
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("sending REPLCONF"))
        .unwrap_or("");
    line.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// A running `--rdb -`.
pub struct RdbProcess {
    child: Child,
    stdout: Option<ChildStdout>,
    tail: Arc<Mutex<VecDeque<u8>>>,
    drain: Option<tokio::task::JoinHandle<()>>,
    cli: ValkeyCli,
}

impl RdbProcess {
    /// The snapshot stream (taken once).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.stdout.take().expect("stdout taken once")
    }

    /// Kills the cli (idempotent) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits for the cli to exit after its stdout ended; `Ok` only on exit status 0.
    pub async fn wait(&mut self) -> Result<(), ValkeyError> {
        let status = self.child.wait().await.map_err(|e| ValkeyError::Cli {
            detail: format!("wait failed: {}", e.kind()),
        })?;
        if let Some(drain) = self.drain.take() {
            let _ = drain.await;
        }
        if status.success() {
            return Ok(());
        }
        Err(self.cli.classify(&self.stderr_tail(), status))
    }

    /// The last few KiB the cli wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let t = self.tail.lock().expect("stderr tail lock");
        String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parses_valkey_and_redis() {
        let v = ServerInfo::parse("# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\nrole:master\r\nused_memory:1024\r\ndb0:keys=10,expires=1,avg_ttl=0\r\ndb3:keys=2,expires=0\r\n");
        assert_eq!(v.kind, "valkey");
        assert_eq!(v.version, "8.1.8");
        assert_eq!(v.used_memory, Some(1024));
        assert_eq!(v.role.as_deref(), Some("master"));
        assert_eq!(v.keyspace, vec![("db0".into(), 10), ("db3".into(), 2)]);
        let p = ServerInfo::parse("role:master\r\nrun_id:abc\r\nmaster_repl_offset:42\r\nslave0:ip=10.0.0.2,port=6379,state=online,offset=42,lag=0\r\nslave1:ip=10.0.0.3,port=6379,state=wait_bgsave,offset=0,lag=0\r\nslave_read_only:1\r\n");
        assert_eq!(p.run_id.as_deref(), Some("abc"));
        assert_eq!(p.master_repl_offset, Some(42));
        assert_eq!(p.replicas.len(), 2, "slave_read_only is not a replica line");
        assert_eq!(p.replicas[0].addr(), "10.0.0.2:6379");
        assert_eq!(
            (p.replicas[1].state.as_str(), p.replicas[1].offset),
            ("wait_bgsave", 0)
        );
        let r = ServerInfo::parse(
            "redis_version:7.0.15\nrole:slave\nmaster_host:10.0.0.1\nmaster_port:6380\n",
        );
        assert_eq!(
            (r.master_host.as_deref(), r.master_port),
            (Some("10.0.0.1"), Some(6380))
        );
        assert_eq!((r.kind.as_str(), r.version.as_str()), ("redis", "7.0.15"));
    }

    /// A cli at `dir/cli` running `body` (a shell script).
    fn fake_cli(dir: &std::path::Path, body: &str) -> ValkeyCli {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("cli");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut settings = ValkeySettings::local_default();
        settings.cli = Some(path);
        ValkeyCli::new(settings)
    }

    #[tokio::test]
    async fn info_output_over_the_bound_is_refused_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB of answer (twice the bound), then what looks like a server section.
        let cli = fake_cli(
            dir.path(),
            "head -c 8388608 /dev/zero | tr '\\0' x; printf '\\nredis_version:7.0.0\\n'",
        );
        let started = std::time::Instant::now();
        let err = cli.info().await.unwrap_err();
        assert!(
            matches!(&err, ValkeyError::Cli { detail } if detail.contains("exceeds 4194304 bytes")),
            "{err:?}"
        );
        assert!(started.elapsed() < INFO_TIMEOUT, "{:?}", started.elapsed());
        // The same for CONFIG GET, from a cli that never stops talking.
        let cli = fake_cli(dir.path(), "exec yes dir");
        let err = cli.config_get("dir").await.unwrap_err();
        assert!(matches!(err, ValkeyError::Cli { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_flood_on_stderr_neither_blocks_the_cli_nor_fills_memory() {
        let dir = tempfile::tempdir().unwrap();
        // 16 MiB on stderr (more than a pipe holds), then a normal answer.
        let cli = fake_cli(
            dir.path(),
            "head -c 16777216 /dev/zero >&2; printf 'dir\\n/var/lib/valkey\\n'",
        );
        assert_eq!(
            cli.config_get("dir").await.unwrap().as_deref(),
            Some("/var/lib/valkey")
        );
    }

    #[test]
    fn last_line_skips_replconf_chatter_and_controls() {
        let out = "sending REPLCONF capa eof\nSYNC with primary failed: -NOAUTH Authentication required.\n\n";
        assert_eq!(
            last_meaningful_line(out),
            "SYNC with primary failed: -NOAUTH Authentication required."
        );
        assert_eq!(last_meaningful_line("a\x1b[0mb"), "a[0mb");
    }
}
