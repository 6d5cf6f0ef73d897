//! The arguments of each task module, as a role's tasks write them. Unknown keys are errors,
//! so a typo is caught when roles load; kstack's `roles::modules` converges hosts to them.

use serde::Deserialize;

/// A task's module and its arguments, after templating.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    File(File),
    Copy(Copy),
    Template(Copy),
    Line(Line),
    Sysctl(Sysctl),
    SystemdUnit(Systemd),
    Service(Systemd),
    Package(Package),
    AptRepository(AptRepository),
    KernelCmdline(KernelCmdline),
    User(User),
    Group(Group),
    Command(Command),
}

/// Module names, for "did you mean" on an unknown one.
pub const NAMES: &[&str] = &[
    "file",
    "copy",
    "template",
    "line",
    "sysctl",
    "systemd_unit",
    "service",
    "package",
    "apt_repository",
    "kernel_cmdline",
    "user",
    "group",
    "command",
];

// `user` and `group`: local accounts.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    pub shell: Option<String>,
    pub home: Option<String>,
    /// Supplementary groups the user must be in (others are left alone).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub system: bool,
}

// `command`: a shell command, made idempotent by `creates` (skip when a path exists) or
// `unless` (skip when another command succeeds).

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub run: String,
    pub creates: Option<String>,
    pub unless: Option<String>,
    pub chdir: Option<String>,
}

// `copy`, `template` and `line`: a file's whole content, or one line of it.

/// `copy` (from `content`, or `src` in the role's `files/`) and `template` (`src` in the
/// role's `templates/`). The role loader turns `src` into `content` before the task runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    pub dest: String,
    pub content: Option<String>,
    pub src: Option<String>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// A line in a file: present (replacing the first line that `regexp` matches) or absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub path: String,
    pub line: String,
    /// Lines matching this are replaced by `line` (present) or removed (absent).
    pub regexp: Option<String>,
    #[serde(default)]
    pub state: Presence,
    pub mode: Option<String>,
}

// `file`: a file, directory or symlink with its mode and owner, or its absence.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    #[default]
    File,
    Directory,
    Link,
    Absent,
}

impl FileState {
    pub fn name(self) -> &'static str {
        match self {
            FileState::File => "file",
            FileState::Directory => "directory",
            FileState::Link => "link",
            FileState::Absent => "absent",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    #[serde(default)]
    pub state: FileState,
    /// Where a link points.
    pub src: Option<String>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

// `kernel_cmdline`: a parameter on the kernel command line, through GRUB's defaults and
// `update-grub`; it takes effect at the next boot.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCmdline {
    /// `name=value` or a bare flag, e.g. `transparent_hugepage=never`.
    pub parameter: String,
    #[serde(default)]
    pub state: Presence,
}

// `package` (apt: install, pin a version, hold, remove) and `apt_repository` (a source list
// entry and its signing key).

/// Whether a package, a line or a kernel parameter is wanted (`state: present`, the default)
/// or not (`state: absent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    /// An exact version to install, e.g. `17.03.2~ce-0~ubuntu-xenial`.
    pub version: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Hold the package at its version, so unattended upgrades leave it alone.
    pub hold: Option<bool>,
    /// Run `apt-get update` before installing.
    #[serde(default)]
    pub update_cache: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptRepository {
    /// Names the files: `/etc/apt/sources.list.d/<name>.list`, `/etc/apt/keyrings/<name>.asc`.
    pub name: String,
    /// The source line, e.g. `deb [arch=amd64] https://download.docker.com/linux/ubuntu xenial stable`.
    /// `signed-by` is added when a key is given.
    pub source: String,
    /// The ASCII-armored signing key; `key_src` names a file of the role instead.
    pub key: Option<String>,
    pub key_src: Option<String>,
}

// `sysctl`: a kernel setting, persisted in `/etc/sysctl.d` and applied at once. Inside a
// container the kernel's settings are the host's: kstack persists the setting and says it
// could not apply it, rather than pretend.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

// `systemd_unit` and `service`: a unit file or drop-in (optional), whether the unit is
// enabled, and whether it runs. A changed unit file is followed by `daemon-reload`, and a
// running unit whose file changed is restarted.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Started,
    Stopped,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Systemd {
    /// The unit, e.g. `docker.service`.
    pub name: String,
    /// The unit file (or drop-in) content; `src` names a template of the role instead.
    pub content: Option<String>,
    pub src: Option<String>,
    /// Write a drop-in `/etc/systemd/system/<name>.d/<dropin>.conf` instead of the unit.
    pub dropin: Option<String>,
    pub enabled: Option<bool>,
    pub state: Option<RunState>,
}
