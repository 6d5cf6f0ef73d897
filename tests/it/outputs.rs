//! `kstack output`, and the outputs `apply` ends with, against the emulator.

use kstack_testkit::{json, Emulated, Project};

/// Outputs with the ids AWS chose replaced by stable names, for snapshots.
fn redacted(text: &str, known: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (value, name) in known {
        text = text.replace(value, name);
    }
    let ids = regex_lite::Regex::new(r"\b(vpc|subnet|sg)-[0-9a-f]{8,17}\b").unwrap();
    ids.replace_all(&text, "$1-<id>").into_owned()
}

#[test]
fn outputs_name_what_other_tools_need_and_apply_ends_with_them() {
    let Emulated { moto, rt, aws, ami } = Emulated::with_node_image();
    let project = Project::copy();

    let applied = project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).output().unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let applied = String::from_utf8_lossy(&applied.stdout).into_owned();
    let outputs_shown = applied.split_once("\nOutputs:\n\n").map(|(_, rest)| rest.to_owned()).unwrap_or_else(|| panic!("{applied}"));

    // What AWS says, asked directly.
    let identity = project.identity("dev");
    let elb_name = format!("dev-ingress-{}", &identity[..8]);
    let (dns_name, zone, vpc) = rt.block_on(async {
        let elbs = aws.elb.describe_load_balancers().load_balancer_names(&elb_name).send().await.unwrap();
        let elb = &elbs.load_balancer_descriptions()[0];
        let vpc = aws.vpcs_of("dev").await.remove(0);
        // The emulator gives classic load balancers no canonical hosted zone (AWS always does):
        // the output is left out when AWS says none.
        (elb.dns_name().unwrap().to_owned(), elb.canonical_hosted_zone_name_id().map(str::to_owned), vpc)
    });
    let bare = project.kstack(&moto).args(["output", "dev", "load_balancers.ingress.dns_name"]).output().unwrap();
    assert!(bare.status.success());
    assert_eq!(String::from_utf8_lossy(&bare.stdout), format!("{dns_name}\n"), "one output is the bare value");

    let all = project.kstack(&moto).args(["output", "dev"]).output().unwrap();
    let text = String::from_utf8_lossy(&all.stdout).into_owned();
    assert_eq!(text, outputs_shown, "apply ends with the same outputs");
    let mut known = vec![(dns_name.as_str(), "<dns name>"), (identity.as_str(), "<identity>"), (&identity[..8], "<id8>"), (ami.as_str(), "<ami>")];
    known.extend(zone.as_deref().map(|zone| (zone, "<zone>")));
    insta::assert_snapshot!("outputs_text", redacted(&text, &known));

    let document = json(&project.kstack(&moto).args(["output", "dev", "--json"]).output().unwrap());
    assert_eq!(document["format_version"], 1);
    assert_eq!(document["outputs"]["vpc_id"], vpc.as_str());
    assert_eq!(document["outputs"]["load_balancers"]["ingress"]["hosted_zone_id"].as_str(), zone.as_deref());
    assert_eq!(document["outputs"]["node_groups"]["workers"]["ami"], ami.as_str());
    insta::assert_snapshot!("outputs_json", redacted(&format!("{document:#}"), &known));

    let group = project.kstack(&moto).args(["output", "dev", "node_groups.workers", "--json"]).output().unwrap();
    assert_eq!(json(&group)["auto_scaling_group"], format!("dev-workers-{}", &identity[..8]));

    // A name that is not an output is bad input, with the nearest name.
    let wrong = project.kstack(&moto).args(["output", "dev", "load_balancer.ingress"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("load_balancers.ingress"), "{}", String::from_utf8_lossy(&wrong.stderr));
}
