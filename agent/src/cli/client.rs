//! The socket client used by the CLI subcommands: one request, a stream of events, one
//! final answer — the same path the charm takes, so the CLI proves what an action does.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::protocol::{ErrorCode, Event, Progress};

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the agent at {path}: {source} (is valkey-backup-agent serve running?)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("connection to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent an unreadable line: {0}")]
    BadLine(String),
    #[error("the agent closed the connection without an answer")]
    NoAnswer,
    #[error("{code}: {message}")]
    Remote { code: ErrorCode, message: String },
}

/// Sends `op` with `params`; calls `on_progress` for each progress event.
pub async fn call(
    socket: &Path,
    op: &str,
    params: Value,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read_half, mut write_half) = stream.into_split();
    let mut line = serde_json::to_vec(&json!({"v": 1, "op": op, "params": params})).expect("json");
    line.push(b'\n');
    write_half.write_all(&line).await?;
    let mut lines = BufReader::new(read_half).lines();
    while let Some(line) = lines.next_line().await? {
        let event: Event =
            serde_json::from_str(&line).map_err(|e| ClientError::BadLine(e.to_string()))?;
        match event {
            Event::Progress(p) => on_progress(&p),
            Event::Result { data } => return Ok(data),
            Event::Error { code, message } => return Err(ClientError::Remote { code, message }),
        }
    }
    Err(ClientError::NoAnswer)
}
