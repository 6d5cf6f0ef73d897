//! A local apt repository of stand-in packages with the real names and versions of what the
//! stack roles install from Ubuntu's, Docker's and Kubernetes' archives (none reachable here),
//! plus a newer docker-engine, so a version pin has something to resist. Built with
//! `dpkg-deb` into a container node's root before it boots; the package module, pins and
//! holds then run for real against it. Services the packages ship are stand-ins
//! (`sleep infinity`), enough for systemd to start, enable and restart them.

use std::path::Path;
use std::process::Command;

/// Where the repository is inside the node.
pub const REPOSITORY: &str = "/srv/kstack-test-repo";

/// The apt source line of the repository, for the roles' `*_apt_source` variables.
pub fn source() -> String {
    format!("deb [trusted=yes] file:{REPOSITORY} ./")
}

fn service(description: &str) -> String {
    format!(
        "[Unit]\nDescription={description} (test stand-in)\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// A package's name, version and the files it installs.
type StandIn = (&'static str, &'static str, Vec<(&'static str, String)>);

/// The docker command: `docker info` reports what /etc/docker/daemon.json asks of the daemon,
/// as the real one would once running with it.
const DOCKER: &str = r#"#!/bin/sh
# docker stand-in
if [ "$1" = info ]; then
    settings=/etc/docker/daemon.json
    echo " Storage Driver: $(sed -n 's/.*"storage-driver": *"\([^"]*\)".*/\1/p' $settings)"
    echo " Live Restore Enabled: $(grep -q '"live-restore": *true' $settings && echo true || echo false)"
fi
exit 0
"#;

fn packages() -> Vec<StandIn> {
    let tool = |name: &str| format!("#!/bin/sh\n# {name} stand-in\nexit 0\n");
    vec![
        ("linux-generic-hwe-16.04", "4.15.0.142.137", vec![]),
        // Xenial ships chrony 2.1.1, but the test node's libc (Debian 12) `Breaks: chrony (<< 4.2-3~)`;
        // the role does not pin chrony, so the stand-in takes a version the node accepts.
        ("chrony", "4.2-3", vec![("lib/systemd/system/chrony.service", service("chrony"))]),
        ("aufs-tools", "1:3.2+20130722-1.1ubuntu1", vec![]),
        (
            "docker-engine",
            "1.12.6-0~ubuntu-xenial",
            vec![("lib/systemd/system/docker.service", service("Docker")), ("usr/bin/docker", DOCKER.to_owned())],
        ),
        (
            "docker-engine",
            "17.05.0~ce-0~ubuntu-xenial",
            vec![("lib/systemd/system/docker.service", service("Docker")), ("usr/bin/docker", DOCKER.to_owned())],
        ),
        (
            "monit",
            "1:5.16-2",
            vec![
                ("lib/systemd/system/monit.service", service("monit")),
                ("usr/bin/monit", tool("monit")),
                // The packaged control file's lines the monit role works with.
                ("etc/monit/monitrc", String::from("  set daemon 120            # check services at 2-minute intervals\n  set log /var/log/monit.log\n  include /etc/monit/conf.d/*\n")),
            ],
        ),
        ("unattended-upgrades", "0.90ubuntu0.10", vec![]),
        (
            "kubelet",
            "1.9.11-00",
            vec![
                ("lib/systemd/system/kubelet.service", service("kubelet")),
                ("usr/bin/kubelet", String::from("#!/bin/sh\n# kubelet stand-in\necho \"$*\" >/run/kubelet.args\nexec sleep infinity\n")),
            ],
        ),
        ("kubectl", "1.9.11-00", vec![("usr/bin/kubectl", tool("kubectl"))]),
    ]
}

/// Builds the packages and a flat repository index into `repository` (a directory of the
/// node's writable layer).
fn build_repository(repository: &Path) {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(repository).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut index = String::new();
    for (name, version, files) in packages() {
        let root = work.path().join(format!("{name}-{version}"));
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        let control = format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: kstack tests <tests@kstack.invalid>\nDescription: {name} stand-in for kstack's tests\n"
        );
        std::fs::write(root.join("DEBIAN/control"), &control).unwrap();
        for (path, content) in files {
            let target = root.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
            if path.starts_with("usr/bin") {
                Command::new("chmod").arg("755").arg(&target).status().unwrap();
            }
        }
        let file_name = format!("{name}_{}_all.deb", version.replace(':', "%3a"));
        let deb = repository.join(&file_name);
        let built = Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "-b"]).arg(&root).arg(&deb).output().unwrap();
        assert!(built.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&built.stderr));
        let bytes = std::fs::read(&deb).unwrap();
        index.push_str(&control);
        index.push_str(&format!("Filename: ./{file_name}\nSize: {}\nSHA256: {:x}\n\n", bytes.len(), Sha256::digest(&bytes)));
    }
    std::fs::write(repository.join("Packages"), index).unwrap();
}

/// Writes the repository into the node's root before it boots.
pub fn prepare(root: &Path) {
    build_repository(&root.join(REPOSITORY.trim_start_matches('/')));
    // The local repository stands in for the Ubuntu archive of a real AMI.
    std::fs::create_dir_all(root.join("etc/apt")).unwrap();
    std::fs::write(root.join("etc/apt/sources.list"), format!("deb [trusted=yes] file:{REPOSITORY} ./\n")).unwrap();
}
