//! Every tag key kstack writes on AWS resources, in one place: together they are the
//! contract between kstack and what it finds in an account (refresh, adoption, bakes, rolls,
//! reboots). The identity rules that use them live in `identity`; names AWS requires to be
//! unique are made there too. Knows nothing else.

/// The environment a resource belongs to: what refresh filters on.
pub const TAG_ENVIRONMENT: &str = "kstack:environment";
/// The resource's address in the environment's model, so state can be rebuilt from AWS.
pub const TAG_ADDRESS: &str = "kstack:address";
/// The environment's identity (see `identity`): no other environment, project or region has it.
pub const TAG_IDENTITY: &str = "kstack:id";
/// The project's name (`kstack.yaml`), where it has one: for people telling environments of
/// the same name apart (ownership is the identity's alone).
pub const TAG_PROJECT: &str = "kstack:project";
/// An instance's daily reboot time, `HH:MM` in its reboot window's time zone (`kstack reboots`).
pub const TAG_REBOOT_TIME: &str = "kstack:reboot-time";
/// On an auto scaling group whose roll stopped with its processes suspended: what it holds
/// and how to finish it. Status, not settings: refresh leaves it out of what plans compare.
pub const TAG_UNFINISHED_ROLL: &str = "kstack:roll";

/// On a baked AMI: the name of its image definition.
pub const TAG_IMAGE: &str = "kstack:image";
/// On a baked AMI: the roles baked into it, comma-separated.
pub const TAG_ROLES: &str = "kstack:roles";
/// On a baked AMI: the AMI it was built from.
pub const TAG_SOURCE_AMI: &str = "kstack:source-ami";
/// On a baked AMI: the kstack version that baked it.
pub const TAG_VERSION: &str = "kstack:version";
/// On a copy of a baked AMI in another region: the AMI it was copied from.
pub const TAG_COPIED_FROM: &str = "kstack:copied-from";
/// On the snapshots of an AMI being retired (`keep:`), before it is deregistered: a retire cut
/// off between deregistering it and deleting them leaves them for the next to delete.
pub const TAG_RETIRED: &str = "kstack:retired";
/// On a bake's temporary resources and the AMI it makes: the bake's id.
pub const TAG_BAKE: &str = "kstack:bake";
/// The content hash of the image definition and its roles: an AMI with it is reused.
pub const TAG_HASH: &str = "kstack:bake-hash";
/// `user@host pid N` of the running bake, for people.
pub const TAG_BAKE_HOLDER: &str = "kstack:bake-holder";
/// `pid-scope/pid` of the running bake (see `state::lock::pid_scope`), to tell whether its
/// process still lives.
pub const TAG_BAKE_PROCESS: &str = "kstack:bake-process";
/// When the bake started (RFC 3339, UTC, EC2's time): of two bakes of the same content, the
/// older goes on.
pub const TAG_BAKE_STARTED: &str = "kstack:bake-started";
/// When the holder's lease runs out (RFC 3339, UTC, EC2's time), unless renewed.
pub const TAG_BAKE_EXPIRES: &str = "kstack:bake-expires";
/// On a builder kept with `--keep-on-error`: left for the user, removed only by `--cleanup`.
pub const TAG_BAKE_KEPT: &str = "kstack:bake-kept";
