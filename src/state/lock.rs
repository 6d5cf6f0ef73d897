//! The exclusive lock of an environment: a file created with `O_EXCL`, holding who took it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::now_rfc3339;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub started: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "environment `{environment}` is locked by {}@{} (pid {}, `{}`) since {}",
        info.holder, info.host, info.pid, info.command, info.started
    )]
    Held { environment: String, info: Box<LockInfo>, stale: bool },
    #[error("cannot take the lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl LockError {
    pub fn hint(&self) -> String {
        match self {
            LockError::Held { environment, stale: true, .. } => format!(
                "that process is no longer running; if no other kstack is working on `{environment}`, run `kstack state unlock {environment}`"
            ),
            LockError::Held { environment, .. } => format!(
                "wait for it to finish; if it died on another machine, run `kstack state unlock {environment}`"
            ),
            LockError::Io { .. } => String::from("check that the project directory is writable"),
        }
    }
}

/// Held while it lives; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| String::from("unknown-host"))
}

impl Lock {
    pub fn acquire(path: &Path, environment: &str, command: &str) -> Result<Lock, LockError> {
        let io = |source| LockError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let info = LockInfo {
            holder: std::env::var("USER").unwrap_or_else(|_| String::from("unknown")),
            host: hostname(),
            pid: std::process::id(),
            command: command.to_owned(),
            started: now_rfc3339(),
        };
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut file) => {
                let text = serde_json::to_string_pretty(&info).unwrap_or_default();
                file.write_all(text.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(Lock { path: path.to_owned() })
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let info = Lock::holder(path).unwrap_or(LockInfo {
                    holder: String::from("unknown"),
                    host: String::from("unknown-host"),
                    pid: 0,
                    command: String::from("unknown command"),
                    started: String::from("an unknown time"),
                });
                let stale = info.host == hostname() && !Path::new(&format!("/proc/{}", info.pid)).exists();
                Err(LockError::Held { environment: environment.to_owned(), info: Box::new(info), stale })
            }
            Err(error) => Err(io(error)),
        }
    }

    /// Who holds the lock at `path`, if anyone.
    pub fn holder(path: &Path) -> Option<LockInfo> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Removes a lock left by a run that died.
    pub fn force_release(path: &Path) -> std::io::Result<bool> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.lock");
        let first = Lock::acquire(&path, "dev", "kstack apply dev").unwrap();
        let error = Lock::acquire(&path, "dev", "kstack plan dev").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("locked by"), "{message}");
        assert!(message.contains("kstack apply dev"), "{message}");
        assert!(matches!(error, LockError::Held { stale: false, .. }));
        drop(first);
        assert!(Lock::acquire(&path, "dev", "kstack plan dev").is_ok());
    }
}
