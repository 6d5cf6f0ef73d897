//! The integration tests, one module per area, in one test binary: each binary links the AWS
//! SDK, so one link instead of one per area. The harness they share (emulator, test nodes,
//! VMs, fault proxy) is `crates/kstack-testkit`. Run one area with a name filter, e.g.
//! `cargo test --test it reliability::`.

mod accounts;
mod bake;
mod cloud;
mod dns;
mod existing_vpc;
mod hostile_input;
mod import;
mod loopback_only;
mod outputs;
mod provision;
mod reboots;
mod reliability;
mod roles;
mod roll;
mod scope;
mod shared_account;
mod ssh;
mod stack_roles;
mod state_backend;
mod state_surgery;
mod terraform;
mod validate;
mod vm;
