//! Host key verification against an OpenSSH known_hosts file.

use std::path::PathBuf;

use russh::keys::PublicKey;

use super::SshError;

#[derive(Debug, Clone)]
pub struct HostKeys {
    pub path: PathBuf,
    /// Record the key of a host not yet in the file (never replaces a recorded key).
    pub trust_on_first_use: bool,
}

impl HostKeys {
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), SshError> {
        match russh::keys::check_known_hosts_path(host, port, key, &self.path) {
            Ok(true) => Ok(()),
            Err(russh::keys::Error::KeyChanged { line }) => Err(SshError::HostKeyChanged {
                host: host.to_owned(),
                line,
                known_hosts: self.path.clone(),
            }),
            Ok(false) | Err(_) if self.trust_on_first_use => {
                russh::keys::known_hosts::learn_known_hosts_path(host, port, key, &self.path).map_err(|e| {
                    SshError::Protocol { host: host.to_owned(), message: format!("cannot record its host key: {e}") }
                })
            }
            Ok(false) | Err(_) => Err(SshError::HostKeyUnknown {
                host: host.to_owned(),
                known_hosts: self.path.clone(),
            }),
        }
    }
}
