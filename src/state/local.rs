//! The local backend: `.kstack/state/<env>.json` and its lock file `<env>.lock`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::lock::{Lock, LockError, LockInfo};
use super::StateError;
use crate::stop::Stop;

#[derive(Debug, Clone)]
pub(super) struct LocalBackend {
    pub dir: PathBuf,
    pub environment: String,
}

impl LocalBackend {
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.environment))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.environment))
    }

    pub(super) fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { location: path.display().to_string(), message: source.to_string() }),
        }
    }

    /// Writes atomically: a temporary file, synced, renamed over the old one. Readable by
    /// the owner only, since attributes describe the account's infrastructure.
    pub(super) fn write(&self, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.path();
        let error = |source: std::io::Error| StateError::Write { location: path.display().to_string(), message: source.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let temporary = self.dir.join(format!(".{}.json.{}.tmp", self.environment, std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(error)?;
        file.write_all(bytes).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, &path).map_err(error)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Moves the state file aside after it was migrated elsewhere, keeping it as a backup.
    pub(super) fn retire(&self) -> Result<PathBuf, StateError> {
        let path = self.path();
        let aside = path.with_extension("json.migrated");
        std::fs::rename(&path, &aside).map_err(|e| StateError::Write { location: path.display().to_string(), message: e.to_string() })?;
        Ok(aside)
    }

    /// Takes the lock file, and watches it every second while held: once it is not this run's
    /// (removed by `kstack state unlock --force`, or taken by another run after that), `stop`
    /// is set, so the run starts no new change, as with a lost S3 lease.
    pub(super) fn lock(&self, command: &str, stop: &Stop) -> Result<Lock, LockError> {
        let path = self.lock_path();
        let io = |source: std::io::Error| LockError::Io { location: path.display().to_string(), message: source.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let info = LockInfo::ours(command);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                let text = serde_json::to_string_pretty(&info).unwrap_or_default();
                file.write_all(text.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                let (owned, id) = (path.clone(), info.id.clone());
                let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
                watch(path.clone(), info.id.clone(), std::sync::Arc::clone(&held), stop.clone());
                Ok(Lock {
                    release: Some(Box::new(move || {
                        held.store(false, std::sync::atomic::Ordering::SeqCst);
                        release_if_ours(&owned, &id);
                    })),
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let info = holder(&path).unwrap_or_else(LockInfo::unknown);
                let stale = info.process_ended();
                Err(LockError::Held { environment: self.environment.clone(), info: Box::new(info), stale })
            }
            Err(error) => Err(io(error)),
        }
    }

    /// Removes the lock (when `id` is given, only if it is that one; never one a live process
    /// here holds, unless `force`). Returns who held it.
    pub(super) fn unlock(&self, id: Option<&str>, force: bool) -> Result<Option<LockInfo>, LockError> {
        let path = self.lock_path();
        let Some(info) = holder(&path).or_else(|| path.exists().then(LockInfo::unknown)) else { return Ok(None) };
        if let Some(given) = id {
            if given != info.id {
                return Err(LockError::WrongId { environment: self.environment.clone(), held: info.id, given: given.to_owned() });
            }
        }
        if info.process_alive() && !force {
            return Err(LockError::Alive { environment: self.environment.clone(), info: Box::new(info) });
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(info)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(LockError::Io { location: path.display().to_string(), message: error.to_string() }),
        }
    }
}

/// Removes the lock file only if it is still the lock `id`: after `kstack state unlock`, another
/// run may hold a new lock under the same name, which stays. (The check and the removal are two
/// steps; between them would have to fall another unlock by hand and another run's start.)
fn release_if_ours(path: &Path, id: &str) {
    if holder(path).is_some_and(|held| held.id == id) {
        let _ = std::fs::remove_file(path);
    }
}

/// Sets `stop` once the lock file at `path` is no longer lock `id`, while `held`.
fn watch(path: PathBuf, id: String, held: std::sync::Arc<std::sync::atomic::AtomicBool>, stop: Stop) {
    std::thread::spawn(move || {
        while held.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if held.load(std::sync::atomic::Ordering::SeqCst) && holder(&path).is_none_or(|h| h.id != id) {
                stop.stop(crate::stop::Reason::LockLost(format!("the lock file {} was removed or replaced", path.display())));
                return;
            }
        }
    });
}

fn holder(path: &Path) -> Option<LockInfo> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend { dir: dir.path().to_owned(), environment: String::from("dev") };
        let stop = Stop::default();
        let first = backend.lock("kstack apply dev", &stop).unwrap();
        let error = backend.lock("kstack plan dev", &stop).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("locked by") && message.contains("kstack apply dev"), "{message}");
        assert!(matches!(error, LockError::Held { stale: false, .. }));
        drop(first);
        let second = backend.lock("kstack plan dev", &stop).unwrap();
        let LockError::WrongId { .. } = backend.unlock(Some("nope"), false).unwrap_err() else { panic!("a wrong id removes nothing") };
        drop(second);
        assert!(backend.unlock(None, false).unwrap().is_none(), "released on drop");
    }

    #[test]
    fn a_live_holders_lock_is_removed_only_by_force_and_the_holder_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend { dir: dir.path().to_owned(), environment: String::from("dev") };
        let stop = Stop::default();
        let _held = backend.lock("kstack apply dev", &stop).unwrap();
        let id = holder(&backend.lock_path()).unwrap().id;
        let LockError::Alive { .. } = backend.unlock(Some(&id), false).unwrap_err() else { panic!("this process holds it") };
        assert!(backend.lock_path().exists());
        assert!(stop.reason().is_none());
        backend.unlock(Some(&id), true).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert!(matches!(stop.reason(), Some(crate::stop::Reason::LockLost(_))), "the run learns it lost its lock");
    }

    #[test]
    fn an_old_run_releasing_its_lock_leaves_a_newer_runs_lock_alone() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend { dir: dir.path().to_owned(), environment: String::from("dev") };
        let stop = Stop::default();
        let old = backend.lock("kstack apply dev", &stop).unwrap();
        let old_id = holder(&backend.lock_path()).unwrap().id;
        // Its user took it for dead and removed it (forced: it runs in this very process); a
        // new run took the environment.
        assert_eq!(backend.unlock(Some(&old_id), true).unwrap().unwrap().id, old_id);
        let new = backend.lock("kstack roll dev", &stop).unwrap();
        let new_id = holder(&backend.lock_path()).unwrap().id;
        drop(old);
        let held = holder(&backend.lock_path()).expect("the new run's lock survives the old run's release");
        assert_eq!((held.id.as_str(), held.command.as_str()), (new_id.as_str(), "kstack roll dev"));
        assert!(matches!(backend.lock("kstack plan dev", &stop), Err(LockError::Held { .. })), "and still locks others out");
        drop(new);
        assert!(!backend.lock_path().exists(), "its holder releases it");
    }
}
