//! `scripts/loopback-only`, which the suite and CI's demo run in, catches traffic meant for
//! addresses outside loopback, name lookups included, even when the program ignores its failure.

use std::process::Command;

use kstack_testkit::{require, Need};

fn loopback_only(script: &str) -> std::process::Output {
    require(Need::Root);
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/loopback-only")).args(["bash", "-c", script]).output().unwrap()
}

/// Runs `script`, which exits 0, and returns what loopback-only said when it failed the run.
fn caught(script: &str) -> String {
    let output = loopback_only(script);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bash tried to reach addresses outside loopback"), "{stderr}");
    stderr
}

#[test]
fn a_command_that_stays_on_loopback_keeps_its_exit_status() {
    let fine = loopback_only("exec 3<>/dev/tcp/127.0.0.1/1 || true");
    assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    assert_eq!(loopback_only("exit 7").status.code(), Some(7));
}

#[test]
fn a_connection_attempt_outside_loopback_fails_the_run_even_when_shrugged_off() {
    // 192.0.2.1 is a documentation address; in the namespace it has no route, so nothing is sent.
    let stderr = caught("(exec 3<>/dev/tcp/192.0.2.1/80) 2>/dev/null; exit 0");
    assert!(stderr.contains("(1 IPv4 and 0 IPv6 packets found no route)"), "{stderr}");
}

#[test]
fn a_name_lookup_fails_the_run_whatever_resolver_the_host_has() {
    caught("getent hosts kstack-test.invalid; exit 0");
}
