//! The one write path and the run-folder lock.
//!
//! - [`write_atomic`]: every file eio writes (models, checkpoints, reports, configs, transfer sets)
//!   goes through a temporary file `.<name>.tmp<pid>` in the same folder, fsync, rename and an fsync
//!   of the folder: readers see the old file or the new one, never a part, and a crash at any
//!   moment leaves the old file intact. A failed write removes its temporary file; temporary
//!   files left by killed processes (whose pid no longer runs) are removed by the next write of
//!   the same file and by [`clean_stale_temps`] when a run starts.
//! - [`check_writable`]: refuses an output that cannot be written before the long work starts.
//! - [`RunLock`]: an exclusive lock on a run folder (`.lock`, `flock`), so that two processes never
//!   write one run.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const TMP_TAG: &str = ".tmp";

/// The temporary name of `path` for process `pid`: `.<name>.tmp<pid>`.
fn temp_name(path: &Path, pid: u32) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_TAG}{pid}"))
}

/// The process id of a temporary file name made by [`temp_name`] (for any target name).
fn temp_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (_, pid) = rest.rsplit_once(TMP_TAG)?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// True when process `pid` may still be running (it is this one, or `/proc` lists it). Where
/// there is no `/proc`, every process counts as running, so nothing is removed.
fn pid_alive(pid: u32) -> bool {
    pid == std::process::id()
        || !Path::new("/proc/self").exists()
        || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporary files in `dir` left by processes that no longer run (killed during a
/// write). Returns how many were removed. A missing folder has none.
pub fn clean_stale_temps(dir: &Path) -> Result<usize> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temp_pid(&name) {
            if !pid_alive(pid)
                && e.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Removes stale temporary files of `path` only (other processes' temporaries of this name).
fn clean_stale_temps_of(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}{TMP_TAG}", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) =
            n.strip_prefix(&prefix).and_then(|p| temp_pid(&format!(".x{TMP_TAG}{p}")))
        {
            if !pid_alive(pid) && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and a rename, so readers never see a
/// partial file and an interrupted write leaves the old file intact (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file to write"));
    }
    clean_stale_temps_of(path);
    let tmp = temp_name(path, std::process::id());
    let written = (|| {
        use std::io::Write;
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // Make the rename itself durable (best effort: not every file system syncs folders).
    if let Ok(d) = File::open(dir.unwrap_or(Path::new("."))) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `value` as pretty-printed JSON to `path` through [`write_atomic`].
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::config(format!("internal: {}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())
}

/// Reads the JSON file `path` (errors name the file).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::data(path, format!("not the JSON expected: {e}")))
}

/// Checks that `path` can be written (before long work whose result goes there): its folder
/// exists or can be created, a file can be created in it, and `path` is not a folder. Leaves no
/// file behind (the folder stays created).
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file to write"));
    }
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    check_dir_writable(dir)
}

/// Refuses a `dir` that exists as something other than a folder (a folder that does not exist
/// yet is fine: it will be created).
pub fn check_folder_or_absent(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::data(dir, "is a file, expected a folder"));
    }
    Ok(())
}

/// Checks that files can be created in `dir` (created if missing).
pub fn check_dir_writable(dir: &Path) -> Result<()> {
    check_folder_or_absent(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = temp_name(&dir.join("write-probe"), std::process::id());
    File::create(&probe)
        .map_err(|e| Error::data(dir, format!("cannot create files in this folder ({e})")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// An exclusive lock on a folder, held until dropped: the file `<dir>/.lock`, locked with
/// `flock` (released by the kernel when the process ends, also on kill -9).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `dir` (created if missing), or fails at once naming the folder when
    /// another process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        check_folder_or_absent(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::config(format!(
                "{} is in use by another eio process (it holds {}); wait for it to finish or use \
                 another folder",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    /// Unlocks before the file closes: a child process that another thread forked (and has not
    /// yet exec'd) shares the open file, and closing our copy alone would leave the folder
    /// locked until that child execs.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_round_trip() {
        let t = temp_name(Path::new("/x/model.safetensors"), 1234);
        assert_eq!(t, Path::new("/x/.model.safetensors.tmp1234"));
        assert_eq!(temp_pid(".model.safetensors.tmp1234"), Some(1234));
        assert_eq!(temp_pid("model.safetensors"), None);
        assert_eq!(temp_pid(".a.tmpx"), None);
    }

    #[test]
    fn stale_temps_are_removed_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("eio-fsx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A pid that cannot run (above the kernel's pid_max).
        let stale = dir.join(".m.safetensors.tmp4294967290");
        let live = temp_name(&dir.join("m.safetensors"), std::process::id());
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        write_atomic(&dir.join("m.safetensors"), b"data").unwrap();
        assert!(!stale.exists());
        assert!(!live.exists(), "own temp is replaced by the write");
        std::fs::write(&stale, b"x").unwrap();
        assert_eq!(clean_stale_temps(&dir).unwrap(), 1);
        assert_eq!(std::fs::read(dir.join("m.safetensors")).unwrap(), b"data");
        let lock = RunLock::acquire(&dir).unwrap();
        assert!(RunLock::acquire(&dir).is_err(), "a second lock on one folder fails");
        drop(lock);
        RunLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dropped_lock_is_free_though_a_copy_of_its_file_lives() {
        // A child forked by another thread between our open and its exec holds such a copy
        // (the same open file): the folder must be free once the lock is dropped.
        let dir = std::env::temp_dir().join(format!("eio-fsx-lock-{}", std::process::id()));
        let lock = RunLock::acquire(&dir).unwrap();
        let copy = lock.file.try_clone().unwrap();
        drop(lock);
        RunLock::acquire(&dir).expect("free after drop");
        drop(copy);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
