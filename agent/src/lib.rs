//! valkey-backup agent: streams Valkey/Redis snapshots to S3-compatible storage.
//!
//! The agent is a library plus a thin binary (`main.rs`). Each module owns one concept;
//! dependencies point downwards in this list, never up, and never in a circle
//! (`tests/module_graph.rs` checks it):
//!
//! * [`cli`] — the command line (`serve` and the socket client subcommands).
//! * [`server`] — socket, peer check, dispatch, audit line and graceful shutdown;
//!   [`access`] — which peer may run which operation.
//! * [`ops`] — one module per operation (`status`, `configure`, `create-backup`,
//!   `list-backups`, `restore-backup`, `verify-backup`, `prune-backups`) and the state
//!   they share.
//! * [`fetch`] — reading the bucket: a cluster's listing, manifests, checked downloads.
//! * [`pipeline`] — the one byte pipeline (RDB checker from any `AsyncRead` into a sink),
//!   shared by backup, verify and restore, with its encode (compress → encrypt) and
//!   decode (decrypt → decompress) stages; [`source`] — where a backup's bytes come from.
//! * [`scheduler`] — the task that takes scheduled backups and verifications;
//!   [`exporter`] — the `/metrics` endpoint.
//! * [`error`] — the one place where module errors become stable protocol codes.
//! * [`storage`] — the storage seam: the `ObjectStore` trait, the S3 implementation (the
//!   only user of the SDK), every store quirk in `storage::compat`, the part writer, an
//!   in-memory store and a fault injector for tests.
//! * [`schedule`] — the pure side of scheduled backups (cron, slots, claims, who
//!   claims); [`metrics`] — the Prometheus numbers, kept across restarts.
//! * [`source`] also holds the client `valkey.source` selects: the built-in one
//!   ([`resp`] framing, [`connection`] over TCP/TLS/Unix with [`valkey_tls`],
//!   [`replication`] — the `SYNC` handshake and exact payload framing) or
//!   [`valkey`] — running `valkey-cli`/`redis-cli` without leaking the password;
//!   [`rdb_compat`] — which server version loads which RDB format;
//!   [`valkey_check`] — `configure`'s "would a backup work now?" check;
//!   [`sentinel`] — the Sentinel group of a restored server, kept from failing over;
//!   [`datadir`] — the server's data directory, handled by descriptor (a restore runs as
//!   root in a directory another user owns).
//! * [`layout`] — object keys, records and statuses; [`retention`] — the keep/delete
//!   decisions of pruning; [`progress`] — throttled progress events.
//! * [`protocol`] — the wire contract: envelope, codes, events, every op's params and
//!   result.
//! * [`config`] — validated, atomically stored configuration; [`lock`] — the per-unit
//!   `flock`; [`secret`] — values that never format.
//! * Pure leaves: [`rdb`] (the streaming validator), [`parts`] (part-size planning),
//!   [`backup_id`] (the id grammar), [`timefmt`] (every time format), [`codec`]
//!   (none/lz4/zstd framing), [`encrypt`] (age keys, fingerprints and framing).

pub mod access;
pub mod backup_id;
pub mod cli;
pub mod coalesce;
pub mod codec;
pub mod config;
pub mod connection;
pub mod datadir;
pub mod encrypt;
pub mod error;
pub mod exporter;
pub mod fetch;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod ops;
pub mod parts;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod rdb;
pub mod rdb_compat;
pub mod replication;
pub mod resp;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod sentinel;
pub mod server;
pub mod source;
pub mod statefile;
pub mod storage;
pub mod timefmt;
pub mod valkey;
pub mod valkey_check;
pub mod valkey_tls;

/// The agent's version, recorded in every manifest and reported by `status`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
