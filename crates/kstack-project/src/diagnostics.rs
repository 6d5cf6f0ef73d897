//! Problems found in user input, with the file, line and column they point at.
//!
//! Input is checked in full before anything happens, so problems are collected into
//! [`Problems`] rather than returned one at a time; the CLI renders them all at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// Index of a loaded file in [`Sources`].
pub type SourceId = usize;

/// Every input file read for one command, so a location can be rendered with its text.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: Arc<String>,
}

impl Sources {
    pub fn add(&mut self, path: &Path, text: String) -> SourceId {
        self.files.push(SourceFile { path: path.to_path_buf(), text: Arc::new(text) });
        self.files.len() - 1
    }

    pub fn get(&self, id: SourceId) -> &SourceFile {
        &self.files[id]
    }

    pub fn find(&self, path: &Path) -> Option<SourceId> {
        self.files.iter().position(|f| f.path == path)
    }
}

/// A position in an input file. Lines and columns count from 1, as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub source: SourceId,
    pub line: usize,
    pub column: usize,
    /// Length in characters of the marked text, for underlining.
    pub len: usize,
}

impl Loc {
    pub fn with_len(self, len: usize) -> Loc {
        Loc { len, ..self }
    }
}

/// A value read from input together with where it was written.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Loc,
}

impl<T> Spanned<T> {
    pub fn new(value: T, loc: Loc) -> Self {
        Spanned { value, loc }
    }
}

impl<T: fmt::Display> fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// One thing wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub loc: Option<Loc>,
    /// Text shown under the marked span, usually the offending value.
    pub label: String,
    pub hint: Option<String>,
}

/// Problems collected while loading and checking input.
#[derive(Debug, Default, Clone)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, loc: Loc, message: impl Into<String>) -> ProblemBuilder<'_> {
        self.push(Some(loc), message.into())
    }

    /// A problem that is not about one place in a file, such as a missing file.
    pub fn general(&mut self, message: impl Into<String>) -> ProblemBuilder<'_> {
        self.push(None, message.into())
    }

    /// A problem at `loc` when there is one, such as a name given either in a file or on the
    /// command line.
    pub fn at(&mut self, loc: Option<Loc>, message: impl Into<String>) -> ProblemBuilder<'_> {
        self.push(loc, message.into())
    }

    fn push(&mut self, loc: Option<Loc>, message: String) -> ProblemBuilder<'_> {
        self.list.push(Problem { message, loc, label: String::from("here"), hint: None });
        ProblemBuilder { problem: self.list.last_mut().expect("just pushed") }
    }

    /// Adds problems found by another reader.
    pub fn extend(&mut self, other: Problems) {
        self.list.extend(other.list);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter()
    }

    /// Problems in file order, so output reads top to bottom, without repeats.
    pub fn into_sorted(mut self) -> Vec<Problem> {
        self.list.sort_by_key(|problem| problem.loc);
        self.list.dedup();
        self.list
    }
}

/// Adds detail to a problem just recorded.
pub struct ProblemBuilder<'a> {
    problem: &'a mut Problem,
}

impl ProblemBuilder<'_> {
    pub fn label(self, label: impl Into<String>) -> Self {
        self.problem.label = label.into();
        self
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        self.problem.hint = Some(hint.into());
        self
    }
}

/// Suggests the closest of `candidates` to `wrong`, if any is close enough to be a typo.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A hint listing the accepted values, with the likely intended one first when there is one.
pub fn expected_one_of(wrong: &str, candidates: &[&str]) -> String {
    match did_you_mean(wrong, candidates.iter().copied()) {
        Some(close) => format!("did you mean `{close}`? (expected one of: {})", candidates.join(", ")),
        None if candidates.is_empty() => String::from("nothing is defined yet"),
        None => format!("expected one of: {}", candidates.join(", ")),
    }
}

/// A problem ready for miette to render, with the text of its file attached.
#[derive(Debug)]
pub struct ProblemReport {
    problem: Problem,
    source: Option<NamedSource<Arc<String>>>,
    span: Option<SourceSpan>,
}

impl ProblemReport {
    pub fn new(problem: Problem, sources: &Sources) -> Self {
        let Some(loc) = problem.loc else {
            return ProblemReport { problem, source: None, span: None };
        };
        let file = sources.get(loc.source);
        let span = span_of(&file.text, loc);
        let name = display_path(&file.path);
        ProblemReport { problem, source: Some(NamedSource::new(name, file.text.clone()).with_language("yaml")), span: Some(span) }
    }
}

/// Paths are shown relative to the working directory when they are under it.
pub fn display_path(path: &Path) -> String {
    let relative = std::env::current_dir().ok().and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative.unwrap_or_else(|| path.to_path_buf()).display().to_string()
}

/// Byte span of a line/column location, clamped to the text.
fn span_of(text: &str, loc: Loc) -> SourceSpan {
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if index + 1 == loc.line {
            let line_body = line.trim_end_matches(['\n', '\r']);
            let start = line_body.char_indices().nth(loc.column.saturating_sub(1)).map_or(line_body.len(), |(i, _)| i);
            let end = line_body[start..].char_indices().nth(loc.len.max(1)).map_or(line_body.len(), |(i, _)| start + i);
            return SourceSpan::new((offset + start).into(), end - start);
        }
        offset += line.len();
    }
    SourceSpan::new(text.len().into(), 0)
}

impl fmt::Display for ProblemReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for ProblemReport {}

impl Diagnostic for ProblemReport {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem.hint.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        let label = LabeledSpan::new_with_span(Some(self.problem.label.clone()), span);
        Some(Box::new(std::iter::once(label)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_of_counts_lines_and_columns_from_one() {
        let text = "a: 1\nbb: two\n";
        let loc = Loc { source: 0, line: 2, column: 5, len: 3 };
        let span = span_of(text, loc);
        assert_eq!(&text[span.offset()..span.offset() + span.len()], "two");
    }

    #[test]
    fn did_you_mean_finds_a_typo_and_ignores_strangers() {
        assert_eq!(did_you_mean("instanse_type", ["instance_type", "image"]), Some("instance_type"));
        assert_eq!(did_you_mean("zzz", ["instance_type", "image"]), None);
    }
}
