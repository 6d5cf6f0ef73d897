//! Renders minijinja templates written inside input files, such as a node group's user data.
//!
//! Undefined variables are errors, not empty strings: a typo in a template must fail
//! validation rather than boot a fleet with a blank setting.

use minijinja::{Environment, UndefinedBehavior};

use crate::diagnostics::{Loc, Problems, Spanned};

pub struct Renderer {
    jinja: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        let mut jinja = Environment::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        jinja.set_keep_trailing_newline(true);
        Renderer { jinja }
    }
}

impl Renderer {
    /// Renders `template` with `context`; a failure becomes a problem at the template line.
    pub fn render(&self, template: &Spanned<String>, context: &minijinja::Value, problems: &mut Problems) -> Option<String> {
        match self.jinja.render_str(&template.value, context) {
            Ok(text) => Some(text),
            Err(error) => {
                let loc = error.line().map_or(template.loc, |line| line_in_block(template.loc, line));
                let mut message = error.kind().to_string();
                if let Some(detail) = error.detail() {
                    message = format!("{message}: {detail}");
                }
                problems
                    .error(loc, format!("template error: {message}"))
                    .hint("templates see the environment's `variables`, plus `env`, `region` and `group`");
                None
            }
        }
    }
}

/// The file location of line `line` (from 1) of a template that starts at `start`.
/// A block scalar (`|`) starts its text on the line after its indicator.
fn line_in_block(start: Loc, line: usize) -> Loc {
    Loc {
        line: start.line + line,
        column: 1,
        len: 0,
        ..start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_variables_are_errors() {
        let template = Spanned::new(String::from("a\n{{ missing }}\n"), Loc { source: 0, line: 10, column: 3, len: 1 });
        let mut problems = Problems::default();
        let rendered = Renderer::default().render(&template, &minijinja::context! {}, &mut problems);
        assert!(rendered.is_none());
        assert_eq!(problems.iter().next().unwrap().loc.unwrap().line, 12);
    }
}
