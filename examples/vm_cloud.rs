//! Serves the AWS emulator's instances in one loopback subnet with VMs, as the VM tests do
//! (`kstack_testkit::vm_cloud`), for the demo: `vm_cloud <endpoint> <address prefix>
//! <public key file> <endpoint file>`. It writes to the endpoint file the address of a proxy
//! to the emulator that answers GetConsoleOutput with each instance's VM console, as EC2 does
//! (the emulator never shows one). It prints what it does, and powers its VMs off when its
//! standard input closes.

use std::io::Read;

use kstack_testkit::faults::FaultProxy;
use kstack_testkit::vm_cloud;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, prefix, key_file, endpoint_file] = args.as_slice() else {
        eprintln!("usage: vm_cloud <emulator endpoint> <address prefix, e.g. 127.68.1.> <public key file> <endpoint file>");
        std::process::exit(2);
    };
    let public_key = std::fs::read_to_string(key_file).unwrap_or_else(|e| panic!("{key_file}: {e}"));
    let cloud = vm_cloud::VmCloud::watch(endpoint, prefix, public_key.trim());
    let proxy = FaultProxy::start(endpoint, 1, 0);
    proxy.set_console_source(Some(std::sync::Arc::new(cloud.consoles())));
    std::fs::write(endpoint_file, &proxy.endpoint).unwrap_or_else(|e| panic!("{endpoint_file}: {e}"));
    let (closed, stdin_closed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed.send(());
    });
    let mut shown = 0;
    while stdin_closed.recv_timeout(std::time::Duration::from_millis(500)).is_err() {
        let events = cloud.events();
        for event in &events[shown..] {
            println!("vm: {event}");
        }
        shown = events.len();
    }
    // Dropping the cloud powers its VMs off.
}
