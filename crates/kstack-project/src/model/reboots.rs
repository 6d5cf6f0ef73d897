//! When nodes may reboot for OS updates: the environment's `reboots:` settings, which a node
//! group's own `reboots:` refines (window, gap, max down, reboot length).

use marked_yaml::Node;

use crate::diagnostics::Problems;
use crate::yaml::{self, list, number, string, MapReader};

pub const MINUTES_PER_DAY: u32 = 1440;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A daily stretch of local time in which reboots may start, on some days of the week.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RebootWindow {
    /// Minutes after local midnight.
    pub start: u32,
    /// Minutes after local midnight; before `start` when the window spans midnight.
    pub end: u32,
    /// `mon` .. `sun`.
    pub days: Vec<String>,
    /// An IANA time zone the window is in; nodes convert with their own tz database.
    pub time_zone: String,
}

impl RebootWindow {
    /// Its length in minutes; a window that ends where it starts is the whole day.
    pub fn minutes(&self) -> u32 {
        match (self.end + MINUTES_PER_DAY - self.start) % MINUTES_PER_DAY {
            0 => MINUTES_PER_DAY,
            length => length,
        }
    }

    /// The minute of the day `offset` minutes into the window.
    pub fn minute_at(&self, offset: u32) -> u32 {
        (self.start + offset) % MINUTES_PER_DAY
    }

    /// How far into the window `minute` is, if it is in it.
    pub fn offset_of(&self, minute: u32) -> Option<u32> {
        let offset = (minute + MINUTES_PER_DAY - self.start) % MINUTES_PER_DAY;
        (offset < self.minutes()).then_some(offset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RebootPolicy {
    pub window: RebootWindow,
    /// No two nodes of a group start rebooting closer than this.
    pub group_gap_minutes: u32,
    /// No two nodes of an availability zone (of any group) start closer than this.
    pub zone_gap_minutes: u32,
    /// A group's nodes down at the same time, at most.
    pub max_down: u32,
    /// How long a node is down when it reboots.
    pub reboot_minutes: u32,
}

pub fn format_minute(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60 % 24, minute % 60)
}

/// `HH:MM` as minutes after midnight.
pub fn parse_minute(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60 && text.len() == 5).then_some(hours * 60 + minutes)
}

fn time_of_day(node: &Node, problems: &mut Problems) -> Option<u32> {
    let text = string(node, problems)?;
    let minute = parse_minute(&text.value);
    if minute.is_none() {
        problems
            .error(text.loc, format!("`{}` is not a time of day", text.value))
            .label("expected HH:MM")
            .hint("write a 24-hour time with two digits each, e.g. \"03:30\"");
    }
    minute
}

fn day(node: &Node, problems: &mut Problems) -> Option<String> {
    let text = string(node, problems)?;
    let lower = text.value.to_ascii_lowercase();
    if DAYS.contains(&lower.as_str()) {
        return Some(lower);
    }
    problems.error(text.loc, format!("`{}` is not a day of the week", text.value)).label("unknown day").hint(format!("use {}", DAYS.join(", ")));
    None
}

/// Names of tzdata's zones and links, so that a machine without a tz database still tells an
/// unknown zone (a node would read it as UTC without a word).
const TIME_ZONES: &str = include_str!("time_zones.txt");

/// IANA names only: kstack's list, or a newer zone in this machine's tz database.
fn time_zone(node: &Node, problems: &mut Problems) -> Option<String> {
    let text = string(node, problems)?;
    if is_known_time_zone(&text.value) {
        return Some(text.value);
    }
    problems
        .error(text.loc, format!("`{}` is not a known time zone", text.value))
        .label("unknown time zone")
        .hint("use an IANA name such as UTC, Europe/Berlin or America/New_York");
    None
}

fn is_known_time_zone(name: &str) -> bool {
    let shaped =
        !name.is_empty() && !name.starts_with('/') && !name.contains("..") && name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    let database = std::env::var_os("TZDIR").map_or_else(|| std::path::PathBuf::from("/usr/share/zoneinfo"), std::path::PathBuf::from);
    shaped && (TIME_ZONES.lines().any(|line| line == name) || database.join(name).is_file())
}

/// Decodes a `reboots:` mapping (the environment's, with a group's merged over it).
pub fn reboot_policy(node: &Node, problems: &mut Problems) -> Option<RebootPolicy> {
    let mut map = MapReader::new(node, "reboot settings", problems)?;
    let window = map.required("window", problems).and_then(|n| window(n, problems));
    let mut minutes = |key, default, range| map.get(key).map_or(Some(default), |n| number(n, range, problems).map(|m| m.value));
    let group_gap_minutes = minutes("group_gap_minutes", 15, 0..=MINUTES_PER_DAY);
    let zone_gap_minutes = minutes("zone_gap_minutes", 5, 0..=MINUTES_PER_DAY);
    let max_down = minutes("max_down", 1, 1..=1000);
    let reboot_minutes = minutes("reboot_minutes", 10, 1..=240);
    map.finish(problems);
    Some(RebootPolicy {
        window: window?,
        group_gap_minutes: group_gap_minutes?,
        zone_gap_minutes: zone_gap_minutes?,
        max_down: max_down?,
        reboot_minutes: reboot_minutes?,
    })
}

fn window(node: &Node, problems: &mut Problems) -> Option<RebootWindow> {
    let mut map = MapReader::new(node, "reboot window", problems)?;
    let start = map.required("start", problems).and_then(|n| time_of_day(n, problems));
    let end = map.required("end", problems).and_then(|n| time_of_day(n, problems));
    let days = map.get("days").map_or_else(|| Some(DAYS.iter().map(|d| (*d).to_owned()).collect()), |n| list(n, problems, day));
    let time_zone = map.get("time_zone").map_or_else(|| Some("UTC".to_owned()), |n| time_zone(n, problems));
    map.finish(problems);
    let days = days?;
    if days.is_empty() {
        problems
            .error(yaml::loc(node), "the reboot window has no days")
            .label("no days")
            .hint("list at least one day, e.g. [mon, tue, wed, thu, fri]");
        return None;
    }
    Some(RebootWindow { start: start?, end: end?, days, time_zone: time_zone? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_may_span_midnight_or_the_whole_day() {
        let night = RebootWindow { start: 23 * 60, end: 60, days: vec![], time_zone: "UTC".into() };
        assert_eq!(night.minutes(), 120);
        assert_eq!(night.minute_at(90), 30);
        assert_eq!(night.offset_of(30), Some(90));
        assert_eq!(night.offset_of(12 * 60), None);
        let all_day = RebootWindow { start: 180, end: 180, days: vec![], time_zone: "UTC".into() };
        assert_eq!(all_day.minutes(), MINUTES_PER_DAY);
        assert_eq!(parse_minute("03:07"), Some(187));
        assert_eq!(parse_minute("3:07"), None);
        assert_eq!(parse_minute("24:00"), None);
        assert_eq!(format_minute(187), "03:07");
    }

    #[test]
    fn time_zones_are_known_without_a_tz_database() {
        std::env::set_var("TZDIR", "/nonexistent");
        assert!(is_known_time_zone("Europe/Berlin"));
        assert!(is_known_time_zone("America/New_York"));
        assert!(is_known_time_zone("UTC"));
        assert!(!is_known_time_zone("Mars/Olympus"));
        assert!(!is_known_time_zone("../etc/passwd"));
        assert!(!is_known_time_zone("# IANA time zone names (zones and links) of tzdata 2025b, from its tzdata.zi: what validate"));
    }
}
