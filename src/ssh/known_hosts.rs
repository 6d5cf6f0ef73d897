//! Host key verification against an OpenSSH known_hosts file. A host is trusted only with a
//! key recorded for it: one with any recorded key (of any type) that offers another is
//! refused, even with trust on first use, and a file that cannot be read or parsed trusts
//! no host at all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

use super::SshError;

#[derive(Debug, Clone)]
pub struct HostKeys {
    pub path: PathBuf,
    /// Record the key of a host that has no key in the file (never replaces a recorded key).
    pub trust_on_first_use: bool,
}

/// One key line of a known_hosts file.
#[derive(Debug)]
struct Recorded {
    line: usize,
    text: String,
    entry: Entry,
}

/// The directory a file is in; `known_hosts` alone (whose parent is the empty path) is in the
/// working directory.
fn directory_of(path: &std::path::Path) -> &std::path::Path {
    path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."))
}

/// The comment of a key kstack recorded from an instance's console: whose key it is.
const INSTANCE_COMMENT: &str = "kstack-instance=";

/// Whether kstack recorded this key for an instance other than `instance`.
fn for_another(recorded: &Recorded, instance: &str) -> bool {
    AsRef::<str>::as_ref(recorded.entry.public_key().comment()).strip_prefix(INSTANCE_COMMENT).is_some_and(|recorded| recorded != instance)
}

/// One check at a time: two first connections to a host (nodes through one new bastion) would
/// otherwise both find no key and both record theirs.
static CHECKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl HostKeys {
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), SshError> {
        let _one_at_a_time = CHECKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = host_name(host, port);
        let recorded = self.read()?;
        let for_host: Vec<&Recorded> = recorded.iter().filter(|r| names(r.entry.host_patterns(), &name)).collect();
        let offered = || format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256));
        let same_key = |r: &&&Recorded| r.entry.public_key().key_data() == key.key_data();
        if let Some(revoked) = for_host.iter().filter(|r| r.entry.marker() == Some(&Marker::Revoked)).find(same_key) {
            return Err(SshError::HostKeyRevoked { host: host.to_owned(), offered: offered(), line: revoked.line, known_hosts: self.path.clone() });
        }
        // Certificate authorities are not host keys, and kstack accepts no host certificates.
        let keys: Vec<&&Recorded> = for_host.iter().filter(|r| r.entry.marker().is_none()).collect();
        if keys.iter().any(same_key) {
            return Ok(());
        }
        if let Some(first) = keys.first() {
            return Err(SshError::HostKeyChanged {
                host: host.to_owned(),
                port,
                offered: offered(),
                line: first.line,
                recorded: first.text.clone(),
                known_hosts: self.path.clone(),
            });
        }
        if !self.trust_on_first_use {
            return Err(SshError::HostKeyUnknown { host: host.to_owned(), known_hosts: self.path.clone() });
        }
        russh::keys::known_hosts::learn_known_hosts_path(host, port, key, &self.path).map_err(|e| self.unwritable(host, e))
    }

    /// Whether the file records a key for the host (a revoked one or an authority is none)
    /// that is still good for `instance`: keys kstack recorded for another instance at that
    /// address (the comment `kstack-instance=<id>`) belong to a machine that is gone.
    pub fn knows(&self, host: &str, port: u16, instance: &str) -> Result<bool, SshError> {
        let name = host_name(host, port);
        Ok(self.read()?.iter().any(|r| r.entry.marker().is_none() && names(r.entry.host_patterns(), &name) && !for_another(r, instance)))
    }

    /// Records `keys` of `instance` for a host the file has no good key for, as vouched for out
    /// of band (the instance's console output), with the instance's id as their comment. Keys
    /// kstack recorded there for another instance are removed: the address was reused. A host
    /// with other keys keeps them, to be checked against them.
    pub fn record(&self, host: &str, port: u16, keys: &[PublicKey], instance: &str) -> Result<(), SshError> {
        let _one_at_a_time = CHECKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A link is followed, so it stays a link; and the directory is locked while the file is
        // read and written, so two kstack runs never lose each other's lines.
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let directory = std::fs::File::open(directory_of(&path)).map_err(|e| self.unwritable(host, e))?;
        rustix::fs::flock(&directory, rustix::fs::FlockOperation::LockExclusive).map_err(|e| self.unwritable(host, e))?;
        let name = host_name(host, port);
        let text = self.text()?;
        let for_host: Vec<Recorded> = self.parse(&text)?.into_iter().filter(|r| names(r.entry.host_patterns(), &name)).collect();
        let stale: Vec<usize> = for_host.iter().filter(|r| for_another(r, instance)).map(|r| r.line).collect();
        if for_host.iter().any(|r| r.entry.marker().is_none() && !for_another(r, instance)) || (keys.is_empty() && stale.is_empty()) {
            return Ok(());
        }
        let mut lines: String = text.lines().enumerate().filter(|(i, _)| !stale.contains(&(i + 1))).map(|(_, line)| format!("{line}\n")).collect();
        for key in keys {
            let mut key = key.clone();
            key.set_comment(format!("{INSTANCE_COMMENT}{instance}"));
            let key = key.to_openssh().map_err(|e| self.unwritable(host, e))?;
            lines.push_str(&format!("{name} {}\n", key.trim()));
        }
        if stale.is_empty() {
            // Appending keeps whatever else writes the file meanwhile (ssh itself).
            let added = &lines[text.lines().map(|l| l.len() + 1).sum::<usize>()..];
            let separator = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(|e| self.unwritable(host, e))?;
            return file.write_all(format!("{separator}{added}").as_bytes()).map_err(|e| self.unwritable(host, e));
        }
        // Whole or not at all: a temporary file beside it, renamed over it.
        let temporary = path.with_extension(format!("kstack-{}", std::process::id()));
        let mut file =
            std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&temporary).map_err(|e| self.unwritable(host, e))?;
        file.write_all(lines.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| self.unwritable(host, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| self.unwritable(host, e))
    }

    fn unwritable(&self, host: &str, error: impl std::fmt::Display) -> SshError {
        SshError::Protocol { host: host.to_owned(), message: format!("cannot record its host key in {}: {error}", self.path.display()) }
    }

    /// The file's key lines; a missing file has none.
    fn read(&self) -> Result<Vec<Recorded>, SshError> {
        self.parse(&self.text()?)
    }

    /// The file's text; a missing file is empty.
    fn text(&self) -> Result<String, SshError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(SshError::KnownHostsUnreadable { path: self.path.clone(), message: error.to_string() }),
        }
    }

    fn parse(&self, text: &str) -> Result<Vec<Recorded>, SshError> {
        parse(text).map_err(|lines| SshError::KnownHostsMalformed { path: self.path.clone(), lines })
    }
}

/// How known_hosts names a host: `[host]:port` when the port is not 22.
fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    }
}

/// The key lines of a known_hosts file, or the numbers of every line that is not one.
fn parse(text: &str) -> Result<Vec<Recorded>, Vec<usize>> {
    let mut recorded = Vec::new();
    let mut malformed = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_none_or(|first| first.starts_with('#')) {
            continue;
        }
        // The parser takes single spaces between fields; OpenSSH takes any whitespace.
        match fields.join(" ").parse::<Entry>() {
            Ok(entry) => recorded.push(Recorded { line: index + 1, text: line.trim().to_owned(), entry }),
            Err(_) => malformed.push(index + 1),
        }
    }
    if malformed.is_empty() {
        Ok(recorded)
    } else {
        Err(malformed)
    }
}

/// Whether an entry's hosts include `name`, as OpenSSH matches them: a hashed name, or a list
/// of patterns (`*` and `?` wildcards) of which one matches and no negated (`!`) one does.
fn names(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            Hmac::<Sha1>::new_from_slice(salt).is_ok_and(|mac| mac.chain_update(name).verify_slice(hash).is_ok())
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                let pattern = pattern.to_ascii_lowercase();
                match pattern.strip_prefix('!') {
                    Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
                    Some(_) => {}
                    None => matched |= glob(pattern.as_bytes(), name.as_bytes()),
                }
            }
            matched
        }
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hint::Hint;

    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const OTHER_ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";
    const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLcYusF7VSz+NqAjzlRRk5u1KU1bQnuLwAr5rpngsW5m/F3gigPCLdWMB1Xu8c/j5Hm8VbY3LWI1tD3M5pJKI3M=";
    /// `example.com` hashed as `ssh-keygen -H` does.
    const HASHED_EXAMPLE_COM: &str = "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak=";

    fn key(base64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(base64).unwrap()
    }

    fn host_keys(text: &str, trust_on_first_use: bool) -> (tempfile::TempDir, HostKeys) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).unwrap();
        (dir, HostKeys { path, trust_on_first_use })
    }

    #[test]
    fn a_recorded_key_is_accepted_by_name_pattern_port_and_hashed_name() {
        let text = format!(
            "# comment\n\n10.0.0.5 ssh-ed25519 {ED25519}\n[10.0.0.6]:2222\tssh-ed25519  {ED25519} a comment\n\
             *.example.org,!bad.example.org ssh-ed25519 {ED25519}\n{HASHED_EXAMPLE_COM} ssh-ed25519 {OTHER_ED25519}\n"
        );
        let (_dir, keys) = host_keys(&text, false);
        keys.check("10.0.0.5", 22, &key(ED25519)).unwrap();
        keys.check("10.0.0.6", 2222, &key(ED25519)).unwrap();
        keys.check("WWW.example.org", 22, &key(ED25519)).unwrap();
        keys.check("example.com", 22, &key(OTHER_ED25519)).unwrap();
        for (host, port) in [("10.0.0.6", 22), ("bad.example.org", 22), ("example.net", 22), ("10.0.0.5", 2222)] {
            let error = keys.check(host, port, &key(ED25519)).unwrap_err();
            assert!(matches!(error, SshError::HostKeyUnknown { .. }), "{host}:{port}: {error}");
        }
    }

    #[test]
    fn a_key_of_another_type_than_the_recorded_one_is_a_changed_key_even_with_trust_on_first_use() {
        let text = format!("10.0.0.5 ecdsa-sha2-nistp256 {ECDSA}\n{HASHED_EXAMPLE_COM} ecdsa-sha2-nistp256 {ECDSA}\n");
        let (_dir, keys) = host_keys(&text, true);
        let offered = key(ED25519);
        let fingerprint = offered.fingerprint(HashAlg::Sha256).to_string();
        for (host, line) in [("10.0.0.5", 1), ("example.com", 2)] {
            let error = keys.check(host, 22, &offered).unwrap_err();
            let SshError::HostKeyChanged { line: found, ref recorded, .. } = error else { panic!("{error}") };
            assert_eq!(found, line);
            assert!(recorded.contains("ecdsa-sha2-nistp256"), "{recorded}");
            let message = error.to_string();
            assert!(message.contains(&format!("ssh-ed25519 {fingerprint}")), "{message}");
            assert!(error.hint().unwrap().contains(&format!("ssh-keygen -R {host} -f ")), "{:?}", error.hint());
        }
        assert_eq!(std::fs::read_to_string(&keys.path).unwrap(), text, "nothing was recorded");
    }

    #[test]
    fn a_changed_key_on_another_port_names_the_host_as_known_hosts_does() {
        let (_dir, keys) = host_keys(&format!("[10.0.0.5]:2222 ssh-ed25519 {OTHER_ED25519}\n"), true);
        let error = keys.check("10.0.0.5", 2222, &key(ED25519)).unwrap_err();
        assert!(error.hint().unwrap().contains("ssh-keygen -R '[10.0.0.5]:2222' -f "), "{:?}", error.hint());
    }

    #[test]
    fn only_a_host_without_any_recorded_key_is_trusted_on_first_use_and_recorded() {
        let (_dir, keys) = host_keys(&format!("10.0.0.5 ssh-ed25519 {ED25519}\n"), true);
        keys.check("10.0.0.7", 22, &key(ECDSA)).unwrap();
        let text = std::fs::read_to_string(&keys.path).unwrap();
        assert!(text.ends_with(&format!("10.0.0.7 ecdsa-sha2-nistp256 {ECDSA}\n")), "{text}");
        HostKeys { trust_on_first_use: false, ..keys.clone() }.check("10.0.0.7", 22, &key(ECDSA)).unwrap();
    }

    #[test]
    fn keys_vouched_for_are_recorded_only_for_a_host_without_any() {
        let (_dir, keys) = host_keys(&format!("10.0.0.5 ssh-ed25519 {ED25519}"), false);
        keys.record("10.0.0.7", 2222, &[key(ECDSA), key(OTHER_ED25519)], "i-1").unwrap();
        keys.check("10.0.0.7", 2222, &key(OTHER_ED25519)).unwrap();
        keys.check("10.0.0.5", 22, &key(ED25519)).unwrap();
        assert!(!keys.knows("10.0.0.7", 22, "i-1").unwrap(), "the port is part of the name");
        assert!(keys.knows("10.0.0.7", 2222, "i-1").unwrap());
        // A known host keeps its key: the one vouched for is then a changed key.
        keys.record("10.0.0.5", 22, &[key(OTHER_ED25519)], "i-2").unwrap();
        let error = keys.check("10.0.0.5", 22, &key(OTHER_ED25519)).unwrap_err();
        assert!(matches!(error, SshError::HostKeyChanged { line: 1, .. }), "{error}");
        let text = std::fs::read_to_string(&keys.path).unwrap();
        assert_eq!(
            text,
            format!(
                "10.0.0.5 ssh-ed25519 {ED25519}\n[10.0.0.7]:2222 ecdsa-sha2-nistp256 {ECDSA} kstack-instance=i-1\n\
                 [10.0.0.7]:2222 ssh-ed25519 {OTHER_ED25519} kstack-instance=i-1\n"
            )
        );
    }

    #[test]
    fn a_new_instance_at_a_reused_address_replaces_the_keys_kstack_recorded_for_the_old_one() {
        let (_dir, keys) = host_keys(&format!("10.0.0.5 ssh-ed25519 {ED25519}\n"), false);
        keys.record("10.0.0.9", 22, &[key(ECDSA)], "i-old").unwrap();
        assert!(keys.knows("10.0.0.9", 22, "i-old").unwrap());
        assert!(!keys.knows("10.0.0.9", 22, "i-new").unwrap(), "another instance at the address: its console is read");
        keys.record("10.0.0.9", 22, &[key(OTHER_ED25519)], "i-new").unwrap();
        keys.check("10.0.0.9", 22, &key(OTHER_ED25519)).unwrap();
        assert!(keys.check("10.0.0.9", 22, &key(ECDSA)).is_err(), "the old instance's key is gone");
        let text = std::fs::read_to_string(&keys.path).unwrap();
        assert_eq!(text, format!("10.0.0.5 ssh-ed25519 {ED25519}\n10.0.0.9 ssh-ed25519 {OTHER_ED25519} kstack-instance=i-new\n"));
        // A file named without a directory (`--known-hosts known_hosts`) is in the working one.
        assert_eq!(directory_of(std::path::Path::new("known_hosts")), std::path::Path::new("."));
        assert_eq!(directory_of(std::path::Path::new("/root/.ssh/known_hosts")), std::path::Path::new("/root/.ssh"));
        // A linked known_hosts file stays a link to the file it names.
        let link = keys.path.with_file_name("linked");
        std::os::unix::fs::symlink(&keys.path, &link).unwrap();
        let linked = HostKeys { path: link.clone(), ..keys.clone() };
        linked.record("10.0.0.9", 22, &[key(ECDSA)], "i-newer").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        keys.check("10.0.0.9", 22, &key(ECDSA)).unwrap();
        // A key a person recorded (no instance comment) is never replaced.
        assert!(keys.knows("10.0.0.5", 22, "i-any").unwrap());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys.path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_revoked_key_is_refused_whatever_else_is_recorded() {
        let (_dir, keys) = host_keys(&format!("@revoked * ssh-ed25519 {ED25519}\n10.0.0.5 ssh-ed25519 {ED25519}\n"), true);
        let error = keys.check("10.0.0.5", 22, &key(ED25519)).unwrap_err();
        assert!(matches!(error, SshError::HostKeyRevoked { line: 1, .. }), "{error}");
    }

    #[test]
    fn malformed_lines_and_unreadable_files_trust_no_host_and_name_file_and_lines() {
        let text = format!("10.0.0.5 ssh-ed25519 {ED25519}\n10.0.0.6 ssh-ed25519\n10.0.0.7 ssh-ed25519 not-base64!\n");
        let (dir, keys) = host_keys(&text, true);
        let error = keys.check("10.0.0.9", 22, &key(ED25519)).unwrap_err();
        assert!(matches!(error, SshError::KnownHostsMalformed { ref lines, .. } if lines == &[2, 3]), "{error}");
        let message = error.to_string();
        let path = keys.path.display().to_string();
        assert!(message.contains(&format!("{path}:2")) && message.contains(&format!("{path}:3")), "{message}");

        let directory = HostKeys { path: dir.path().to_owned(), trust_on_first_use: true };
        let error = directory.check("10.0.0.9", 22, &key(ED25519)).unwrap_err();
        assert!(matches!(error, SshError::KnownHostsUnreadable { .. }), "{error}");

        let missing = HostKeys { path: dir.path().join("absent"), trust_on_first_use: false };
        let error = missing.check("10.0.0.9", 22, &key(ED25519)).unwrap_err();
        assert!(matches!(error, SshError::HostKeyUnknown { .. }), "a missing file is an empty one: {error}");
    }

    #[test]
    fn globs_match_as_openssh_does() {
        assert!(glob(b"10.0.*", b"10.0.1.2"));
        assert!(glob(b"host?", b"host1"));
        assert!(!glob(b"host?", b"host"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"10.0.0.1", b"10.0.0.10"));
    }
}
