//! What a run works with on an environment: the async runtime, the stop flag that signals
//! set, and a person's yes before changes. The session itself (refresh, state, plan) is
//! `ops::session`.

use std::io::BufRead;

use kstack::ops::OpsError;
use kstack::stop::{Reason, Stop};

use super::{term, CliError};

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(|error| CliError::failed(format!("cannot start the async runtime: {error}"), None))
}

/// The run's stop flag, which the first SIGINT or SIGTERM sets: the run finishes (or undoes)
/// the change in flight, records it, releases the lock and exits 130 or 143. A second signal
/// ends the process at once, leaving the lock for `kstack state unlock`.
pub(super) fn stop_on_signals(runtime: &tokio::runtime::Runtime) -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Stop::default();
    // Registered before returning, so no signal falls between this and the task's start.
    let _entered = runtime.enter();
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        term::warning("cannot watch for Ctrl-C and SIGTERM: they end kstack at once, leaving the lock");
        return stop;
    };
    let flag = stop.clone();
    runtime.spawn(async move {
        let mut signalled = false;
        loop {
            let reason = tokio::select! {
                _ = interrupt.recv() => Reason::Signal(2),
                _ = terminate.recv() => Reason::Signal(15),
            };
            if signalled {
                term::error(&format!("{reason} again: quitting at once"), Some("the lock stays; `kstack state unlock <env> <id>` removes it"));
                std::process::exit(i32::from(reason.exit_code()));
            }
            signalled = true;
            flag.stop(reason.clone());
            term::warning(&format!("{reason}: stopping once the change in flight is done and recorded (again to quit at once, leaving the lock)"));
        }
    });
    stop
}

/// Asks on stderr and reads the answer from stdin, terminal or not, like Terraform. A stop
/// (Ctrl-C) while it waits cancels, releasing the lock.
pub(super) fn confirm(runtime: &tokio::runtime::Runtime, stop: &Stop, question: &str) -> Result<(), CliError> {
    term::err(format_args!("\n{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "));
    // Read on a thread of its own: a blocked read cannot be cancelled, and this thread is
    // left behind when the process ends.
    let (answered, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer);
        let _ = answered.send(matches!(read, Ok(n) if n > 0) && answer.trim() == "yes");
    });
    let approved = runtime.block_on(async {
        tokio::select! {
            approved = answer => Ok(approved.unwrap_or(false)),
            reason = stop.stopped() => Err(reason),
        }
    });
    term::errln(format_args!(""));
    match approved {
        Ok(true) => Ok(()),
        Ok(false) => Err(CliError::failed("cancelled; nothing was changed", None)),
        Err(reason) => Err(OpsError::stopped_before_changes(reason).into()),
    }
}
