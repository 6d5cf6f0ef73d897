//! `--target` and `--replace`, shared by `plan` and `apply`.

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
}

impl ScopeArgs {
    pub(super) fn scope(&self) -> Scope {
        let addresses = |given: &[String]| given.iter().map(|a| Address::from(a.as_str())).collect();
        Scope { targets: addresses(&self.targets), replace: addresses(&self.replace) }
    }
}
