//! Replacing a small file in the state directory atomically, from any number of tasks.
//!
//! The agent keeps a few JSON files (`metrics.json`, the scheduler's state) that
//! several tasks save: a backup that finishes while a scheduled slot is judged, two
//! connections finishing at once. Writing a temp file and renaming it over the real one
//! makes a reader see the old or the new content, never a mix; but a temp file *name*
//! shared by two writers breaks that (one truncates what the other is writing; one rename
//! finds the name already gone). So every write gets its own temp name.

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

/// Writes `body` to a temp file of its own beside `file`, then renames it over `file`;
/// on failure the temp file is removed and the error returned (`file` is untouched).
pub async fn replace(file: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(file);
    let write = async {
        tokio::fs::write(&tmp, body).await?;
        tokio::fs::rename(&tmp, file).await
    };
    let result = write.await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
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
        let writes = bodies.iter().map(|b| replace(&file, b));
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
    fn temp_names_differ_per_write() {
        let f = Path::new("/state/schedule.json");
        let (a, b) = (temp_path(f), temp_path(f));
        assert_ne!(a, b);
        assert_eq!(a.parent(), f.parent());
        assert!(a.to_str().unwrap().starts_with("/state/schedule.json."));
    }
}
