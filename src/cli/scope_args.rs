//! `--target`, `--replace` and `--unprotect`: what a plan covers, replaces on request, and may
//! delete or replace although `protect:` covers it.

use kstack::plan::Scope;
use kstack::resource::Address;

/// Narrowing a plan, or replacing what nothing forces: for exceptions, not routine work.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ScopeArgs {
    /// Plan only this resource and what it depends on (repeatable). The plan may then leave
    /// out changes the model asks for.
    #[arg(long = "target", value_name = "ADDRESS")]
    targets: Vec<String>,

    /// Replace this resource although no attribute forces it (repeatable).
    #[arg(long = "replace", value_name = "ADDRESS")]
    replace: Vec<String>,

    #[command(flatten)]
    unprotect: UnprotectArgs,
}

/// Protected resources a run may delete or replace.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct UnprotectArgs {
    /// Let this run delete or replace this resource although `protect:` covers it
    /// (repeatable).
    #[arg(long = "unprotect", value_name = "ADDRESS")]
    unprotect: Vec<String>,
}

fn addresses(given: &[String]) -> Vec<Address> {
    given.iter().map(|a| Address::from(a.as_str())).collect()
}

impl ScopeArgs {
    pub(super) fn scope(&self) -> Scope {
        Scope { targets: addresses(&self.targets), replace: addresses(&self.replace), ..self.unprotect.scope() }
    }
}

impl UnprotectArgs {
    pub(super) fn scope(&self) -> Scope {
        Scope { unprotect: addresses(&self.unprotect), ..Scope::default() }
    }
}
