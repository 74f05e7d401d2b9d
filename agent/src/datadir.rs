//! The server's data directory, handled by descriptor.
//!
//! A restore runs as root and writes into a directory that another user owns (the Valkey
//! server's `dir`). That user can rename, replace or symlink any entry in it at any
//! moment, so nothing here follows a path twice: the directory is opened once
//! (`O_DIRECTORY | O_NOFOLLOW`) and every later step is relative to that descriptor
//! (`openat`, `renameat`, `mkdirat`, `linkat`, `unlinkat`) on single-component names,
//! files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, and ownership and mode are
//! changed on the open file (`fchown`, `fchmod`), never on a name. A name that no longer
//! refers to the file the agent created and checked is detected by comparing device and
//! inode numbers, and refused.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Owner and permission bits to give a file the server must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`0o777` at most).
    pub mode: u32,
}

impl Ownership {
    /// Who should own the restored dump, in order of trust:
    /// 1. the dump it replaces (a regular file): its owner and mode, so the server reads
    ///    it exactly as it read the old one;
    /// 2. the server process's own user (when the caller could find it), mode 0600;
    /// 3. the directory's owner, mode 0600.
    pub fn for_restored_dump(
        previous: Option<&FileStat>,
        server_user: Option<(u32, u32)>,
        dir: &FileStat,
    ) -> Ownership {
        if let Some(p) = previous.filter(|p| is_regular(p)) {
            return Ownership {
                uid: p.st_uid,
                gid: p.st_gid,
                mode: p.st_mode & 0o777,
            };
        }
        let (uid, gid) = server_user.unwrap_or((dir.st_uid, dir.st_gid));
        Ownership {
            uid,
            gid,
            mode: 0o600,
        }
    }

    /// Applies owner and mode to an open file (never to a name).
    pub fn apply(&self, file: &impl AsFd) -> io::Result<()> {
        std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))?;
        nix::sys::stat::fchmod(file, Mode::from_bits_truncate(self.mode)).map_err(io::Error::from)
    }
}

/// Whether a stat result is a regular file (not a symlink, directory, FIFO…).
pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

/// An open directory; every operation is relative to its descriptor.
#[derive(Debug)]
pub struct DataDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl DataDir {
    /// Opens `path` as a directory without following a symlink at its last component.
    pub fn open(path: &Path) -> io::Result<DataDir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DataDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The path it was opened at (for messages only: nothing is opened by it again).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own owner and mode.
    pub fn stat(&self) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstat(&self.fd)?)
    }

    /// What `name` is right now, without following a symlink (`None`: nothing there).
    pub fn entry(&self, name: &str) -> io::Result<Option<FileStat>> {
        check_name(name)?;
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `name` still refers to exactly `file` (same device and inode).
    pub fn refers_to(&self, name: &str, file: &File) -> io::Result<bool> {
        let Some(st) = self.entry(name)? else {
            return Ok(false);
        };
        let meta = file.metadata()?;
        Ok(st.st_dev == meta.dev() && st.st_ino == meta.ino())
    }

    /// Creates `name` as a new regular file, read-write, mode 0600, owned by the caller.
    /// Fails if anything (a file, a symlink) already has the name.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        check_name(name)?;
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Creates `name` with `contents`, owned as `owner` says, and syncs it.
    pub fn write_new(&self, name: &str, contents: &[u8], owner: Ownership) -> io::Result<()> {
        let mut file = self.create_new(name)?;
        file.write_all(contents)?;
        owner.apply(&file)?;
        file.sync_all()
    }

    /// Gives `file` (open, anywhere on this filesystem) the additional name `name` here;
    /// where the kernel refuses to link an open descriptor, copies its contents into a
    /// new file owned as `owner` says.
    pub fn link_or_copy(&self, file: &File, name: &str, owner: Ownership) -> io::Result<()> {
        check_name(name)?;
        match nix::unistd::linkat(file, "", &self.fd, name, AtFlags::AT_EMPTY_PATH) {
            Ok(()) => Ok(()),
            Err(_) => {
                let mut out = self.create_new(name)?;
                let mut src = file.try_clone()?;
                src.rewind()?;
                io::copy(&mut src, &mut out)?;
                owner.apply(&out)?;
                out.sync_all()
            }
        }
    }

    /// Renames `from` to `to`, both in this directory (replacing `to` if it exists).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        Ok(nix::fcntl::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the file (or symlink) `name`.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        Ok(nix::unistd::unlinkat(
            &self.fd,
            name,
            UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// Removes the directory `name` and everything in it, without following symlinks.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        // std's remove_dir_all never follows a symlink, neither at the top nor inside.
        std::fs::remove_dir_all(self.path.join(name))
    }

    /// Creates the subdirectory `name` (mode `mode`) and opens it. Refuses the result
    /// unless it is a directory this process owns and nothing has been put in it, so a
    /// directory swapped in by someone else between the two calls is never used.
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<DataDir> {
        check_name(name)?;
        nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(mode))?;
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_nlink != 2 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{name} was replaced while it was being created"),
            ));
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))?;
        Ok(DataDir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Gives the directory itself to `owner` (mode left as created).
    pub fn chown(&self, owner: Ownership) -> io::Result<()> {
        std::os::unix::fs::fchown(&self.fd, Some(owner.uid), Some(owner.gid))
    }

    /// Bytes an unprivileged user may still write on this directory's filesystem.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.fd)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Makes renames and creations in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(nix::unistd::fsync(&self.fd)?)
    }
}

/// A name inside the directory: one component, never `.`, `..` or empty.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stat_of(path: &Path) -> FileStat {
        nix::sys::stat::lstat(path).unwrap()
    }

    #[test]
    fn names_must_be_one_component() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert_eq!(
                dir.create_new(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }

    #[test]
    fn open_refuses_a_symlinked_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(DataDir::open(&link).is_err());
        assert!(DataDir::open(&real).is_ok());
    }

    #[test]
    fn create_new_never_follows_or_replaces_an_existing_name() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("planted")).unwrap();
        assert_eq!(
            dir.create_new("planted").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn ownership_goes_to_the_open_file_even_after_its_name_is_swapped() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"root only").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = stat_of(&victim);
        let dir = DataDir::open(tmp.path()).unwrap();
        let file = dir.create_new("temp").unwrap();
        // The directory's owner moves the file away and plants a symlink in its place.
        std::fs::rename(tmp.path().join("temp"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("temp")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let owner = Ownership {
            uid: me,
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o644,
        };
        owner.apply(&file).unwrap();
        let after = stat_of(&victim);
        assert_eq!(
            after.st_mode & 0o777,
            0o600,
            "the planted target kept its mode"
        );
        assert_eq!((after.st_uid, after.st_gid), (before.st_uid, before.st_gid));
        assert_eq!(stat_of(&tmp.path().join("moved")).st_mode & 0o777, 0o644);
        assert!(!dir.refers_to("temp", &file).unwrap());
        assert!(dir.refers_to("moved", &file).unwrap());
    }

    #[test]
    fn the_restored_dump_takes_the_previous_dumps_owner_else_the_servers() {
        let tmp = tempfile::tempdir().unwrap();
        let prev = tmp.path().join("dump.rdb");
        std::fs::write(&prev, b"x").unwrap();
        std::fs::set_permissions(&prev, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dir_st = stat_of(tmp.path());
        let prev_st = stat_of(&prev);
        let o = Ownership::for_restored_dump(Some(&prev_st), Some((7, 8)), &dir_st);
        assert_eq!(
            (o.uid, o.gid, o.mode),
            (prev_st.st_uid, prev_st.st_gid, 0o640)
        );
        let o = Ownership::for_restored_dump(None, Some((7, 8)), &dir_st);
        assert_eq!((o.uid, o.gid, o.mode), (7, 8, 0o600));
        let o = Ownership::for_restored_dump(None, None, &dir_st);
        assert_eq!((o.uid, o.gid), (dir_st.st_uid, dir_st.st_gid));
        // A symlink where the dump was is not a dump: its owner means nothing.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&prev, &link).unwrap();
        let o = Ownership::for_restored_dump(Some(&stat_of(&link)), Some((7, 8)), &dir_st);
        assert_eq!((o.uid, o.gid, o.mode), (7, 8, 0o600));
    }

    #[test]
    fn create_dir_then_link_and_write_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let mut file = dir.create_new("dump.tmp").unwrap();
        file.write_all(b"RDB").unwrap();
        let sub = dir.create_dir("aof", 0o750).unwrap();
        let me = Ownership {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o600,
        };
        sub.link_or_copy(&file, "base.rdb", me).unwrap();
        sub.write_new("manifest", b"file base.rdb seq 1 type b\n", me)
            .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("aof/base.rdb")).unwrap(),
            b"RDB"
        );
        assert!(dir.create_dir("aof", 0o750).is_err());
        dir.rename("dump.tmp", "dump.rdb").unwrap();
        assert!(dir.refers_to("dump.rdb", &file).unwrap());
        dir.remove_tree("aof").unwrap();
        assert!(dir.entry("aof").unwrap().is_none());
        dir.remove_file("dump.rdb").unwrap();
        assert!(dir.entry("dump.rdb").unwrap().is_none());
    }
}
