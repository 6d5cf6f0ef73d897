//! What a task reads on a host and what a change touches there: the session makes a queued
//! change before a later task reads what it touches.

/// Something on a host that a task reads or a change touches. A queued change that touches
/// what a later task reads is made before that task is judged (see [`Touch::affects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    /// A path itself: a file's content and attributes, a directory's attributes. Writing it
    /// also makes whatever directories above it are missing.
    Path(String),
    /// A path and everything under it: removed, or replaced by a link.
    Tree(String),
    Unit(String),
    Package(String),
    User(String),
    Group(String),
    /// The names `stat` shows for owners: any account made or changed can change them.
    AccountNames,
    /// A service started whose unit pulls in no other unit (see the `systemd_unit` module): its
    /// processes may change anything but unit files and the state of other units.
    Service(String),
    /// Anything: a command of the user's, a package's install scripts, a service starting.
    Everything,
}

impl Touch {
    pub fn path(path: &str) -> Touch {
        Touch::Path(path.trim_end_matches('/').to_owned())
    }

    pub fn tree(path: &str) -> Touch {
        Touch::Tree(path.trim_end_matches('/').to_owned())
    }

    /// Whether this change can alter what `read` reads. Making a directory does not change
    /// what is under it; making anything makes its missing parents; removing or relinking a
    /// path changes everything under it. Units, packages and accounts are read through tools
    /// that keep them in files: a file change there affects them too.
    pub fn affects(&self, read: &Touch) -> bool {
        let related = |a: &str, b: &str| within(a, b) || within(b, a);
        let in_unit_directory = |path: &str| UNIT_DIRECTORIES.iter().any(|dir| within(path, dir));
        match (self, read) {
            (Touch::Everything, _) | (_, Touch::Everything) => true,
            // A socket, timer or path unit and its service share a stem and start each other.
            (Touch::Service(started), Touch::Unit(read)) => unit_stem(started) == unit_stem(read),
            (Touch::Service(_), Touch::Path(path) | Touch::Tree(path)) => !in_unit_directory(path),
            (Touch::Service(_), _) => true,
            (Touch::Path(changed), Touch::Path(read) | Touch::Tree(read)) => within(changed, read),
            (Touch::Tree(changed), Touch::Path(read) | Touch::Tree(read)) => related(changed, read),
            (Touch::Path(path) | Touch::Tree(path), Touch::Unit(unit)) | (Touch::Unit(unit), Touch::Path(path) | Touch::Tree(path)) => {
                concerns_unit(path, unit)
            }
            (Touch::Path(path) | Touch::Tree(path), named) | (named, Touch::Path(path) | Touch::Tree(path)) => {
                named.files().iter().any(|file| related(file, path))
            }
            (changed, read) => changed == read,
        }
    }

    /// Where the tools that read a package or the accounts keep them (a unit's files are
    /// judged path by path: [`concerns_unit`]).
    fn files(&self) -> &'static [&'static str] {
        match self {
            Touch::Package(_) => &["/var/lib/dpkg"],
            Touch::User(_) | Touch::Group(_) | Touch::AccountNames => &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"],
            Touch::Unit(_) | Touch::Path(_) | Touch::Tree(_) | Touch::Service(_) | Touch::Everything => &[],
        }
    }
}

/// Where systemd keeps units, their drop-ins and links, and its own state.
const UNIT_DIRECTORIES: &[&str] = &["/etc/systemd", "/lib/systemd", "/usr/lib/systemd", "/run/systemd"];

/// Whether `path` is under `dir` (or is it).
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || dir.is_empty())
}

/// Whether `path` can hold, name or pull in `unit`: the unit's file (or its template's), its
/// drop-ins and links, the `.wants`/`.requires`/`.upholds` directories that link units in, and
/// the directories above the unit files. Another unit's file is none of these.
fn concerns_unit(path: &str, unit: &str) -> bool {
    let Some(rest) = UNIT_DIRECTORIES.iter().find_map(|dir| path.strip_prefix(dir).filter(|rest| rest.is_empty() || rest.starts_with('/'))) else {
        return UNIT_DIRECTORIES.iter().any(|dir| within(dir, path));
    };
    let template = unit_template(unit);
    let names = |part: &str| {
        let name = part.strip_suffix(".d").unwrap_or(part);
        name == unit || template.as_deref() == Some(name) || [".wants", ".requires", ".upholds"].iter().any(|links| part.ends_with(links))
    };
    let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    parts.len() < 2 || parts.iter().any(|part| names(part))
}

/// The template an instance's file may be: `getty@.service` for `getty@tty1.service`.
pub(crate) fn unit_template(unit: &str) -> Option<String> {
    unit.split_once('@').zip(unit.rsplit_once('.')).map(|((prefix, _), (_, kind))| format!("{prefix}@.{kind}"))
}

/// A unit's name without its type: `app` of `app.service` and `app.socket`.
fn unit_stem(unit: &str) -> &str {
    unit.rsplit_once('.').map_or(unit, |(stem, _)| stem)
}

#[cfg(test)]
mod tests {
    use super::Touch;

    #[test]
    fn a_change_affects_its_path_its_parents_and_under_a_removal_but_no_sibling() {
        let made = Touch::path("/srv/app/");
        assert!(made.affects(&Touch::path("/srv/app")));
        assert!(!made.affects(&Touch::path("/srv/app/conf/x")), "making a directory leaves what is under it as it was");
        assert!(Touch::path("/srv/app/conf/x").affects(&made), "writing a file makes its parents");
        assert!(Touch::tree("/srv/app").affects(&Touch::path("/srv/app/conf/x")), "removing a directory removes what is in it");
        assert!(!made.affects(&Touch::path("/srv/application")) && !made.affects(&Touch::path("/srv/other")));
        assert!(Touch::Everything.affects(&Touch::AccountNames) && Touch::Unit("a".into()).affects(&Touch::Everything));
        assert!(!Touch::Unit("a".into()).affects(&Touch::Unit("b".into())));
        assert!(!Touch::Group("g".into()).affects(&Touch::User("u".into())), "a new group changes no user");
        assert!(Touch::AccountNames.affects(&Touch::path("/etc/passwd")) && Touch::path("/etc").affects(&Touch::AccountNames));
        assert!(!Touch::AccountNames.affects(&Touch::path("/etc/hosts")));
        assert!(Touch::path("/etc/systemd/system/a.service.d/x.conf").affects(&Touch::Unit("a.service".into())));
    }

    #[test]
    fn a_unit_changes_its_own_files_and_links_and_no_other_units_file() {
        let unit = || Touch::Unit("app.service".into());
        for own in ["/etc/systemd/system/app.service", "/etc/systemd/system/app.service.d/limits.conf", "/etc/systemd/system/multi-user.target.wants"]
        {
            assert!(unit().affects(&Touch::path(own)) && Touch::path(own).affects(&unit()), "{own}");
        }
        assert!(Touch::path("/lib/systemd/system/getty@.service").affects(&Touch::Unit("getty@tty1.service".into())));
        assert!(Touch::tree("/etc/systemd").affects(&unit()) && unit().affects(&Touch::path("/etc/systemd/system")));
        assert!(!unit().affects(&Touch::path("/etc/systemd/system/worker.service")));
        assert!(!Touch::path("/etc/systemd/system/worker.service").affects(&unit()));
        assert!(!Touch::path("/etc/default/app").affects(&unit()));
    }

    #[test]
    fn a_service_started_alone_leaves_other_units_and_unit_files_but_may_change_anything_else() {
        let started = Touch::Service("app.service".into());
        assert!(!started.affects(&Touch::Unit("worker.service".into())));
        assert!(!started.affects(&Touch::path("/etc/systemd/system/worker.service")));
        assert!(started.affects(&Touch::Unit("app.service".into())) && started.affects(&Touch::Unit("app.socket".into())));
        assert!(started.affects(&Touch::path("/srv/app/data/.initialised")) && started.affects(&Touch::path("/etc/default/app")));
        assert!(started.affects(&Touch::Package("a".into())) && started.affects(&Touch::AccountNames));
    }
}
