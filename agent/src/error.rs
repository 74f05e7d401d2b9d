//! Operation errors and their one mapping to protocol codes.
//!
//! Modules return their own typed errors ([`ConfigError`], [`ValkeyError`], …); an
//! operation turns them into [`OpError`], and [`OpError::code`] is the single place where
//! an error becomes a stable wire code. Every message here is safe to show any Juju user:
//! the module errors are built from our own text, S3 error codes and sanitised cli lines,
//! never from a secret or a raw SDK message.

use crate::config::ConfigError;
use crate::lock::LockError;
use crate::protocol::ErrorCode;
use crate::rdb::RdbError;
use crate::sentinel::SentinelError;
use crate::storage::StoreError;
use crate::valkey::ValkeyError;

/// Which check a stored backup failed (recorded in verification records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The object the manifest names is missing, or the manifest is not this backup's.
    Object,
    Size,
    /// Header, trailer or CRC64 of the RDB itself.
    Rdb,
    Sha256,
    /// The manifest's CRC64 differs from the RDB's.
    Crc64,
    /// A scratch server could not load it, or loaded other key counts.
    Load,
    /// The age encryption did not authenticate (a changed, missing or added byte).
    Decrypt,
    /// The compressed stream is corrupt (frame structure or its checksum).
    Decompress,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Object => "object",
            Check::Size => "size",
            Check::Rdb => "rdb",
            Check::Sha256 => "sha256",
            Check::Crc64 => "crc64",
            Check::Load => "load",
            Check::Decrypt => "decrypt",
            Check::Decompress => "decompress",
        }
    }
}

impl OpError {
    /// A failed check of a stored backup.
    pub fn integrity(check: Check, message: impl Into<String>) -> Self {
        OpError::Integrity {
            check,
            message: message.into(),
        }
    }
}

/// Any failure of an operation.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotConfigured(String),
    #[error("{0}")]
    NotFound(String),
    /// Restoring onto a replica is refused: it would resync from its primary anyway.
    #[error("{0}")]
    ValkeyReplica(String),
    /// The restore's commit step needs the server stopped.
    #[error("{0}")]
    ValkeyRunning(String),
    /// The filesystem a restore writes to has too little free space.
    #[error("{0}")]
    NoSpace(String),
    /// A stored backup failed a check (size, RDB structure, SHA-256, CRC64, loading).
    #[error("{message}")]
    Integrity { check: Check, message: String },
    /// An encrypted backup none of the configured identities can open (none configured,
    /// or the wrong ones). Says nothing about the backup's integrity.
    #[error("{0}")]
    DecryptFailed(String),
    #[error("the agent is shutting down; the operation was cancelled")]
    Cancelled,
    /// The snapshot source sent nothing for the stall timeout.
    #[error("no data from {source_name} for {seconds} s (backup.stall-timeout-seconds); the server may be hung")]
    Stalled {
        source_name: &'static str,
        seconds: u64,
    },
    /// The cli closed its output but did not exit within the stall timeout.
    #[error("the cli closed its output but did not exit")]
    CliDidNotExit,
    /// The scratch server of `verify-backup --load` failed to start or to finish loading
    /// (a server that refuses the file is an [`OpError::Integrity`] failure instead).
    #[error("the scratch server {0}")]
    ScratchServer(String),
    /// The restored server did not finish loading within `timeout-seconds`.
    #[error("the server did not finish loading the restored data in time ({last})")]
    RestoreNotLoaded { last: String },
    /// The restored server is no longer the primary after the restart: Sentinel failed over
    /// while it was stopped, so it follows another server and discards the restore.
    #[error("the restore was overridden: {0}")]
    RestoreOverridden(String),
    /// A restore onto a server whose AOF layout cannot take the restored RDB.
    #[error("the server runs with appendonly yes but has no multi-part AOF (Redis < 7.0): set appendonly no for the restore")]
    AofNotRestorable,
    /// Local file or pipe I/O failed (details: the operation and the error kind).
    #[error("local I/O failed: {0}")]
    LocalIo(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Valkey(#[from] ValkeyError),
    #[error(transparent)]
    Stream(#[from] RdbError),
    /// Sentinel could not be asked or kept from failing over for a restore.
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl OpError {
    /// The stable protocol code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::BadRequest(_) => ErrorCode::BadRequest,
            OpError::NotConfigured(_) => ErrorCode::NotConfigured,
            OpError::NotFound(_) => ErrorCode::NotFound,
            OpError::Cancelled => ErrorCode::Cancelled,
            OpError::Stalled { .. }
            | OpError::CliDidNotExit
            | OpError::ScratchServer(_)
            | OpError::RestoreNotLoaded { .. }
            | OpError::AofNotRestorable => ErrorCode::ValkeyError,
            OpError::LocalIo(_) => ErrorCode::Internal,
            OpError::ValkeyReplica(_) => ErrorCode::ValkeyReplica,
            OpError::ValkeyRunning(_) => ErrorCode::ValkeyRunning,
            OpError::NoSpace(_) => ErrorCode::NoSpace,
            OpError::RestoreOverridden(_) => ErrorCode::RestoreOverridden,
            OpError::Integrity { .. } => ErrorCode::StreamInvalid,
            OpError::DecryptFailed(_) => ErrorCode::DecryptFailed,
            OpError::Config(ConfigError::Invalid { .. } | ConfigError::Shape { .. }) => {
                ErrorCode::BadRequest
            }
            OpError::Config(_) => ErrorCode::Internal,
            OpError::Lock(LockError::Busy(_)) => ErrorCode::Busy,
            OpError::Lock(LockError::Io(_)) => ErrorCode::Internal,
            OpError::Valkey(ValkeyError::Unreachable { .. }) => ErrorCode::ValkeyUnreachable,
            OpError::Valkey(ValkeyError::Auth { .. }) => ErrorCode::ValkeyAuth,
            OpError::Valkey(ValkeyError::Permission { .. }) => ErrorCode::ValkeyPermission,
            OpError::Valkey(
                ValkeyError::Cli { .. }
                | ValkeyError::Spawn { .. }
                | ValkeyError::Refused { .. }
                | ValkeyError::Protocol { .. }
                | ValkeyError::Interrupted { .. },
            ) => ErrorCode::ValkeyError,
            OpError::Stream(_) => ErrorCode::StreamInvalid,
            OpError::Sentinel(_) => ErrorCode::SentinelError,
            OpError::Store(e) => match e {
                StoreError::AccessDenied { .. } => ErrorCode::S3AccessDenied,
                StoreError::NoBucket { .. } | StoreError::CannotCreateBucket { .. } => {
                    ErrorCode::S3NoBucket
                }
                StoreError::Unreachable { .. } => ErrorCode::S3Unreachable,
                StoreError::AlreadyExists { .. } => ErrorCode::S3Conflict,
                StoreError::NotFound { .. }
                | StoreError::Unsupported { .. }
                | StoreError::Answer { .. }
                | StoreError::StuckListing { .. }
                | StoreError::TooManyParts { .. }
                | StoreError::BadRecord { .. } => ErrorCode::S3Error,
                StoreError::TaskFailed { .. } => ErrorCode::Internal,
                StoreError::Setup(_) => ErrorCode::BadRequest,
            },
            OpError::Internal(_) => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_errors_map_to_their_codes() {
        let cases: Vec<(OpError, ErrorCode)> = vec![
            (
                ValkeyError::Auth {
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyAuth,
            ),
            (
                ValkeyError::Unreachable {
                    addr: String::new(),
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyUnreachable,
            ),
            (RdbError::TooShort(0).into(), ErrorCode::StreamInvalid),
            (
                ValkeyError::Permission {
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyPermission,
            ),
            (
                ValkeyError::Refused {
                    command: "REPLCONF rdb-only 1".into(),
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyError,
            ),
            (
                ValkeyError::Protocol {
                    addr: String::new(),
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyError,
            ),
            (
                ValkeyError::Interrupted {
                    detail: String::new(),
                }
                .into(),
                ErrorCode::ValkeyError,
            ),
            (
                StoreError::NoBucket { bucket: "b".into() }.into(),
                ErrorCode::S3NoBucket,
            ),
            (
                StoreError::AccessDenied {
                    detail: String::new(),
                }
                .into(),
                ErrorCode::S3AccessDenied,
            ),
            (LockError::Busy(None).into(), ErrorCode::Busy),
            (OpError::Cancelled, ErrorCode::Cancelled),
            (
                OpError::DecryptFailed(String::new()),
                ErrorCode::DecryptFailed,
            ),
            (
                OpError::integrity(Check::Decrypt, ""),
                ErrorCode::StreamInvalid,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }
}
