//! The exclusive lock of an environment and who holds it. The local backend's lock is a
//! file created with `O_EXCL`; the S3 backend's is an object created with `If-None-Match: *`
//! and renewed as a lease (see `s3.rs`). Both record the same [`LockInfo`].

use std::time::{Duration, SystemTime};

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
    /// Until when the holder's lease runs (S3 backend): a live holder renews it. For people
    /// only: it is the holder's clock, so the lease is judged by [`lease_ran_out`] instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// How long the lease holds without renewal (S3 backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
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
            lease_seconds: None,
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
            lease_seconds: None,
        }
    }

    /// Whether the holder's process has certainly ended (as seen from the same pid scope).
    /// Whether the holder is a process this one sees running (the same boot and pid namespace,
    /// and its pid alive).
    pub fn process_alive(&self) -> bool {
        self.pid_scope.as_deref().is_some_and(|scope| pid_scope().as_deref() == Some(scope))
            && std::path::Path::new("/proc").join(self.pid.to_string()).exists()
    }

    pub fn process_ended(&self) -> bool {
        self.pid_scope.as_deref().is_some_and(|scope| has_ended(scope, self.pid))
    }

    /// Whether the holder's lease, last renewed at `renewed`, has run out at `now`, both read
    /// from the same clock: the store's. Never the holder's `expires` against our clock: the
    /// clocks of two machines may disagree by more than a lease. The store gives times to the
    /// second, cut, hence a second of margin. `lease` serves for locks that do not say theirs.
    pub fn lease_ran_out(&self, renewed: SystemTime, now: SystemTime, lease: Duration) -> bool {
        let lease = self.lease_seconds.map_or(lease, Duration::from_secs);
        now.duration_since(renewed).is_ok_and(|age| age > lease + Duration::from_secs(1))
    }
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (pid {}, `{}`) [lock {}]", self.holder, self.host, self.pid, self.command, self.id)
    }
}

/// Whether process `pid` of pid `scope` has certainly ended. Only a process that sees the same
/// pids can tell; from anywhere else it may still run.
pub fn has_ended(scope: &str, pid: u32) -> bool {
    pid_scope().as_deref() == Some(scope) && !std::path::Path::new("/proc").join(pid.to_string()).exists()
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
    #[error("the lock of `{environment}` is held by a live process on this machine: pid {} (`{}`) since {} [lock {}]; nothing was removed", info.pid, info.command, info.started, info.id)]
    Alive { environment: String, info: Box<LockInfo> },
    #[error("cannot take or release the lock {location}: {message}")]
    Io { location: String, message: String },
}

impl crate::hint::Hint for LockError {
    fn hint(&self) -> Option<String> {
        Some(match self {
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
            LockError::Alive { environment, info } => format!(
                "let it finish or stop it (Ctrl-C, or `kill {}`); if you have checked that process is not kstack, `kstack state unlock {environment} {} --force`",
                info.pid, info.id
            ),
            LockError::Io { .. } => String::from("check access to where the state lives (the project directory, or the bucket)"),
        })
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
    fn a_holder_process_has_ended_only_when_this_pid_scope_sees_it_gone() {
        let live = LockInfo::ours("kstack apply dev");
        assert!(!live.process_ended());
        assert!(LockInfo { pid: ENDED, ..live.clone() }.process_ended());
        // A container on this machine sees other pids, and so does another machine: only a
        // lease tells there.
        let (boot, _) = live.pid_scope.as_deref().unwrap().split_once('/').unwrap();
        let contained = LockInfo { pid: ENDED, pid_scope: Some(format!("{boot}/pid:[1]")), ..live.clone() };
        assert!(!contained.process_ended());
        let cloned = LockInfo { pid: ENDED, pid_scope: Some(String::from("00000000-0000-0000-0000-000000000000/pid:[4026531836]")), ..live.clone() };
        assert!(!cloned.process_ended());
        // A lock written before pid scopes were recorded cannot be judged by its pid.
        assert!(!LockInfo { pid: ENDED, pid_scope: None, ..live }.process_ended());
    }

    #[test]
    fn a_lease_is_judged_on_the_store_clock_not_on_what_the_holder_wrote() {
        let lease = Duration::from_secs(60);
        let store_now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let ago = |seconds: u64| store_now - Duration::from_secs(seconds);
        // A holder whose clock is years behind writes an `expires` long past, but renewed the
        // object 20 s ago by the store's clock: alive.
        let skewed = LockInfo { expires: Some(String::from("2020-01-01T00:00:00Z")), lease_seconds: Some(60), ..LockInfo::unknown() };
        assert!(!skewed.lease_ran_out(ago(20), store_now, Duration::from_secs(1)), "its own lease length counts");
        // At the lease's end (and within the second the store's times are cut to): alive.
        assert!(!skewed.lease_ran_out(ago(60), store_now, lease));
        assert!(!skewed.lease_ran_out(ago(61), store_now, lease));
        // Not renewed for longer: gone.
        assert!(skewed.lease_ran_out(ago(62), store_now, lease));
        // A holder far ahead (`expires` years away) that stopped renewing: gone all the same.
        let ahead = LockInfo { expires: Some(String::from("2099-01-01T00:00:00Z")), ..LockInfo::unknown() };
        assert!(ahead.lease_ran_out(ago(62), store_now, lease), "an older lock without its length: ours counts");
        // Renewed "after" now (a reply that overtook another): alive.
        assert!(!skewed.lease_ran_out(store_now + Duration::from_secs(5), store_now, lease));
    }
}
