//! valkey-backup agent: streams Valkey/Redis snapshots to S3-compatible storage.
//!
//! The agent is a library plus a thin binary (`main.rs`). Each module owns one concept:
//!
//! * [`protocol`] — the JSON-lines request/response types spoken on the Unix socket.
//! * [`error`] — the one place where module errors become stable protocol codes.
//! * [`server`] — socket, peer check, dispatch and graceful shutdown; [`access`] — which
//!   peer may run which operation.
//! * [`ops`] — one module per operation (`status`, `configure`, `create-backup`,
//!   `list-backups`, `restore-backup`, `verify-backup`, `prune-backups`).
//! * [`config`] — validated, atomically stored configuration; [`secret`] — values that
//!   never format.
//! * [`rdb`] — the pure streaming validator for RDB snapshots; [`parts`] — part-size
//!   planning; [`backup_id`] — the id grammar.
//! * [`source`] — the seam between operations and the Valkey client `valkey.source`
//!   selects: the built-in one ([`resp`] framing, [`connection`] over TCP/TLS/Unix with
//!   [`valkey_tls`], [`replication`] — the `SYNC` handshake and exact payload framing) or
//!   [`valkey`] — running `valkey-cli`/`redis-cli` without leaking the password.
//! * [`rdb_compat`] — which server version loads which RDB format.
//! * [`s3`], [`upload`], [`store`], [`fetch`] — the S3 client, write-once multipart
//!   upload, the object layout (manifest, failure and verify records, listing), and
//!   reading a backup back with every check.
//! * [`retention`] — the pure keep/delete decisions of pruning.
//! * [`schedule`] — the pure side of scheduled backups (cron, slots, claims, who claims);
//!   [`scheduler`] — the task that takes them; [`metrics`] — Prometheus numbers and the
//!   `/metrics` endpoint.
//! * [`datadir`] — the server's data directory, handled by descriptor (a restore runs as
//!   root in a directory another user owns).
//! * [`lock`] — the per-unit `flock` that keeps backups, restores and prunes apart.
//! * [`progress`] — throttled progress events.
//! * [`client`], [`cli`], [`restore_cli`] — the socket client and the command line built
//!   on it.

pub mod access;
pub mod backup_id;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod datadir;
pub mod error;
pub mod fetch;
pub mod lock;
pub mod metrics;
pub mod ops;
pub mod parts;
pub mod progress;
pub mod protocol;
pub mod rdb;
pub mod rdb_compat;
pub mod replication;
pub mod resp;
pub mod restore_cli;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod source;
pub mod store;
pub mod upload;
pub mod valkey;
pub mod valkey_tls;

/// The agent's version, recorded in every manifest and reported by `status`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
