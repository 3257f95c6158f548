//! Diagnostics for the policy file: where a problem is (file, line, column, dotted field path) and
//! what to do about it, plus the lookup from a field path or a byte offset to a place in the file.
//! Display gives one `FILE:LINE:COL: FIELD: MESSAGE` line per problem, the shape editors jump to.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a policy file. `line` and `column` are 1-based (column counts characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The dotted path of the field, e.g. `key[2].retain` (array indices are 0-based); empty
    /// when the problem is not inside any field (a syntax error between tables).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl Diagnostic {
    /// The line of something the file is allowed to do but that must be said:
    /// `FILE:LINE:COL: FIELD: warning: MESSAGE`.
    pub fn warning(&self) -> String {
        Diagnostic {
            message: format!("warning: {}", self.message),
            ..self.clone()
        }
        .to_string()
    }
}

/// Why a policy file was rejected. The whole file is rejected; nothing of it applies.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the policy file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order (at least one).
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The problems with a position; empty when the file could not be read at all.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

struct DisplayLines<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A field's place in the document: `stores.vault.auth.token_env`, `key[2].retain`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Segment::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    // Store names are free-form; quote them the way TOML would need them.
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of an entry a diagnostic points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Point {
    /// The value (a bad duration, a bad URL).
    Value,
    /// The key (a field that must not be there).
    Key,
}

/// Maps field paths and byte offsets of one document to lines and columns.
pub(super) struct Locator<'a> {
    source: &'a str,
    file: PathBuf,
    root: &'a Spanned<DeTable<'a>>,
}

impl<'a> Locator<'a> {
    pub fn new(source: &'a str, file: PathBuf, root: &'a Spanned<DeTable<'a>>) -> Locator<'a> {
        Locator { source, file, root }
    }

    /// A diagnostic at `path`; a path absent from the file (a missing field) points at the
    /// closest enclosing table that is there.
    pub fn at(&self, path: &FieldPath, point: Point, message: String) -> Diagnostic {
        let offset = self.span_of(path, point).map_or(0, |s| s.start);
        self.diagnostic(offset, path.to_string(), message)
    }

    /// A diagnostic at a byte offset (toml's own errors), named by the innermost field there.
    pub fn at_offset(&self, offset: usize, message: String) -> Diagnostic {
        let field = self
            .path_at(offset)
            .map(|p| p.to_string())
            .unwrap_or_default();
        self.diagnostic(offset, field, message)
    }

    fn diagnostic(&self, offset: usize, field: String, message: String) -> Diagnostic {
        let (line, column) = line_column(self.source, offset);
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            field,
            // One diagnostic, one line.
            message: message.replace('\n', "; "),
        }
    }

    fn span_of(&self, path: &FieldPath, point: Point) -> Option<Range<usize>> {
        let mut best = self.root.span();
        let mut value: &DeValue<'_> = &DeValue::Boolean(false);
        let mut table: Option<&DeTable<'_>> = Some(self.root.get_ref());
        let last = path.0.len().saturating_sub(1);
        for (i, seg) in path.0.iter().enumerate() {
            let next = match (seg, table, value) {
                (Segment::Key(k), Some(t), _) => match t.get_key_value(k.as_str()) {
                    Some((key, v)) => {
                        if i == last && point == Point::Key {
                            return Some(key.span());
                        }
                        Some(v)
                    }
                    None => None,
                },
                (Segment::Index(n), None, DeValue::Array(a)) => a.get(*n),
                _ => None,
            };
            let Some(next) = next else { break };
            best = next.span();
            value = next.get_ref();
            table = match value {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        Some(best)
    }

    fn path_at(&self, offset: usize) -> Option<FieldPath> {
        let mut best: Option<(usize, FieldPath)> = None;
        search_table(self.root.get_ref(), &FieldPath::root(), offset, &mut best);
        best.map(|(_, p)| p)
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Finds the smallest key or value span holding `offset`. Every table is searched: the span of a
/// `[header]` table covers only its header, not the entries below it.
fn search_table(
    table: &DeTable<'_>,
    path: &FieldPath,
    offset: usize,
    best: &mut Option<(usize, FieldPath)>,
) {
    for (k, v) in table.iter() {
        let here = path.key(k.get_ref());
        for span in [k.span(), v.span()] {
            let smaller = best.as_ref().is_none_or(|(len, _)| span.len() < *len);
            if contains(&span, offset) && smaller {
                *best = Some((span.len(), here.clone()));
            }
        }
        search_value(v.get_ref(), &here, offset, best);
    }
}

fn search_value(
    value: &DeValue<'_>,
    path: &FieldPath,
    offset: usize,
    best: &mut Option<(usize, FieldPath)>,
) {
    match value {
        DeValue::Table(t) => search_table(t, path, offset, best),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let here = path.index(i);
                let span = item.span();
                let smaller = best.as_ref().is_none_or(|(len, _)| span.len() < *len);
                if contains(&span, offset) && smaller {
                    *best = Some((span.len(), here.clone()));
                }
                search_value(item.get_ref(), &here, offset, best);
            }
        }
        _ => {}
    }
}

/// 1-based line and character column of a byte offset (clamped into the text).
pub(super) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_characters() {
        let s = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_column(s, 10), (2, 4));
        assert_eq!(line_column(s, 10_000), (3, 1));
    }

    #[test]
    fn paths_render_like_toml() {
        let p = FieldPath::root().key("key").index(2).key("retain");
        assert_eq!(p.to_string(), "key[2].retain");
        let p = FieldPath::root()
            .key("stores")
            .key("my vault")
            .key("address");
        assert_eq!(p.to_string(), "stores.\"my vault\".address");
    }

    #[test]
    fn a_missing_field_points_at_its_table() {
        let src = "[zenml]\nurl = \"x\"\n\n[[key]]\nname = \"a\"\n\n[[key]]\nname = \"b\"\n";
        let doc = DeTable::parse(src).unwrap();
        let loc = Locator::new(src, PathBuf::from("f.toml"), &doc);
        let d = loc.at(
            &FieldPath::root().key("key").index(1).key("retain"),
            Point::Value,
            "m".into(),
        );
        assert_eq!((d.line, d.column), (7, 1));
        assert_eq!(d.field, "key[1].retain");
        let d = loc.at(
            &FieldPath::root().key("key").index(1).key("name"),
            Point::Value,
            "m".into(),
        );
        assert_eq!((d.line, d.column), (8, 8));
        let d = loc.at(
            &FieldPath::root().key("zenml").key("url"),
            Point::Key,
            "m".into(),
        );
        assert_eq!((d.line, d.column), (2, 1));
        let d = loc.at_offset(src.find("\"b\"").unwrap(), "m".into());
        assert_eq!(d.field, "key[1].name");
    }
}
