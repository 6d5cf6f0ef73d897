//! The content hash of a bake: the same source AMI, role files, variables and kstack version
//! give the same hash, and so reuse the AMI baked from them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::BakeError;
use crate::model::image::Image;
use crate::roles::Role;

/// Fails on a role file it cannot read: hashing it as empty could reuse an AMI baked from
/// other content.
pub fn content_hash(source_ami: &str, image: &Image, roles: &[Role]) -> Result<String, BakeError> {
    let mut hasher = Sha256::new();
    hasher.update(format!("kstack {}\nsource {source_ami}\n", env!("CARGO_PKG_VERSION")));
    hasher.update(serde_json::to_vec(&image.variables).unwrap_or_default());
    hasher.update(format!("\nssh_user {}\nvolume {} {}\n", image.ssh_user, image.root_volume_gib, image.encrypted));
    // Another key makes another AMI; an image without one hashes as before keys could be named.
    if let Some(key) = &image.kms_key_id {
        hasher.update(format!("kms_key_id {key}\n"));
    }
    for role in roles {
        hasher.update(format!("role {}\n", role.name));
        for file in files_of(&role.dir)? {
            hasher.update(file.strip_prefix(&role.dir).unwrap_or(&file).to_string_lossy().as_bytes());
            hasher.update(std::fs::read(&file).map_err(|error| unreadable(&file, &error))?);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn unreadable(path: &Path, error: &std::io::Error) -> BakeError {
    BakeError::Local { doing: "hashing the image's roles", error: format!("cannot read {}: {error}", path.display()) }
}

/// Every file below `dir`, sorted, so the hash does not depend on directory order.
fn files_of(dir: &Path) -> Result<Vec<PathBuf>, BakeError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).map_err(|error| unreadable(&next, &error))? {
            let path = entry.map_err(|error| unreadable(&next, &error))?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Sources;
    use crate::model::image::load_image;
    use crate::model::Project;

    #[test]
    fn the_same_content_hashes_the_same_and_an_unreadable_role_file_fails_the_hash() {
        let project = Project { root: PathBuf::from(env!("CARGO_MANIFEST_DIR")) };
        let mut sources = Sources::default();
        let image = load_image(&project, "node", &mut sources).unwrap_or_else(|p| panic!("{p:?}"));
        let mut roles = crate::roles::load_roles(&project.root.join("roles"), &image.roles, &mut sources).unwrap_or_else(|p| panic!("{p:?}"));
        let hash = content_hash("ami-1", &image, &roles).unwrap();
        assert_eq!(content_hash("ami-1", &image, &roles).unwrap(), hash);
        assert_ne!(content_hash("ami-2", &image, &roles).unwrap(), hash);

        // A file that cannot be read (here a link to nothing) never hashes as empty.
        let scratch = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(scratch.path().join("gone"), scratch.path().join("tasks.yaml")).unwrap();
        roles[0].dir = scratch.path().to_path_buf();
        let error = content_hash("ami-1", &image, &roles).unwrap_err().to_string();
        assert!(error.starts_with("hashing the image's roles: cannot read ") && error.contains("tasks.yaml"), "{error}");
    }
}
