//! Applies environments of 5 and 50 node groups to the AWS emulator, then prints the apply
//! time and what one refresh costs in API calls. The goal: a small constant per resource kind,
//! independent of the number of groups. Figures, not assertions.
//!
//! Run with `cargo bench --bench refresh` (needs `scripts/setup`).

use std::fmt::Write;
use std::time::Instant;

use kstack_testkit::{json, runtime, Moto, Project};

fn environment(groups: usize) -> String {
    let mut text = String::from("extends: base.yaml\nnetwork:\n  nat_gateways: single\nnode_groups:\n");
    for index in 1..=groups {
        let _ = writeln!(text, "  pool-{index:02}:\n    min: 1\n    max: 4\n    instance_type: m5.large\n    security_groups: [workers]");
    }
    text
}

fn main() {
    println!("{:>7} {:>9} {:>8} {:>13} {:>10}", "groups", "resources", "apply s", "refresh calls", "refresh s");
    for groups in [5, 50] {
        let moto = Moto::start();
        let project = Project::copy();
        let rt = runtime();
        rt.block_on(async { moto.clients().await.seed_image("node").await });
        let name = format!("bench{groups}");
        project.write(&format!("environments/{name}.yaml"), &environment(groups));

        let started = Instant::now();
        let applied = project.kstack(&moto).args(["apply", &name, "--auto-approve"]).output().unwrap();
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        let apply_seconds = started.elapsed().as_secs_f64();

        let plan = json(&project.kstack(&moto).args(["plan", &name, "--json"]).output().unwrap());
        let refresh = &plan["refresh"];
        println!(
            "{:>7} {:>9} {:>8.1} {:>13} {:>10.3}",
            groups + 3,
            refresh["resources"],
            apply_seconds,
            refresh["api_calls"],
            refresh["seconds"].as_f64().unwrap_or_default()
        );
        if groups == 50 {
            println!("\nrefresh calls by operation ({} groups):", groups + 3);
            for (operation, count) in refresh["by_operation"].as_object().unwrap() {
                println!("  {operation:<50} {count}");
            }
        }
    }
}
