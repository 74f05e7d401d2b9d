//! The seam between the operations and whichever client talks to Valkey.
//!
//! `valkey.source` picks the client (see [`SourceKind`]): the built-in one
//! ([`crate::connection`], [`crate::replication`]) or `valkey-cli` ([`crate::valkey`]).
//! Operations see only two things: [`ValkeyAdmin`] for the few questions they ask a
//! server (`INFO`, `CONFIG GET`, "is it stopped?"), and [`Snapshot`], the bytes of one
//! RDB snapshot handed out chunk by chunk, with what the validator must know about its
//! framing.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::ChildStdout;

use crate::config::{SourceKind, ValkeySettings};
use crate::connection::NativeClient;
use crate::error::OpError;
use crate::rdb::RdbValidator;
use crate::replication::{ReplicationStream, READ_BUF};
use crate::valkey::{RdbProcess, ServerInfo, ValkeyCli, ValkeyError};

/// Answers the operations' questions about the configured server, with the configured
/// client.
#[derive(Debug, Clone)]
pub enum ValkeyAdmin {
    /// The agent's own RESP client (sources `auto` and `native`).
    Native(NativeClient),
    /// `valkey-cli` (source `cli`), exactly as before the built-in client existed.
    Cli(ValkeyCli),
}

impl ValkeyAdmin {
    /// The client `settings.source` selects.
    pub fn new(settings: &ValkeySettings) -> Self {
        match settings.effective_source() {
            SourceKind::Cli => ValkeyAdmin::Cli(ValkeyCli::new(settings.clone())),
            _ => ValkeyAdmin::Native(NativeClient::new(settings.clone())),
        }
    }

    /// `INFO everything`, parsed.
    pub async fn info(&self) -> Result<ServerInfo, ValkeyError> {
        match self {
            ValkeyAdmin::Native(c) => c.info().await,
            ValkeyAdmin::Cli(c) => c.info().await,
        }
    }

    /// `CONFIG GET name`.
    pub async fn config_get(&self, name: &str) -> Result<Option<String>, ValkeyError> {
        match self {
            ValkeyAdmin::Native(c) => c.config_get(name).await,
            ValkeyAdmin::Cli(c) => c.config_get(name).await,
        }
    }

    /// Whether the server is definitely stopped (only a refused connection counts).
    pub async fn is_stopped(&self) -> bool {
        match self {
            ValkeyAdmin::Native(c) => c.is_stopped().await,
            ValkeyAdmin::Cli(c) => c.is_stopped().await,
        }
    }
}

/// One snapshot in transfer, from either source.
pub enum Snapshot {
    /// The built-in replication client: framed exactly.
    Native(Box<ReplicationStream>),
    /// `valkey-cli --rdb -`: its stdout, which may end in a diskless EOF marker.
    Cli(Box<CliStream>),
}

/// A running `valkey-cli --rdb -` and its output.
pub struct CliStream {
    process: RdbProcess,
    stdout: Option<ChildStdout>,
    buf: Vec<u8>,
}

impl Snapshot {
    /// Starts a transfer with the configured source. `info` is what `INFO` said just
    /// before (the built-in source announces the server's version from it); `stall` bounds
    /// the wait for the snapshot to start.
    pub async fn open(
        settings: &ValkeySettings,
        info: &ServerInfo,
        stall: Duration,
    ) -> Result<Self, ValkeyError> {
        match settings.effective_source() {
            SourceKind::Cli => {
                let mut process = ValkeyCli::new(settings.clone()).spawn_rdb()?;
                let stdout = process.take_stdout();
                Ok(Snapshot::Cli(Box::new(CliStream {
                    process,
                    stdout: Some(stdout),
                    buf: vec![0u8; READ_BUF],
                })))
            }
            _ => {
                let conn = NativeClient::new(settings.clone()).connect().await?;
                let stream = ReplicationStream::start(conn, info, stall).await?;
                Ok(Snapshot::Native(Box::new(stream)))
            }
        }
    }

    /// `native` or `cli`, as manifests record it.
    pub fn source(&self) -> SourceKind {
        match self {
            Snapshot::Native(_) => SourceKind::Native,
            Snapshot::Cli(_) => SourceKind::Cli,
        }
    }

    /// The validator this stream needs: exact for the built-in source, EOF-marker aware
    /// for the cli.
    pub fn validator(&self) -> RdbValidator {
        match self {
            Snapshot::Native(_) => RdbValidator::exact(),
            Snapshot::Cli(_) => RdbValidator::new(),
        }
    }

    /// The next bytes of the snapshot, `None` at its end (at most [`READ_BUF`] bytes).
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>, ValkeyError> {
        match self {
            Snapshot::Native(s) => s.next_chunk().await,
            Snapshot::Cli(cli) => {
                let CliStream { stdout, buf, .. } = cli.as_mut();
                let Some(out) = stdout.as_mut() else {
                    return Ok(None);
                };
                let n = out.read(buf).await.map_err(|e| ValkeyError::Cli {
                    detail: format!("reading the cli's output: {}", e.kind()),
                })?;
                if n == 0 {
                    *stdout = None;
                    return Ok(None);
                }
                Ok(Some(&buf[..n]))
            }
        }
    }

    /// The error for a stream that sent nothing for `stall`.
    pub fn stalled(source: SourceKind, stall: Duration) -> ValkeyError {
        let secs = stall.as_secs();
        match source {
            SourceKind::Cli => ValkeyError::Cli {
                detail: format!(
                    "no data from the cli for {secs} s (backup.stall-timeout-seconds); the server may be hung"
                ),
            },
            _ => ValkeyError::Interrupted {
                detail: format!(
                    "no data from the server for {secs} s (backup.stall-timeout-seconds); the server may be hung"
                ),
            },
        }
    }

    /// After the last chunk: the cli must exit 0 (within `stall`); the built-in source is
    /// complete by construction.
    pub async fn finish(&mut self, stall: Duration) -> Result<(), ValkeyError> {
        match self {
            Snapshot::Native(_) => Ok(()),
            Snapshot::Cli(cli) => {
                let CliStream {
                    process, stdout, ..
                } = cli.as_mut();
                *stdout = None;
                match tokio::time::timeout(stall, process.wait()).await {
                    Ok(exit) => exit,
                    Err(_) => Err(ValkeyError::Cli {
                        detail: "the cli closed its output but did not exit".into(),
                    }),
                }
            }
        }
    }

    /// Stops the transfer: kills and reaps the cli, or closes the connection.
    pub async fn stop(self) {
        match self {
            Snapshot::Native(s) => drop(s),
            Snapshot::Cli(mut cli) => cli.process.kill().await,
        }
    }
}

/// What `create-backup` needs from a server, whatever the client: `INFO` before and
/// after (version, size estimate, key counts), the snapshot as an [`AsyncRead`], and, once
/// the reader ended, whether the producer ended well. [`ConfiguredSource`] is the
/// configured client; tests hand in a source of fixed bytes, so a whole backup runs
/// without a server.
#[async_trait::async_trait]
pub trait SnapshotSource: Send + Sync {
    /// How messages name the stream ("the cli", "the server").
    fn name(&self) -> &'static str;
    /// What manifests and results record as the source (`native`, `cli`).
    fn kind(&self) -> &'static str;
    /// Whether the stream is framed exactly (no diskless EOF marker can follow the RDB).
    fn exact(&self) -> bool;
    /// `INFO`: the server's kind, version, memory and key counts.
    async fn info(&mut self) -> Result<ServerInfo, OpError>;
    /// Starts the snapshot; `info` is what `INFO` said just before, `stall` bounds the
    /// wait for it to start.
    async fn open(&mut self, info: &ServerInfo, stall: Duration)
        -> Result<SnapshotReader, OpError>;
    /// After the reader ended: `Ok` only if the producer finished cleanly (waiting at
    /// most `stall` for it).
    async fn finish(&mut self, stall: Duration) -> Result<(), OpError>;
    /// Stops the producer (idempotent); used on every failure.
    async fn kill(&mut self);
}

/// The snapshot stream handed to the pipeline.
pub type SnapshotReader = Box<dyn AsyncRead + Send + Unpin>;

/// Builds the source for a configured server (tests replace it).
pub type SourceFactory = Box<dyn Fn(&ValkeySettings) -> Box<dyn SnapshotSource> + Send + Sync>;

/// The default [`SourceFactory`]: the client `valkey.source` selects.
pub fn configured_sources() -> SourceFactory {
    Box::new(|settings| Box::new(ConfiguredSource::new(settings.clone())))
}

/// [`SnapshotSource`] over the configured client ([`ValkeyAdmin`] and [`Snapshot`]).
pub struct ConfiguredSource {
    settings: ValkeySettings,
    admin: ValkeyAdmin,
    snapshot: Arc<tokio::sync::Mutex<Option<Snapshot>>>,
}

impl ConfiguredSource {
    /// A source for the configured server; nothing runs until [`SnapshotSource::open`].
    pub fn new(settings: ValkeySettings) -> Self {
        ConfiguredSource {
            admin: ValkeyAdmin::new(&settings),
            settings,
            snapshot: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    fn is_cli(&self) -> bool {
        self.settings.effective_source() == SourceKind::Cli
    }
}

#[async_trait::async_trait]
impl SnapshotSource for ConfiguredSource {
    fn name(&self) -> &'static str {
        if self.is_cli() {
            "the cli"
        } else {
            "the server"
        }
    }

    fn kind(&self) -> &'static str {
        if self.is_cli() {
            SourceKind::Cli.as_str()
        } else {
            SourceKind::Native.as_str()
        }
    }

    fn exact(&self) -> bool {
        !self.is_cli()
    }

    async fn info(&mut self) -> Result<ServerInfo, OpError> {
        Ok(self.admin.info().await?)
    }

    async fn open(
        &mut self,
        info: &ServerInfo,
        stall: Duration,
    ) -> Result<SnapshotReader, OpError> {
        // The pipeline reads the snapshot's own byte stream, with no copy in between: the
        // replication stream itself (socket straight into the reader's buffer), or the
        // cli's stdout. What `finish` and `kill` need (the cli process) stays here.
        match Snapshot::open(&self.settings, info, stall).await? {
            Snapshot::Native(stream) => Ok(stream),
            Snapshot::Cli(mut cli) => {
                let stdout = cli.stdout.take().ok_or_else(|| {
                    OpError::Internal("the cli was started without its stdout".into())
                })?;
                *self.snapshot.lock().await = Some(Snapshot::Cli(cli));
                Ok(Box::new(stdout))
            }
        }
    }

    async fn finish(&mut self, stall: Duration) -> Result<(), OpError> {
        match self.snapshot.lock().await.as_mut() {
            Some(s) => Ok(s.finish(stall).await?),
            None => Ok(()),
        }
    }

    async fn kill(&mut self) {
        if let Some(s) = self.snapshot.lock().await.take() {
            s.stop().await;
        }
    }
}
