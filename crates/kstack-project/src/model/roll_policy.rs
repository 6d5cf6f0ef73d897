//! How fast a node group may be rolled: instances added above its size (`max_surge`),
//! instances it may be short of (`max_unavailable`), and a floor on in-service instances
//! (`min_healthy_percent`) that no batch goes under.

use std::fmt;
use std::str::FromStr;

/// A number of instances, or a percentage of a group's desired size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The amount for a group of `size`. A percentage rounds up when it adds capacity (so a
    /// roll always makes progress) and down when it takes capacity away (so it stays safe).
    pub fn of(self, size: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) if round_up => (size * p).div_ceil(100),
            Amount::Percent(p) => size * p / 100,
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(text: &str) -> Result<Amount, String> {
        let invalid = || format!("`{text}` is neither a count (e.g. 2) nor a percentage from 0% to 100% (e.g. 25%)");
        match text.strip_suffix('%') {
            Some(percent) => match percent.parse::<u32>() {
                Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                _ => Err(invalid()),
            },
            None => text.parse::<u32>().ok().filter(|n| *n <= 1000).map(Amount::Count).ok_or_else(invalid),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl From<Amount> for String {
    fn from(amount: Amount) -> String {
        amount.to_string()
    }
}

impl TryFrom<String> for Amount {
    type Error = String;

    fn try_from(text: String) -> Result<Amount, String> {
        text.parse()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RollPolicy {
    pub max_surge: Amount,
    pub max_unavailable: Amount,
    /// When set, in-service instances never drop below this share of the group's size,
    /// whatever `max_unavailable` allows.
    pub min_healthy_percent: Option<u32>,
}

impl Default for RollPolicy {
    /// New instances first, one at a time, never short of capacity.
    fn default() -> RollPolicy {
        RollPolicy { max_surge: Amount::Count(1), max_unavailable: Amount::Count(0), min_healthy_percent: None }
    }
}

/// Settings given to one roll on the command line, over each group's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyOverrides {
    pub max_surge: Option<Amount>,
    pub max_unavailable: Option<Amount>,
    pub min_healthy_percent: Option<u32>,
}

impl PolicyOverrides {
    pub fn over(self, group: RollPolicy) -> RollPolicy {
        RollPolicy {
            max_surge: self.max_surge.unwrap_or(group.max_surge),
            max_unavailable: self.max_unavailable.unwrap_or(group.max_unavailable),
            min_healthy_percent: self.min_healthy_percent.or(group.min_healthy_percent),
        }
    }
}

/// What one batch of a roll may do to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    /// Instances launched above the group's size before outdated ones go.
    pub surge: u32,
    /// Outdated instances terminated before their replacements are in service.
    pub unavailable: u32,
}

impl RollPolicy {
    /// The batch size for a group of `desired` instances, or why no batch is possible.
    pub fn batch(&self, desired: u32) -> Result<BatchSize, String> {
        let surge = self.max_surge.of(desired, true);
        let mut unavailable = self.max_unavailable.of(desired, false);
        if let Some(percent) = self.min_healthy_percent {
            let floor = (desired * percent).div_ceil(100);
            unavailable = unavailable.min(desired.saturating_sub(floor));
        }
        if surge == 0 && unavailable == 0 {
            let healthy = self.min_healthy_percent.map(|p| format!(", min_healthy_percent {p}")).unwrap_or_default();
            return Err(format!(
                "with {desired} instances, max_surge {} and max_unavailable {}{healthy} allow no instance to be replaced; \
                 raise max_surge (new instances first) or max_unavailable",
                self.max_surge, self.max_unavailable
            ));
        }
        Ok(BatchSize { surge, unavailable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(surge: &str, unavailable: &str, healthy: Option<u32>) -> RollPolicy {
        RollPolicy { max_surge: surge.parse().unwrap(), max_unavailable: unavailable.parse().unwrap(), min_healthy_percent: healthy }
    }

    #[test]
    fn percentages_round_up_to_add_and_down_to_take_away() {
        assert_eq!(policy("25%", "25%", None).batch(6), Ok(BatchSize { surge: 2, unavailable: 1 }));
        assert_eq!(policy("10%", "10%", None).batch(3), Ok(BatchSize { surge: 1, unavailable: 0 }));
        assert_eq!(policy("0", "1", None).batch(6), Ok(BatchSize { surge: 0, unavailable: 1 }));
    }

    #[test]
    fn min_healthy_percent_caps_unavailability() {
        // 6 at 80% healthy: at least 5 in service, so one may be down, not three.
        assert_eq!(policy("0", "3", Some(80)).batch(6), Ok(BatchSize { surge: 0, unavailable: 1 }));
        assert_eq!(policy("1", "50%", Some(100)).batch(6), Ok(BatchSize { surge: 1, unavailable: 0 }));
        let stuck = policy("0", "1", Some(100)).batch(6).unwrap_err();
        assert!(stuck.contains("allow no instance to be replaced"), "{stuck}");
    }

    #[test]
    fn amounts_parse_counts_and_percentages_and_reject_the_rest() {
        assert_eq!("3".parse(), Ok(Amount::Count(3)));
        assert_eq!("25%".parse(), Ok(Amount::Percent(25)));
        for bad in ["", "-1", "101%", "x%", "1.5", "2000"] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Amount::Percent(25)).unwrap(), "\"25%\"");
    }
}
