//! Inputs stay inside the project. A name or path that one input file uses to name another
//! (a role, an image, `extends`, a role's `src`) is checked before anything is read: absolute
//! paths and `..` are refused as written, and what a path resolves to, symlinks followed,
//! must stay inside the directory it belongs to. So a vendored role cannot make kstack read
//! a file such as `~/.aws/credentials` and copy it to the nodes.

use std::path::{Component, Path, PathBuf};

use crate::diagnostics::{display_path, Loc, Problems, Spanned};

/// A name that becomes one file or directory name, such as a role (`roles/<name>/`) or an
/// image (`images/<name>.yaml`): letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reports `name` (written at `loc`, or given on the command line) unless it is a plain
/// name. `what` names it in the message ("role"), `hint` says where such names live.
pub fn check_name(name: &str, loc: Option<Loc>, what: &str, hint: &str, problems: &mut Problems) -> bool {
    if is_plain_name(name) {
        return true;
    }
    problems
        .at(loc, format!("{what} name `{name}` is not a plain name"))
        .label("not a plain name")
        .hint(format!("{hint}: letters, digits, `-`, `_` and `.`, without `/` and not starting with `.`"));
    false
}

/// A relative path as written, and where it may lead.
pub struct Reference<'a> {
    /// The setting that holds it, e.g. `src`.
    pub key: &'a str,
    pub path: &'a Spanned<String>,
    /// The directory it is relative to.
    pub base: &'a Path,
    /// The directory it must stay in, e.g. the role's directory.
    pub root: &'a Path,
    /// Names `root` in messages, e.g. "the role".
    pub scope: &'a str,
    /// What to write instead, e.g. "name a file in the role's files/ directory".
    pub hint: &'a str,
}

impl Reference<'_> {
    /// The file to read, or `None` after reporting why it may not be. A path that does not
    /// exist is returned as it is, for the caller to report as missing.
    pub fn resolve(&self, problems: &mut Problems) -> Option<PathBuf> {
        let Reference { key, path, scope, hint, .. } = *self;
        let written = Path::new(&path.value);
        if written.has_root() {
            problems.error(path.loc, format!("`{key}: {}` is an absolute path, outside {scope}", path.value)).label("absolute path").hint(hint);
            return None;
        }
        if written.components().any(|c| c == Component::ParentDir) {
            problems
                .error(path.loc, format!("`{key}: {}` contains `..`, which could lead outside {scope}", path.value))
                .label("`..` is not allowed")
                .hint(hint);
            return None;
        }
        let joined = self.base.join(written);
        match outside(self.root, &joined) {
            Some(resolved) => {
                problems
                    .error(path.loc, format!("`{key}: {}` resolves to {}, outside {scope}", path.value, resolved.display()))
                    .label("a symlink leads outside")
                    .hint(format!("{hint}; copy the file in rather than linking to it"));
                None
            }
            None => Some(joined),
        }
    }
}

/// Where `path` really is (symlinks resolved) when that is outside `root`; `None` when it
/// is inside, or does not exist.
pub fn outside(root: &Path, path: &Path) -> Option<PathBuf> {
    let resolved = path.canonicalize().ok()?;
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    (!resolved.starts_with(&root)).then_some(resolved)
}

/// Reports a file or directory kstack finds by name (a role's `tasks.yaml`, `images/<name>.yaml`)
/// that a symlink leads outside `root`, at `loc` where the name was written; `false` when it does.
pub fn check_inside(root: &Path, path: &Path, scope: &str, loc: Option<Loc>, problems: &mut Problems) -> bool {
    let Some(resolved) = outside(root, path) else {
        return true;
    };
    problems
        .at(loc, format!("{} resolves to {}, outside {scope}", display_path(path), resolved.display()))
        .label("a symlink leads outside")
        .hint("kstack reads nothing outside the project; copy the file in rather than linking to it");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(text: &str) -> Spanned<String> {
        Spanned::new(text.to_owned(), Loc { source: 0, line: 1, column: 1, len: text.len() })
    }

    fn resolve(root: &Path, text: &str) -> (Option<PathBuf>, Vec<String>) {
        let path = spanned(text);
        let reference = Reference { key: "src", path: &path, base: root, root, scope: "the role", hint: "stay" };
        let mut problems = Problems::default();
        let resolved = reference.resolve(&mut problems);
        (resolved, problems.iter().map(|p| p.message.clone()).collect())
    }

    #[test]
    fn plain_names_are_single_components() {
        for good in ["kubelet", "unattended-upgrades", "node_v2", "a.b"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "/etc", "../x", "a b", "a\\b", "~"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }

    #[test]
    fn absolute_paths_parent_components_and_escaping_symlinks_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("role");
        std::fs::create_dir_all(root.join("files/sub")).unwrap();
        std::fs::write(root.join("files/sub/ok.txt"), "ok").unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("files/link")).unwrap();
        std::os::unix::fs::symlink(root.join("files/sub/ok.txt"), root.join("files/inner-link")).unwrap();

        assert_eq!(resolve(&root, "files/sub/ok.txt").0, Some(root.join("files/sub/ok.txt")));
        assert_eq!(resolve(&root, "files/inner-link").0, Some(root.join("files/inner-link")));
        assert_eq!(resolve(&root, "files/missing").0, Some(root.join("files/missing")));
        assert_eq!(resolve(&root, "/etc/passwd").1, ["`src: /etc/passwd` is an absolute path, outside the role"]);
        assert_eq!(resolve(&root, "files/../../secret").1, ["`src: files/../../secret` contains `..`, which could lead outside the role"]);
        let (resolved, problems) = resolve(&root, "files/link");
        assert_eq!(resolved, None);
        let secret = outer.path().join("secret").canonicalize().unwrap();
        assert_eq!(problems, [format!("`src: files/link` resolves to {}, outside the role", secret.display())]);
    }
}
