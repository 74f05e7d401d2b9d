//! `configure`'s check of the configured server: would a backup work right now?
//!
//! It does what a backup does up to the point where a snapshot would start, with real
//! commands rather than `ACL DRYRUN` (which the backup user may not be allowed to run):
//!
//! 1. connect (TCP, TLS) and `AUTH` — `valkey-unreachable`, `valkey-auth`;
//! 2. `INFO everything` (role, version, `run_id`) — `valkey-permission` on `NOPERM`; and
//!    `CONFIG GET dir` / `dbfilename`, which only a restore reads: a `NOPERM` there is
//!    reported in `restore-warning`, not as a failure (backups never send it);
//! 3. `REPLCONF capa eof` on the same plain connection (harmless: it only marks what this
//!    client understands, and the connection is closed right after);
//! 4. `SYNC`, pipelined right behind a `PING` in one write. The server checks the ACL
//!    before it looks at the command, and then refuses `SYNC` because the `PONG` is
//!    still waiting in the client's output buffer ("SYNC and PSYNC are invalid with
//!    pending output"): `NOPERM` proves the right is missing, that refusal proves it is
//!    granted, and no snapshot is ever started. Should a server start one anyway, the
//!    connection is dropped at once.
//!
//! With `source: cli` steps 1–2 go through the cli (the client backups will use), and the
//! probe of steps 3–4 through the built-in client, where only a `NOPERM` counts (the
//! built-in client may not reach a server only the cli is set up for).

use crate::config::{SourceKind, ValkeySettings};
use crate::connection::{Connection, NativeClient, MAX_SMALL_REPLY};
use crate::protocol::{ErrorCode, SentinelCheck, ValkeyCheck};
use crate::resp::{self, Reply};
use crate::sentinel::Sentinels;
use crate::source::ValkeyAdmin;
use crate::timefmt::rfc3339;
use crate::valkey::{ServerInfo, ValkeyError};

/// The protocol code of a failed check.
pub fn code_of(e: &ValkeyError) -> ErrorCode {
    match e {
        ValkeyError::Unreachable { .. } => ErrorCode::ValkeyUnreachable,
        ValkeyError::Auth { .. } => ErrorCode::ValkeyAuth,
        ValkeyError::Permission { .. } => ErrorCode::ValkeyPermission,
        _ => ErrorCode::ValkeyError,
    }
}

/// What to do about a failed check, after what went wrong.
pub fn advice(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::ValkeyUnreachable => {
            "check valkey.host and valkey.port (the server may listen only on the unit's own address) and TLS"
        }
        ErrorCode::ValkeyAuth => "check valkey.username and valkey.password",
        ErrorCode::ValkeyPermission => {
            "give the user +sync +psync +replconf +info +ping (restores also need +config|get +del), or use charmed-operator"
        }
        _ => "see the agent's log",
    }
}

/// `primary` / `replica` for INFO's `role`.
pub fn role_name(info: &ServerInfo) -> Option<String> {
    match info.role.as_deref() {
        Some("master") => Some("primary".into()),
        Some("slave") => Some("replica".into()),
        Some(other) => Some(other.to_owned()),
        None => None,
    }
}

/// Runs the check (see the module docs). Never fails: what is wrong is in the result.
pub async fn check(settings: &ValkeySettings) -> ValkeyCheck {
    let addr = format!("{}:{}", settings.host, settings.port);
    let checked_at = rfc3339(time::OffsetDateTime::now_utc());
    let (info, failure, restore_warning) = match probe(settings).await {
        Ok((info, warning)) => (Some(info), None, warning),
        Err((info, e)) => (info, Some(e), None),
    };
    let sentinel = match (&settings.sentinel, &info) {
        (Some(s), Some(info)) => Some(check_sentinel(settings, s.clone(), info).await),
        (Some(s), None) => Some(SentinelCheck {
            ok: false,
            code: Some(ErrorCode::SentinelError.as_str().into()),
            message: Some("not checked: the server itself could not be asked".into()),
            addr: format!("{}:{}", s.host, s.port),
            master_name: None,
            sentinels: None,
        }),
        (None, _) => None,
    };
    let (ok, code, message) = match failure {
        None => (true, None, None),
        Some(e) => {
            let code = code_of(&e);
            (
                false,
                Some(code.as_str().to_owned()),
                Some(format!("{e}; {}", advice(code))),
            )
        }
    };
    ValkeyCheck {
        ok,
        code,
        message,
        addr,
        role: info.as_ref().and_then(role_name),
        server: info.as_ref().map(|i| format!("{} {}", i.kind, i.version)),
        sentinel,
        restore_warning,
        checked_at,
    }
}

type ProbeFailure = (Option<ServerInfo>, ValkeyError);

/// The server's `INFO` and, when a restore could not read the server's settings, why.
async fn probe(settings: &ValkeySettings) -> Result<(ServerInfo, Option<String>), ProbeFailure> {
    let admin = ValkeyAdmin::new(settings);
    let info = admin.info().await.map_err(|e| (None, e))?;
    let mut restore_warning = None;
    for name in ["dir", "dbfilename"] {
        match admin.config_get(name).await {
            Ok(_) => {}
            Err(e @ ValkeyError::Permission { .. }) => {
                restore_warning = Some(format!(
                    "backups work, but a restore would fail: {e}; give the user +config|get +del for restores"
                ));
                break;
            }
            Err(e) => return Err((Some(info.clone()), e)),
        }
    }
    let native_only = settings.effective_source() == SourceKind::Native;
    match replication_rights(settings).await {
        Ok(()) => Ok((info, restore_warning)),
        Err(e @ ValkeyError::Permission { .. }) => Err((Some(info), e)),
        Err(e) if native_only => Err((Some(info), e)),
        Err(_) => Ok((info, restore_warning)),
    }
}

/// Steps 3 and 4 of the module docs, on one connection of the built-in client.
async fn replication_rights(settings: &ValkeySettings) -> Result<(), ValkeyError> {
    let mut conn = NativeClient::new(settings.clone()).connect().await?;
    conn.call(&[b"REPLCONF", b"capa", b"eof"], MAX_SMALL_REPLY)
        .await?;
    let mut pipeline = resp::encode(&[b"PING"]);
    pipeline.extend(resp::encode(&[b"SYNC"]));
    conn.send_raw(&pipeline).await?;
    expect_pong(&mut conn).await?;
    match conn.reply(MAX_SMALL_REPLY).await {
        Ok(Reply::Error(e)) => sync_refusal(&e),
        // Anything else: the server started a transfer. The right is there; the
        // connection is dropped here, which ends the transfer.
        Ok(_) | Err(ValkeyError::Protocol { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn expect_pong(conn: &mut Connection) -> Result<(), ValkeyError> {
    match conn.reply(MAX_SMALL_REPLY).await? {
        Reply::Simple(_) => Ok(()),
        Reply::Error(e) => Err(crate::connection::classify_error(&e, "PING")),
        other => Err(conn.unexpected("PING", &other)),
    }
}

/// What the server's refusal of the probing `SYNC` means: `NOPERM` is a missing right;
/// the refusals that come after the ACL check (pending output, a replica whose own link
/// is down) prove the right is granted.
pub fn sync_refusal(e: &str) -> Result<(), ValkeyError> {
    let upper = e.to_ascii_uppercase();
    if upper.contains("PENDING OUTPUT") || upper.contains("CAN'T SYNC") {
        return Ok(());
    }
    Err(crate::connection::classify_error(e, "SYNC"))
}

async fn check_sentinel(
    settings: &ValkeySettings,
    sentinel: crate::config::SentinelSettings,
    info: &ServerInfo,
) -> SentinelCheck {
    let sentinels = Sentinels::new(sentinel);
    let addr = sentinels.configured().to_string();
    // A replica belongs to its primary's group; a primary is matched by run id or address.
    let (run_id, ips, port) = match (&info.master_host, info.master_port) {
        (Some(h), Some(p)) if info.role.as_deref() == Some("slave") => (None, vec![h.clone()], p),
        _ => (
            info.run_id.as_deref(),
            host_ips(&settings.host, settings.port).await,
            settings.port,
        ),
    };
    match sentinels.group_of(run_id, &ips, port).await {
        Ok(group) => SentinelCheck {
            ok: true,
            code: None,
            message: None,
            addr,
            master_name: Some(group.master_name),
            sentinels: Some(group.sentinels.len() as u32),
        },
        Err(e) => SentinelCheck {
            ok: false,
            code: Some(ErrorCode::SentinelError.as_str().into()),
            message: Some(e.to_string()),
            addr,
            master_name: None,
            sentinels: None,
        },
    }
}

/// The addresses `host` stands for (itself when it is an address or cannot be resolved):
/// Sentinel names masters by IP.
pub async fn host_ips(host: &str, port: u16) -> Vec<String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut ips = vec![bare.to_owned()];
    if bare.parse::<std::net::IpAddr>().is_err() {
        if let Ok(found) = tokio::net::lookup_host((bare, port)).await {
            for a in found {
                let ip = a.ip().to_string();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_refusals_after_the_acl_check_prove_the_right() {
        assert!(sync_refusal("ERR SYNC and PSYNC are invalid with pending output").is_ok());
        assert!(sync_refusal("ERR Can't SYNC while not connected with my master").is_ok());
        let e = sync_refusal("NOPERM User backup has no permissions to run the 'sync' command")
            .unwrap_err();
        assert_eq!(code_of(&e), ErrorCode::ValkeyPermission);
        let e = sync_refusal("NOAUTH Authentication required.").unwrap_err();
        assert_eq!(code_of(&e), ErrorCode::ValkeyAuth);
        let e = sync_refusal("ERR unknown command 'SYNC'").unwrap_err();
        assert_eq!(code_of(&e), ErrorCode::ValkeyError);
    }

    #[test]
    fn roles_are_named_as_the_charm_shows_them() {
        let info = |role: &str| ServerInfo {
            role: Some(role.into()),
            ..Default::default()
        };
        assert_eq!(role_name(&info("master")).as_deref(), Some("primary"));
        assert_eq!(role_name(&info("slave")).as_deref(), Some("replica"));
        assert_eq!(role_name(&ServerInfo::default()), None);
    }

    #[test]
    fn every_failure_code_has_advice() {
        for code in [
            ErrorCode::ValkeyUnreachable,
            ErrorCode::ValkeyAuth,
            ErrorCode::ValkeyPermission,
        ] {
            assert!(advice(code).contains("valkey") || advice(code).contains("+sync"));
        }
    }
}
