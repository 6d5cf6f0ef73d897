//! Node roles: configuring machines over SSH, the way Ansible roles do, with typed modules.
//! Roles are read by `kstack_project::roles`; `run` applies them to hosts, `checks` verifies
//! hosts.

pub mod checks;
pub mod modules;
mod run;
mod session;
mod touch;

pub use kstack_project::roles::{list_roles, load_roles, Role, Task, Variables};
pub use run::{host_checks, run, verify, HostReport, RunEvent, RunOptions, TaskReport, TaskStatus};
