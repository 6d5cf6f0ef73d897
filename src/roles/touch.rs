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
        let within = |path: &str, dir: &str| path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || dir.is_empty());
        let related = |a: &str, b: &str| within(a, b) || within(b, a);
        match (self, read) {
            (Touch::Everything, _) | (_, Touch::Everything) => true,
            (Touch::Path(changed), Touch::Path(read) | Touch::Tree(read)) => within(changed, read),
            (Touch::Tree(changed), Touch::Path(read) | Touch::Tree(read)) => related(changed, read),
            (Touch::Path(path) | Touch::Tree(path), named) | (named, Touch::Path(path) | Touch::Tree(path)) => {
                named.files().iter().any(|file| related(file, path))
            }
            (changed, read) => changed == read,
        }
    }

    /// Where the tools that read a unit, a package or the accounts keep them.
    fn files(&self) -> &'static [&'static str] {
        match self {
            Touch::Unit(_) => &["/etc/systemd", "/lib/systemd", "/usr/lib/systemd", "/run/systemd"],
            Touch::Package(_) => &["/var/lib/dpkg"],
            Touch::User(_) | Touch::Group(_) | Touch::AccountNames => &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"],
            Touch::Path(_) | Touch::Tree(_) | Touch::Everything => &[],
        }
    }
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
}
