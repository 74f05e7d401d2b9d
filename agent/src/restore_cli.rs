//! The CLI's restore: the same prepare → stop → commit → start → finish conversation the
//! charm holds with the agent, with the stop and start done here by a systemd unit name
//! or by the operator's own commands, so a plain machine needs no Juju.

use std::path::Path;

use clap::Args;
use serde_json::{json, Value};

use crate::cli::{client_call, print_json, report_error};
use crate::client::ClientError;

/// Arguments of `restore-backup`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to restore (see list-backups).
    pub backup_id: String,
    /// Restore another cluster's backup (its prefix is only read).
    #[arg(long)]
    pub source_cluster: Option<String>,
    /// systemd unit of the server (stopped and started with systemctl).
    #[arg(long, conflicts_with_all = ["stop_command", "start_command"])]
    pub service: Option<String>,
    /// Shell command that stops the server (instead of --service).
    #[arg(long, requires = "start_command")]
    pub stop_command: Option<String>,
    /// Shell command that starts the server (instead of --service).
    #[arg(long, requires = "stop_command")]
    pub start_command: Option<String>,
    /// Seconds to wait for the server to load after it was started.
    #[arg(long, default_value_t = 600)]
    pub load_timeout: u64,
}

impl RestoreArgs {
    fn stop(&self) -> Result<(), String> {
        match (&self.service, &self.stop_command) {
            (Some(unit), _) => shell(&format!("systemctl stop {}", quote(unit))),
            (None, Some(cmd)) => shell(cmd),
            (None, None) => Err("give --service or --stop-command/--start-command".into()),
        }
    }

    fn start(&self) -> Result<(), String> {
        match (&self.service, &self.start_command) {
            (Some(unit), _) => shell(&format!("systemctl start {}", quote(unit))),
            (None, Some(cmd)) => shell(cmd),
            (None, None) => Err("give --service or --stop-command/--start-command".into()),
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn shell(cmd: &str) -> Result<(), String> {
    eprintln!("$ {cmd}");
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

async fn step(socket: &Path, params: Value) -> Result<Value, ClientError> {
    client_call(socket, "restore-backup", params).await
}

/// Runs the whole restore; returns the exit code.
pub async fn run(socket: &Path, args: RestoreArgs) -> i32 {
    if args.service.is_none() && args.stop_command.is_none() {
        eprintln!("error: give --service UNIT, or --stop-command and --start-command");
        return 2;
    }
    let mut prepare = json!({"step": "prepare", "backup-id": args.backup_id});
    if let Some(c) = &args.source_cluster {
        prepare["source-cluster"] = json!(c);
    }
    let prepared = match step(socket, prepare).await {
        Ok(v) => v,
        Err(e) => return report_error(&e),
    };
    let id = prepared["restore-id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "prepared: {} verified ({} bytes) beside {}",
        args.backup_id, prepared["size-bytes"], prepared["target"]
    );
    let args = &args;
    let abort = |started_again: bool| {
        let id = id.clone();
        async move {
            let _ = step(socket, json!({"step": "abort", "restore-id": id})).await;
            if !started_again {
                let _ = args.start();
            }
        }
    };
    if let Err(e) = args.stop() {
        eprintln!("error: stopping the server: {e}");
        abort(false).await;
        return 1;
    }
    if let Err(e) = step(socket, json!({"step": "commit", "restore-id": id})).await {
        abort(false).await;
        return report_error(&e);
    }
    if let Err(e) = args.start() {
        eprintln!("error: starting the server: {e} (the restored dump is in place)");
        abort(true).await;
        return 1;
    }
    let finish = json!({"step": "finish", "restore-id": id, "timeout-seconds": args.load_timeout});
    print_json(step(socket, finish).await)
}
