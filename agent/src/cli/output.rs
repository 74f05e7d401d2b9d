//! What the CLI prints: progress on stderr, results as JSON on stdout, errors with their
//! code. Shared by every subcommand (the restore conversation included).

use std::io::IsTerminal;

use serde_json::Value;

use super::client::{self, ClientError};
use super::render::human_bytes;
use crate::protocol::Progress;

/// An op's params as the request carries them.
pub fn to_params<T: serde::Serialize>(params: &T) -> Value {
    serde_json::to_value(params).expect("params serialise")
}

/// Sends one request and shows its progress on stderr.
pub async fn client_call(
    socket: &std::path::Path,
    op: &str,
    params: Value,
) -> Result<Value, ClientError> {
    let interactive = std::io::stderr().is_terminal();
    client::call(socket, op, params, |p| print_progress(p, interactive)).await
}

fn print_progress(p: &Progress, interactive: bool) {
    let mut line = format!(
        "{}: {} done, {}/s",
        p.phase,
        human_bytes(p.bytes_done),
        human_bytes(p.rate_bytes_per_sec)
    );
    if let Some(parts) = p.parts_uploaded {
        line.push_str(&format!(", {parts} parts uploaded"));
    }
    if interactive {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Prints a result as pretty JSON; returns the exit code.
pub fn print_json(result: Result<Value, ClientError>) -> i32 {
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            0
        }
        Err(e) => report_error(&e),
    }
}

/// Prints an error with its code; returns the exit code.
pub fn report_error(e: &ClientError) -> i32 {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    match e {
        ClientError::Remote { code, message } => eprintln!("error [{code}]: {message}"),
        other => eprintln!("error: {other}"),
    }
    1
}
