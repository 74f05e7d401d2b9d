//! The agent's socket protocol (v1): newline-delimited JSON, one request per connection.
//!
//! See `docs/protocol.md` for the full contract. This module holds the envelope, the
//! error codes and events, and (in [`ops`]) every op's params and result; it does no
//! I/O, so malformed input is tested directly.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod ops;
pub use ops::*;

/// The protocol version this agent speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest accepted request line (without its newline).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The closed set of error codes. Stable: the charm and operators' scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadRequest,
    RequestTooLarge,
    UnknownOp,
    PermissionDenied,
    NotConfigured,
    Busy,
    ValkeyUnreachable,
    ValkeyAuth,
    /// The credentials work but the ACL user may not run a command backups or restores
    /// need (`NOPERM`); the message names the commands to grant.
    ValkeyPermission,
    ValkeyError,
    ValkeyReplica,
    ValkeyRunning,
    StreamInvalid,
    /// An encrypted backup, and no configured identity is one of its recipients.
    DecryptFailed,
    S3AccessDenied,
    S3NoBucket,
    S3Unreachable,
    S3Conflict,
    S3Error,
    NotFound,
    /// The restore's target filesystem has no room for the backup.
    NoSpace,
    /// Sentinel could not be asked, or could not be kept from failing over, for a
    /// restore of a server it watches; nothing was stopped or changed.
    SentinelError,
    /// A restore's `finish` found the restored server no longer the primary (Sentinel
    /// failed over while it was stopped): the restored data is being or was discarded.
    RestoreOverridden,
    Cancelled,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::RequestTooLarge => "request-too-large",
            ErrorCode::UnknownOp => "unknown-op",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::NotConfigured => "not-configured",
            ErrorCode::Busy => "busy",
            ErrorCode::ValkeyUnreachable => "valkey-unreachable",
            ErrorCode::ValkeyAuth => "valkey-auth",
            ErrorCode::ValkeyPermission => "valkey-permission",
            ErrorCode::ValkeyError => "valkey-error",
            ErrorCode::ValkeyReplica => "valkey-replica",
            ErrorCode::ValkeyRunning => "valkey-running",
            ErrorCode::StreamInvalid => "stream-invalid",
            ErrorCode::DecryptFailed => "decrypt-failed",
            ErrorCode::S3AccessDenied => "s3-access-denied",
            ErrorCode::S3NoBucket => "s3-no-bucket",
            ErrorCode::S3Unreachable => "s3-unreachable",
            ErrorCode::S3Conflict => "s3-conflict",
            ErrorCode::S3Error => "s3-error",
            ErrorCode::NotFound => "not-found",
            ErrorCode::NoSpace => "no-space",
            ErrorCode::SentinelError => "sentinel-error",
            ErrorCode::RestoreOverridden => "restore-overridden",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations the agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Status,
    Configure,
    CreateBackup,
    ListBackups,
    RestoreBackup,
    VerifyBackup,
    PruneBackups,
}

impl Op {
    /// The op's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::Configure => "configure",
            Op::CreateBackup => "create-backup",
            Op::ListBackups => "list-backups",
            Op::RestoreBackup => "restore-backup",
            Op::VerifyBackup => "verify-backup",
            Op::PruneBackups => "prune-backups",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "status" => Op::Status,
            "configure" => Op::Configure,
            "create-backup" => Op::CreateBackup,
            "list-backups" => Op::ListBackups,
            "restore-backup" => Op::RestoreBackup,
            "verify-backup" => Op::VerifyBackup,
            "prune-backups" => Op::PruneBackups,
            _ => return None,
        })
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub op: Op,
    /// The op's parameters (an object; `{}` when omitted). Each op parses its own.
    pub params: Value,
}

/// Why a request line was refused before dispatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request exceeds {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("request is not valid JSON: {0}")]
    BadJson(String),
    #[error("{0}")]
    BadShape(String),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl RequestError {
    /// The protocol code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::TooLarge => ErrorCode::RequestTooLarge,
            RequestError::UnknownOp(_) => ErrorCode::UnknownOp,
            RequestError::ShuttingDown => ErrorCode::Cancelled,
            RequestError::BadJson(_) | RequestError::BadShape(_) => ErrorCode::BadRequest,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    v: Option<Value>,
    op: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
}

/// Parses one request line (without the trailing newline).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    let env: Envelope = serde_json::from_slice(line).map_err(|e| {
        // serde_json's messages quote only positions and expectations, never input.
        if e.is_data() {
            RequestError::BadShape(format!(
                "request must be {{\"v\", \"op\", \"params\"}}: {e}"
            ))
        } else {
            RequestError::BadJson(format!("line {} column {}", e.line(), e.column()))
        }
    })?;
    match env.v {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(_) => {
            return Err(RequestError::BadShape(format!(
                "unsupported protocol version (this agent speaks v{PROTOCOL_VERSION})"
            )))
        }
        None => return Err(RequestError::BadShape("missing \"v\"".into())),
    }
    let op = match env.op {
        Some(Value::String(s)) => s,
        Some(_) => return Err(RequestError::BadShape("\"op\" must be a string".into())),
        None => return Err(RequestError::BadShape("missing \"op\"".into())),
    };
    let op = Op::parse(&op).ok_or_else(|| {
        let shown: String = op.chars().take(64).collect();
        RequestError::UnknownOp(shown)
    })?;
    let params = match env.params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(RequestError::BadShape(
                "\"params\" must be an object".into(),
            ))
        }
    };
    Ok(Request { op, params })
}

/// A progress report while an operation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    pub bytes_done: u64,
    pub rate_bytes_per_sec: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts_uploaded: Option<u64>,
}

/// One line of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Progress(Progress),
    Result { data: Value },
    Error { code: ErrorCode, message: String },
}

impl Event {
    /// The event as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("events always serialise");
        line.push(b'\n');
        line
    }
}

/// Deserialises an op's params, turning serde's error into a `bad-request` message.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, String> {
    serde_json::from_value(params).map_err(|e| format!("invalid params: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_request_parses() {
        let r = parse_request(br#"{"v":1,"op":"status"}"#).unwrap();
        assert_eq!(r.op, Op::Status);
        assert_eq!(r.params, serde_json::json!({}));
        let r =
            parse_request(br#"{"v":1,"op":"list-backups","params":{"cluster":"a.b"}}"#).unwrap();
        assert_eq!(r.params["cluster"], "a.b");
    }

    #[test]
    fn malformed_requests_get_stable_codes() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"{", ErrorCode::BadRequest),
            (b"not json", ErrorCode::BadRequest),
            (b"[]", ErrorCode::BadRequest),
            (br#"{"op":"status"}"#, ErrorCode::BadRequest),
            (br#"{"v":2,"op":"status"}"#, ErrorCode::BadRequest),
            (br#"{"v":"1","op":"status"}"#, ErrorCode::BadRequest),
            (br#"{"v":1}"#, ErrorCode::BadRequest),
            (br#"{"v":1,"op":7}"#, ErrorCode::BadRequest),
            (
                br#"{"v":1,"op":"status","params":[1]}"#,
                ErrorCode::BadRequest,
            ),
            (br#"{"v":1,"op":"status","extra":1}"#, ErrorCode::BadRequest),
            (br#"{"v":1,"op":"drop-database"}"#, ErrorCode::UnknownOp),
        ];
        for (line, code) in cases {
            let err = parse_request(line).unwrap_err();
            assert_eq!(err.code(), *code, "{}", String::from_utf8_lossy(line));
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            parse_request(&big).unwrap_err().code(),
            ErrorCode::RequestTooLarge
        );
    }

    #[test]
    fn events_serialise_as_documented() {
        let e = Event::Error {
            code: ErrorCode::S3NoBucket,
            message: "m".into(),
        };
        assert_eq!(
            String::from_utf8(e.to_line()).unwrap(),
            "{\"event\":\"error\",\"code\":\"s3-no-bucket\",\"message\":\"m\"}\n"
        );
        let p = Event::Progress(Progress {
            phase: "streaming".into(),
            backup_id: None,
            bytes_done: 1,
            rate_bytes_per_sec: 2,
            parts_uploaded: Some(0),
        });
        let v: Value = serde_json::from_slice(&p.to_line()).unwrap();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["bytes-done"], 1);
    }

    #[test]
    fn every_code_round_trips() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::S3AccessDenied,
            ErrorCode::ValkeyPermission,
            ErrorCode::SentinelError,
            ErrorCode::RestoreOverridden,
            ErrorCode::Internal,
        ] {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
        }
    }
}
