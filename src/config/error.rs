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
    /// The dotted path of the field, e.g. `key[2].retain` (array indices are 0-based). A syntax
    /// error outside any parsed field names the table it is in and the key written on its line
    /// (`zenml.url`), or `(top level)` before the first table.
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
    /// Other users may write the policy file, and so decide where the keys go.
    #[error(
        "{}: permissions {mode:04o} for the policy file are too open: other users may write it, and so send the keys to a store of their own or run a hook of their own with them; run chmod o-w {}",
        path.display(),
        path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    /// Other users may put another policy file in its place.
    #[error(
        "{}: permissions {mode:04o} for directory {} of the policy file are too open: other users may replace the file there with one of their own, which could send the keys anywhere; run chmod o-w {} (or chmod +t {})",
        path.display(),
        dir.display(),
        dir.display(),
        dir.display()
    )]
    Replaceable {
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },
    /// Every problem found, in file order (at least one).
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The problems with a position; empty when the file could not be read at all, or was
    /// refused for who may change it.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Writable { .. }
            | ConfigError::Replaceable { .. } => &[],
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
                    } else if echoable(k) {
                        write!(f, "{k:?}")?;
                    } else {
                        // A damaged file can turn whole lines into one quoted key (an opening
                        // `'''` swallows what follows it, a misplaced secret too): never echoed.
                        write!(f, "<a key of {} characters>", k.chars().count())?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Longest quoted key a diagnostic repeats: a store name, not a paragraph.
const MAX_ECHOED_KEY: usize = 64;

/// Whether a quoted key is a name to repeat (one short line, no quotes inside), not text a
/// damaged file swept into a key.
fn echoable(k: &str) -> bool {
    k.chars().count() <= MAX_ECHOED_KEY
        && !k
            .chars()
            .any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '='))
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

    /// A diagnostic at a byte offset (a value serde refused), named by the innermost field there,
    /// else by where it is written ([`Locator::enclosing`]).
    pub fn at_offset(&self, offset: usize, message: String) -> Diagnostic {
        self.at_offset_in(offset, message, false)
    }

    /// A syntax error at a byte offset: like `at_offset`, but never named by a key inside an
    /// inline table, which the error may have made out of the lines after it.
    pub fn at_syntax_error(&self, offset: usize, message: String) -> Diagnostic {
        self.at_offset_in(offset, message, true)
    }

    fn at_offset_in(&self, offset: usize, message: String, syntax: bool) -> Diagnostic {
        let field = match self.path_at(offset, syntax) {
            Some(p) => p.to_string(),
            None => self.enclosing(offset),
        };
        self.diagnostic(offset, field, message)
    }

    /// The field of an offset no parsed field holds (a duplicate key, a line toml's recovery
    /// dropped): the table whose `[header]` comes last before it, plus the bare key written at
    /// the start of its line; `(top level)` when neither exists.
    fn enclosing(&self, offset: usize) -> String {
        let mut best = None;
        self.headers(self.root.get_ref(), &FieldPath::root(), offset, &mut best);
        let mut path = best.map_or_else(FieldPath::root, |(_, p)| p);
        if let Some(key) = key_on_line(self.source, offset) {
            path = path.key(key);
        }
        if path.0.is_empty() {
            TOP_LEVEL.to_owned()
        } else {
            path.to_string()
        }
    }

    /// The `[header]` (or `[[header]]`) table starting last at or before `offset`; inline tables
    /// and dotted keys have no header and do not count.
    fn headers(
        &self,
        table: &DeTable<'_>,
        path: &FieldPath,
        offset: usize,
        best: &mut Option<(usize, FieldPath)>,
    ) {
        for (k, v) in table.iter() {
            let here = path.key(k.get_ref());
            match v.get_ref() {
                DeValue::Table(t) => {
                    self.consider(v.span().start, &here, offset, best);
                    self.headers(t, &here, offset, best);
                }
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            let here = here.index(i);
                            self.consider(item.span().start, &here, offset, best);
                            self.headers(t, &here, offset, best);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Keeps `here` when its table starts with a header at or before `offset`, later than `best`.
    fn consider(
        &self,
        start: usize,
        here: &FieldPath,
        offset: usize,
        best: &mut Option<(usize, FieldPath)>,
    ) {
        let header = self.source.as_bytes().get(start) == Some(&b'[');
        if header && start <= offset && best.as_ref().is_none_or(|(s, _)| start >= *s) {
            *best = Some((start, here.clone()));
        }
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

    fn path_at(&self, offset: usize, syntax: bool) -> Option<FieldPath> {
        let mut search = Search {
            offset,
            best: None,
            // A syntax error can turn the lines after it into keys of an inline table that
            // never closed (a secret among them): it is named by the field the table belongs to.
            stop_at_inline: syntax.then_some(self.source),
        };
        search.table(self.root.get_ref(), &FieldPath::root());
        search.best.map(|(_, p)| p)
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Finds the smallest key or value span holding `offset`. Every table is searched: the span of a
/// `[header]` table covers only its header, not the entries below it.
struct Search<'s> {
    offset: usize,
    best: Option<(usize, FieldPath)>,
    /// When set (the source), inline tables are not searched inside.
    stop_at_inline: Option<&'s str>,
}

impl Search<'_> {
    fn consider(&mut self, span: Range<usize>, here: &FieldPath) {
        let smaller = self.best.as_ref().is_none_or(|(len, _)| span.len() < *len);
        if contains(&span, self.offset) && smaller {
            self.best = Some((span.len(), here.clone()));
        }
    }

    fn table(&mut self, table: &DeTable<'_>, path: &FieldPath) {
        for (k, v) in table.iter() {
            let here = path.key(k.get_ref());
            self.consider(k.span(), &here);
            self.consider(v.span(), &here);
            // Whatever is written inside an inline secret field (`token = { "s.abc" ...`) is
            // named by that field: a key in there may be the secret itself.
            if !INLINE_SECRETS.contains(&k.get_ref().as_ref()) {
                self.value(v.get_ref(), v.span().start, &here);
            }
        }
    }

    fn value(&mut self, value: &DeValue<'_>, start: usize, path: &FieldPath) {
        match value {
            DeValue::Table(t) => {
                let inline = self
                    .stop_at_inline
                    .is_some_and(|src| src.as_bytes().get(start) == Some(&b'{'));
                if !inline {
                    self.table(t, path);
                }
            }
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let here = path.index(i);
                    self.consider(item.span(), &here);
                    self.value(item.get_ref(), item.span().start, &here);
                }
            }
            _ => {}
        }
    }
}

/// Fields that would hold a secret inline (rejected, with a pointer to `*_env`/`*_file`).
const INLINE_SECRETS: &[&str] = &[
    "password",
    "api_key",
    "token",
    "role_id",
    "secret_id",
    "jwt",
];

/// What a diagnostic names when the problem is before any table and on no `key =` line.
const TOP_LEVEL: &str = "(top level)";

/// The bare key written at the start of the line holding `offset` (`key = ...`), if any.
fn key_on_line(source: &str, offset: usize) -> Option<&str> {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = source[start..].split('\n').next()?.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(line.len());
    let (key, rest) = line.split_at(end);
    (!key.is_empty() && rest.trim_start().starts_with('=')).then_some(key)
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
        // What a damaged file swept into a key is not repeated: it may hold a secret.
        let swept = "l = 1\npassword = \"hunter2\"\n";
        let p = FieldPath::root().key("zenml").key(swept);
        assert_eq!(p.to_string(), "zenml.<a key of 27 characters>");
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

    /// toml's own errors at a spot its recovery left out of the document still name a field:
    /// the table they are in and the key on their line, or the top level.
    #[test]
    fn a_syntax_error_outside_any_parsed_field_names_where_it_is() {
        let field = |src: &str, at: &str| {
            let (doc, _) = DeTable::parse_recoverable(src);
            let loc = Locator::new(src, PathBuf::from("f.toml"), &doc);
            loc.at_syntax_error(src.find(at).unwrap(), "m".into()).field
        };
        let dup = "[zenml]\nurl = \"x\"\nurl = \"y\"\n";
        assert_eq!(field(dup, "url = \"y"), "zenml.url");
        let keys =
            "[zenml]\nurl = \"x\"\n\n[[key]]\nname = \"a\"\n\n[[key]]\nname = \"b\"\nname = 1\n";
        assert_eq!(field(keys, "name = 1"), "key[1].name");
        let inline = "[stores.v]\nauth = { method = \"token\" }\nbad line\n";
        assert_eq!(field(inline, "bad line"), "stores.v");
        assert_eq!(field("\\u0000\n", "\\u0000"), "(top level)");
        assert_eq!(field("every = 30d\n", "30d"), "every");
        // A damaged secret field names the field, never what is inside it.
        let secret = "[stores.v]\ntoken = {\"s.abcdef\"\n";
        assert_eq!(field(secret, "s.abcdef"), "stores.v.token");
        // An inline table left open swallows the lines after it: they are named by its field.
        let open = "[zenml]\ntimeout = { method = \"x\"\npassword = \"hunter2\"\n";
        assert_eq!(field(open, "password"), "zenml.timeout");
    }
}
