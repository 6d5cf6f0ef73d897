//! Who is running a bake, written in tags on its temporary resources at creation and renewed
//! while it runs. A later bake and `kstack bake --cleanup` remove only what a dead bake left
//! (its process is gone from this machine, or its lease ran out on another), and a second
//! bake of the same content is refused while the first one runs.

use std::time::Duration;

use aws_sdk_ec2::types::Tag;

use super::{TAG_BAKE, TAG_HASH};
use crate::state::{rfc3339_in, LockInfo};

/// `user@host pid N` of the running bake.
pub const TAG_HOLDER: &str = "kstack:bake-holder";
/// When the holder's lease runs out (RFC 3339, UTC), unless renewed.
pub const TAG_EXPIRES: &str = "kstack:bake-expires";
/// On a builder kept with `--keep-on-error`: left for the user, removed only by `--cleanup`.
pub const TAG_KEPT: &str = "kstack:bake-kept";

/// Long enough to ride out a slow API, short enough that another machine's crashed bake is
/// cleaned up by the next bake a few minutes later.
const LEASE: Duration = Duration::from_secs(180);
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// The holder and lease tags of a bake this process starts now.
pub fn ours() -> [(String, String); 2] {
    let me = LockInfo::ours("kstack bake");
    [
        (TAG_HOLDER.to_owned(), format!("{}@{} pid {}", me.holder, me.host, me.pid)),
        (TAG_EXPIRES.to_owned(), rfc3339_in(LEASE.as_secs())),
    ]
}

/// The lease tag as renewed now.
pub fn renewed() -> (String, String) {
    (TAG_EXPIRES.to_owned(), rfc3339_in(LEASE.as_secs()))
}

/// One bake's temporary resources as found by tag, and whether its bake still runs.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub bake_id: String,
    pub image: String,
    pub hash: String,
    pub standing: Standing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Its bake runs: `holder` renews the lease until `expires`.
    Running { holder: String, expires: String },
    /// Its bake is gone: the process ended on this machine, or the lease ran out.
    Abandoned { holder: String },
    /// Kept with `--keep-on-error` for debugging.
    Kept,
}

impl Leftover {
    /// Reads a bake's tags; `None` for resources without a `kstack:bake` tag.
    pub fn from_tags(tags: &[Tag]) -> Option<Leftover> {
        let tag = |key: &str| tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned);
        let bake_id = tag(TAG_BAKE)?;
        let holder = tag(TAG_HOLDER).unwrap_or_else(|| String::from("an unknown holder"));
        let standing = if tag(TAG_KEPT).is_some() {
            Standing::Kept
        } else {
            let expires = tag(TAG_EXPIRES);
            if is_stale(&holder, expires.as_deref()) {
                Standing::Abandoned { holder }
            } else {
                Standing::Running { holder, expires: expires.unwrap_or_default() }
            }
        };
        Some(Leftover { bake_id, image: tag("kstack:image").unwrap_or_default(), hash: tag(TAG_HASH).unwrap_or_default(), standing })
    }
}

/// A holder `user@host pid N` is gone when it ran here and its process has ended, or when
/// its lease ran out; resources without a lease (left by an older kstack) count as gone.
fn is_stale(holder: &str, expires: Option<&str>) -> bool {
    let Some(expires) = expires else { return true };
    let (user_host, pid) = holder.rsplit_once(" pid ").unwrap_or((holder, "0"));
    let (user, host) = user_host.split_once('@').unwrap_or(("", user_host));
    LockInfo {
        holder: user.to_owned(),
        host: host.to_owned(),
        pid: pid.parse().unwrap_or(0),
        expires: Some(expires.to_owned()),
        ..LockInfo::unknown()
    }
    .is_stale()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()
    }

    #[test]
    fn a_bake_is_running_while_its_process_lives_and_its_lease_holds() {
        let [(_, holder), (_, expires)] = ours();
        let live = Leftover::from_tags(&tags(&[(TAG_BAKE, "b1"), (TAG_HOLDER, &holder), (TAG_EXPIRES, &expires)])).unwrap();
        assert!(matches!(live.standing, Standing::Running { .. }), "{live:?}");

        let me = LockInfo::ours("test");
        // No process of this machine has pid 0x7fff_fff0 (above Linux's pid_max).
        let gone = format!("{}@{} pid {}", me.holder, me.host, 0x7fff_fff0_u32);
        let dead = Leftover::from_tags(&tags(&[(TAG_BAKE, "b2"), (TAG_HOLDER, &gone), (TAG_EXPIRES, &expires)])).unwrap();
        assert_eq!(dead.standing, Standing::Abandoned { holder: gone.clone() });

        let elsewhere = "ci@another-host pid 1";
        let lapsed = Leftover::from_tags(&tags(&[(TAG_BAKE, "b3"), (TAG_HOLDER, elsewhere), (TAG_EXPIRES, "2020-01-01T00:00:00Z")]));
        assert_eq!(lapsed.unwrap().standing, Standing::Abandoned { holder: elsewhere.to_owned() });
        let leased = Leftover::from_tags(&tags(&[(TAG_BAKE, "b4"), (TAG_HOLDER, elsewhere), (TAG_EXPIRES, &expires)]));
        assert!(matches!(leased.unwrap().standing, Standing::Running { .. }), "another machine's bake runs until its lease ends");

        let kept = Leftover::from_tags(&tags(&[(TAG_BAKE, "b5"), (TAG_HOLDER, &gone), (TAG_KEPT, "true")])).unwrap();
        assert_eq!(kept.standing, Standing::Kept);
        assert!(Leftover::from_tags(&tags(&[("Name", "x")])).is_none());
    }
}
