//! `--target` and `--replace` through the binary on the emulator: a targeted plan covers its
//! targets and what they depend on, a saved one carries its scope to `apply FILE`, the rest of
//! the model waits for the next full plan; a replacement on request; typos refused, all at once.

use kstack_testkit::{json, plan_changes, said, Emulated, Project};

#[test]
fn a_targeted_apply_changes_only_its_target_and_a_replacement_is_made_on_request() {
    let Emulated { moto, rt: _, aws: _, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    project.edit("environments/dev.yaml", "    instance_type: m5.large\n", "    instance_type: m5.xlarge\n");
    project.edit("environments/dev.yaml", "    instance_type: t3.medium\n", "    instance_type: t3.large\n");
    let full = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(plan_changes(&full), ["update launch_template.ingress", "update launch_template.workers"]);

    // Typos are refused before anything is planned, every one of them.
    let typo = project.kstack(&moto).args(["plan", "dev", "--target", "launch_template.worker", "--replace", "elb.ingres"]).output().unwrap();
    assert_eq!(typo.status.code(), Some(2), "{}", said(&typo));
    let text = said(&typo);
    assert!(text.contains("--target launch_template.worker: no resource") && text.contains("did you mean `launch_template.workers`?"), "{text}");
    assert!(text.contains("--replace elb.ingres: no resource") && text.contains("did you mean `elb.ingress`?"), "{text}");

    let out = project.path().join("workers.plan.json");
    let targeted = project.kstack(&moto).args(["plan", "dev", "--target", "launch_template.workers", "--out"]).arg(&out).output().unwrap();
    assert!(targeted.status.success(), "{}", said(&targeted));
    let text = said(&targeted);
    assert!(text.contains("resource targeting is in effect: the plan covers only launch_template.workers"), "{text}");
    assert!(text.contains("launch_template.workers will be updated in place") && !text.contains("launch_template.ingress"), "{text}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(saved["plan"]["scope"]["targets"], serde_json::json!(["launch_template.workers"]), "the saved plan carries its scope");
    let covered: Vec<&str> = saved["plan"]["actions"].as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap()).collect();
    assert!(covered.contains(&"security_group.workers") && covered.contains(&"vpc.main"), "what it depends on is covered: {covered:?}");
    assert!(!covered.contains(&"asg.workers"), "what depends on it is not: {covered:?}");

    let refused = project.kstack(&moto).arg("apply").arg(&out).args(["--target", "vpc.main"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", said(&refused));
    let applied = project.kstack(&moto).arg("apply").arg(&out).output().unwrap();
    assert!(applied.status.success(), "{}", said(&applied));
    assert!(said(&applied).contains("the changes applied may be incomplete (--target)"), "{}", said(&applied));
    let rest = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(plan_changes(&rest), ["update launch_template.ingress"], "the targeted change is made, the other waits");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();

    // Nothing forces it, yet a person asks for it.
    let replace = ["--replace", "security_group_rules.ingress-elb"];
    let planned = project.kstack(&moto).arg("plan").arg("dev").args(replace).output().unwrap();
    assert!(said(&planned).contains("security_group_rules.ingress-elb will be replaced, as requested"), "{}", said(&planned));
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).args(replace).output().unwrap());
    assert_eq!(plan_changes(&plan), ["replace security_group_rules.ingress-elb"]);
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).args(replace).assert().success();
    let after = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&after).is_empty(), "{:?}", plan_changes(&after));
}

/// `protect:` refuses a plan that would destroy or replace what it covers, naming each and the
/// flags that allow it; a destroy is refused the same way, from state, with nothing deleted.
#[test]
fn protected_resources_are_never_destroyed_or_replaced_unless_the_command_names_them() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.edit("environments/dev.yaml", "extends: base.yaml\n", "extends: base.yaml\nprotect: [vpc.main, elb.ingres]\n");
    let typo = project.kstack(&moto).args(["validate", "dev"]).output().unwrap();
    assert_eq!(typo.status.code(), Some(2), "{}", said(&typo));
    assert!(said(&typo).contains("dev.yaml:3:21") && said(&typo).contains("did you mean `elb.ingress`?"), "{}", said(&typo));
    project.edit("environments/dev.yaml", "elb.ingres]", "elb.ingress]");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();

    // A new VPC range replaces the VPC (and everything in it).
    project.edit("environments/dev.yaml", "  vpc_cidr: 10.20.0.0/16\n", "  vpc_cidr: 10.30.0.0/16\n");
    let refused = project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", said(&refused));
    let text = said(&refused);
    assert!(
        text.contains("`dev` protects what this plan would destroy or replace; nothing was changed") && text.contains("vpc.main would be replaced"),
        "{text}"
    );
    assert!(text.contains("--unprotect vpc.main"), "{text}");
    let allowed = project.kstack(&moto).args(["plan", "dev", "--unprotect", "vpc.main"]).output().unwrap();
    assert!(allowed.status.success() && said(&allowed).contains("vpc.main must be replaced"), "{}", said(&allowed));
    project.edit("environments/dev.yaml", "  vpc_cidr: 10.30.0.0/16\n", "  vpc_cidr: 10.20.0.0/16\n");

    // A destroy works from state and the environment's `protect:`.
    let refused = project.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", said(&refused));
    assert!(
        said(&refused).contains("elb.ingress would be destroyed") && said(&refused).contains("vpc.main would be destroyed"),
        "{}",
        said(&refused)
    );
    assert_eq!(rt.block_on(aws.vpcs_of("dev")).len(), 1, "nothing was deleted");
    // A file broken elsewhere still protects; one whose `protect:` cannot be read protects all.
    project.edit("environments/dev.yaml", "extends: base.yaml\n", "extends: base.yaml\nno_such_key: 1\n");
    let broken = project.kstack(&moto).args(["destroy", "dev", "--auto-approve", "--unprotect", "vpc.main"]).output().unwrap();
    assert_eq!(broken.status.code(), Some(1), "{}", said(&broken));
    assert!(said(&broken).contains("elb.ingress would be destroyed") && !said(&broken).contains("vpc.main would be"), "{}", said(&broken));
    project.edit("environments/dev.yaml", "protect: [vpc.main, elb.ingress]\n", "protect: 5\n");
    let unreadable =
        project.kstack(&moto).args(["destroy", "dev", "--auto-approve", "--unprotect", "vpc.main", "--unprotect", "elb.ingress"]).output().unwrap();
    assert_eq!(unreadable.status.code(), Some(1), "{}", said(&unreadable));
    assert!(said(&unreadable).contains("internet_gateway.main would be destroyed"), "everything is protected: {}", said(&unreadable));
    assert_eq!(rt.block_on(aws.vpcs_of("dev")).len(), 1, "nothing was deleted");
    project.edit("environments/dev.yaml", "no_such_key: 1\nprotect: 5\n", "protect: [vpc.main, elb.ingress]\n");
    project.kstack(&moto).args(["destroy", "dev", "--auto-approve", "--unprotect", "vpc.main", "--unprotect", "elb.ingress"]).assert().success();
    assert!(rt.block_on(aws.vpcs_of("dev")).is_empty());
}
