//! Replacing a small file in the state directory atomically, from any number of tasks.
//!
//! The agent keeps a few JSON files (`metrics.json`, the scheduler's state) that
//! several tasks save: a backup that finishes while a scheduled slot is judged, two
//! connections finishing at once. Writing a temp file and renaming it over the real one
//! makes a reader see the old or the new content, never a mix; but a temp file *name*
//! shared by two writers breaks that (one truncates what the other is writing; one rename
//! finds the name already gone). So every write gets its own temp name. The
//! configuration and the Sentinel suppression record (which a restart must find) are
//! also flushed to disk ([`Flush::Durable`]); metrics and the scheduler's state are not
//! ([`Flush::Lazy`]: a flush under a busy disk can outlast a schedule's slot).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temp files of concurrent writes within this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A temp name beside `file` that no other write (of this process, or of another
/// process: the pid is in it) uses: `<name>.<pid>-<n>.tmp`.
pub fn temp_path(file: &Path) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    file.with_file_name(name)
}

/// Whether a replacement waits until it is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// The temp file is flushed before the rename and the directory after it: after a
    /// crash the file holds the old content or the new, whole (the configuration, the
    /// Sentinel suppression record a restart must find).
    Durable,
    /// No flush: a crash may lose the last replacement (numbers the next event rewrites:
    /// metrics, the scheduler's state). A flush can take seconds while the disk is busy,
    /// which the scheduler cannot afford between slots.
    Lazy,
}

/// Writes `body` to a new temp file of its own beside `file` (mode 0600, never through a
/// link) and renames it over `file`, flushed as `flush` says. A reader sees the old
/// content or the new, never a mix. On failure the temp file is removed and the error
/// returned (`file` is untouched unless only the directory's flush failed). Blocking:
/// async callers use [`replace`].
pub fn replace_blocking(file: &Path, body: &[u8], flush: Flush) -> std::io::Result<()> {
    replace_via(&temp_path(file), file, body, flush)
}

/// [`replace_blocking`] through the temp file `tmp`.
fn replace_via(tmp: &Path, file: &Path, body: &[u8], flush: Flush) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)?;
    let durable = flush == Flush::Durable;
    let mut write = || {
        f.write_all(body)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(tmp, file)?;
        if durable {
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        Ok(())
    };
    let result = write();
    if result.is_err() {
        // Ours (created above); a name that was taken is left to whoever took it.
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// At startup, before this process writes any state: removes the temp files that writes
/// of an earlier agent left (killed between creating and renaming one): names
/// `<name>.json.<pid>-<n>.tmp` directly in `dir` (every state file is JSON) whose
/// `<pid>` runs no process (a second agent started by mistake may be writing), or is this
/// process's own (a pid reused after a reboot: this process has written nothing yet).
/// Pids are this pid namespace's: a state directory shared across namespaces is not
/// supported. Unlinks by name in the agent's own 0700 directory; a link is removed, never
/// followed; a directory is left. An entry that cannot be removed is skipped. Returns how
/// many it removed. Blocking.
pub fn clean_leftovers(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(leftover_pid) else {
            continue;
        };
        if (pid != std::process::id() && process_runs(pid))
            || entry.file_type().map_or(true, |t| t.is_dir())
        {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a leftover temp file")
            }
        }
    }
    Ok(removed)
}

/// The `<pid>` of a name [`temp_path`] makes for a JSON state file, else `None`.
fn leftover_pid(name: &str) -> Option<u32> {
    let (base, tail) = name.strip_suffix(".tmp")?.rsplit_once('.')?;
    if !base.ends_with(".json") {
        return None;
    }
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether a process `pid` exists (a signal-0 probe; no permission still means it runs).
fn process_runs(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// [`replace_blocking`] off the async workers.
pub async fn replace(file: &Path, body: &[u8], flush: Flush) -> std::io::Result<()> {
    let (file, body) = (file.to_owned(), body.to_vec());
    tokio::task::spawn_blocking(move || replace_blocking(&file, &body, flush))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_saves_each_succeed_and_leave_one_whole_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metrics.json");
        // Bodies of different lengths: a shared temp name would mix or lose them.
        let bodies: Vec<Vec<u8>> = (0..32u8)
            .map(|i| vec![b'a' + (i % 26); 1 + 4096 * i as usize])
            .collect();
        let writes = bodies.iter().map(|b| replace(&file, b, Flush::Lazy));
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        let stored = std::fs::read(&file).unwrap();
        assert!(bodies.contains(&stored), "a mix of {} bytes", stored.len());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("metrics.json")]);
    }

    #[test]
    fn a_replaced_file_is_owner_only_and_a_planted_link_at_the_temp_name_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_blocking(&file, b"new", Flush::Durable).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A link where the next temp file will be: the write fails and touches neither
        // the link's target nor the file.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"target").unwrap();
        let tmp = temp_path(&file);
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        assert!(replace_via(&tmp, &file, b"newer", Flush::Durable).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"target");
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        // The name was not ours: the link stays.
        assert!(tmp.symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[test]
    fn leftovers_of_dead_writers_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that ran and ended (reaped): no process has it now, barring reuse.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let ours = std::process::id();
        let keep = [
            "metrics.json".to_owned(),
            "notes.tmp".to_owned(),
            format!("config.json.{dead}-x.tmp"),
            format!("config.json.{dead}-1"),
            format!("notes.txt.{dead}-1.tmp"),
        ];
        for name in &keep {
            std::fs::write(dir.path().join(name), b"keep").unwrap();
        }
        // Under a dead pid, and under this process's own (a pid reused after a reboot).
        for gone in [
            format!("config.json.{dead}-7.tmp"),
            format!("metrics.json.{ours}-3.tmp"),
        ] {
            std::fs::write(dir.path().join(gone), b"left").unwrap();
        }
        // A directory under a leftover name is not a file this module made: it stays.
        let odd_dir = format!("schedule.json.{dead}-9.tmp");
        std::fs::create_dir(dir.path().join(&odd_dir)).unwrap();
        // A link under a leftover name is removed itself; its target stays.
        let target = dir.path().join("target");
        std::fs::write(&target, b"target").unwrap();
        let link = format!("schedule.json.{dead}-0.tmp");
        std::os::unix::fs::symlink(&target, dir.path().join(&link)).unwrap();

        assert_eq!(clean_leftovers(dir.path()).unwrap(), 3);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = keep.to_vec();
        want.push("target".into());
        want.push(odd_dir);
        want.sort();
        assert_eq!(names, want);
        assert_eq!(std::fs::read(&target).unwrap(), b"target");
    }

    #[test]
    fn the_sweep_reads_back_the_pid_of_the_names_temp_path_makes() {
        // temp_path writes the name, leftover_pid parses it: one format, both ways.
        let tmp = temp_path(Path::new("/state/verify-schedule.json"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(leftover_pid(name), Some(std::process::id()));
    }

    #[test]
    fn temp_names_differ_per_write() {
        let f = Path::new("/state/schedule.json");
        let (a, b) = (temp_path(f), temp_path(f));
        assert_ne!(a, b);
        assert_eq!(a.parent(), f.parent());
        assert!(a.to_str().unwrap().starts_with("/state/schedule.json."));
    }
}
