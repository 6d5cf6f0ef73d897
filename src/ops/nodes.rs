//! Reaching an environment's nodes: how to log in, and their host keys taken from their
//! console output before the first connection.

use std::time::Duration;

use super::{Notice, OpsError};
use crate::aws::Cloud;
use crate::node_keys::{record_from_consoles, FromConsole};
use crate::ssh::NodeAccess;

/// How a command reaches nodes.
#[derive(Debug, Clone)]
pub struct Reach {
    pub access: NodeAccess,
    /// How long to wait for a new node's console output to show its host keys (EC2 posts it
    /// a few minutes after boot).
    pub host_key_wait: Duration,
}

impl Reach {
    /// Before connecting: records the host keys their console output shows for the nodes,
    /// `(instance, address)`, the known_hosts file has no key for, and says what it found.
    pub async fn record_console_host_keys(&self, cloud: &Cloud, nodes: &[(String, String)], notice: &dyn Notice) -> Result<(), OpsError> {
        let host_keys = &self.access.login.host_keys;
        let found = record_from_consoles(cloud, nodes, host_keys, self.access.login.port, self.host_key_wait)
            .await
            .map_err(|e| OpsError::failed(e.to_string(), "fix or name another file with --known-hosts"))?;
        for FromConsole { instance, address, keys } in found {
            match (keys, host_keys.trust_on_first_use) {
                (0, false) => notice.warning(&format!(
                    "{instance} ({address}): its console output shows no SSH host keys, so it is refused; wait for them with \
                     --host-key-wait, record its key after checking it out of band, or pass --trust-new-hosts"
                )),
                (0, true) => notice.note(&format!(
                    "{instance} ({address}): its console output shows no SSH host keys; the first key it offers is trusted (--trust-new-hosts)"
                )),
                (keys, _) => notice.note(&format!("{instance} ({address}): {keys} host key(s) taken from its console output")),
            }
        }
        Ok(())
    }
}
