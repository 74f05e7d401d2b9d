//! The per-unit operation lock.
//!
//! A backup and a restore of the same unit must never overlap, whether they come from
//! the charm, from the CLI, or from a second agent process started by mistake. An
//! advisory `flock` on a file in the state directory gives exactly that: it is exclusive
//! across processes and open files, and the kernel drops it when the holder dies, so a
//! crashed agent never leaves a stale lock behind. The holder writes what it is doing
//! into the file so that a refused caller can be told which backup is running.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

const LOCK_FILE: &str = "operation.lock";

/// What the lock holder is doing (written into the lock file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockHolder {
    pub op: String,
    pub backup_id: String,
    pub started_at: String,
    pub pid: u32,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", busy_message(.0))]
    Busy(Option<LockHolder>),
    #[error("cannot open the lock file: {0}")]
    Io(#[from] std::io::Error),
}

fn busy_message(holder: &Option<LockHolder>) -> String {
    match holder {
        Some(h) => format!(
            "another {} is running on this unit ({}, started {}); try again when it has finished",
            h.op, h.backup_id, h.started_at
        ),
        None => "another backup or restore is running on this unit; try again when it has finished"
            .into(),
    }
}

/// The held lock; dropping it clears the holder record and releases it.
#[derive(Debug)]
pub struct UnitLock {
    flock: Flock<File>,
}

impl Drop for UnitLock {
    fn drop(&mut self) {
        // An empty file means "nobody": a later `busy` never names a finished operation.
        let _ = self.flock.set_len(0);
    }
}

/// How often a refused acquire is retried: `probe` holds a shared lock for an instant,
/// which must not turn into a spurious `busy`.
const ACQUIRE_ATTEMPTS: u32 = 5;

impl UnitLock {
    /// Takes the lock without waiting, or says who holds it. Blocking file I/O: call it
    /// from `spawn_blocking`.
    pub fn try_acquire(state_dir: &Path, holder: &LockHolder) -> Result<UnitLock, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(state_dir.join(LOCK_FILE))?;
        let mut file = file;
        for attempt in 1..=ACQUIRE_ATTEMPTS {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut flock) => {
                    let text = serde_json::to_vec(holder).map_err(std::io::Error::other)?;
                    flock.set_len(0)?;
                    flock.seek(SeekFrom::Start(0))?;
                    flock.write_all(&text)?;
                    flock.flush()?;
                    return Ok(UnitLock { flock });
                }
                Err((f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    if attempt == ACQUIRE_ATTEMPTS {
                        return Err(LockError::Busy(read_holder(f)));
                    }
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err((_, errno)) => return Err(LockError::Io(std::io::Error::from(errno))),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Whether some process holds the lock right now, and what it says it does. Takes a
    /// shared lock for an instant; `try_acquire` retries briefly so that this instant
    /// never turns into a spurious `busy`.
    pub fn probe(state_dir: &Path) -> Option<Option<LockHolder>> {
        let file = OpenOptions::new()
            .read(true)
            .open(state_dir.join(LOCK_FILE))
            .ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None,
            Err((file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                Some(read_holder(file))
            }
            Err(_) => None,
        }
    }
}

fn read_holder(mut file: File) -> Option<LockHolder> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str) -> LockHolder {
        LockHolder {
            op: "create-backup".into(),
            backup_id: id.into(),
            started_at: "now".into(),
            pid: 1,
        }
    }

    #[test]
    fn second_acquire_is_busy_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = UnitLock::try_acquire(dir.path(), &holder("A")).unwrap();
        match UnitLock::try_acquire(dir.path(), &holder("B")) {
            Err(LockError::Busy(Some(h))) => assert_eq!(h.backup_id, "A"),
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(UnitLock::probe(dir.path()).is_some());
        drop(lock);
        assert!(UnitLock::probe(dir.path()).is_none());
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.is_empty(), "a released lock names nobody: {text:?}");
        let again = UnitLock::try_acquire(dir.path(), &holder("B"));
        assert!(again.is_ok());
    }
}
