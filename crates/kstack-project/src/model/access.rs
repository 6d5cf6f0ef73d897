//! How an environment, or its state backend, reaches its AWS account:
//! `aws: { profile, assume_role: { arn, external_id, session_name, duration }, account_id }`.
//! Without it, the standard credential chain's account is used as it is.

use marked_yaml::Node;

use crate::diagnostics::{Problems, Spanned};
use crate::yaml::{self, string, MapReader};

/// AWS bounds a role session's length (STS `DurationSeconds`): 15 minutes to 12 hours.
const SESSION_SECONDS: std::ops::RangeInclusive<u64> = 900..=43_200;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsAccess {
    /// A named profile of the shared AWS config and credentials files.
    pub profile: Option<String>,
    /// A role to act as, assumed with the profile's (or the chain's) credentials.
    pub assume_role: Option<AssumeRole>,
    /// The account the credentials must act in: any other is refused before any change.
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub arn: String,
    /// What the role's trust policy asks of a third party (`sts:ExternalId`).
    pub external_id: Option<String>,
    /// The session's name in the account's CloudTrail; `kstack-<environment>` by default.
    pub session_name: Option<String>,
    /// How long a session lasts; sessions are renewed before they end, however long a run.
    pub duration_seconds: u64,
}

impl AssumeRole {
    /// The account the role belongs to, from its ARN (`arn:aws:iam::<account>:role/<name>`).
    pub fn account(&self) -> Option<&str> {
        self.arn.split(':').nth(4).filter(|a| !a.is_empty())
    }
}

/// Decodes `aws:` (`account_id` only where `accounts` says the account can be checked).
pub fn aws_access(node: &Node, what: &'static str, accounts: bool, problems: &mut Problems) -> Option<AwsAccess> {
    let mut map = MapReader::new(node, what, problems)?;
    let profile = map.get("profile").and_then(|n| string(n, problems)).map(|p| p.value);
    let assume_role = map.get("assume_role").and_then(|n| assume_role(n, problems));
    let account_id = if accounts { map.get("account_id").and_then(|n| account_id(n, problems)) } else { None };
    map.finish(problems);
    if let (Some(role), Some(expected)) = (&assume_role, &account_id) {
        if role.account().is_some_and(|account| account != expected.value) {
            problems
                .error(
                    expected.loc,
                    format!("`account_id` is {}, but the role to assume is in account {}", expected.value, role.account().unwrap_or("")),
                )
                .hint("an assumed role acts in its own account: name that account, or the role meant");
        }
    }
    Some(AwsAccess { profile, assume_role, account_id: account_id.map(|a| a.value) })
}

fn assume_role(node: &Node, problems: &mut Problems) -> Option<AssumeRole> {
    let mut map = MapReader::new(node, "role to assume", problems)?;
    let arn = map.required("arn", problems).and_then(|n| string(n, problems));
    let external_id = map.get("external_id").and_then(|n| string(n, problems)).map(|e| e.value);
    let session_name = map.get("session_name").and_then(|n| string(n, problems));
    let duration = map.get("duration").map_or(Some(3600), |n| duration(n, problems));
    map.finish(problems);
    let arn = arn?;
    let is_role = arn.value.starts_with("arn:") && arn.value.split(':').nth(5).is_some_and(|r| r.starts_with("role/"));
    if !is_role || arn.value.split(':').nth(4).is_none_or(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit())) {
        problems
            .error(arn.loc, format!("`{}` is not an IAM role ARN", arn.value))
            .hint("a role ARN reads `arn:aws:iam::<12-digit account>:role/<name>`");
        return None;
    }
    let session_name = match session_name {
        // STS's pattern for RoleSessionName.
        Some(name) if !(2..=64).contains(&name.value.len()) || !name.value.chars().all(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(c)) => {
            problems.error(name.loc, format!("`{}` is not a valid role session name", name.value)).hint("2 to 64 letters, digits and `=,.@-_`");
            return None;
        }
        name => name.map(|n| n.value),
    };
    Some(AssumeRole { arn: arn.value, external_id, session_name, duration_seconds: duration? })
}

/// A length of time: seconds, or a number with `s`, `m` or `h`, within a role session's bounds.
fn duration(node: &Node, problems: &mut Problems) -> Option<u64> {
    let text = string(node, problems)?.value;
    let seconds = Some(text.as_str()).and_then(|text| {
        let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |at| text.split_at(at));
        let scale = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return None,
        };
        number.parse::<u64>().ok()?.checked_mul(scale)
    });
    match seconds {
        Some(seconds) if SESSION_SECONDS.contains(&seconds) => Some(seconds),
        _ => {
            problems
                .error(yaml::loc(node), "a role session lasts from 15m to 12h")
                .hint("write seconds or a number with `s`, `m` or `h`, e.g. `1h`; AWS allows 15 minutes to the role's maximum session duration (up to 12 hours)");
            None
        }
    }
}

fn account_id(node: &Node, problems: &mut Problems) -> Option<Spanned<String>> {
    // An account id is twelve digits; YAML may read an unquoted one as a number.
    let text = string(node, problems)?.value;
    if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        problems.error(yaml::loc(node), format!("`{text}` is not an AWS account id")).hint("an account id is 12 digits, e.g. `\"123456789012\"`");
        return None;
    }
    Some(Spanned::new(text, yaml::loc(node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Sources;

    fn decode(text: &str) -> (Option<AwsAccess>, Vec<String>) {
        let mut sources = Sources::default();
        let id = sources.add(std::path::Path::new("dev.yaml"), text.to_owned());
        let mut problems = Problems::default();
        let node = yaml::parse(id, text, &mut problems).unwrap();
        let access = aws_access(&node, "AWS access", true, &mut problems);
        (access, problems.into_sorted().iter().map(|p| p.message.clone()).collect())
    }

    #[test]
    fn a_role_with_its_session_decodes_and_names_its_account() {
        let (access, problems) = decode(
            "profile: ops\nassume_role: { arn: 'arn:aws:iam::111111111111:role/deploy', external_id: x, duration: 15m }\naccount_id: 111111111111\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let access = access.unwrap();
        let role = access.assume_role.unwrap();
        assert_eq!((role.account(), role.duration_seconds, access.profile.as_deref()), (Some("111111111111"), 900, Some("ops")));
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let (_, problems) = decode("assume_role: { arn: 'arn:aws:iam::1:user/me', duration: 5m, session_name: 'a b' }\naccount_id: 12\n");
        assert_eq!(problems.len(), 3, "{problems:?}");
        let (_, problems) = decode("assume_role: { arn: 'arn:aws:iam::111111111111:role/deploy' }\naccount_id: '222222222222'\n");
        assert!(problems[0].contains("role to assume is in account 111111111111"), "{problems:?}");
    }
}
