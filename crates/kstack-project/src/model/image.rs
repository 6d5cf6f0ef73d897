//! Image definitions (`images/<name>.yaml`): the AMI a bake starts from, how to log in to
//! it, and the roles (with variables) that make a node.

use crate::diagnostics::{Loc, Problems, Sources, Spanned};
use crate::paths;
use crate::yaml::{self, MapReader};

use super::Project;

#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A literal AMI id.
    Ami(String),
    /// The newest AMI of `owner` (e.g. Canonical's `099720109477`) whose name matches
    /// `name`, a pattern with `*` wildcards.
    Search { owner: String, name: String },
}

/// Where the builder instance runs: a subnet tier of an applied environment.
#[derive(Debug, Clone)]
pub struct BuildPlace {
    pub environment: String,
    pub subnet_tier: String,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub source: ImageSource,
    pub instance_type: String,
    pub ssh_user: String,
    pub roles: Vec<Spanned<String>>,
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub build: Option<BuildPlace>,
    pub root_volume_gib: u32,
    pub encrypted: bool,
    /// The KMS key the AMI's snapshots are encrypted with (`encrypt: { kms_key_id }`); the
    /// account's default EBS key when unset.
    pub kms_key_id: Option<String>,
    /// The AMI name; `{image}`, `{hash}` and `{timestamp}` are filled in.
    pub ami_name: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Regions the AMI is copied to after the bake.
    pub copy_to: Vec<RegionCopy>,
    /// Who else may launch it (`share:`).
    pub share: Share,
    /// How many AMIs of the image each region keeps (`keep: N`): older ones no launch
    /// template or configuration uses are deregistered after a bake, their snapshots deleted.
    pub keep: Option<u32>,
    pub loc: Loc,
}

/// A copy of the AMI in another region, encrypted with that region's key if one is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCopy {
    pub region: String,
    pub kms_key_id: Option<String>,
}

/// The accounts, organizations and organizational units that may launch the image (launch
/// permission); accounts may also create volumes from its snapshots. Exactly these: a
/// permission given earlier and no longer listed is taken back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    pub accounts: Vec<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
}

/// Where image names lead, for the hint on one that is not a plain name.
pub const IMAGE_NAMES: &str = "images are files images/<name>.yaml, named without the directory and `.yaml`";

pub fn load_image(project: &Project, name: &str, sources: &mut Sources) -> Result<Image, Problems> {
    let mut problems = Problems::default();
    // Names written in an environment were checked where they were written; this one may
    // come from the command line.
    if !paths::check_name(name, None, "image", IMAGE_NAMES, &mut problems) {
        return Err(problems);
    }
    let path = project.images_dir().join(format!("{name}.yaml"));
    if !paths::check_inside(&project.root, &path, "the project", None, &mut problems)
        || !paths::check_inside(&project.images_dir(), &path, "the project's images/ directory", None, &mut problems)
    {
        return Err(problems);
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        problems
            .general(format!("image `{name}` is not defined: there is no {}", crate::diagnostics::display_path(&path)))
            .hint("images are defined in images/<name>.yaml");
        return Err(problems);
    };
    let source_id = sources.add(&path, text.clone());
    let image = yaml::parse(source_id, &text, &mut problems).and_then(|root| decode(name, &root, &mut problems));
    match image {
        Some(image) if problems.is_empty() => Ok(image),
        _ => Err(problems),
    }
}

/// Decodes an image definition (public for the fuzz targets).
pub fn decode(name: &str, root: &marked_yaml::Node, problems: &mut Problems) -> Option<Image> {
    let mut map = MapReader::new(root, "image", problems)?;
    let loc = map.loc();
    let source = map.required("source", problems).and_then(|node| {
        if let marked_yaml::Node::Scalar(_) = node {
            return yaml::string(node, problems).map(|id| ImageSource::Ami(id.value));
        }
        let mut source = MapReader::new(node, "image source", problems)?;
        let owner = source.required("owner", problems).and_then(|n| yaml::string(n, problems));
        let pattern = source.required("name", problems).and_then(|n| yaml::string(n, problems));
        // Always the newest match; accepted for readers who know Terraform's aws_ami.
        source.get("most_recent");
        source.finish(problems);
        Some(ImageSource::Search { owner: owner?.value, name: pattern?.value })
    });
    let build = map.get("build").and_then(|node| {
        let mut build = MapReader::new(node, "image build", problems)?;
        let environment = build.required("environment", problems).and_then(|n| yaml::string(n, problems));
        let tier = build.required("subnet_tier", problems).and_then(|n| yaml::string(n, problems));
        build.finish(problems);
        Some(BuildPlace { environment: environment?.value, subnet_tier: tier?.value })
    });
    let root_volume_gib = map.get("root_volume_gib").and_then(|n| yaml::number(n, 8..=16384u32, problems)).map(|n| n.value);
    let encrypted = map.get("encrypted").and_then(|n| yaml::boolean(n, problems));
    let ami_name = map.get("ami_name").and_then(|n| yaml::string(n, problems)).map(|s| s.value);
    let tags = map.get("tags").map(|n| yaml::string_map(n, problems).into_iter().map(|(k, v)| (k, v.value)).collect()).unwrap_or_default();
    let kms_key_id = map.get("encrypt").and_then(|node| {
        let mut encrypt = MapReader::new(node, "image encryption", problems)?;
        let key = encrypt.required("kms_key_id", problems).and_then(|n| yaml::string(n, problems));
        encrypt.finish(problems);
        key
    });
    if let (Some(false), Some(key)) = (encrypted, &kms_key_id) {
        problems
            .error(key.loc, "`encrypt` names a key for an image with `encrypted: false`")
            .hint("remove `encrypted: false`: a key encrypts the image's snapshots");
    }
    let copy_to = map.get("copy_to").and_then(|n| yaml::list(n, problems, region_copy)).unwrap_or_default();
    let share = map.get("share").and_then(|n| share(n, problems)).unwrap_or_default();
    let keep = map.get("keep").and_then(|n| yaml::number(n, 1..=1000u32, problems)).map(|n| n.value);
    let instance_type = map.get("instance_type").and_then(|n| yaml::string(n, problems)).map(|s| s.value);
    let ssh_user = map.get("ssh_user").and_then(|n| yaml::string(n, problems)).map(|s| s.value);
    let roles = map.required("roles", problems).and_then(|n| yaml::string_list(n, problems)).unwrap_or_default();
    let variables = map.get("variables").map(|n| yaml::to_json(n).as_object().cloned().unwrap_or_default()).unwrap_or_default();
    map.finish(problems);
    Some(Image {
        name: name.to_owned(),
        source: source?,
        instance_type: instance_type.unwrap_or_else(|| String::from("m5.large")),
        ssh_user: ssh_user.unwrap_or_else(|| String::from("ubuntu")),
        roles,
        variables,
        build,
        root_volume_gib: root_volume_gib.unwrap_or(16),
        encrypted: encrypted.unwrap_or(true),
        kms_key_id: kms_key_id.map(|k| k.value),
        ami_name: ami_name.unwrap_or_else(|| String::from("kstack-{image}-{timestamp}")),
        tags,
        copy_to,
        share,
        keep,
        loc,
    })
}

/// `- us-east-1`, or `- { region: us-east-1, kms_key_id: KEY }`.
fn region_copy(node: &marked_yaml::Node, problems: &mut Problems) -> Option<RegionCopy> {
    if let marked_yaml::Node::Scalar(_) = node {
        return yaml::string(node, problems).map(|region| RegionCopy { region: region.value, kms_key_id: None });
    }
    let mut map = MapReader::new(node, "region copy", problems)?;
    let region = map.required("region", problems).and_then(|n| yaml::string(n, problems));
    let kms_key_id = map.get("kms_key_id").and_then(|n| yaml::string(n, problems)).map(|k| k.value);
    map.finish(problems);
    Some(RegionCopy { region: region?.value, kms_key_id })
}

/// `share: { accounts: [...], organizations: [...], organizational_units: [...] }`.
fn share(node: &marked_yaml::Node, problems: &mut Problems) -> Option<Share> {
    let mut map = MapReader::new(node, "image sharing", problems)?;
    let mut listed = |key, valid: fn(&str) -> bool, hint: &str, problems: &mut Problems| -> Vec<String> {
        let items = map.get(key).and_then(|n| yaml::string_list(n, problems)).unwrap_or_default();
        let mut kept = Vec::new();
        for item in items {
            if valid(&item.value) {
                kept.push(item.value);
            } else {
                problems.error(item.loc, format!("`{}` is not one of `share.{key}`", item.value)).hint(hint.to_owned());
            }
        }
        kept
    };
    let accounts = listed(
        "accounts",
        |a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()),
        "an account id is 12 digits, quoted: `\"123456789012\"`",
        problems,
    );
    let organizations = listed(
        "organizations",
        |a| a.starts_with("arn:aws:organizations::") && a.contains(":organization/o-"),
        "an organization's ARN reads `arn:aws:organizations::<account>:organization/o-<id>`",
        problems,
    );
    let organizational_units = listed(
        "organizational_units",
        |a| a.starts_with("arn:aws:organizations::") && a.contains(":ou/o-"),
        "an organizational unit's ARN reads `arn:aws:organizations::<account>:ou/o-<id>/ou-<id>`",
        problems,
    );
    map.finish(problems);
    Some(Share { accounts, organizations, organizational_units })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(text: &str) -> (Option<Image>, Vec<String>) {
        let mut sources = Sources::default();
        let id = sources.add(std::path::Path::new("images/node.yaml"), text.to_owned());
        let mut problems = Problems::default();
        let root = yaml::parse(id, text, &mut problems).unwrap();
        let image = decode("node", &root, &mut problems);
        (image, problems.into_sorted().into_iter().map(|p| p.message).collect())
    }

    #[test]
    fn encryption_sharing_copies_and_keep_decode() {
        let (image, problems) = decoded(
            "source: ami-1\nroles: []\nencrypt: { kms_key_id: alias/images }\nkeep: 3\n\
             copy_to: [us-east-1, { region: eu-central-1, kms_key_id: alias/fra }]\n\
             share: { accounts: ['111111111111'], organizations: ['arn:aws:organizations::123456789012:organization/o-abc'] }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let image = image.unwrap();
        assert_eq!((image.kms_key_id.as_deref(), image.keep), (Some("alias/images"), Some(3)));
        assert_eq!(image.copy_to[1], RegionCopy { region: "eu-central-1".into(), kms_key_id: Some("alias/fra".into()) });
        assert_eq!(image.share.accounts, ["111111111111"]);
    }

    #[test]
    fn every_sharing_and_encryption_mistake_is_reported_at_once() {
        let (_, problems) = decoded(
            "source: ami-1\nroles: []\nencrypted: false\nencrypt: { kms_key_id: k }\nkeep: 0\n\
             share: { accounts: ['12'], organizational_units: ['o-1'] }\n",
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
