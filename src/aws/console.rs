//! An instance's console output as EC2 posts it: where cloud-init prints the SSH host keys it
//! made at first boot. Those keys come through the AWS API, so a new instance's key is checked
//! against them instead of being trusted on first use.

use std::time::{Duration, Instant};

use russh::keys::PublicKey;

use super::Cloud;

/// How often the console is read again while waiting for the keys to show.
const POLL: Duration = Duration::from_secs(5);

/// The host keys `instance`'s console shows, read every few seconds until they show or `wait`
/// runs out (zero: one read). Empty when they never showed: AWS posts console output minutes
/// after an instance starts, and keeps only its last 64 KB.
pub async fn host_keys(cloud: &Cloud, instance: &str, wait: Duration) -> Vec<PublicKey> {
    let deadline = Instant::now() + wait;
    // The latest output rather than the last snapshot, where the instance type offers it.
    let mut latest = true;
    loop {
        match cloud.ec2.get_console_output().instance_id(instance).latest(latest).send().await {
            Ok(output) => {
                let text = output
                    .output()
                    .and_then(|o| aws_smithy_types::base64::decode(o).ok())
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default();
                let keys = host_keys_in(&text);
                if !keys.is_empty() {
                    return keys;
                }
            }
            Err(error) if latest => {
                tracing::debug!("{instance}: the latest console output is not offered, reading the last snapshot: {error}");
                latest = false;
                continue;
            }
            Err(error) => tracing::warn!("{instance}: reading its console output failed: {error}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Vec::new();
        }
        tokio::time::sleep(left.min(POLL)).await;
    }
}

/// The keys cloud-init prints between its `SSH HOST KEY KEYS` markers; a line that is not a
/// whole key (a garbled console) is left out.
fn host_keys_in(console: &str) -> Vec<PublicKey> {
    let Some(block) = console.split("-----BEGIN SSH HOST KEY KEYS-----").nth(1) else { return Vec::new() };
    block
        .split("-----END SSH HOST KEY KEYS-----")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (kind, key) = (parts.next()?, parts.next()?);
            PublicKey::from_openssh(&format!("{kind} {key}")).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::host_keys_in;

    #[test]
    fn host_keys_are_read_from_cloud_init_console_output() {
        const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLcYusF7VSz+NqAjzlRRk5u1KU1bQnuLwAr5rpngsW5m/F3gigPCLdWMB1Xu8c/j5Hm8VbY3LWI1tD3M5pJKI3M=";
        const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        let console = format!(
            "[  12.3] cloud-init[912]: Cloud-init v. 0.7.9 running\n\
            -----BEGIN SSH HOST KEY KEYS-----\n\
            ecdsa-sha2-nistp256 {ECDSA} root@ip-10-0-0-5\n\
            ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 cut-short-by-a-garbled-console\n\
            ssh-ed25519 {ED25519} root@ip-10-0-0-5\n\
            -----END SSH HOST KEY KEYS-----\n\
            [  13.0] cloud-init[912]: finished\n"
        );
        let keys: Vec<String> = host_keys_in(&console).iter().map(|k| k.to_openssh().unwrap()).collect();
        assert_eq!(keys, [format!("ecdsa-sha2-nistp256 {ECDSA}"), format!("ssh-ed25519 {ED25519}")]);
        assert!(host_keys_in("no keys printed").is_empty());
    }
}
