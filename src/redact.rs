//! Redaction of secret values from everything kstack prints. A value can reach the output in
//! more forms than its literal text: escaped inside JSON or a Rust debug string, quoted for a
//! shell, base64-encoded (as user data is), as a list of byte values (`{:?}` of bytes), or one
//! line at a time (a multi-line value in a `--diff`). The redactor replaces each of these forms with `(secret)`.

use std::borrow::Cow;

const SHOWN: &str = "(secret)";

/// Lines shorter than this are not hidden on their own: a secret's short line (`}` of a JSON
/// key file, an empty line) would otherwise hide every such line of the output.
const MIN_LINE: usize = 4;

/// Replaces every known form of a set of secret values.
#[derive(Default)]
pub struct Redactor {
    /// Longest first, so a whole value is replaced before one of its lines.
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} forms)", self.needles.len())
    }
}

impl Redactor {
    /// A redactor of `values`, and of every form each can be shown in.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut redactor = Redactor::default();
        redactor.add(values);
        redactor
    }

    /// Adds `values` (e.g. the secrets of one more environment).
    pub fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            self.needles.extend(forms(value));
            // A value read from a file or a heredoc ends in a line break that output trims.
            let trimmed = value.trim_end_matches(['\n', '\r']);
            if trimmed != value && !trimmed.is_empty() {
                self.needles.extend(forms(trimmed));
            }
            let lines: Vec<&str> = value.lines().map(|l| l.trim_end_matches('\r')).collect();
            if lines.len() > 1 {
                for line in lines.into_iter().filter(|l| l.trim().len() >= MIN_LINE) {
                    self.needles.extend(forms(line));
                }
            }
        }
        self.needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.needles.dedup();
    }

    /// `text` with every form of every value replaced by `(secret)`, in one pass, so a
    /// replacement is never matched again.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut shown = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match self.needles.iter().find(|n| rest.starts_with(n.as_str())) {
                Some(needle) => {
                    shown.push_str(SHOWN);
                    rest = &rest[needle.len()..];
                }
                None => {
                    shown.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        Cow::Owned(shown)
    }
}

/// The forms `value` takes in kstack's output: as is, inside a JSON string, inside a Rust
/// debug string (`{:?}` in logs), inside single quotes for a shell, base64-encoded, and as the
/// decimal byte list a `{:?}` of bytes prints.
fn forms(value: &str) -> Vec<String> {
    // Each quoting adds exactly one quote character at either end.
    let inner = |quoted: String| quoted[1..quoted.len() - 1].to_owned();
    vec![
        value.to_owned(),
        inner(serde_json::Value::from(value).to_string()),
        inner(format!("{value:?}")),
        inner(crate::ssh::shell_quote(value)),
        aws_smithy_types::base64::encode(value),
        value.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_ending_in_a_line_break_is_hidden_without_it() {
        let redactor = Redactor::new(["s3cr3t-token\n"]);
        assert_eq!(redactor.redact("token: s3cr3t-token."), "token: (secret).");
    }

    #[test]
    fn the_literal_is_replaced_everywhere_and_other_text_is_kept() {
        let redactor = Redactor::new(["hunter22"]);
        assert_eq!(redactor.redact("a=hunter22 b=hunter22 c=hunter2"), "a=(secret) b=(secret) c=hunter2");
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
        assert_eq!(Redactor::new([""]).redact("text"), "text", "an empty value hides nothing");
    }

    #[test]
    fn json_and_debug_escaped_forms_are_replaced() {
        let value = "\"pa\"ss\\word\tend\nline-two\"";
        let redactor = Redactor::new([value]);
        let json = serde_json::json!({ "after": format!("token = {value}") }).to_string();
        assert_eq!(redactor.redact(&json), r#"{"after":"token = (secret)"}"#);
        let debug = format!("{:?}", format!("x{value}y's"));
        assert_eq!(redactor.redact(&debug), r#""x(secret)y's""#);
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_replaced_but_not_short_ones() {
        let key = "-----BEGIN KEY-----\nMIIEpAIBAAKCAQEA0Z\n}\n-----END KEY-----\n";
        let redactor = Redactor::new([key]);
        let diff = "+-----BEGIN KEY-----\n+MIIEpAIBAAKCAQEA0Z\n+}\n+-----END KEY-----\n }\n";
        assert_eq!(redactor.redact(diff), "+(secret)\n+(secret)\n+}\n+(secret)\n }\n");
        assert_eq!(redactor.redact(&format!("key: {key}")), "key: (secret)", "whole before lines");
        let json = serde_json::to_string("+MIIEpAIBAAKCAQEA0Z\n").unwrap();
        assert_eq!(redactor.redact(&json), r#""+(secret)\n""#);
    }

    #[test]
    fn shell_quoted_base64_and_byte_list_forms_are_replaced() {
        let value = "'it's-s3cret'";
        let redactor = Redactor::new([value]);
        assert_eq!(redactor.redact(&format!("sh -c {}", crate::ssh::shell_quote(value))), "sh -c '(secret)'");
        let encoded = aws_smithy_types::base64::encode(value);
        assert_eq!(redactor.redact(&format!("UserData={encoded}")), "UserData=(secret)");
        let bytes = format!("{:?}", format!("x={value}").as_bytes());
        assert_eq!(redactor.redact(&bytes), "[120, 61, (secret)]");
    }

    #[test]
    fn a_replacement_is_not_matched_again_and_values_added_later_count() {
        let mut redactor = Redactor::new(["secret"]);
        assert_eq!(redactor.redact("a secret"), "a (secret)");
        redactor.add(["other-value"]);
        assert_eq!(redactor.redact("secret other-value"), "(secret) (secret)");
        assert!(!format!("{redactor:?}").contains("other-value"), "Debug shows no value");
    }
}
