//! The exclusive lock of an environment and who holds it. The local backend's lock is a
//! file created with `O_EXCL`; the S3 backend's is an object created with `If-None-Match: *`
//! and renewed as a lease (see `s3.rs`). Both record the same [`LockInfo`].

use serde::{Deserialize, Serialize};

use super::now_rfc3339;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// Names this lock for `kstack state unlock <env> <id>`.
    #[serde(default)]
    pub id: String,
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// Which pids the holder's `pid` is one of (see [`pid_scope`]). Absent in locks of older
    /// versions, which are then not judged by their pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
    pub command: String,
    pub started: String,
    /// Until when the holder's lease runs (S3 backend): a live holder renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl LockInfo {
    /// Who is taking the lock now, for `command`.
    pub fn ours(command: &str) -> LockInfo {
        LockInfo {
            id: format!("{:08x}", rand::random::<u32>()),
            holder: std::env::var("USER").unwrap_or_else(|_| String::from("unknown")),
            host: hostname(),
            pid: std::process::id(),
            pid_scope: pid_scope(),
            command: command.to_owned(),
            started: now_rfc3339(),
            expires: None,
        }
    }

    pub fn unknown() -> LockInfo {
        LockInfo {
            id: String::new(),
            holder: String::from("unknown"),
            host: String::from("unknown-host"),
            pid: 0,
            pid_scope: None,
            command: String::from("unknown command"),
            started: String::from("an unknown time"),
            expires: None,
        }
    }

    /// Whether the holder is certainly gone: its process ended (as seen from the same pid
    /// scope), or its lease ran out.
    pub fn is_stale(&self) -> bool {
        let ended = self.pid_scope.as_deref().is_some_and(|scope| has_ended(scope, self.pid));
        ended || self.expires.as_deref().is_some_and(has_passed)
    }
}

/// Whether process `pid` of pid `scope` has certainly ended. Only a process that sees the same
/// pids can tell; from anywhere else it may still run.
pub fn has_ended(scope: &str, pid: u32) -> bool {
    pid_scope().as_deref() == Some(scope) && !std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether an RFC 3339 UTC time, such as a lease's end, is past.
pub fn has_passed(time: &str) -> bool {
    // Timestamps of one format compare as text.
    time < now_rfc3339().as_str()
}

/// The pids this process sees, as `boot-id/pid-namespace`: the boot id tells machines apart
/// (cloned machines share host names, and every host's first pid namespace has the same
/// name) and changes at reboot, when pids start over; the namespace tells containers apart.
pub fn pid_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), namespace.display()))
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "environment `{environment}` is locked by {}@{} (pid {}, `{}`) since {} [lock {}]{}",
        info.holder, info.host, info.pid, info.command, info.started, info.id,
        info.expires.as_ref().map(|e| format!(", lease until {e}")).unwrap_or_default()
    )]
    Held { environment: String, info: Box<LockInfo>, stale: bool },
    #[error("the lock of `{environment}` is [lock {held}], not [lock {given}]; nothing was removed")]
    WrongId { environment: String, held: String, given: String },
    #[error("unlocking `{environment}` needs the lock's id: it is held by {}@{} (`{}`) since {} [lock {}]", info.holder, info.host, info.command, info.started, info.id)]
    IdNeeded { environment: String, info: Box<LockInfo> },
    #[error("cannot take or release the lock {location}: {message}")]
    Io { location: String, message: String },
}

impl LockError {
    pub fn hint(&self) -> String {
        match self {
            LockError::Held { environment, stale: true, info } => format!(
                "that run is gone (its process ended or its lease ran out); if no other kstack is working on `{environment}`, run `kstack state unlock {environment} {}`",
                info.id
            ),
            LockError::Held { environment, info, .. } => format!(
                "wait for it to finish; if it died on another machine, run `kstack state unlock {environment} {}`",
                info.id
            ),
            LockError::WrongId { environment, .. } => format!("check the id in the message of the command that was refused, or `kstack state unlock {environment}` to see it"),
            LockError::IdNeeded { environment, info } => format!("if that run is gone: `kstack state unlock {environment} {}`", info.id),
            LockError::Io { .. } => String::from("check access to where the state lives (the project directory, or the bucket)"),
        }
    }
}

/// Held while it lives; dropping it releases the lock.
pub struct Lock {
    pub(super) release: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lock")
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| String::from("unknown-host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No process has pid 0x7fff_fff0 (above Linux's pid_max).
    const ENDED: u32 = 0x7fff_fff0;

    #[test]
    fn a_holder_is_stale_when_its_process_ended_here_or_its_lease_ran_out() {
        let live = LockInfo::ours("kstack apply dev");
        assert!(!live.is_stale());
        assert!(LockInfo { pid: ENDED, ..live.clone() }.is_stale());
        // A container on this machine sees other pids, and so does another machine: only a
        // lease tells there.
        let (boot, _) = live.pid_scope.as_deref().unwrap().split_once('/').unwrap();
        let contained = LockInfo { pid: ENDED, pid_scope: Some(format!("{boot}/pid:[1]")), ..live.clone() };
        assert!(!contained.is_stale());
        let cloned = LockInfo { pid: ENDED, pid_scope: Some(String::from("00000000-0000-0000-0000-000000000000/pid:[4026531836]")), ..live.clone() };
        assert!(!cloned.is_stale());
        assert!(LockInfo { expires: Some(String::from("2020-01-01T00:00:00Z")), ..contained }.is_stale());
        // A lock written before pid scopes were recorded cannot be judged by its pid.
        assert!(!LockInfo { pid: ENDED, pid_scope: None, ..live }.is_stale());
    }
}
