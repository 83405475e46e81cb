//! Printing secrets as a table, JSON, TSV or a bare value.

use crate::conn::Output;
use crate::errors::{CliResult, io_error};
use crate::when;
use keyvault_secrets::{DeletedSecret, KeyVaultSecret, SecretProperties};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// A secret as the CLI prints it (JSON field names in camelCase; dates in RFC 3339).
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub name: String,
    pub version: Option<String>,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub content_type: Option<String>,
    pub enabled: Option<bool>,
    pub not_before: Option<String>,
    pub expires: Option<String>,
    pub created: Option<String>,
    pub updated: Option<String>,
    pub recovery_level: Option<String>,
    pub recoverable_days: Option<i32>,
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_purge_date: Option<String>,
}

impl View {
    pub fn from_properties(p: &SecretProperties) -> Self {
        View {
            name: p.name.clone(),
            version: p.version.clone(),
            id: p.id.clone(),
            value: None,
            content_type: p.content_type.clone(),
            enabled: p.enabled,
            not_before: p.not_before.map(when::format),
            expires: p.expires_on.map(when::format),
            created: p.created_on.map(when::format),
            updated: p.updated_on.map(when::format),
            recovery_level: p.recovery_level.as_ref().map(|l| l.to_string()),
            recoverable_days: p.recoverable_days,
            tags: p.tags.clone(),
            managed: p.managed,
            key_id: p.key_id.clone(),
            ..Default::default()
        }
    }

    /// With the value (only `show` prints one).
    pub fn from_secret(s: &KeyVaultSecret) -> Self {
        View {
            value: Some(s.value().unwrap_or_default().to_string()),
            ..Self::from_properties(&s.properties)
        }
    }

    pub fn from_deleted(d: &DeletedSecret) -> Self {
        View {
            recovery_id: d.recovery_id.clone(),
            deleted_date: d.deleted_on.map(when::format),
            scheduled_purge_date: d.scheduled_purge_date.map(when::format),
            ..Self::from_properties(&d.properties)
        }
    }
}

/// A column of table and TSV output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Name,
    Version,
    Value,
    Enabled,
    ContentType,
    NotBefore,
    Expires,
    Created,
    Updated,
    RecoveryLevel,
    Tags,
    DeletedDate,
    ScheduledPurgeDate,
    RecoveryId,
    Id,
}

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Name => "Name",
            Col::Version => "Version",
            Col::Value => "Value",
            Col::Enabled => "Enabled",
            Col::ContentType => "Content type",
            Col::NotBefore => "Not before",
            Col::Expires => "Expires",
            Col::Created => "Created",
            Col::Updated => "Updated",
            Col::RecoveryLevel => "Recovery level",
            Col::Tags => "Tags",
            Col::DeletedDate => "Deleted",
            Col::ScheduledPurgeDate => "Purge date",
            Col::RecoveryId => "Recovery id",
            Col::Id => "Id",
        }
    }

    fn cell(self, v: &View) -> String {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        match self {
            Col::Name => v.name.clone(),
            Col::Version => s(&v.version),
            Col::Value => s(&v.value),
            Col::Enabled => v.enabled.map(|b| b.to_string()).unwrap_or_default(),
            Col::ContentType => s(&v.content_type),
            Col::NotBefore => s(&v.not_before),
            Col::Expires => s(&v.expires),
            Col::Created => s(&v.created),
            Col::Updated => s(&v.updated),
            Col::RecoveryLevel => s(&v.recovery_level),
            Col::Tags => v
                .tags
                .iter()
                .map(|(k, v)| format!("{}={}", tag_escape(k), tag_escape(v)))
                .collect::<Vec<_>>()
                .join(","),
            Col::DeletedDate => s(&v.deleted_date),
            Col::ScheduledPurgeDate => s(&v.scheduled_purge_date),
            Col::RecoveryId => s(&v.recovery_id),
            Col::Id => v.id.clone(),
        }
    }
}

/// Columns of one secret's details.
pub const DETAIL: &[Col] = &[
    Col::Name,
    Col::Version,
    Col::Enabled,
    Col::ContentType,
    Col::NotBefore,
    Col::Expires,
    Col::Created,
    Col::Updated,
    Col::RecoveryLevel,
    Col::Tags,
    Col::Id,
];
/// Columns of one secret's details with its value (`show`).
pub const DETAIL_WITH_VALUE: &[Col] = &[
    Col::Name,
    Col::Version,
    Col::Value,
    Col::Enabled,
    Col::ContentType,
    Col::NotBefore,
    Col::Expires,
    Col::Created,
    Col::Updated,
    Col::RecoveryLevel,
    Col::Tags,
    Col::Id,
];
/// Columns of a deleted secret's details.
pub const DELETED_DETAIL: &[Col] = &[
    Col::Name,
    Col::Version,
    Col::Enabled,
    Col::ContentType,
    Col::Expires,
    Col::Updated,
    Col::Tags,
    Col::DeletedDate,
    Col::ScheduledPurgeDate,
    Col::RecoveryId,
    Col::RecoveryLevel,
    Col::Id,
];
/// `secret list`.
pub const LIST: &[Col] = &[
    Col::Name,
    Col::Enabled,
    Col::ContentType,
    Col::Expires,
    Col::Updated,
    Col::Tags,
];
/// `secret list-versions`.
pub const VERSIONS: &[Col] = &[
    Col::Version,
    Col::Enabled,
    Col::ContentType,
    Col::NotBefore,
    Col::Expires,
    Col::Created,
    Col::Updated,
    Col::Tags,
];
/// `secret list-deleted`.
pub const DELETED_LIST: &[Col] = &[
    Col::Name,
    Col::DeletedDate,
    Col::ScheduledPurgeDate,
    Col::Enabled,
    Col::ContentType,
    Col::Tags,
];

impl Col {
    /// The cell as a TSV field. The tags are escaped already (their escapes include TSV's), and are not
    /// escaped twice.
    fn tsv_cell(self, v: &View) -> String {
        match self {
            Col::Tags => self.cell(v),
            _ => tsv_escape(&self.cell(v)),
        }
    }
}

/// Escape a tag's name or value for the Tags column, `name=value` pairs joined by `,`: a backslash before
/// `\`, `,` and `=`, and the characters [`unsafe_char`] names as escapes (`\t`, `\n`, `\u{1b}`, …; so the column
/// is also a valid TSV field, and safe on a terminal). JSON output has the tags as they are.
fn tag_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | ',' | '=' => {
                out.push('\\');
                out.push(c);
            }
            c if unsafe_char(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// Escape a TSV field: a backslash doubled, and the characters [`unsafe_char`] names as escapes (`\t`, `\n`,
/// `\r`, `\u{1b}`, `\u{202e}`, …): a field holds no tab or line break, and nothing a terminal would act on.
pub fn tsv_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if unsafe_char(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// Characters not printed as they are to a terminal: control characters (C0, DEL, C1: escape sequences, a
/// carriage return that overwrites the line, a bell), the line and paragraph separators (U+2028, U+2029:
/// line breaks to many readers, Python's `splitlines` among them), and the invisible format characters that
/// hide or reorder text (Unicode's category Cf: the soft hyphen, the bidirectional marks and controls, the zero-
/// width characters, the byte-order mark, …) or show as nothing (Hangul fillers, the tag block): the set the
/// server refuses in principal ids ([`keyvault_types::rules::is_invisible_format`]).
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || keyvault_types::rules::is_invisible_format(c)
        // Arabic and Syriac marks that prefix a number (category Cf as well).
        || matches!(c, '\u{600}'..='\u{605}' | '\u{6dd}' | '\u{70f}')
}

/// Pretty JSON for standard output; on a terminal, [`json_for_terminal`].
pub fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        json_for_terminal(&text).unwrap_or(text)
    } else {
        text
    }
}

/// JSON text with every [`unsafe_char`] that JSON leaves as it is (DEL, C1 controls, bidirectional and
/// invisible format characters: serde escapes C0 already, and the text's own line breaks are not in strings)
/// written as `\uXXXX` escapes: the same JSON, which a terminal shows without acting on it. `None` when
/// there is nothing to escape.
pub fn json_for_terminal(text: &str) -> Option<String> {
    if !text.chars().any(|c| c >= ' ' && unsafe_char(c)) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c >= ' ' && unsafe_char(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Text made safe for a terminal: each [`unsafe_char`] shown as its Rust escape (`\u{1b}`, `\n`, `\u{202e}`).
/// Table cells and every message on standard error go through it.
pub fn terminal_safe(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// What `-o value` prints for an item of a given command.
pub type ValueOf = fn(&View) -> String;

/// Print a list of items.
pub fn print_list(
    out: &mut dyn Write,
    format: Output,
    views: &[View],
    cols: &[Col],
    value_of: ValueOf,
) -> CliResult {
    match format {
        Output::Json => {
            let text = json_text(views);
            writeln!(out, "{text}").map_err(io_error)
        }
        Output::Tsv => {
            for v in views {
                let line: Vec<String> = cols.iter().map(|c| c.tsv_cell(v)).collect();
                writeln!(out, "{}", line.join("\t")).map_err(io_error)?;
            }
            Ok(())
        }
        Output::Value => {
            for v in views {
                writeln!(out, "{}", value_of(v)).map_err(io_error)?;
            }
            Ok(())
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| cols.iter().map(|c| terminal_safe(&c.cell(v))).collect())
                .collect();
            let headers: Vec<String> = cols.iter().map(|c| c.header().to_string()).collect();
            let widths: Vec<usize> = (0..cols.len())
                .map(|i| {
                    rows.iter()
                        .map(|r| width(&r[i]))
                        .chain([width(&headers[i])])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[String]| {
                let mut s = String::new();
                for (i, c) in cells.iter().enumerate() {
                    if i + 1 == cells.len() {
                        s.push_str(c);
                    } else {
                        s.push_str(c);
                        s.push_str(&" ".repeat(widths[i] - width(c) + 2));
                    }
                }
                s.trim_end().to_string()
            };
            writeln!(out, "{}", line(&headers)).map_err(io_error)?;
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            writeln!(out, "{}", line(&rule)).map_err(io_error)?;
            for r in &rows {
                writeln!(out, "{}", line(r)).map_err(io_error)?;
            }
            Ok(())
        }
    }
}

/// Print one item: JSON object, a TSV line, the bare value, or a two-column table.
pub fn print_one(
    out: &mut dyn Write,
    format: Output,
    view: &View,
    cols: &[Col],
    value_of: ValueOf,
) -> CliResult {
    match format {
        Output::Json => {
            let text = json_text(view);
            writeln!(out, "{text}").map_err(io_error)
        }
        Output::Tsv | Output::Value => {
            print_list(out, format, std::slice::from_ref(view), cols, value_of)
        }
        Output::Table => {
            let w = cols.iter().map(|c| width(c.header())).max().unwrap_or(0);
            for c in cols {
                let cell = terminal_safe(&c.cell(view));
                let h = c.header();
                writeln!(out, "{h}{}  {cell}", " ".repeat(w - width(h))).map_err(io_error)?;
            }
            Ok(())
        }
    }
}

pub fn value_id(v: &View) -> String {
    v.id.clone()
}

pub fn value_name(v: &View) -> String {
    v.name.clone()
}

pub fn value_version(v: &View) -> String {
    v.version.clone().unwrap_or_default()
}

pub fn value_value(v: &View) -> String {
    v.value.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a terminal, JSON keeps no character a terminal would act on, and still reads as the same value.
    #[test]
    fn json_for_a_terminal_escapes_what_json_leaves_raw() {
        let value = serde_json::json!({"v": "a\u{9b}31m\u{7f}\u{202e}b\u{e0041}\n\u{1b}é"});
        let text = json_for_terminal(&serde_json::to_string_pretty(&value).unwrap()).unwrap();
        let inner: String = text.lines().filter(|l| l.contains("\"v\"")).collect();
        assert!(!inner.chars().any(unsafe_char), "{inner:?}");
        assert!(
            inner.contains("\\u009b") && inner.contains("\\udb40\\udc41"),
            "{inner}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    #[test]
    fn terminal_unsafe_characters_are_escaped() {
        let hostile = "a\u{1b}]0;t\u{7}\u{1b}[2J\rb\u{7f}\u{9b}c\u{202e}d\u{200b}e\u{2066}f";
        let safe = r"a\u{1b}]0;t\u{7}\u{1b}[2J\rb\u{7f}\u{9b}c\u{202e}d\u{200b}e\u{2066}f";
        assert_eq!(terminal_safe(hostile), safe);
        assert_eq!(tsv_escape(hostile), safe);
        assert_eq!(tag_escape(hostile), safe);
        // Parseable: a backslash of the text is doubled in TSV, so an escape is never ambiguous.
        assert_eq!(tsv_escape(r"\u{1b}"), r"\\u{1b}");
        // Separators and format characters that split or hide text in other readers.
        let more = "a\u{2028}b\u{2029}c\u{61c}d\u{feff}e\u{2060}f\u{ad}g";
        let escaped = r"a\u{2028}b\u{2029}c\u{61c}d\u{feff}e\u{2060}f\u{ad}g";
        assert_eq!(tsv_escape(more), escaped);
        assert_eq!(tsv_escape(more).lines().count(), 1);
        // The tag block's characters, unassigned ones included (they display as nothing).
        assert_eq!(
            terminal_safe("a\u{e0041}\u{e0080}\u{e0fff}\u{e0000}\u{e0010}b"),
            r"a\u{e0041}\u{e0080}\u{e0fff}\u{e0000}\u{e0010}b"
        );
        // Other characters that show as nothing: Hangul fillers, shorthand format controls, musical ones.
        assert_eq!(
            terminal_safe("a\u{3164}\u{ffa0}\u{1bca0}\u{1d173}\u{2065}b"),
            r"a\u{3164}\u{ffa0}\u{1bca0}\u{1d173}\u{2065}b"
        );
        // Other text is kept, accents and emoji included.
        assert_eq!(terminal_safe("é ü 🔑 名前"), "é ü 🔑 名前");
    }

    #[test]
    fn escapes() {
        assert_eq!(tsv_escape("a\tb\nc\\"), "a\\tb\\nc\\\\");
        assert_eq!(terminal_safe("a\nb"), "a\\nb");
        assert_eq!(tag_escape(r"a=x,b\y"), r"a\=x\,b\\y");
        assert_eq!(tag_escape("t\tn\n"), r"t\tn\n");
    }

    #[test]
    fn tags_are_unambiguous() {
        let view = |tags: &[(&str, &str)]| View {
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let one = view(&[("a", "x,b=y")]);
        let two = view(&[("a", "x"), ("b", "y")]);
        assert_eq!(Col::Tags.cell(&one), r"a=x\,b\=y");
        assert_eq!(Col::Tags.cell(&two), "a=x,b=y");
        // In TSV the column is escaped once: a backslash in a tag is two, not four.
        let odd = view(&[("k", "back\\slash\ttab")]);
        assert_eq!(Col::Tags.tsv_cell(&odd), r"k=back\\slash\ttab");
    }

    #[test]
    fn table_layout() {
        let views = vec![
            View {
                name: "a".into(),
                enabled: Some(true),
                ..Default::default()
            },
            View {
                name: "longer-name".into(),
                tags: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
        ];
        let mut out = Vec::new();
        print_list(
            &mut out,
            Output::Table,
            &views,
            &[Col::Name, Col::Enabled, Col::Tags],
            value_name,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Name         Enabled  Tags\n-----------  -------  ----\na            true\nlonger-name           k=v\n"
        );
    }
}
