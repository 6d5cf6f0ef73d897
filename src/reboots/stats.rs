//! Figures that show what a schedule buys over every node picking a random minute.

use rand::{RngExt, SeedableRng};

use super::schedule::distance;
use crate::model::reboots::MINUTES_PER_DAY;

/// The chance that at least two of `nodes` picking uniformly among `slots` pick the same one:
/// the birthday problem, `1 - prod_{k<n} (1 - k/slots)`.
pub fn birthday(nodes: u32, slots: u32) -> f64 {
    if nodes > slots {
        return 1.0;
    }
    let none_shared: f64 = (0..nodes).map(|k| 1.0 - f64::from(k) / f64::from(slots)).product();
    1.0 - none_shared
}

/// The chance that at least two of `nodes` picking random minutes of a `window`-minute window
/// start closer than `gap`, estimated from seeded trials (no closed form with a gap).
pub fn random_within_gap(nodes: u32, window: u32, gap: u32, seed: u64) -> f64 {
    const TRIALS: u32 = 20_000;
    if nodes < 2 || gap == 0 {
        return 0.0;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hits = 0;
    let mut picks = Vec::with_capacity(nodes as usize);
    for _ in 0..TRIALS {
        picks.clear();
        picks.extend((0..nodes).map(|_| rng.random_range(0..window)));
        picks.sort_unstable();
        let full_day = window >= MINUTES_PER_DAY;
        let close = picks.windows(2).any(|p| p[1] - p[0] < gap) || (full_day && distance(picks[0], picks[picks.len() - 1]) < gap);
        if close {
            hits += 1;
        }
    }
    f64::from(hits) / f64::from(TRIALS)
}

/// The most reboots of `times` that start within any `gap`-minute stretch.
pub fn worst_within_gap(times: &[u32], gap: u32) -> usize {
    times.iter().map(|start| times.iter().filter(|t| (**t + MINUTES_PER_DAY - start) % MINUTES_PER_DAY < gap.max(1)).count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birthday_matches_known_values() {
        // 45 nodes over the minutes of a day: about even odds of a shared minute.
        assert!((birthday(45, 1440) - 0.5008).abs() < 0.0001, "{}", birthday(45, 1440));
        // The classic: 23 people, 365 days.
        assert!((birthday(23, 365) - 0.5073).abs() < 0.0001);
        assert_eq!(birthday(1, 10), 0.0);
        assert_eq!(birthday(11, 10), 1.0);
    }

    #[test]
    fn the_simulation_agrees_with_the_formula_for_a_one_minute_gap() {
        let simulated = random_within_gap(45, 1440, 1, 7);
        assert!((simulated - birthday(45, 1440)).abs() < 0.02, "{simulated}");
    }

    #[test]
    fn worst_within_gap_counts_starts_in_any_stretch_across_midnight() {
        assert_eq!(worst_within_gap(&[0, 20, 40], 15), 1);
        assert_eq!(worst_within_gap(&[0, 5, 10, 40], 15), 3);
        assert_eq!(worst_within_gap(&[1435, 2], 15), 2);
    }
}
