//! Renders minijinja templates written inside input files, such as a node group's user data.
//!
//! Undefined variables are errors, not empty strings: a typo in a template must fail
//! validation rather than boot a fleet with a blank setting.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::diagnostics::{did_you_mean, Loc, Problems, Spanned};

pub struct Renderer {
    jinja: Environment<'static>,
    /// What the templates it renders see, for problems.
    hint: &'static str,
    /// Names its templates may not use, each with why and what to write instead.
    withheld: BTreeMap<String, (String, String)>,
}

impl Default for Renderer {
    /// The renderer of user data and role templates.
    fn default() -> Self {
        Renderer::with_hint(HINT)
    }
}

/// Instructions a template may run: far more than any user data needs.
const FUEL: u64 = 1_000_000;

const HINT: &str = "templates see the environment's `variables`, plus `env`, `region` and `group`";

/// The one template engine of kstack, for user data, roles (tasks, templates, checks, `when:`)
/// and roll hooks alike: strict, so a misspelt variable is an error, and bounded, so a
/// template runs in bounded time however it loops.
pub fn engine() -> Environment<'static> {
    let mut jinja = Environment::new();
    jinja.set_undefined_behavior(UndefinedBehavior::Strict);
    jinja.set_keep_trailing_newline(true);
    jinja.set_fuel(Some(FUEL));
    jinja
}

/// A `when:` condition, if it is a valid expression; otherwise a problem at it, with `example`.
pub fn condition(expression: Spanned<String>, example: &str, problems: &mut Problems) -> Option<String> {
    match engine().compile_expression(&expression.value) {
        Ok(_) => Some(expression.value),
        Err(error) => {
            problems
                .error(expression.loc, format!("`when` is not a valid expression: {}", error.detail().unwrap_or("syntax error")))
                .hint(format!("e.g. `when: {example}`"));
            None
        }
    }
}

impl Renderer {
    /// A renderer whose problems say `hint` about the variables its templates see.
    pub fn with_hint(hint: &'static str) -> Renderer {
        Renderer { jinja: engine(), hint, withheld: BTreeMap::new() }
    }

    /// The same, refusing `name` with `why` and `instead` when a template uses it.
    pub fn withholding(mut self, name: &str, why: String, instead: String) -> Renderer {
        self.withheld.insert(name.to_owned(), (why, instead));
        self
    }

    /// Renders `template` with `context`. Each undefined variable is reported at its own
    /// position; any other failure becomes a problem at the template line minijinja names.
    pub fn render(&self, template: &Spanned<String>, context: &BTreeMap<String, Value>, problems: &mut Problems) -> Option<String> {
        let compiled = match self.jinja.template_from_str(&template.value) {
            Ok(compiled) => compiled,
            Err(error) => {
                report(template, &error, self.hint, problems);
                return None;
            }
        };
        let mut undefined: Vec<String> = compiled.undeclared_variables(false).into_iter().filter(|name| !context.contains_key(name)).collect();
        if !undefined.is_empty() {
            undefined.sort();
            let known: Vec<&str> = context.keys().map(String::as_str).collect();
            for name in undefined {
                if let Some((why, instead)) = self.withheld.get(&name) {
                    problems.error(variable_loc(template, &name), why.clone()).label("withheld").hint(instead.clone());
                    continue;
                }
                let hint = did_you_mean(&name, known.iter().copied())
                    .map_or_else(|| self.hint.to_string(), |close| format!("did you mean `{close}`? {}", self.hint));
                problems.error(variable_loc(template, &name), format!("undefined template variable `{name}`")).label("undefined").hint(hint);
            }
            return None;
        }
        match compiled.render(Value::from_iter(context.clone())) {
            Ok(text) => Some(text),
            Err(error) => {
                report(template, &error, self.hint, problems);
                None
            }
        }
    }
}

fn report(template: &Spanned<String>, error: &minijinja::Error, hint: &str, problems: &mut Problems) {
    let loc = error.line().map_or(template.loc, |line| line_loc(template, line));
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    problems.error(loc, format!("template error: {message}")).hint(hint);
}

/// The file location of line `line` (from 1) of a template. marked-yaml starts a scalar's
/// span at its first character, which for a block scalar (`|`) is the first text line.
fn line_loc(template: &Spanned<String>, line: usize) -> Loc {
    let text = template.value.lines().nth(line.saturating_sub(1)).unwrap_or("");
    Loc { line: template.loc.line + line - 1, column: template.loc.column, len: text.trim_end().len().max(1), ..template.loc }
}

/// Where `name` is first used inside `{{ }}` or `{% %}` in the template.
fn variable_loc(template: &Spanned<String>, name: &str) -> Loc {
    for (index, text) in template.value.lines().enumerate() {
        if let Some(column) = find_identifier(text, name) {
            return Loc { line: template.loc.line + index, column: template.loc.column + column, len: name.len(), ..template.loc };
        }
    }
    template.loc
}

/// Byte offset of `name` as a whole identifier in `line`.
fn find_identifier(line: &str, name: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(name).map(|(at, _)| at).find(|&at| {
        let before = line[..at].chars().next_back();
        let after = line[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Spanned<String> {
        Spanned::new(String::from(text), Loc { source: 0, line: 10, column: 7, len: 1 })
    }

    #[test]
    fn undefined_variables_are_reported_where_they_are_used() {
        let context = BTreeMap::from([("cluster_domain".to_string(), Value::from("k8s.local"))]);
        let mut problems = Problems::default();
        let rendered = Renderer::default().render(&template("a\necho {{ cluster_domian }}\n"), &context, &mut problems);
        assert!(rendered.is_none());
        let problem = problems.iter().next().unwrap();
        assert_eq!(problem.message, "undefined template variable `cluster_domian`");
        let loc = problem.loc.unwrap();
        assert_eq!((loc.line, loc.column, loc.len), (11, 15, 14));
        assert!(problem.hint.as_deref().unwrap().contains("did you mean `cluster_domain`?"));
    }

    #[test]
    fn renders_defined_variables() {
        let context = BTreeMap::from([("env".to_string(), Value::from("dev"))]);
        let mut problems = Problems::default();
        let rendered = Renderer::default().render(&template("name={{ env }}\n"), &context, &mut problems);
        assert_eq!(rendered.as_deref(), Some("name=dev\n"));
    }

    #[test]
    fn syntax_errors_point_at_their_line() {
        let mut problems = Problems::default();
        let rendered = Renderer::default().render(&template("a\nb\n{% if %}\n"), &BTreeMap::new(), &mut problems);
        assert!(rendered.is_none());
        assert_eq!(problems.iter().next().unwrap().loc.unwrap().line, 12);
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel_instead_of_hanging() {
        let error =
            super::engine().render_str("{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}", ()).unwrap_err();
        assert_eq!(error.kind(), minijinja::ErrorKind::OutOfFuel);
        assert_eq!(super::engine().render_str("{% for i in range(3) %}{{ i }}{% endfor %}", ()).unwrap(), "012");
    }
}
