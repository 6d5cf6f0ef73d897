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
    /// The AMI name; `{image}`, `{hash}` and `{timestamp}` are filled in.
    pub ami_name: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Regions the AMI is copied to after the bake.
    pub copy_to: Vec<String>,
    pub loc: Loc,
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
    let copy_to =
        map.get("copy_to").and_then(|n| yaml::string_list(n, problems)).map(|list| list.into_iter().map(|r| r.value).collect()).unwrap_or_default();
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
        ami_name: ami_name.unwrap_or_else(|| String::from("kstack-{image}-{timestamp}")),
        tags,
        copy_to,
        loc,
    })
}
