//! Who is running a bake, written in tags on its temporary resources at creation and renewed
//! while it runs. A later bake and `kstack bake --cleanup` remove only what a dead bake left
//! (its process is gone from this machine, or its lease ran out on another), and a second
//! bake of the same content is refused while the first one runs.
//!
//! Lease times are EC2's, never a machine's own: the holder writes its lease's end as EC2's
//! time (the `Date` of its latest EC2 reply, see `aws::clock`) plus the lease, and a judge
//! compares it with EC2's time from the reply that brought the tags. Both read one clock, so
//! machines whose clocks disagree by minutes never take each other's live builder for dead.

use crate::naming::{TAG_BAKE, TAG_BAKE_EXPIRES, TAG_BAKE_HOLDER, TAG_BAKE_KEPT, TAG_BAKE_PROCESS, TAG_BAKE_STARTED, TAG_HASH, TAG_IMAGE};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::Tag;

use crate::state::{lock, LockInfo};
use crate::state::{parse_rfc3339, rfc3339};

/// Long enough to ride out a slow API, short enough that another machine's crashed bake is
/// cleaned up by the next bake a few minutes later.
pub(super) const LEASE: Duration = Duration::from_secs(180);
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(60);

/// The tags of a bake this process starts now, `aws_now` by EC2's clock.
pub(super) fn ours(aws_now: SystemTime) -> Vec<(String, String)> {
    let me = LockInfo::ours("kstack bake");
    let mut tags = vec![
        (TAG_BAKE_HOLDER.to_owned(), format!("{}@{} pid {}", me.holder, me.host, me.pid)),
        (TAG_BAKE_STARTED.to_owned(), rfc3339(aws_now)),
        renewed(aws_now),
    ];
    if let Some(scope) = &me.pid_scope {
        tags.push((TAG_BAKE_PROCESS.to_owned(), format!("{scope}/{}", me.pid)));
    }
    tags
}

/// The lease tag as renewed at `aws_now`, by EC2's clock.
pub(super) fn renewed(aws_now: SystemTime) -> (String, String) {
    (TAG_BAKE_EXPIRES.to_owned(), rfc3339(aws_now + LEASE))
}

/// One bake's temporary resources as found by tag, and whether its bake still runs.
#[derive(Debug, Clone)]
pub(super) struct Leftover {
    pub bake_id: String,
    pub image: String,
    pub hash: String,
    pub started: String,
    pub standing: Standing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Standing {
    /// Its bake runs: `holder` renews the lease until `expires`.
    Running { holder: String, expires: String },
    /// Its bake is gone: the process ended on this machine, or the lease ran out.
    Abandoned { holder: String },
    /// Kept with `--keep-on-error` for debugging.
    Kept,
}

impl Leftover {
    /// Reads a bake's tags, as EC2 returned them at `aws_now` by its clock (`None`: unknown,
    /// so no lease is judged run out); `None` for resources without a `kstack:bake` tag.
    pub(super) fn from_tags(tags: &[Tag], aws_now: Option<SystemTime>) -> Option<Leftover> {
        let tag = |key: &str| tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned);
        let bake_id = tag(TAG_BAKE)?;
        let holder = tag(TAG_BAKE_HOLDER).unwrap_or_else(|| String::from("an unknown holder"));
        let standing = match (tag(TAG_BAKE_KEPT), tag(TAG_BAKE_EXPIRES)) {
            (Some(_), _) => Standing::Kept,
            (None, Some(expires)) if !is_gone(tag(TAG_BAKE_PROCESS).as_deref(), &expires, aws_now) => Standing::Running { holder, expires },
            // No lease: left by a kstack from before leases.
            (None, _) => Standing::Abandoned { holder },
        };
        Some(Leftover {
            bake_id,
            image: tag(TAG_IMAGE).unwrap_or_default(),
            hash: tag(TAG_HASH).unwrap_or_default(),
            started: tag(TAG_BAKE_STARTED).unwrap_or_default(),
            standing,
        })
    }
}

/// Whether a bake is certainly gone: its lease ran out by EC2's clock, or its process
/// (`pid-scope/pid`) has ended, the same judgement as for an environment's lock.
fn is_gone(process: Option<&str>, expires: &str, aws_now: Option<SystemTime>) -> bool {
    let ended = || {
        let (scope, pid) = process?.rsplit_once('/')?;
        Some(lock::has_ended(scope, pid.parse().ok()?))
    };
    let lapsed = parse_rfc3339(expires).zip(aws_now).is_some_and(|(expires, now)| now > expires);
    lapsed || ended() == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()
    }

    #[test]
    fn a_bake_is_running_while_its_process_lives_and_its_lease_holds() {
        let aws_now = SystemTime::now();
        let ours: Vec<(String, String)> = ours(aws_now);
        let value = |key: &str| ours.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap();
        let (holder, expires, process) = (value(TAG_BAKE_HOLDER), value(TAG_BAKE_EXPIRES), value(TAG_BAKE_PROCESS));
        let with = |pairs: &[(&str, &str)]| Leftover::from_tags(&tags(pairs), Some(aws_now)).unwrap().standing;

        let live = with(&[(TAG_BAKE, "b1"), (TAG_BAKE_HOLDER, &holder), (TAG_BAKE_EXPIRES, &expires), (TAG_BAKE_PROCESS, &process)]);
        assert!(matches!(live, Standing::Running { .. }), "{live:?}");

        // No process has pid 0x7fff_fff0 (above Linux's pid_max).
        let (scope, _) = process.rsplit_once('/').unwrap();
        let ended = format!("{scope}/{}", 0x7fff_fff0_u32);
        let dead = with(&[(TAG_BAKE, "b2"), (TAG_BAKE_HOLDER, &holder), (TAG_BAKE_EXPIRES, &expires), (TAG_BAKE_PROCESS, &ended)]);
        assert_eq!(dead, Standing::Abandoned { holder: holder.clone() });

        // Another pid namespace (a container on this machine): only its lease counts.
        let (boot, _) = scope.split_once('/').unwrap();
        let elsewhere = format!("{boot}/pid:[1]/{}", 0x7fff_fff0_u32);
        let contained = with(&[(TAG_BAKE, "b3"), (TAG_BAKE_HOLDER, &holder), (TAG_BAKE_EXPIRES, &expires), (TAG_BAKE_PROCESS, &elsewhere)]);
        assert!(matches!(contained, Standing::Running { .. }), "{contained:?}");
        let lapsed =
            with(&[(TAG_BAKE, "b4"), (TAG_BAKE_HOLDER, &holder), (TAG_BAKE_EXPIRES, "2020-01-01T00:00:00Z"), (TAG_BAKE_PROCESS, &elsewhere)]);
        assert_eq!(lapsed, Standing::Abandoned { holder: holder.clone() });

        let kept = with(&[(TAG_BAKE, "b5"), (TAG_BAKE_HOLDER, &holder), (TAG_BAKE_KEPT, "true")]);
        assert_eq!(kept, Standing::Kept);
        assert_eq!(with(&[(TAG_BAKE, "b6")]), Standing::Abandoned { holder: String::from("an unknown holder") }, "no lease");
        assert!(Leftover::from_tags(&tags(&[("Name", "x")]), Some(aws_now)).is_none());
    }

    #[test]
    fn a_lease_is_judged_on_ec2s_clock_whatever_the_machines_clocks_say() {
        // EC2's clock says 2001 while this machine's says otherwise by decades: the holder's
        // lease, written in EC2's time, holds until EC2's clock passes it.
        let aws_then = parse_rfc3339("2001-09-09T01:46:40Z").unwrap();
        let tags_at_start = ours(aws_then);
        let expires = tags_at_start.iter().find(|(k, _)| k == TAG_BAKE_EXPIRES).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(expires, "2001-09-09T01:49:40Z", "EC2's time plus the lease");
        let elsewhere = format!("00000000-0000-0000-0000-000000000000/pid:[1]/{}", 0x7fff_fff0_u32);
        let judged = |aws_now: Option<SystemTime>| {
            Leftover::from_tags(&tags(&[(TAG_BAKE, "b1"), (TAG_BAKE_EXPIRES, &expires), (TAG_BAKE_PROCESS, &elsewhere)]), aws_now).unwrap().standing
        };
        assert!(matches!(judged(Some(aws_then + Duration::from_secs(60))), Standing::Running { .. }));
        assert!(matches!(judged(Some(aws_then + LEASE)), Standing::Running { .. }));
        assert!(matches!(judged(Some(aws_then + LEASE + Duration::from_secs(1))), Standing::Abandoned { .. }));
        // Without EC2's time nothing is taken for dead by its lease.
        assert!(matches!(judged(None), Standing::Running { .. }));
    }
}
