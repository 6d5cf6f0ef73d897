//! Stopping a run between changes. One [`Stop`] per run: a signal (Ctrl-C, SIGTERM) or the
//! loss of the environment's lock sets it, and the apply walk, roll batches and bake check it
//! before each new change in AWS, so the change in flight finishes (or is undone), is
//! recorded in state, and nothing new starts.

use std::sync::Arc;

use tokio::sync::watch;

/// Why a run stopped starting new changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The process got this signal: SIGINT (2) or SIGTERM (15).
    Signal(i32),
    /// Another run holds the environment's lock now, or this one could not keep it.
    LockLost(String),
}

impl Reason {
    /// The exit status a stopped run ends with: 128 + the signal, as shells report a process
    /// the signal killed; 1 for a lost lock.
    pub fn exit_code(&self) -> u8 {
        match self {
            Reason::Signal(number) => 128 + *number as u8,
            Reason::LockLost(_) => 1,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Signal(2) => f.write_str("interrupted (SIGINT)"),
            Reason::Signal(15) => f.write_str("terminated (SIGTERM)"),
            Reason::Signal(number) => write!(f, "stopped by signal {number}"),
            Reason::LockLost(why) => f.write_str(why),
        }
    }
}

/// The run's stop flag, shared by clones; the first reason given stays.
#[derive(Clone)]
pub struct Stop {
    reason: Arc<watch::Sender<Option<Reason>>>,
}

impl Default for Stop {
    fn default() -> Stop {
        Stop { reason: Arc::new(watch::channel(None).0) }
    }
}

impl Stop {
    /// Stops the run (if it is not stopped already). Returns whether this call stopped it.
    pub fn stop(&self, reason: Reason) -> bool {
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        })
    }

    pub fn reason(&self) -> Option<Reason> {
        self.reason.borrow().clone()
    }

    /// `Err` with the reason once the run is stopped: the check before a new change.
    pub fn check(&self) -> Result<(), Reason> {
        self.reason().map_or(Ok(()), Err)
    }

    /// Waits until the run is stopped.
    pub async fn stopped(&self) -> Reason {
        let mut receiver = self.reason.subscribe();
        let reason = match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in `self`: never closed while this waits.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stays_and_waiters_wake() {
        let stop = Stop::default();
        assert_eq!(stop.check(), Ok(()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let waiter = runtime.spawn({
            let stop = stop.clone();
            async move { stop.stopped().await }
        });
        assert!(stop.stop(Reason::Signal(15)));
        assert!(!stop.stop(Reason::LockLost(String::from("later"))));
        assert_eq!(runtime.block_on(waiter).unwrap(), Reason::Signal(15));
        assert_eq!(stop.check(), Err(Reason::Signal(15)));
        assert_eq!(Reason::Signal(2).exit_code(), 130);
        assert_eq!(Reason::Signal(15).exit_code(), 143);
        assert_eq!(Reason::LockLost(String::new()).exit_code(), 1);
    }
}
