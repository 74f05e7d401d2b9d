//! Who may do what over the socket.
//!
//! The agent runs as root. Two kinds of peer are served (the uid comes from
//! `SO_PEERCRED`, never from anything the peer says):
//!
//! * **admins** — root and the agent's own uid: every operation;
//! * **operators** — each `--allow-uid`: what a backup operator needs and nothing that
//!   could make root run, read or write something of the peer's choosing: `status`,
//!   `list-backups`, `create-backup`, `verify-backup` (without `server`, which names an
//!   executable) and dry-run `prune-backups`. Never `configure` (it names the cli the
//!   agent executes and the credentials it uses), never `restore-backup` (it replaces
//!   the live data), never a confirmed prune (it deletes).
//!
//! Everyone else is refused before the request is read.

use serde_json::Value;

use crate::protocol::Op;

/// What a peer is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
}

/// The role of the peer `uid`: `None` for anyone not served at all.
pub fn role_of(uid: u32, own_uid: u32, operators: &[u32]) -> Option<Role> {
    if uid == 0 || uid == own_uid {
        Some(Role::Admin)
    } else if operators.contains(&uid) {
        Some(Role::Operator)
    } else {
        None
    }
}

/// Whether `role` may run `op` with these (still unparsed) params; `Err` says why not,
/// in words fit for the refused peer.
pub fn authorize(role: Role, op: Op, params: &Value) -> Result<(), String> {
    if role == Role::Admin {
        return Ok(());
    }
    let denied = |what: &str| {
        Err(format!(
            "{what} is reserved to root and the agent's own user (this uid is allowed read-only operations and backups)"
        ))
    };
    match op {
        Op::Status | Op::ListBackups | Op::CreateBackup => Ok(()),
        Op::VerifyBackup if params.get("server").is_some() => {
            denied("verify-backup with `server` (it names an executable the agent runs)")
        }
        Op::VerifyBackup => Ok(()),
        Op::PruneBackups
            if params
                .get("confirm")
                .is_some_and(|c| c != &Value::Bool(false)) =>
        {
            denied("a confirmed prune-backups")
        }
        Op::PruneBackups => Ok(()),
        Op::Configure => denied("configure"),
        Op::RestoreBackup => denied("restore-backup"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_come_from_the_uid_only() {
        assert_eq!(role_of(0, 1000, &[]), Some(Role::Admin));
        assert_eq!(role_of(1000, 1000, &[]), Some(Role::Admin));
        assert_eq!(role_of(42, 0, &[42]), Some(Role::Operator));
        assert_eq!(role_of(43, 0, &[42]), None);
    }

    #[test]
    fn operators_never_configure_restore_delete_or_name_executables() {
        let op = Role::Operator;
        for (o, p) in [
            (Op::Status, json!({})),
            (Op::ListBackups, json!({"cluster": "x"})),
            (Op::CreateBackup, json!({})),
            (Op::VerifyBackup, json!({"backup-id": "x", "load": true})),
            (Op::PruneBackups, json!({"keep-last": 1})),
            (Op::PruneBackups, json!({"keep-last": 1, "confirm": false})),
        ] {
            assert!(authorize(op, o, &p).is_ok(), "{o:?} {p}");
        }
        for (o, p) in [
            (Op::Configure, json!({})),
            (Op::RestoreBackup, json!({"step": "prepare"})),
            (Op::RestoreBackup, json!({"step": "abort"})),
            (
                Op::VerifyBackup,
                json!({"backup-id": "x", "server": "/tmp/evil"}),
            ),
            (Op::PruneBackups, json!({"keep-last": 1, "confirm": true})),
            // Not a boolean: the op would refuse it, but it is not let through to find out.
            (Op::PruneBackups, json!({"keep-last": 1, "confirm": "yes"})),
        ] {
            let why = authorize(op, o, &p).unwrap_err();
            assert!(why.contains("reserved to root"), "{why}");
        }
        assert!(authorize(Role::Admin, Op::Configure, &json!({})).is_ok());
    }
}
