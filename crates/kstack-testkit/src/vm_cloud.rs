//! The emulator's instances served by VMs, as EC2 serves them: a thread watches the
//! emulator's instances in one loopback subnet and, for each that runs, launches a VM at its
//! address from its image's disk with its user data (and, when it names a key pair, the test's
//! public key, as EC2 installs the key pair's). A stopped or terminated instance's VM is
//! powered off; a stopped builder's disk becomes the content of the image kstack then creates
//! from it, and instances launched from that image boot from a copy of it. Other AMIs (the
//! source a bake builds from, images baked before the watch began) boot the base disk.
//!
//! VMs run one at a time (see `vm.rs`), so a test launches one instance at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName, InstanceStateName};

use super::vm::{Disk, Vm};

#[derive(Default)]
struct Served {
    /// Running instances' VMs, by instance id.
    vms: BTreeMap<String, Vm>,
    /// Instances whose VM is gone (stopped, terminated): never served again.
    done: BTreeSet<String>,
    /// Disks of stopped builders not yet taken by an image.
    builder_disks: Vec<Disk>,
    /// Baked AMIs there were before the watch began: no builder here made them.
    earlier_images: Option<BTreeSet<String>>,
    /// Each baked AMI's content.
    images: BTreeMap<String, Disk>,
    /// What happened, for the test's output.
    events: Vec<String>,
}

pub struct VmCloud {
    served: Arc<Mutex<Served>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl VmCloud {
    /// Serves the instances whose private address starts with `subnet_prefix` (e.g.
    /// `127.42.3.`), in the emulator at `endpoint`, region eu-west-1.
    pub fn watch(endpoint: &str, subnet_prefix: &str, public_key: &str) -> VmCloud {
        let served = Arc::new(Mutex::new(Served::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (endpoint, prefix, key) = (endpoint.to_owned(), subnet_prefix.to_owned(), public_key.to_owned());
        let watcher = {
            let (served, stop) = (Arc::clone(&served), Arc::clone(&stop));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let ec2 = rt.block_on(client(&endpoint));
                while !stop.load(Ordering::SeqCst) {
                    rt.block_on(serve_once(&ec2, &prefix, &key, &served));
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        };
        VmCloud { served, stop, watcher: Some(watcher) }
    }

    /// Runs `f` with the VM serving `instance_id`, once one does (waiting up to `timeout`).
    pub fn with_vm<T>(&self, instance_id: &str, timeout: Duration, f: impl FnOnce(&Vm) -> T) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            {
                let served = self.served.lock().unwrap();
                if let Some(vm) = served.vms.get(instance_id) {
                    return f(vm);
                }
            }
            assert!(std::time::Instant::now() < deadline, "no VM served {instance_id} within {timeout:?}: {:?}", self.events());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The AMIs whose content a builder's disk is.
    pub fn images(&self) -> Vec<String> {
        self.served.lock().unwrap().images.keys().cloned().collect()
    }

    /// The content of `ami`, which a builder's disk became.
    pub fn image_disk(&self, ami: &str) -> Disk {
        let served = self.served.lock().unwrap();
        served.images.get(ami).cloned().unwrap_or_else(|| panic!("no builder's disk became {ami}: {:#?}", served.events))
    }

    /// Each instance's console output while its VM runs, as EC2's GetConsoleOutput shows it.
    pub fn consoles(&self) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let served = Arc::clone(&self.served);
        move |instance: &str| served.lock().unwrap().vms.get(instance).map(Vm::console)
    }

    pub fn events(&self) -> Vec<String> {
        self.served.lock().unwrap().events.clone()
    }
}

impl Drop for VmCloud {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        // The VMs power off as they drop, one after the other.
        let vms = std::mem::take(&mut self.served.lock().unwrap().vms);
        drop(vms);
    }
}

async fn client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// One look at the emulator: guests that rebooted boot again through GRUB, new images take
/// stopped builders' disks, running instances get VMs, and stopped or terminated ones lose
/// theirs.
async fn serve_once(ec2: &aws_sdk_ec2::Client, prefix: &str, public_key: &str, served: &Mutex<Served>) {
    let rebooted: Vec<String> = served.lock().unwrap().vms.iter().filter(|(_, vm)| vm.rebooted()).map(|(id, _)| id.clone()).collect();
    for id in rebooted {
        let Some(mut vm) = served.lock().unwrap().vms.remove(&id) else { continue };
        let grub = vm.boot_through_grub();
        let mut served = served.lock().unwrap();
        served.events.push(format!("{id} rebooted: booted again in {:.1} s with GRUB's `{grub}`", vm.boot_time.as_secs_f64()));
        served.vms.insert(id, vm);
    }
    let Ok(baked) = ec2.describe_images().owners("self").filters(Filter::builder().name("tag-key").values("kstack:bake-hash").build()).send().await
    else {
        return;
    };
    {
        let mut served = served.lock().unwrap();
        let served = &mut *served;
        let earlier = served.earlier_images.get_or_insert_with(|| baked.images().iter().filter_map(|i| i.image_id().map(str::to_owned)).collect());
        for image in baked.images() {
            let id = image.image_id().unwrap_or_default().to_owned();
            if !earlier.contains(&id) && !served.images.contains_key(&id) && !served.builder_disks.is_empty() {
                let disk = served.builder_disks.remove(0);
                served.events.push(format!("image {id} is the builder's disk"));
                served.images.insert(id, disk);
            }
        }
    }
    let baked: BTreeSet<String> = baked.images().iter().filter_map(|i| i.image_id().map(str::to_owned)).collect();
    let Ok(described) = ec2.describe_instances().send().await else { return };
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let (Some(id), Some(address)) = (instance.instance_id(), instance.private_ip_address()) else { continue };
        if !address.starts_with(prefix) {
            continue;
        }
        let state = instance.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Pending);
        let builder = instance.tags().iter().any(|t| t.key() == Some("kstack:bake"));
        if state == InstanceStateName::Running {
            let image = instance.image_id().unwrap_or_default();
            let disk = {
                let served = served.lock().unwrap();
                if served.vms.contains_key(id) || served.done.contains(id) {
                    continue;
                }
                let earlier = served.earlier_images.as_ref().is_some_and(|e| e.contains(image));
                match served.images.get(image) {
                    Some(disk) => disk.clone(),
                    // A baked image whose builder disk is not taken yet: next time.
                    None if baked.contains(image) && !earlier => continue,
                    // Not baked here: the base disk stands in for it.
                    None => Disk::base(),
                }
            };
            let Ok(attribute) = ec2.describe_instance_attribute().instance_id(id).attribute(InstanceAttributeName::UserData).send().await else {
                continue;
            };
            let user_data = attribute
                .user_data()
                .and_then(|v| v.value())
                .map(|data| String::from_utf8(aws_smithy_types::base64::decode(data).unwrap()).unwrap())
                .unwrap_or_default();
            let keys = if instance.key_name().is_some() { vec![public_key.to_owned()] } else { Vec::new() };
            let vm = Vm::launch(&disk, address, id, &user_data, &keys);
            let mut served = served.lock().unwrap();
            served.events.push(format!("{id} ({image}) runs on a VM at {address}, booted in {:.1} s", vm.boot_time.as_secs_f64()));
            served.vms.insert(id.to_owned(), vm);
        } else if !matches!(state, InstanceStateName::Pending) {
            let vm = {
                let mut served = served.lock().unwrap();
                served.done.insert(id.to_owned());
                served.vms.remove(id)
            };
            let Some(vm) = vm else { continue };
            if builder {
                let disk = vm.into_image();
                let mut served = served.lock().unwrap();
                served.events.push(format!("builder {id} stopped: its disk is kept"));
                served.builder_disks.push(disk);
            } else {
                let took = vm.power_off();
                served.lock().unwrap().events.push(format!("{id} is {state:?}: its VM powered off in {:.1} s", took.as_secs_f64()));
            }
        }
    }
}
