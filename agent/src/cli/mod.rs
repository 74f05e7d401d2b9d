//! The command line: `serve`, and client subcommands that do over the socket exactly
//! what the charm's actions do, so an operator on the machine needs no Juju.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::server::{self, ServeOptions, DEFAULT_SOCKET, DEFAULT_STATE_DIR};

pub mod client;
pub mod output;
pub mod render;
pub mod restore;

use output::{client_call, print_json, report_error, to_params};
use render::{backups_table, prune_summary};

use crate::protocol::{
    BackupStatus, ListBackupsParams, ListBackupsResult, NoParams, PruneBackupsParams, PruneResult,
    StatusParams, VerifyBackupParams,
};

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
    Status {
        /// Check the server again now, as `configure` does (otherwise: the last check).
        #[arg(long)]
        check_valkey: bool,
    },
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
        /// Show at most this many backups (default 100, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Skip this many of the newest backups first (the next page).
        #[arg(long)]
        offset: Option<u32>,
        /// Only backups with this status (finished, failed, damaged, incomplete,
        /// running, abandoned).
        #[arg(long, value_parser = parse_status)]
        status: Option<BackupStatus>,
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
    RestoreBackup(restore::RestoreArgs),
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
        Command::Status { check_valkey } => {
            let params = to_params(&StatusParams { check_valkey });
            print_json(client_call(&cli.socket, "status", params).await)
        }
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
            print_json(client_call(&cli.socket, "create-backup", to_params(&NoParams {})).await)
        }
        Command::RestoreBackup(args) => restore::run(&cli.socket, args).await,
        Command::VerifyBackup {
            backup_id,
            source_cluster,
            load,
            server,
        } => {
            let params = to_params(&VerifyBackupParams {
                backup_id,
                source_cluster,
                load,
                server,
            });
            print_json(client_call(&cli.socket, "verify-backup", params).await)
        }
        Command::PruneBackups {
            keep_last,
            keep_days,
            abandoned_after_hours,
            confirm,
            json: as_json,
        } => {
            let params = to_params(&PruneBackupsParams {
                keep_last,
                keep_days,
                confirm,
                abandoned_after_hours,
            });
            let result = client_call(&cli.socket, "prune-backups", params).await;
            if as_json {
                return print_json(result);
            }
            match result.map(serde_json::from_value::<PruneResult>) {
                Ok(Ok(r)) => {
                    print!("{}", prune_summary(&r));
                    0
                }
                Ok(Err(e)) => unreadable("prune-backups", &e),
                Err(e) => report_error(&e),
            }
        }
        Command::ListBackups {
            json: as_json,
            cluster,
            abandoned_after_hours,
            limit,
            offset,
            status,
        } => {
            let params = to_params(&ListBackupsParams {
                cluster,
                abandoned_after_hours,
                limit,
                offset,
                status,
            });
            let result = client_call(&cli.socket, "list-backups", params).await;
            if as_json {
                return print_json(result);
            }
            match result.map(serde_json::from_value::<ListBackupsResult>) {
                Ok(Ok(r)) => {
                    print!("{}", backups_table(&r));
                    0
                }
                Ok(Err(e)) => unreadable("list-backups", &e),
                Err(e) => report_error(&e),
            }
        }
    }
}

/// `--status` by its wire name.
fn parse_status(s: &str) -> Result<BackupStatus, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| "one of finished, failed, damaged, incomplete, running, abandoned".to_owned())
}

/// A result this CLI cannot read (an agent of another version).
fn unreadable(op: &str, e: &serde_json::Error) -> i32 {
    eprintln!("error: the agent's {op} result is not what this CLI understands: {e}");
    1
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
