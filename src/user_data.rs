//! A node's user data: what is its own reaches it at boot, so one image serves every group.
//!
//! A group that runs a kstack image gets a cloud-config part writing `/etc/kstack/node.env`
//! (its environment, group and Kubernetes node labels), which the image's units read: the
//! kubelet role's drop-in takes its labels from there. With a group's own `user_data`, the
//! two are parts of a MIME multipart document, the form cloud-init reads.

use sha2::{Digest, Sha256};

/// Where the node's own settings are written at boot; the roles' units read it.
pub const NODE_ENV: &str = "/etc/kstack/node.env";

/// The cloud-config part for a node of `group` in `environment`. It comes last and asks
/// cloud-init to append its lists to the earlier parts' (by default a later part's
/// `write_files` would replace a group's own).
pub fn node_part(environment: &str, group: &str) -> String {
    format!(
        "#cloud-config\n\
         # Written by kstack: this node's own settings, read by the image's units.\n\
         merge_how:\n  - {{ name: list, settings: [append] }}\n  - {{ name: dict, settings: [recurse_list] }}\n\
         write_files:\n  - path: {NODE_ENV}\n    permissions: \"0644\"\n    content: |\n      \
         KSTACK_ENVIRONMENT={environment}\n      KSTACK_GROUP={group}\n      \
         KSTACK_NODE_LABELS=kstack.io/environment={environment},kstack.io/group={group}\n"
    )
}

/// The user data of a node that runs a kstack image: the group's own, then its node part.
pub fn compose(node_part: &str, own: Option<&str>) -> String {
    let Some(own) = own else { return node_part.to_owned() };
    // A boundary that neither part contains: derived from both, so the same input gives the
    // same document (and the same plan).
    let digest = Sha256::digest(format!("{node_part}\0{own}").as_bytes());
    let boundary = format!("kstack-{}", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
    let part = |content_type: &str, body: &str| {
        let newline = if body.ends_with('\n') { "" } else { "\n" };
        format!("--{boundary}\nContent-Type: {content_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{body}{newline}")
    };
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n{}{}--{boundary}--\n",
        part(content_type(own), own),
        part("text/cloud-config", node_part)
    )
}

/// cloud-init's content type for user data, from its first line (as cloud-init itself
/// decides for a single part).
fn content_type(user_data: &str) -> &'static str {
    let first = user_data.lines().next().unwrap_or_default().trim_end();
    match first {
        _ if first.starts_with("#!") => "text/x-shellscript",
        _ if first.starts_with("#cloud-config") => "text/cloud-config",
        _ if first.starts_with("#include") => "text/x-include-url",
        _ if first.starts_with("#cloud-boothook") => "text/cloud-boothook",
        _ if first.starts_with("#part-handler") => "text/part-handler",
        _ if first.starts_with("## template: jinja") => "text/jinja2",
        _ => "text/plain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_part_alone_is_plain_cloud_config() {
        let part = node_part("dev", "workers");
        assert_eq!(compose(&part, None), part);
        assert!(part.starts_with("#cloud-config\n"));
        assert!(part.contains("      KSTACK_NODE_LABELS=kstack.io/environment=dev,kstack.io/group=workers\n"), "{part}");
    }

    #[test]
    fn a_groups_own_user_data_is_a_part_of_its_type_before_the_node_part() {
        let part = node_part("dev", "workers");
        let script = "#!/bin/sh\necho hello > /etc/motd";
        let composed = compose(&part, Some(script));
        let boundary = composed.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        let parts: Vec<&str> = composed.split(&format!("--{boundary}")).collect();
        // Preamble, two parts, and the closing `--`.
        assert_eq!(parts.len(), 4, "{composed}");
        assert!(parts[1].contains("Content-Type: text/x-shellscript") && parts[1].ends_with("echo hello > /etc/motd\n"), "{composed}");
        assert!(parts[2].contains("Content-Type: text/cloud-config") && parts[2].ends_with(&part), "{composed}");
        assert_eq!(parts[3], "--\n");
        assert_eq!(compose(&part, Some(script)), composed, "the same input gives the same document");
        assert_eq!(content_type("#cloud-config\nruncmd: []\n"), "text/cloud-config");
    }
}
