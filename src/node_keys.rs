//! Host keys for nodes the known_hosts file has none for, taken from their console output
//! through the AWS API before anything connects to them: a new node is verified against what
//! AWS says it printed at first boot, not trusted on first use. Knows the console and the
//! known_hosts file; nothing of what is then done over SSH.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::aws::{console, Cloud};
use crate::ssh::{HostKeys, SshError};

/// Console reads at once: one GetConsoleOutput per node, kept under EC2's request rate.
const READS_AT_ONCE: usize = 8;

/// A node that had no recorded key, and how many keys its console showed (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromConsole {
    pub instance: String,
    pub address: String,
    pub keys: usize,
}

/// Records, for each `(instance, address)` whose address has no key in `host_keys` (or only
/// keys recorded for another instance, which the address had before), the keys its console
/// shows (waiting up to `wait` for them); the known ones cost no AWS call.
pub async fn record_from_consoles(
    cloud: &Cloud,
    nodes: &[(String, String)],
    host_keys: &HostKeys,
    port: u16,
    wait: Duration,
) -> Result<Vec<FromConsole>, SshError> {
    let permits = Arc::new(Semaphore::new(READS_AT_ONCE));
    let mut reads = JoinSet::new();
    for (instance, address) in nodes {
        if host_keys.knows(address, port, instance)? {
            continue;
        }
        let (cloud, permits, instance, address) = (cloud.clone(), Arc::clone(&permits), instance.clone(), address.clone());
        reads.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let keys = console::host_keys(&cloud, &instance, wait).await;
            (instance, address, keys)
        });
    }
    let mut found = Vec::new();
    while let Some(read) = reads.join_next().await {
        // A read that panicked leaves its node unknown: it is then refused, never trusted.
        let Ok((instance, address, keys)) = read else { continue };
        host_keys.record(&address, port, &keys, &instance)?;
        found.push(FromConsole { instance, address, keys: keys.len() });
    }
    found.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(found)
}
