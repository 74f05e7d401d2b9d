//! `valkey-backup-agent`: a thin shell over the library (see `cli`).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = valkey_backup_agent::cli::Cli::parse();
    let code = valkey_backup_agent::cli::run(cli).await;
    std::process::exit(code);
}
