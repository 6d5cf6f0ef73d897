//! The SSH options of every command that reaches nodes (provision, verify, reboots, and the
//! reboot slots an apply or a roll writes), and what they turn into: how to log in, and the
//! host keys taken from consoles before connecting.

use std::path::PathBuf;
use std::time::Duration;

use kstack::ops::nodes::Reach;
use kstack::ssh::{HostKeys, Login, LoginKey, NodeAccess};

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
    bastion: Option<kstack::ssh::Bastion>,
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

    /// How to reach the nodes, with how long to wait for their host keys.
    pub(super) fn reach(&self) -> Reach {
        Reach { access: self.access(), host_key_wait: Duration::from_secs(self.host_key_wait) }
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}
