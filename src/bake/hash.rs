//! The content hash of a bake: the same source AMI, role files, variables and kstack version
//! give the same hash, and so reuse the AMI baked from them.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::model::image::Image;
use crate::roles::Role;

pub fn content_hash(source_ami: &str, image: &Image, roles: &[Role], _roles_dir: &Path) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("kstack {}\nsource {source_ami}\n", env!("CARGO_PKG_VERSION")));
    hasher.update(serde_json::to_vec(&image.variables).unwrap_or_default());
    hasher.update(format!("\nssh_user {}\nvolume {} {}\n", image.ssh_user, image.root_volume_gib, image.encrypted));
    for role in roles {
        hasher.update(format!("role {}\n", role.name));
        for file in files_of(&role.dir) {
            hasher.update(file.strip_prefix(&role.dir).unwrap_or(&file).to_string_lossy().as_bytes());
            hasher.update(std::fs::read(&file).unwrap_or_default());
        }
    }
    format!("{:x}", hasher.finalize())
}

/// Every file below `dir`, sorted, so the hash does not depend on directory order.
fn files_of(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
