//! The CLI's restore: the same prepare → stop → commit → start → finish conversation the
//! charm holds with the agent, with the stop and start done here by a systemd unit name
//! or by the operator's own commands, so a plain machine needs no Juju.

use std::path::Path;

use clap::Args;
use serde_json::Value;

use super::client::ClientError;
use super::output::{client_call, print_json, report_error, to_params};
use crate::protocol::{RestoreBackupParams, RestorePrepared, RestoreStep, SentinelMode};

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
    /// With a configured Sentinel: `suppress` (default) keeps it from failing over while
    /// the server is stopped; `ignore` leaves it alone.
    #[arg(long, value_parser = parse_sentinel_mode)]
    pub sentinel: Option<SentinelMode>,
}

fn parse_sentinel_mode(s: &str) -> Result<SentinelMode, String> {
    match s {
        "suppress" => Ok(SentinelMode::Suppress),
        "ignore" => Ok(SentinelMode::Ignore),
        other => Err(format!("{other:?}: use suppress or ignore")),
    }
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

async fn step(socket: &Path, params: RestoreBackupParams) -> Result<Value, ClientError> {
    client_call(socket, "restore-backup", to_params(&params)).await
}

fn with_id(step: RestoreStep, restore_id: &str) -> RestoreBackupParams {
    RestoreBackupParams {
        step,
        backup_id: None,
        source_cluster: None,
        restore_id: Some(restore_id.to_owned()),
        timeout_seconds: None,
        sentinel: None,
    }
}

/// Runs the whole restore; returns the exit code.
pub async fn run(socket: &Path, args: RestoreArgs) -> i32 {
    if args.service.is_none() && args.stop_command.is_none() {
        eprintln!("error: give --service UNIT, or --stop-command and --start-command");
        return 2;
    }
    let prepare = RestoreBackupParams {
        step: RestoreStep::Prepare,
        backup_id: Some(args.backup_id.clone()),
        source_cluster: args.source_cluster.clone(),
        restore_id: None,
        timeout_seconds: None,
        sentinel: args.sentinel,
    };
    let prepared = match step(socket, prepare).await {
        Ok(v) => v,
        Err(e) => return report_error(&e),
    };
    let prepared: RestorePrepared = match serde_json::from_value(prepared) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the agent's prepare result is not what this CLI understands: {e}");
            return 1;
        }
    };
    let id = prepared.restore_id.clone();
    eprintln!(
        "prepared: {} verified ({} bytes) beside {:?}",
        args.backup_id, prepared.size_bytes, prepared.target
    );
    let args = &args;
    // The server is started again before the abort: with Sentinel suppressed, the agent
    // then puts Sentinel back once it has heard the server answer.
    let abort = |started_again: bool| {
        let id = id.clone();
        async move {
            if !started_again {
                let _ = args.start();
            }
            let _ = step(socket, with_id(RestoreStep::Abort, &id)).await;
        }
    };
    if let Err(e) = args.stop() {
        eprintln!("error: stopping the server: {e}");
        abort(false).await;
        return 1;
    }
    if let Err(e) = step(socket, with_id(RestoreStep::Commit, &id)).await {
        abort(false).await;
        return report_error(&e);
    }
    if let Err(e) = args.start() {
        eprintln!("error: starting the server: {e} (the restored dump is in place)");
        abort(true).await;
        return 1;
    }
    let finish = RestoreBackupParams {
        timeout_seconds: Some(args.load_timeout),
        ..with_id(RestoreStep::Finish, &id)
    };
    let finished = step(socket, finish).await;
    let incomplete = finished.as_ref().ok().and_then(finish_incomplete);
    let code = print_json(finished);
    match incomplete {
        Some(why) if code == 0 => {
            eprintln!("error: the restore is loaded but {why}");
            1
        }
        _ => code,
    }
}

/// Why a finished restore is not complete: the server does not take writes, or a replica
/// is not in sync with it. The CLI then exits non-zero.
fn finish_incomplete(finished: &serde_json::Value) -> Option<String> {
    if finished.get("writable") == Some(&serde_json::Value::Bool(false)) {
        return Some(format!(
            "the server does not take writes ({})",
            finished
                .get("write-error")
                .and_then(|v| v.as_str())
                .unwrap_or("no reason given")
        ));
    }
    let behind: Vec<&str> = finished
        .get("replicas")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter(|r| r.get("in-sync") != Some(&serde_json::Value::Bool(true)))
        .filter_map(|r| r.get("addr").and_then(|a| a.as_str()))
        .collect();
    (!behind.is_empty()).then(|| format!("replicas not in sync: {}", behind.join(", ")))
}

#[cfg(test)]
mod finish_tests {
    use super::finish_incomplete;
    use serde_json::json;

    #[test]
    fn a_finish_without_writes_or_with_a_replica_behind_is_incomplete() {
        let ok = json!({"writable": true, "replicas": [{"addr": "a:1", "in-sync": true}]});
        assert_eq!(finish_incomplete(&ok), None);
        let ro = json!({"writable": false, "write-error": "READONLY", "replicas": []});
        assert!(finish_incomplete(&ro).unwrap().contains("READONLY"));
        let behind = json!({"writable": true, "replicas": [
            {"addr": "a:1", "in-sync": true}, {"addr": "b:2", "in-sync": false}]});
        assert_eq!(
            finish_incomplete(&behind).as_deref(),
            Some("replicas not in sync: b:2")
        );
    }
}
