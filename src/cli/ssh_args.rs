//! The SSH options of every command that reaches nodes (provision, verify, reboots, and the
//! reboot slots an apply or a roll writes), and what they turn into: how to log in, and the
//! host keys taken from consoles before connecting.

use std::path::PathBuf;
use std::time::Duration;

use crate::aws::Cloud;
use crate::node_keys::{record_from_consoles, FromConsole};
use crate::ssh::{HostKeys, Login, LoginKey, NodeAccess};

use super::{term, CliError};

/// How to reach the nodes over SSH.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct SshArgs {
    /// Log in as this user [default: the image's `ssh_user`]; sudo is used when not root.
    #[arg(long, value_name = "USER")]
    ssh_user: Option<String>,

    /// Private key to log in with.
    #[arg(long, value_name = "FILE", default_value = "~/.ssh/id_ed25519")]
    ssh_key: String,

    #[arg(long, value_name = "PORT", default_value_t = 22)]
    ssh_port: u16,

    /// Host keys are checked against this file.
    #[arg(long, value_name = "FILE", default_value = "~/.ssh/known_hosts")]
    known_hosts: String,

    /// Record the key of a host that has no key in the known_hosts file, and whose console
    /// output shows none, instead of refusing it. A host with a recorded key, of any type,
    /// that offers another is always refused.
    #[arg(long)]
    trust_new_hosts: bool,

    /// Wait up to this long for a new node's console output to show its SSH host keys (EC2
    /// posts it a few minutes after boot).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    host_key_wait: u64,

    /// Reach instances by their public addresses instead of their private ones.
    #[arg(long)]
    public_addresses: bool,

    /// Reach instances through this jump host, `[user@]host[:port]` (like `ssh -J`).
    #[arg(long, value_name = "HOST")]
    bastion: Option<crate::ssh::Bastion>,
}

impl SshArgs {
    pub(super) fn access(&self) -> NodeAccess {
        NodeAccess {
            public_addresses: self.public_addresses,
            user: self.ssh_user.clone(),
            login: Login {
                user: String::new(),
                key: LoginKey::File(expand_home(&self.ssh_key)),
                port: self.ssh_port,
                host_keys: HostKeys { path: expand_home(&self.known_hosts), trust_on_first_use: self.trust_new_hosts },
                connect_timeout: Duration::from_secs(15),
                bastion: self.bastion.clone(),
            },
        }
    }

    /// Before connecting: records the host keys their console output shows for the nodes,
    /// `(instance, address)`, the known_hosts file has no key for, and says what it found.
    pub(super) async fn record_console_host_keys(&self, cloud: &Cloud, nodes: &[(String, String)]) -> Result<(), CliError> {
        let access = self.access();
        let wait = Duration::from_secs(self.host_key_wait);
        let found = record_from_consoles(cloud, nodes, &access.login.host_keys, access.login.port, wait)
            .await
            .map_err(|e| CliError::failed(e.to_string(), Some("fix or name another file with --known-hosts")))?;
        for FromConsole { instance, address, keys } in found {
            match (keys, self.trust_new_hosts) {
                (0, false) => term::warning(&format!(
                    "{instance} ({address}): its console output shows no SSH host keys, so it is refused; wait for them with \
                     --host-key-wait, record its key after checking it out of band, or pass --trust-new-hosts"
                )),
                (0, true) => term::errln(format_args!(
                    "{instance} ({address}): its console output shows no SSH host keys; the first key it offers is trusted (--trust-new-hosts)"
                )),
                (keys, _) => term::errln(format_args!("{instance} ({address}): {keys} host key(s) taken from its console output")),
            }
        }
        Ok(())
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}
