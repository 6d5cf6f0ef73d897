//! How outputs are shown: all of them or one (`kstack output`), and after an apply.

use kstack::ops::OpsError;
use kstack::outputs::{Outputs, FORMAT_VERSION};

use super::{term, CliError};

/// Prints all outputs (`name = value` lines, or JSON), or the one `name` asks for: a value
/// bare, so `$(kstack output dev NAME)` is the value itself.
pub(super) fn print(outputs: &Outputs, name: Option<&str>, json: bool) -> Result<(), CliError> {
    let Some(name) = name else {
        if json {
            term::outln(format_args!("{:#}", serde_json::json!({ "format_version": FORMAT_VERSION, "outputs": outputs })));
        } else {
            print_lines(outputs, "");
        }
        return Ok(());
    };
    let Some(value) = outputs.get(name) else {
        let names = outputs.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(CliError::invalid(
            format!("`{name}` is not an output of `{}`", outputs.environment),
            Some(&kstack::diagnostics::expected_one_of(name, &names)),
        ));
    };
    match value {
        serde_json::Value::String(text) if !json => term::outln(format_args!("{text}")),
        value if json => term::outln(format_args!("{value:#}")),
        _ => print_lines(outputs, name),
    }
    Ok(())
}

/// What an apply ends with, as Terraform's does: the outputs under a heading. Not finding
/// them is a warning: the apply itself succeeded.
pub(super) fn after_apply(outputs: Result<Option<Outputs>, OpsError>) {
    match outputs {
        Ok(Some(outputs)) => {
            term::outln(format_args!("\nOutputs:\n"));
            print_lines(&outputs, "");
        }
        Ok(None) => {}
        Err(error) => term::warning(&format!("cannot show the outputs: {error}")),
    }
}

/// `name = value` for each output at or under `prefix`.
fn print_lines(outputs: &Outputs, prefix: &str) {
    let under = |name: &str| prefix.is_empty() || name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'));
    for (name, value) in outputs.flattened().into_iter().filter(|(name, _)| under(name)) {
        term::outln(format_args!("{name} = {value}"));
    }
}
