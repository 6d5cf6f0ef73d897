//! Assigning each node a daily reboot minute: random within its group's window (seeded, so
//! `--seed` reproduces it) but never closer than the group's gap to another node of its group,
//! never closer than the zone gap to another node of its availability zone, and never more
//! than `max_down` of a group down at once. Times already assigned are kept where they still
//! fit, so a new node does not reshuffle the fleet.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::model::reboots::{format_minute, MINUTES_PER_DAY};
use crate::model::RebootPolicy;

const ATTEMPTS: u64 = 64;

/// A node to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub group: String,
    pub zone: String,
    /// The minute of day it has now (its tag, or the fallback its guard picks), if any.
    pub current: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub members: Vec<Member>,
    /// Each group's reboot policy.
    pub groups: BTreeMap<String, RebootPolicy>,
    pub zone_gap_minutes: u32,
}

/// Minutes between two times of day, the short way round.
pub fn distance(a: u32, b: u32) -> u32 {
    let d = a.abs_diff(b) % MINUTES_PER_DAY;
    d.min(MINUTES_PER_DAY - d)
}

/// How many reboots `gap` minutes apart fit in a window of `minutes`.
pub fn slots(minutes: u32, gap: u32) -> u32 {
    match gap {
        0 => u32::MAX,
        gap if minutes >= MINUTES_PER_DAY => MINUTES_PER_DAY / gap,
        gap => (minutes - 1) / gap + 1,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("group `{group}` has {nodes} nodes but its {window}-minute window fits only {slots} reboots {gap} minutes apart")]
    GroupTooBig { group: String, nodes: usize, window: u32, slots: u32, gap: u32 },
    #[error("availability zone {zone} has {nodes} nodes but a {window}-minute window fits only {slots} reboots {gap} minutes apart")]
    ZoneTooBig { zone: String, nodes: usize, window: u32, slots: u32, gap: u32 },
    #[error("no schedule satisfies every gap and max_down after {attempts} random attempts; the tightest group, `{group}`, needs {nodes} of its {slots} slots")]
    NotFound { attempts: u64, group: String, nodes: usize, slots: u32 },
    #[error("group `{0}` has nodes but no reboot settings")]
    NoPolicy(String),
}

impl crate::hint::Hint for ScheduleError {
    fn hint(&self) -> Option<String> {
        Some(String::from("widen the window, lower the gaps (group_gap_minutes, zone_gap_minutes) or raise max_down"))
    }
}

/// Minutes that are taken, per group and per zone, as times get assigned.
struct Occupancy<'f> {
    fleet: &'f Fleet,
    /// Per group: minutes closer than the gap to one of its nodes.
    group_blocked: BTreeMap<&'f str, Vec<bool>>,
    /// Per group: how many of its nodes would be down together with a reboot at each minute.
    group_overlap: BTreeMap<&'f str, Vec<u32>>,
    zone_blocked: BTreeMap<&'f str, Vec<bool>>,
}

impl<'f> Occupancy<'f> {
    fn new(fleet: &'f Fleet) -> Occupancy<'f> {
        let day = || vec![false; MINUTES_PER_DAY as usize];
        let mut occupancy = Occupancy { fleet, group_blocked: BTreeMap::new(), group_overlap: BTreeMap::new(), zone_blocked: BTreeMap::new() };
        for member in &fleet.members {
            occupancy.group_blocked.entry(&member.group).or_insert_with(day);
            occupancy.group_overlap.entry(&member.group).or_insert_with(|| vec![0; MINUTES_PER_DAY as usize]);
            occupancy.zone_blocked.entry(&member.zone).or_insert_with(day);
        }
        occupancy
    }

    /// In the window and clear of the group and zone gaps.
    fn fits_apart(&self, member: &Member, policy: &RebootPolicy, minute: u32) -> bool {
        let at = minute as usize;
        policy.window.offset_of(minute).is_some() && !self.group_blocked[member.group.as_str()][at] && !self.zone_blocked[member.zone.as_str()][at]
    }

    fn fits(&self, member: &Member, policy: &RebootPolicy, minute: u32) -> bool {
        // A new reboot overlapping fewer than max_down earlier ones keeps every set of
        // mutually overlapping reboots, and so every moment, at max_down or below.
        self.fits_apart(member, policy, minute) && self.group_overlap[member.group.as_str()][minute as usize] < policy.max_down
    }

    fn take(&mut self, member: &Member, policy: &RebootPolicy, minute: u32) {
        let around = |reach: u32| (0..MINUTES_PER_DAY).filter(move |m| distance(*m, minute) < reach).map(|m| m as usize);
        if let Some(blocked) = self.group_blocked.get_mut(member.group.as_str()) {
            around(policy.group_gap_minutes).for_each(|m| blocked[m] = true);
        }
        if let Some(overlap) = self.group_overlap.get_mut(member.group.as_str()) {
            around(policy.reboot_minutes).for_each(|m| overlap[m] += 1);
        }
        if let Some(blocked) = self.zone_blocked.get_mut(member.zone.as_str()) {
            around(self.fleet.zone_gap_minutes).for_each(|m| blocked[m] = true);
        }
    }
}

/// Reboot minutes for every member, keeping current ones that fit unless `reshuffle`.
pub fn assign(fleet: &Fleet, seed: u64, reshuffle: bool) -> Result<BTreeMap<String, u32>, ScheduleError> {
    let mut members_of: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for member in &fleet.members {
        members_of.entry(&member.group).or_default().push(member);
    }
    let mut tightest: Option<(f64, String, usize, u32)> = None;
    for (group, members) in &members_of {
        let policy = fleet.groups.get(*group).ok_or_else(|| ScheduleError::NoPolicy((*group).to_owned()))?;
        let window = policy.window.minutes();
        let slots = slots(window, policy.group_gap_minutes);
        if members.len() as u64 > u64::from(slots) {
            return Err(ScheduleError::GroupTooBig {
                group: (*group).to_owned(),
                nodes: members.len(),
                window,
                slots,
                gap: policy.group_gap_minutes,
            });
        }
        let load = members.len() as f64 / f64::from(slots);
        if tightest.as_ref().is_none_or(|(worst, ..)| load > *worst) {
            tightest = Some((load, (*group).to_owned(), members.len(), slots));
        }
    }
    check_zones(fleet)?;
    for attempt in 0..ATTEMPTS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        // Later attempts pack each node at the earliest free minute: less random, but it
        // finds the schedules that only a tight packing allows.
        let packed = attempt >= ATTEMPTS / 2;
        if let Some(found) = attempt_once(fleet, &mut rng, reshuffle, packed) {
            return Ok(found);
        }
    }
    let (_, group, nodes, slots) = tightest.unwrap_or_default();
    Err(ScheduleError::NotFound { attempts: ATTEMPTS, group, nodes, slots })
}

/// A necessary condition per zone, for a clear message before searching.
fn check_zones(fleet: &Fleet) -> Result<(), ScheduleError> {
    let gap = fleet.zone_gap_minutes;
    let mut zones: BTreeMap<&str, (usize, u32)> = BTreeMap::new();
    for member in &fleet.members {
        let window = fleet.groups.get(&member.group).map_or(0, |p| p.window.minutes());
        let entry = zones.entry(&member.zone).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = entry.1.max(window);
    }
    for (zone, (nodes, window)) in zones {
        let slots = slots(window, gap);
        if nodes as u64 > u64::from(slots) {
            return Err(ScheduleError::ZoneTooBig { zone: zone.to_owned(), nodes, window, slots, gap });
        }
    }
    Ok(())
}

fn attempt_once(fleet: &Fleet, rng: &mut rand::rngs::StdRng, reshuffle: bool, packed: bool) -> Option<BTreeMap<String, u32>> {
    let mut occupancy = Occupancy::new(fleet);
    let mut assigned = BTreeMap::new();
    let mut open: Vec<&Member> = Vec::new();
    let mut kept: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for member in &fleet.members {
        let policy = &fleet.groups[&member.group];
        let group_kept = kept.entry(&member.group).or_default();
        match member.current {
            // Kept times are checked exactly, whatever order they were first assigned in.
            Some(minute) if !reshuffle && occupancy.fits_apart(member, policy, minute) && stays_within_max_down(group_kept, policy, minute) => {
                occupancy.take(member, policy, minute);
                group_kept.push(minute);
                assigned.insert(member.id.clone(), minute);
            }
            _ => open.push(member),
        }
    }
    open.shuffle(rng);
    // The most crowded groups first: they have the fewest choices left.
    open.sort_by(|a, b| {
        let load = |m: &Member| {
            let policy = &fleet.groups[&m.group];
            let nodes = fleet.members.iter().filter(|o| o.group == m.group).count();
            nodes as f64 / f64::from(slots(policy.window.minutes(), policy.group_gap_minutes).max(1))
        };
        load(b).total_cmp(&load(a))
    });
    for member in open {
        let policy = &fleet.groups[&member.group];
        let free: Vec<u32> =
            (0..policy.window.minutes()).map(|o| policy.window.minute_at(o)).filter(|m| occupancy.fits(member, policy, *m)).collect();
        if free.is_empty() {
            return None;
        }
        let minute = if packed { free[0] } else { free[rng.random_range(0..free.len())] };
        occupancy.take(member, policy, minute);
        assigned.insert(member.id.clone(), minute);
    }
    Some(assigned)
}

/// Nodes down at `at` when reboots start at `starts`.
fn down_at(starts: impl Iterator<Item = u32>, at: u32, reboot_minutes: u32) -> usize {
    starts.filter(|start| (at + MINUTES_PER_DAY - start) % MINUTES_PER_DAY < reboot_minutes).count()
}

/// Whether adding a reboot at `minute` to `starts` keeps every moment at max_down or below
/// (the most are down at some reboot's start).
fn stays_within_max_down(starts: &[u32], policy: &RebootPolicy, minute: u32) -> bool {
    let all = || starts.iter().copied().chain([minute]);
    all().all(|at| down_at(all(), at, policy.reboot_minutes) <= policy.max_down as usize)
}

/// Every rule `assignment` breaks, checked from scratch (not by the code that assigned it).
pub fn violations(fleet: &Fleet, assignment: &BTreeMap<String, u32>) -> Vec<String> {
    let mut found = Vec::new();
    let time = |m: &Member| assignment.get(&m.id).copied();
    for (i, a) in fleet.members.iter().enumerate() {
        let Some(ta) = time(a) else {
            found.push(format!("{} has no reboot time", a.id));
            continue;
        };
        let policy = &fleet.groups[&a.group];
        if policy.window.offset_of(ta).is_none() {
            found.push(format!("{} reboots at {} outside its window", a.id, format_minute(ta)));
        }
        for b in &fleet.members[i + 1..] {
            let Some(tb) = time(b) else { continue };
            if a.group == b.group && distance(ta, tb) < policy.group_gap_minutes {
                found.push(format!("{} and {} of group {} reboot {} minutes apart", a.id, b.id, a.group, distance(ta, tb)));
            }
            if a.zone == b.zone && distance(ta, tb) < fleet.zone_gap_minutes {
                found.push(format!("{} and {} of zone {} reboot {} minutes apart", a.id, b.id, a.zone, distance(ta, tb)));
            }
        }
        // Down at `ta`: every node of the group whose reboot started less than its length ago.
        let down = down_at(fleet.members.iter().filter(|b| b.group == a.group).filter_map(time), ta, policy.reboot_minutes);
        if down as u32 > policy.max_down {
            found.push(format!("{down} nodes of group {} are down at {}", a.group, format_minute(ta)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::RebootWindow;

    fn policy(start: u32, length: u32, gap: u32, max_down: u32, reboot: u32) -> RebootPolicy {
        RebootPolicy {
            window: RebootWindow { start, end: (start + length) % MINUTES_PER_DAY, days: vec!["mon".into()], time_zone: "UTC".into() },
            group_gap_minutes: gap,
            zone_gap_minutes: 0,
            max_down,
            reboot_minutes: reboot,
        }
    }

    fn fleet(groups: &[(u32, RebootPolicy)], zones: u32, zone_gap: u32) -> Fleet {
        let mut members = Vec::new();
        let mut policies = BTreeMap::new();
        for (g, (nodes, policy)) in groups.iter().enumerate() {
            let group = format!("g{g}");
            for n in 0..*nodes {
                members.push(Member { id: format!("i-{g}-{n}"), group: group.clone(), zone: format!("z{}", n % zones), current: None });
            }
            policies.insert(group, policy.clone());
        }
        Fleet { members, groups: policies, zone_gap_minutes: zone_gap }
    }

    /// Minutes one node's choice can lose to the others: when this is below its window,
    /// a free minute is always left, so a schedule must be found.
    fn surely_feasible(fleet: &Fleet) -> bool {
        fleet.members.iter().all(|m| {
            let policy = &fleet.groups[&m.group];
            let in_group = fleet.members.iter().filter(|o| o.group == m.group).count() as u32 - 1;
            let in_zone = fleet.members.iter().filter(|o| o.zone == m.zone).count() as u32 - 1;
            let reach = |gap: u32| (2 * gap).saturating_sub(1);
            let lost = in_group * (reach(policy.group_gap_minutes) + reach(policy.reboot_minutes)) + in_zone * reach(fleet.zone_gap_minutes);
            lost < policy.window.minutes()
        })
    }

    fn arb_group() -> impl Strategy<Value = (u32, RebootPolicy)> {
        (1u32..=25, 0u32..MINUTES_PER_DAY, 30u32..=MINUTES_PER_DAY, 0u32..=30, 1u32..=3, 1u32..=20)
            .prop_map(|(nodes, start, length, gap, max_down, reboot)| (nodes, policy(start, length, gap, max_down, reboot)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn a_schedule_never_breaks_a_rule_and_is_found_when_surely_feasible(
            groups in proptest::collection::vec(arb_group(), 1..4),
            zones in 1u32..=3,
            zone_gap in 0u32..=10,
            seed in any::<u64>(),
        ) {
            let fleet = fleet(&groups, zones, zone_gap);
            match assign(&fleet, seed, false) {
                Ok(assignment) => prop_assert_eq!(violations(&fleet, &assignment), Vec::<String>::new()),
                Err(error) => {
                    prop_assert!(!surely_feasible(&fleet), "no schedule for a fleet with room to spare: {error}");
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_schedule_and_kept_times_stay(groups in proptest::collection::vec(arb_group(), 1..3), seed in any::<u64>()) {
            let mut fleet = fleet(&groups, 2, 0);
            if let Ok(first) = assign(&fleet, seed, false) {
                prop_assert_eq!(assign(&fleet, seed, false).ok(), Some(first.clone()));
                for member in &mut fleet.members {
                    member.current = first.get(&member.id).copied();
                }
                prop_assert_eq!(assign(&fleet, seed.wrapping_add(1), false).ok(), Some(first));
            }
        }
    }

    #[test]
    fn a_window_exactly_full_is_packed_and_one_node_more_is_refused_with_the_reason() {
        // 120 minutes, 15 apart: 8 reboots fit (0, 15, .., 105).
        let full = fleet(&[(8, policy(180, 120, 15, 1, 10))], 1, 0);
        let assignment = assign(&full, 1, false).expect("exactly full is feasible");
        assert!(violations(&full, &assignment).is_empty());
        let over = fleet(&[(9, policy(180, 120, 15, 1, 10))], 1, 0);
        let error = assign(&over, 1, false).unwrap_err();
        assert_eq!(error.to_string(), "group `g0` has 9 nodes but its 120-minute window fits only 8 reboots 15 minutes apart");
    }

    #[test]
    fn max_down_allows_overlapping_reboots_up_to_its_count() {
        // No gap, 30-minute reboots, two may be down together: 4 nodes in an hour fit
        // (two at a time, half an hour apart).
        let fleet = fleet(&[(4, policy(0, 60, 0, 2, 30))], 1, 0);
        let assignment = assign(&fleet, 3, false).expect("feasible");
        assert!(violations(&fleet, &assignment).is_empty());
        let mut bad = assignment.clone();
        bad.values_mut().for_each(|m| *m = 0);
        assert!(violations(&fleet, &bad).iter().any(|v| v.contains("4 nodes of group g0 are down at 00:00")), "{:?}", violations(&fleet, &bad));
    }

    #[test]
    fn nodes_of_one_zone_keep_the_zone_gap_across_groups() {
        let a = policy(0, 60, 0, 5, 1);
        let fleet = fleet(&[(3, a.clone()), (3, a)], 1, 10);
        let assignment = assign(&fleet, 9, false).expect("6 reboots 10 apart fit in an hour");
        assert!(violations(&fleet, &assignment).is_empty());
        let mut times: Vec<u32> = assignment.values().copied().collect();
        times.sort();
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 10), "{times:?}");
    }
}
