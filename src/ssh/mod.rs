//! The SSH transport: one russh connection per host for a whole run, a channel per command,
//! file writes over the command's stdin, checked complete before they replace a file, and `sudo` when the login
//! user is not root. Host keys are checked against a known_hosts file.

mod facts;
mod known_hosts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;

pub use facts::Facts;
/// The script whose output [`Facts::parse`] reads.
pub(crate) use facts::SCRIPT as FACTS_SCRIPT;
pub use known_hosts::HostKeys;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {host}: {message}")]
    Unreachable { host: String, message: String },
    #[error(
        "the host key of {host} has changed: it offers {offered}, which does not match line {line} of {known_hosts} \
         (`{recorded}`); this can mean someone is intercepting the connection"
    )]
    HostKeyChanged { host: String, port: u16, offered: String, line: usize, recorded: String, known_hosts: PathBuf },
    #[error("the host key of {host} ({offered}) is revoked by line {line} of {known_hosts}")]
    HostKeyRevoked { host: String, offered: String, line: usize, known_hosts: PathBuf },
    #[error("the host key of {host} is not in {known_hosts}")]
    HostKeyUnknown { host: String, known_hosts: PathBuf },
    #[error("cannot read the known_hosts file {}: {message}", path.display())]
    KnownHostsUnreadable { path: PathBuf, message: String },
    #[error("{}", lines.iter().map(|line| format!("{}:{line}: not a known_hosts line", path.display())).collect::<Vec<_>>().join("; "))]
    KnownHostsMalformed { path: PathBuf, lines: Vec<usize> },
    #[error("{user}@{host} refused the key {key}")]
    AuthenticationFailed { host: String, user: String, key: LoginKey },
    #[error("cannot read the private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("SSH to {host} failed: {message}")]
    Protocol { host: String, message: String },
    #[error("writing {path} on {host} failed: {message}")]
    Write { host: String, path: String, message: String },
}

impl crate::hint::Hint for SshError {
    fn hint(&self) -> Option<String> {
        match self {
            SshError::HostKeyChanged { host, port, known_hosts, .. } => {
                let name = if *port == 22 { host.clone() } else { shell_quote(&format!("[{host}]:{port}")) };
                Some(format!(
                    "if the host was rebuilt, check its new key out of band (e.g. in its console output), then remove the \
                     old one with `ssh-keygen -R {name} -f {}` and connect again; kstack never replaces a recorded key, \
                     not even with --trust-new-hosts",
                    known_hosts.display()
                ))
            }
            SshError::KnownHostsUnreadable { .. } | SshError::KnownHostsMalformed { .. } => Some(String::from(
                "no host is trusted while the file cannot be read: fix or remove the line (`host[,host...] key-type \
                 base64-key [comment]`, as ssh writes them)",
            )),
            SshError::HostKeyUnknown { .. } => {
                Some(String::from("add its key to the known_hosts file, or pass --trust-new-hosts to record it on first use"))
            }
            SshError::AuthenticationFailed { .. } => Some(String::from("check --ssh-user and --ssh-key")),
            _ => None,
        }
    }
}

/// How to reach and log in to hosts.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub key: LoginKey,
    pub port: u16,
    pub host_keys: HostKeys,
    pub connect_timeout: Duration,
    /// Reach hosts through this jump host, as `ssh -J` does.
    pub bastion: Option<Bastion>,
}

/// How kstack reaches a fleet's nodes: which of an instance's addresses it uses, and how it
/// logs in, as whichever user each node's image says unless one is given for all.
#[derive(Debug, Clone)]
pub struct NodeAccess {
    pub public_addresses: bool,
    /// The user for every node, instead of each image's.
    pub user: Option<String>,
    /// Everything else of the login; its user is replaced.
    pub login: Login,
}

impl NodeAccess {
    /// The address to reach an instance at, of its private and public ones.
    pub fn address(&self, private: Option<&str>, public: Option<&str>) -> Option<String> {
        if self.public_addresses { public } else { private }.map(str::to_owned)
    }

    /// Logging in as the given user, or else as `default_user` (the image's).
    pub fn login(&self, default_user: &str) -> Login {
        Login { user: self.user.clone().unwrap_or_else(|| default_user.to_owned()), ..self.login.clone() }
    }
}

/// The private key a login authenticates with.
#[derive(Debug, Clone)]
pub enum LoginKey {
    /// An OpenSSH private key file, e.g. `~/.ssh/id_ed25519`.
    File(PathBuf),
    /// A key made for one job and never written to disk, e.g. a bake's one-off key.
    InMemory(Arc<PrivateKey>),
}

impl LoginKey {
    fn load(&self) -> Result<Arc<PrivateKey>, SshError> {
        match self {
            LoginKey::File(path) => {
                russh::keys::load_secret_key(path, None).map(Arc::new).map_err(|e| SshError::Key { path: path.clone(), message: e.to_string() })
            }
            LoginKey::InMemory(key) => Ok(Arc::clone(key)),
        }
    }
}

impl std::fmt::Display for LoginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginKey::File(path) => write!(f, "{}", path.display()),
            LoginKey::InMemory(_) => f.write_str("(a one-off key held in memory)"),
        }
    }
}

/// A jump host: `[user@]host[:port]`; the user defaults to the login user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bastion {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Bastion {
    type Err = String;

    fn from_str(text: &str) -> Result<Bastion, String> {
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => (Some(user.to_owned()), rest),
            None => (None, text),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| format!("`{port}` is not a port number"))?),
            None => (rest, 22),
        };
        if host.is_empty() {
            return Err(String::from("expected [user@]host[:port]"));
        }
        Ok(Bastion { user, host: host.to_owned(), port })
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: u32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

struct Verifier {
    host: String,
    port: u16,
    host_keys: HostKeys,
    /// Why the key was refused, for an error better than "disconnected".
    refusal: Arc<std::sync::Mutex<Option<SshError>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        match self.host_keys.check(&self.host, self.port, key) {
            Ok(()) => Ok(true),
            Err(error) => {
                if let Ok(mut refusal) = self.refusal.lock() {
                    *refusal = Some(error);
                }
                Ok(false)
            }
        }
    }
}

/// An open, authenticated connection to one host.
pub struct Connection {
    pub host: String,
    handle: Handle<Verifier>,
    /// Whether commands go through `sudo`: the login user is not root.
    become_root: bool,
    /// The bastion connection this one is tunnelled through, kept open as long as it is.
    _jump: Option<Box<Connection>>,
    /// Commands run so far: each is a round trip and a remote process.
    commands: std::sync::atomic::AtomicUsize,
}

impl Connection {
    /// Whether the SSH connection has gone (the server or the network dropped it).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Resolves once the connection has gone. russh leaves a send that waits for window space
    /// pending forever when the server disappears mid-transfer, so sends race this.
    async fn closed(&self) {
        while !self.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects and authenticates, through the bastion when the login names one.
    pub async fn open(host: &str, login: &Login) -> Result<Connection, SshError> {
        let jump = match &login.bastion {
            Some(bastion) => {
                let jump_login =
                    Login { user: bastion.user.clone().unwrap_or_else(|| login.user.clone()), port: bastion.port, bastion: None, ..login.clone() };
                Some(Box::new(Connection::establish(&bastion.host, &jump_login, None).await?))
            }
            None => None,
        };
        Connection::establish(host, login, jump).await
    }

    async fn establish(host: &str, login: &Login, jump: Option<Box<Connection>>) -> Result<Connection, SshError> {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(30)),
            // Commands are small messages each waiting on the last: with Nagle's algorithm on,
            // each waited out the peer's delayed ACK (about 40 ms a command).
            nodelay: true,
            ..Default::default()
        });
        let refusal = Arc::new(std::sync::Mutex::new(None));
        let verifier = Verifier { host: host.to_owned(), port: login.port, host_keys: login.host_keys.clone(), refusal: Arc::clone(&refusal) };
        let unreachable = |message: String| SshError::Unreachable { host: host.to_owned(), message };
        let connecting = async {
            match &jump {
                None => client::connect(config, (host, login.port), verifier).await,
                Some(jump) => {
                    let channel = jump.handle.channel_open_direct_tcpip(host, u32::from(login.port), "127.0.0.1", 0).await?;
                    client::connect_stream(config, channel.into_stream(), verifier).await
                }
            }
        };
        let mut handle = match tokio::time::timeout(login.connect_timeout, connecting).await {
            Err(_) => return Err(unreachable(format!("no answer within {}s", login.connect_timeout.as_secs()))),
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => {
                if let Some(refused) = refusal.lock().ok().and_then(|mut r| r.take()) {
                    return Err(refused);
                }
                let through = jump.as_ref().map(|j| format!(" (through bastion {})", j.host)).unwrap_or_default();
                return Err(unreachable(format!("{error}{through}")));
            }
        };
        let key = login.key.load()?;
        let protocol = |e: russh::Error| SshError::Protocol { host: host.to_owned(), message: e.to_string() };
        let hash = handle.best_supported_rsa_hash().await.map_err(protocol)?.flatten();
        let auth = handle.authenticate_publickey(&login.user, PrivateKeyWithHashAlg::new(key, hash)).await.map_err(protocol)?;
        if !auth.success() {
            return Err(SshError::AuthenticationFailed { host: host.to_owned(), user: login.user.clone(), key: login.key.clone() });
        }
        Ok(Connection { host: host.to_owned(), handle, become_root: login.user != "root", _jump: jump, commands: Default::default() })
    }

    fn protocol(&self, error: russh::Error) -> SshError {
        SshError::Protocol { host: self.host.clone(), message: error.to_string() }
    }

    /// Runs `script` with `sh` as root on its own channel, feeding `stdin` to it.
    ///
    /// The script travels on the channel's input, ahead of `stdin`, never on a command line:
    /// command lines are readable by every user of the host (`ps`) and land in sudo's log,
    /// and scripts hold rendered values, secrets included.
    /// How many commands ran on this connection: its round trips, and its remote processes.
    pub fn commands_run(&self) -> usize {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn run(&self, script: &str, stdin: Option<&[u8]>) -> Result<Output, SshError> {
        self.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let command = if self.become_root {
            format!("sudo -n sh -c {}", shell_quote(RUN_FROM_INPUT))
        } else {
            format!("sh -c {}", shell_quote(RUN_FROM_INPUT))
        };
        let mut input = framed(script).into_bytes();
        input.extend_from_slice(stdin.unwrap_or_default());
        let channel = self.handle.channel_open_session().await.map_err(|e| self.protocol(e))?;
        channel.exec(true, command).await.map_err(|e| self.protocol(e))?;
        // Input is sent while output is read: a command that ends without reading all of its
        // input (a failing `sudo`, a write whose directory cannot be made) closes the channel,
        // which ends the send instead of leaving it waiting for window space forever.
        let (mut reader, writer) = channel.split();
        let send = async {
            writer.data(input.as_slice()).await?;
            writer.eof().await
        };
        tokio::pin!(send);
        let mut sending = true;
        let mut send_error = None;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut status = None;
        loop {
            let message = tokio::select! {
                sent = &mut send, if sending => {
                    sending = false;
                    send_error = sent.err();
                    continue;
                }
                message = reader.wait() => message,
                // The connection, not just the channel, is gone: russh may never say so here.
                () = self.closed(), if sending => None,
            };
            match message {
                Some(ChannelMsg::Data { data }) => stdout.extend_from_slice(&data),
                Some(ChannelMsg::ExtendedData { data, .. }) => stderr.extend_from_slice(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    stderr.extend_from_slice(format!("killed by signal {signal_name:?}").as_bytes());
                    status = Some(255);
                }
                Some(_) => {}
                None => break,
            }
        }
        let Some(status) = status else {
            let message = match send_error {
                Some(error) => format!("the connection dropped while sending input: {error}"),
                None => String::from("the connection dropped before the command finished"),
            };
            return Err(SshError::Protocol { host: self.host.clone(), message });
        };
        Ok(Output { status, stdout: String::from_utf8_lossy(&stdout).into_owned(), stderr: String::from_utf8_lossy(&stderr).into_owned() })
    }

    /// Writes `content` to `path` (see [`write_script`]).
    pub async fn write_file(&self, path: &str, content: &[u8], mode: u32, owner: &str, group: &str) -> Result<(), SshError> {
        let input: Vec<u8> = write_input(content).copied().collect();
        let output = self.run(&write_script(path, content.len(), mode, owner, group), Some(&input)).await?;
        if output.success() {
            Ok(())
        } else {
            Err(SshError::Write { host: self.host.clone(), path: path.to_owned(), message: output.stderr.trim().to_owned() })
        }
    }

    /// Facts about the host, gathered in one round trip.
    pub async fn facts(&self) -> Result<Facts, SshError> {
        let output = self.run(FACTS_SCRIPT, None).await?;
        Ok(Facts::parse(&output.stdout))
    }

    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// The whole remote command: reads the script's length in bytes, then the script with one
/// `head -c`, which reads exactly that much (the shell's `read` takes a byte per system call:
/// about 7 ms of the node's time for a 12 KB batch), and evaluates it with the rest of the
/// input as its stdin. Input cut off mid-script runs nothing: the script ends with
/// [`SCRIPT_END`], which a shorter read lacks; it is taken off before the script runs, whose
/// last command's status is the command's.
const RUN_FROM_INPUT: &str = r#"IFS= read -r kstack_length || exit 125
kstack_script=$(head -c "$kstack_length") || exit 125
kstack_body=${kstack_script%: kstack script end}
[ "$kstack_body" != "$kstack_script" ] || exit 125
unset kstack_length kstack_script
eval "$kstack_body""#;

/// The last line of every script sent, a no-op by which [`RUN_FROM_INPUT`] knows it has all.
const SCRIPT_END: &str = ": kstack script end";

/// `script` as `RUN_FROM_INPUT` reads it: its length in bytes, then the script, ending with
/// [`SCRIPT_END`].
fn framed(script: &str) -> String {
    let body = format!("{}\n{SCRIPT_END}\n", script.strip_suffix('\n').unwrap_or(script));
    format!("{}\n{body}", body.len())
}

/// A script that writes a file of `length` bytes, read from its input ([`write_input`]: the
/// content, then an empty line), to `path` atomically: a temporary file beside it, renamed into
/// place, with the given mode and owner. It reads exactly the content's length, so more may
/// follow on the same input, and the empty line after it arrives only when all of the content
/// did: a write cut off leaves the old file. The temporary file has a random name and is
/// created new (`set -C`: never through an existing file or link), readable only by root
/// until its owner and mode are set (owner first: a `chown` clears set-user-ID bits), and is
/// removed on any failure. Only what differs from a new file of root's, mode 0600, is changed:
/// a root's file outside a set-group-ID directory needs no `chown`.
pub fn write_script(path: &str, length: usize, mode: u32, owner: &str, group: &str) -> String {
    let directory = std::path::Path::new(path).parent().and_then(std::path::Path::to_str).filter(|d| !d.is_empty()).unwrap_or("/");
    let is_root = |name: &str| name == "root" || name == "0";
    let owner_change = format!("chown {}:{} \"$t\"", shell_quote(owner), shell_quote(group));
    let owner_change = if is_root(owner) && is_root(group) { format!("[ ! -g \"$d\" ] || {owner_change}") } else { owner_change };
    let mode_change = if mode == 0o600 { String::new() } else { format!("chmod {mode:o} \"$t\"; ") };
    format!(
        "set -e; d={}; t=\"$d/.kstack.{:016x}\"; [ -d \"$d\" ] || mkdir -p \"$d\"; \
         trap 'rm -f \"$t\"' EXIT; trap 'exit 1' HUP PIPE TERM INT; umask 077; set -C; head -c {length} > \"$t\"; set +C; \
         IFS= read -r e && [ -z \"$e\" ] || {{ echo 'the input ended before the whole file' >&2; exit 3; }}; \
         {owner_change}; {mode_change}mv -f \"$t\" {}; trap - EXIT",
        shell_quote(directory),
        rand::random::<u64>(),
        shell_quote(path)
    )
}

/// The input of a [`write_script`]: `content`, then the empty line that shows it all arrived.
pub fn write_input(content: &[u8]) -> impl Iterator<Item = &u8> {
    content.iter().chain(b"\n")
}

/// Quotes `text` as one word for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::{framed, shell_quote, write_input, write_script};

    /// Runs `script` with the local `sh`, as a node's would, with `input`.
    fn sh(script: &str, input: &[u8]) -> std::process::Output {
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a write of `length` bytes here, with `input`, then copies what input is left to
    /// stdout.
    fn write_here(path: &Path, length: usize, mode: u32, owner: &str, input: &[u8]) -> std::process::Output {
        sh(&format!("{}\ncat", write_script(path.to_str().unwrap(), length, mode, owner, owner)), input)
    }

    fn left_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_creates_its_directory_and_reads_exactly_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/app.conf");
        let content = b"no final newline \0 \xff\n\\ end";
        let mut input: Vec<u8> = write_input(content).copied().collect();
        input.extend_from_slice(b"what follows");
        let output = write_here(&path, content.len(), 0o640, "root", &input);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(std::fs::read(&path).unwrap(), content);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(output.stdout, b"what follows", "the rest of the input is left for what follows");
        assert_eq!(left_in(&dir.path().join("new")), ["app.conf"]);
    }

    #[test]
    fn a_write_cut_off_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.conf");
        std::fs::write(&path, "old").unwrap();
        // Ten bytes announced, four sent, and the input ends: no empty line after them.
        let output = write_here(&path, 10, 0o644, "root", b"new!");
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("the input ended before the whole file"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(left_in(dir.path()), ["app.conf"]);
    }

    #[test]
    fn a_set_user_id_mode_survives_the_owner_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        let input: Vec<u8> = write_input(b"#!/bin/sh\n").copied().collect();
        let output = write_here(&path, 10, 0o4755, "daemon", &input);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((metadata.uid(), metadata.gid()), (1, 1), "daemon:daemon");
    }

    #[test]
    fn a_roots_file_in_a_set_group_id_directory_is_still_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), None, Some(1)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o2775)).unwrap();
        let path = dir.path().join("secret.conf");
        let input: Vec<u8> = write_input(b"token").copied().collect();
        let output = write_here(&path, 5, 0o600, "root", &input);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!((metadata.permissions().mode() & 0o7777, metadata.gid()), (0o600, 0));
    }

    #[test]
    fn a_script_is_framed_by_its_length_and_runs_only_when_whole() {
        assert_eq!(framed("echo a\necho b"), "34\necho a\necho b\n: kstack script end\n");
        assert_eq!(framed("echo é\n"), "28\necho é\n: kstack script end\n", "bytes, not characters");
        let run = |input: &[u8]| sh(super::RUN_FROM_INPUT, input);
        let whole = format!("{}rest of the input", framed("echo ran; cat"));
        let output = run(whole.as_bytes());
        assert_eq!((output.status.code(), output.stdout.as_slice()), (Some(0), b"ran\nrest of the input".as_slice()));
        assert_eq!(run(framed("echo ran; exit 7").as_bytes()).status.code(), Some(7), "the script's status is the command's");
        assert_eq!(run(framed("false\n").as_bytes()).status.code(), Some(1));
        let cut = &whole.as_bytes()[..whole.find("script end").unwrap()];
        assert_eq!(run(cut).status.code(), Some(125), "a script cut off runs nothing");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
