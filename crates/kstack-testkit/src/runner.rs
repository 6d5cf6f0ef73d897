//! Runs roles on test nodes through the library, for the role tests.

use kstack::events::{Event, Unwatched, Watch};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kstack::diagnostics::{Loc, Sources, Spanned};
use kstack::roles::{load_roles, run, verify, HostReport, Role, RunEvent, RunOptions, Variables};
use kstack::ssh::{HostKeys, Login};

use super::node::{ClientKey, Target};

pub fn fixture_roles() -> PathBuf {
    crate::repo().join("tests/fixtures/project/roles")
}

pub fn project_roles() -> PathBuf {
    crate::repo().join("roles")
}

pub fn load(dir: &Path, names: &[&str]) -> Vec<Role> {
    let mut sources = Sources::default();
    let source = sources.add(Path::new("test"), names.join(" "));
    let names: Vec<Spanned<String>> = names.iter().map(|n| Spanned::new((*n).to_owned(), Loc { source, line: 1, column: 1, len: n.len() })).collect();
    load_roles(dir, &names, &mut sources).unwrap_or_else(|problems| panic!("{:?}", problems.iter().map(|p| p.message.clone()).collect::<Vec<_>>()))
}

pub fn login(key: &ClientKey) -> Login {
    Login {
        user: String::from("root"),
        key: kstack::ssh::LoginKey::File(key.private()),
        port: 22,
        host_keys: HostKeys { path: key.dir.path().join("known_hosts"), trust_on_first_use: true },
        connect_timeout: Duration::from_secs(10),
        bastion: None,
    }
}

pub struct Runner {
    pub rt: tokio::runtime::Runtime,
    pub login: Login,
    pub roles: Vec<Role>,
    pub variables: Variables,
}

impl Runner {
    pub fn new(key: &ClientKey, dir: &Path, names: &[&str], variables: Variables) -> Runner {
        Runner {
            rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
            login: login(key),
            roles: load(dir, names),
            variables,
        }
    }

    pub fn converge(&self, hosts: &[&dyn Target], check: bool) -> Vec<HostReport> {
        let hosts: Vec<String> = hosts.iter().map(|n| n.address().to_owned()).collect();
        let options = RunOptions { check, forks: 10, max_fail: None };
        let seen = Arc::new(TaskEvents::default());
        let reports = self.rt.block_on(run(&hosts, &self.login, &self.roles, &self.variables, &options, seen.clone()));
        let reported: usize = reports.iter().map(|r| r.tasks.len()).sum();
        assert_eq!(*seen.0.lock().unwrap(), reported, "every task result is also an event");
        reports
    }

    pub fn verify(&self, host: &dyn Target) -> HostReport {
        let options = RunOptions { check: false, forks: 1, max_fail: None };
        let reports =
            self.rt.block_on(verify(&[host.address().to_owned()], &self.login, &self.roles, &self.variables, &options, Arc::new(Unwatched)));
        reports.into_iter().next().unwrap()
    }
}

/// Counts the task reports sent as events.
#[derive(Default)]
struct TaskEvents(Mutex<usize>);

impl Watch for TaskEvents {
    fn event(&self, event: Event) {
        if let Event::Roles(RunEvent::Task { .. }) = event {
            *self.0.lock().unwrap() += 1;
        }
    }
}
