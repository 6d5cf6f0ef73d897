//! Operations: what each command does, below its arguments and its rendering, as cargo's
//! `ops` are below its commands. Loading and compiling an environment, the session a plan,
//! apply or destroy works in (identity, refresh, state, plan). Operations return data or an
//! [`OpsError`], and tell what a person should know on the way through [`Notice`].
//!
//! Knows nothing of the terminal, of arguments, or of exit statuses.

pub mod account;
pub mod bake;
mod error;
pub mod fleet;
pub mod import;
pub mod load;
pub mod nodes;
pub mod outputs;
pub mod reboots;
pub mod roles;
pub mod roll;
pub mod secrets;
pub mod session;
pub mod state;

pub use error::OpsError;

/// What an operation tells the person running it while it works, besides its result; the
/// command line shows it.
pub trait Notice: Sync {
    /// What happened on the way, for the person watching (stderr: stdout is the result).
    fn note(&self, message: &str);
    /// Something to know that does not stop the work.
    fn warning(&self, message: &str);
    /// Secret values the operation read: never shown from here on, in any form.
    fn secrets(&self, values: &mut dyn Iterator<Item = &str>);
}
