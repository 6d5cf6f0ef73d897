//! Image definitions (`images/<name>.yaml`): the AMI a bake starts from, how to log in to
//! it, and the roles (with variables) that make a node.

use crate::diagnostics::{Loc, Problems, Sources, Spanned};
use crate::yaml::{self, MapReader};

use super::Project;

#[derive(Debug, Clone)]
pub struct ImageSource {
    /// The AWS account that publishes the base AMI, e.g. Canonical's `099720109477`.
    pub owner: String,
    /// A name pattern (`*` wildcards) the newest matching AMI is taken from.
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub source: ImageSource,
    pub instance_type: String,
    pub ssh_user: String,
    pub roles: Vec<Spanned<String>>,
    pub variables: serde_json::Map<String, serde_json::Value>,
    pub loc: Loc,
}

pub fn load_image(project: &Project, name: &str, sources: &mut Sources) -> Result<Image, Problems> {
    let mut problems = Problems::default();
    let path = project.images_dir().join(format!("{name}.yaml"));
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

fn decode(name: &str, root: &marked_yaml::Node, problems: &mut Problems) -> Option<Image> {
    let mut map = MapReader::new(root, "image", problems)?;
    let loc = map.loc();
    let source = map.required("source", problems).and_then(|node| {
        let mut source = MapReader::new(node, "image source", problems)?;
        let owner = source.required("owner", problems).and_then(|n| yaml::string(n, problems));
        let pattern = source.required("name", problems).and_then(|n| yaml::string(n, problems));
        // Always the newest match; accepted for readers who know Terraform's aws_ami.
        source.get("most_recent");
        source.finish(problems);
        Some(ImageSource { owner: owner?.value, name: pattern?.value })
    });
    let instance_type = map.get("instance_type").and_then(|n| yaml::string(n, problems)).map(|s| s.value);
    let ssh_user = map.get("ssh_user").and_then(|n| yaml::string(n, problems)).map(|s| s.value);
    let roles = map.required("roles", problems).and_then(|n| yaml::string_list(n, problems)).unwrap_or_default();
    let variables = map
        .get("variables")
        .map(|n| yaml::to_json(n).as_object().cloned().unwrap_or_default())
        .unwrap_or_default();
    map.finish(problems);
    Some(Image {
        name: name.to_owned(),
        source: source?,
        instance_type: instance_type.unwrap_or_else(|| String::from("m5.large")),
        ssh_user: ssh_user.unwrap_or_else(|| String::from("ubuntu")),
        roles,
        variables,
        loc,
    })
}
