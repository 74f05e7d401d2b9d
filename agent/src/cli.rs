//! The command line: `serve`, and client subcommands that do over the socket exactly
//! what the charm's actions do, so an operator on the machine needs no Juju.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientError};
use crate::protocol::Progress;
use crate::server::{self, ServeOptions, DEFAULT_SOCKET, DEFAULT_STATE_DIR};

/// valkey-backup agent: validated, write-once backups of Valkey/Redis to S3.
#[derive(Debug, Parser)]
#[command(name = "valkey-backup-agent", version, about)]
pub struct Cli {
    /// The agent's Unix socket.
    #[arg(long, global = true, env = "VALKEY_BACKUP_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (normally as a systemd service).
    Serve {
        /// Where the configuration and the lock file live.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Another uid allowed to use the socket (root and the agent's uid always are).
        #[arg(long = "allow-uid")]
        allow_uids: Vec<u32>,
        /// Log format on stderr.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Show what the agent is configured for and doing.
    Status,
    /// Send a configuration (JSON, as in docs/protocol.md) from a file, or `-` for stdin.
    /// Secrets travel in the file, never on the command line.
    Configure {
        #[arg(long)]
        file: PathBuf,
    },
    /// Take a backup now and wait for it.
    CreateBackup,
    /// List backups, newest first.
    ListBackups {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Another cluster's backups (read-only).
        #[arg(long)]
        cluster: Option<String>,
        /// An open upload older than this is shown as `abandoned` (default 24).
        #[arg(long)]
        abandoned_after_hours: Option<f64>,
    },
    /// Delete the backups the retention policy no longer keeps and abort the uploads of
    /// agents that are gone. A dry run (what would go, and why) unless --confirm.
    PruneBackups {
        /// Keep the N newest finished backups (N >= 1).
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep backups started less than D days ago (default when neither rule is
        /// given: the s3-integrator's delete-older-than-days).
        #[arg(long)]
        keep_days: Option<f64>,
        /// Abort uploads open longer than this many hours without a manifest (default 24).
        #[arg(long)]
        abandoned_after_hours: Option<f64>,
        /// Really delete and abort; without it nothing is changed.
        #[arg(long)]
        confirm: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a finished backup: prepare (download + verify), stop the server, place
    /// the dump, start the server, wait until it has loaded.
    RestoreBackup(crate::restore_cli::RestoreArgs),
    /// Re-read a backup and check it against its manifest; `--load` also loads it into a
    /// scratch server.
    VerifyBackup {
        backup_id: String,
        /// Verify another cluster's backup (read-only: no record is written).
        #[arg(long)]
        source_cluster: Option<String>,
        /// Load the backup into a scratch server and compare key counts.
        #[arg(long)]
        load: bool,
        /// Server binary for --load (default: the first one found that can load the backup).
        #[arg(long)]
        server: Option<PathBuf>,
    },
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve {
            state_dir,
            allow_uids,
            log_format,
        } => {
            init_logging(&log_format);
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            let opts = ServeOptions {
                socket: cli.socket,
                state_dir,
                allowed_uids: allow_uids,
            };
            match server::serve(opts, shutdown).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "agent failed to start");
                    eprintln!("valkey-backup-agent: {e}");
                    1
                }
            }
        }
        Command::Status => print_json(client_call(&cli.socket, "status", json!({})).await),
        Command::Configure { file } => {
            let params = match read_config_file(&file) {
                Ok(v) => v,
                Err(msg) => {
                    eprintln!("error: {msg}");
                    return 2;
                }
            };
            print_json(client_call(&cli.socket, "configure", params).await)
        }
        Command::CreateBackup => {
            print_json(client_call(&cli.socket, "create-backup", json!({})).await)
        }
        Command::RestoreBackup(args) => crate::restore_cli::run(&cli.socket, args).await,
        Command::VerifyBackup {
            backup_id,
            source_cluster,
            load,
            server,
        } => {
            let mut params = json!({"backup-id": backup_id, "load": load});
            if let Some(c) = source_cluster {
                params["source-cluster"] = json!(c);
            }
            if let Some(s) = server {
                params["server"] = json!(s);
            }
            print_json(client_call(&cli.socket, "verify-backup", params).await)
        }
        Command::PruneBackups {
            keep_last,
            keep_days,
            abandoned_after_hours,
            confirm,
            json: as_json,
        } => {
            let mut params = json!({"confirm": confirm});
            if let Some(n) = keep_last {
                params["keep-last"] = json!(n);
            }
            if let Some(d) = keep_days {
                params["keep-days"] = json!(d);
            }
            if let Some(h) = abandoned_after_hours {
                params["abandoned-after-hours"] = json!(h);
            }
            let result = client_call(&cli.socket, "prune-backups", params).await;
            if as_json {
                return print_json(result);
            }
            match result {
                Ok(v) => {
                    print!("{}", prune_summary(&v));
                    0
                }
                Err(e) => report_error(&e),
            }
        }
        Command::ListBackups {
            json: as_json,
            cluster,
            abandoned_after_hours,
        } => {
            let mut params = json!({});
            if let Some(c) = cluster {
                params["cluster"] = json!(c);
            }
            if let Some(h) = abandoned_after_hours {
                params["abandoned-after-hours"] = json!(h);
            }
            let result = client_call(&cli.socket, "list-backups", params).await;
            if as_json {
                return print_json(result);
            }
            match result {
                Ok(v) => {
                    print!("{}", backups_table(&v));
                    0
                }
                Err(e) => report_error(&e),
            }
        }
    }
}

fn read_config_file(file: &PathBuf) -> Result<Value, String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
    }
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", file.display()))
}

pub(crate) async fn client_call(
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

pub(crate) fn print_json(result: Result<Value, ClientError>) -> i32 {
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            0
        }
        Err(e) => report_error(&e),
    }
}

pub(crate) fn report_error(e: &ClientError) -> i32 {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    match e {
        ClientError::Remote { code, message } => eprintln!("error [{code}]: {message}"),
        other => eprintln!("error: {other}"),
    }
    1
}

/// Formats bytes with binary units (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The `prune-backups` summary: what was (or, in a dry run, would be) deleted and
/// aborted, and what stays, each with its reason.
pub fn prune_summary(result: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // 7.0 → "7", 0.5 → "0.5"
    let num = |v: &Value| match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => f.to_string(),
        None => s(v),
    };
    let dry = result["dry-run"] != Value::Bool(false);
    let policy = &result["policy"];
    let mut rules = Vec::new();
    if !policy["keep-last"].is_null() {
        rules.push(format!("keep-last {}", s(&policy["keep-last"])));
    }
    if !policy["keep-days"].is_null() {
        let mut r = format!("keep-days {}", num(&policy["keep-days"]));
        if policy["keep-days-from"] == "s3.delete-older-than-days" {
            r.push_str(" (from s3.delete-older-than-days)");
        }
        rules.push(r);
    }
    rules.push(format!(
        "uploads abandoned after {} h",
        num(&policy["abandoned-after-hours"])
    ));
    let mut out = format!("cluster: {}\n", s(&result["cluster"]));
    if let Some(line) = crate::scheduler::summary(&result["schedule"]) {
        out.push_str(&format!("schedule: {line}\n"));
    }
    if dry {
        out.push_str("DRY RUN: nothing was changed; run again with --confirm to do this.\n");
    }
    out.push_str(&format!("policy: {}\n", rules.join(", ")));
    let empty = Vec::new();
    let section = |out: &mut String, title: &str, key: &str, line: &dyn Fn(&Value) -> String| {
        let rows = result[key].as_array().unwrap_or(&empty);
        out.push_str(&format!("{title} ({}):\n", rows.len()));
        for r in rows {
            out.push_str(&format!("  {}\n", line(r)));
        }
    };
    let (deleted, aborted) = if dry {
        ("would delete", "would abort uploads")
    } else {
        ("deleted", "aborted uploads")
    };
    section(&mut out, deleted, "deleted", &|r| {
        format!(
            "{}  {}  {} objects, {} versions: {}",
            s(&r["backup-id"]),
            s(&r["status"]),
            s(&r["objects"]),
            s(&r["versions"]),
            s(&r["why"])
        )
    });
    section(&mut out, "kept", "kept", &|r| {
        format!(
            "{}  {}: {}",
            s(&r["backup-id"]),
            s(&r["status"]),
            s(&r["why"])
        )
    });
    section(&mut out, "skipped", "skipped", &|r| {
        format!(
            "{}  {}: {}",
            s(&r["backup-id"]),
            s(&r["status"]),
            s(&r["why"])
        )
    });
    section(&mut out, aborted, "aborted-uploads", &|r| {
        format!("{}  {}: {}", s(&r["backup-id"]), s(&r["key"]), s(&r["why"]))
    });
    out
}

/// The `list-backups` table.
pub fn backups_table(result: &Value) -> String {
    let empty = Vec::new();
    let rows = result["backups"].as_array().unwrap_or(&empty);
    let s = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut table: Vec<[String; 7]> = vec![[
        "BACKUP-ID".into(),
        "STATUS".into(),
        "UNIT".into(),
        "SIZE".into(),
        "STARTED".into(),
        "FINISHED".into(),
        "DETAIL".into(),
    ]];
    for b in rows {
        let detail = if b["status"] == "failed" {
            format!("{}: {}", s(&b["code"]), s(&b["reason"]))
        } else if b["status"] == "damaged" {
            s(&b["reason"])
        } else {
            s(&b["source-version"])
        };
        table.push([
            s(&b["backup-id"]),
            s(&b["status"]),
            s(&b["unit"]),
            b["size-bytes"]
                .as_u64()
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            s(&b["started-at"]),
            s(&b["finished-at"]),
            detail,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("cluster: {}\n", s(&result["cluster"]));
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no backups)\n");
    }
    out
}

fn init_logging(format: &str) {
    // The operator's level applies to the agent; the HTTP and S3 stacks stay at `warn`,
    // because their debug output carries request ids and endpoint details.
    let level = std::env::var("VALKEY_BACKUP_LOG").unwrap_or_else(|_| "info".into());
    let directives = format!(
        "{level},aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_smithy_http_client=warn,\
         aws_sdk_s3=warn,aws_runtime=warn,aws_sigv4=warn,hyper=warn,hyper_util=warn,h2=warn,rustls=warn"
    );
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn table_shows_failures_with_their_code() {
        let v = json!({"cluster": "m.v", "backups": [
            {"backup-id": "id1", "status": "failed", "unit": "v/0", "size-bytes": null,
             "started-at": "t", "finished-at": "t2", "code": "valkey-auth", "reason": "bad password"}]});
        let t = backups_table(&v);
        assert!(t.contains("valkey-auth: bad password"), "{t}");
        assert!(t.starts_with("cluster: m.v\nBACKUP-ID"), "{t}");
    }
}
