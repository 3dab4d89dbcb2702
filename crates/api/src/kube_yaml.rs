//! YAML documents as `kubectl` reads and writes them: the one implementation behind every
//! YAML stream streamkeeper reads (`render -f`, `inject -f`, `inject --streams`) and every YAML
//! it writes for kubectl or a sidecar (`render`, `inject`, `crdgen`, the ConfigMaps the
//! controller applies).
//!
//! Three jobs serde_yaml_ng does not do for us:
//! - [`split`] cuts a multi-document stream into its documents *as text*, so a document we do not
//!   change is written back byte for byte (comments and formatting included); [`parse`] parses
//!   each with the stream's own line numbers in its errors.
//! - [`objects`] sees through a `kind: List` (what `kubectl get -o yaml` prints) to its items.
//! - [`to_string`] writes a value so that `kubectl` reads back the same value. kubectl parses
//!   YAML 1.1 (go-yaml), where plain `yes`, `on`, `y`, `off` are booleans and `0644` is an octal
//!   number; serde_yaml_ng quotes only what YAML 1.2 would misread, so a string `"y"` it writes
//!   plain would reach the API server as `true`. Here every string that is not unmistakably a
//!   string in both YAML versions is double-quoted.

use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

/// One document of a multi-document stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// The document's exact text, its `---` line included.
    pub raw: &'a str,
    /// The text to parse: `raw` without the `---` marker and without `...` end lines.
    pub body: String,
    /// Whether the document began with a `---` line.
    pub marked: bool,
    /// 1-based line of the document's first line in the whole stream.
    pub line: usize,
}

/// `---` at the start of a line, followed by nothing, a space or a tab, starts a document (YAML
/// forbids such a line inside any scalar, so this is exact, not a heuristic).
fn marker_rest(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("---")?;
    match rest.chars().next() {
        None | Some(' ' | '\t' | '\n' | '\r') => Some(rest),
        Some(_) => None,
    }
}

fn is_end_line(line: &str) -> bool {
    line.strip_prefix("...")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).trim_end().is_empty())
}

impl Document<'_> {
    /// The document's opening: its `---` line and the comment and blank lines before its first
    /// content, as written, to keep above a re-written body.
    pub fn header(&self) -> String {
        let mut header = String::new();
        for (i, line) in self.raw.split_inclusive('\n').enumerate() {
            if i == 0 && self.marked {
                let rest = marker_rest(line).unwrap_or_default().trim();
                if rest.is_empty() || rest.starts_with('#') {
                    header.push_str(line);
                } else {
                    header.push_str("---\n");
                    break;
                }
                continue;
            }
            let trimmed = line.trim();
            if !(trimmed.is_empty() || trimmed.starts_with('#')) {
                break;
            }
            header.push_str(line);
        }
        if !header.is_empty() && !header.ends_with('\n') {
            header.push('\n');
        }
        header
    }
}

/// Splits a stream into documents. Empty pieces (before a leading `---`) are left out;
/// concatenating every `raw` gives the input back.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut marked = false;
    let mut body = String::new();
    let mut offset = 0;
    for (line_no, line) in (1..).zip(text.split_inclusive('\n')) {
        if let Some(rest) = marker_rest(line) {
            if offset > start {
                docs.push(Document {
                    raw: &text[start..offset],
                    body: std::mem::take(&mut body),
                    marked,
                    line: start_line,
                });
            }
            start = offset;
            start_line = line_no;
            marked = true;
            body.clear();
            // Content after the marker (`--- {a: 1}`) belongs to the document; a comment does
            // no harm to the parser either.
            body.push_str(rest);
        } else if !is_end_line(line) {
            body.push_str(line);
        }
        offset += line.len();
    }
    if offset > start {
        docs.push(Document {
            raw: &text[start..offset],
            body,
            marked,
            line: start_line,
        });
    }
    docs
}

/// One document of a stream and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    /// The document's text.
    pub doc: Document<'a>,
    /// Its value (`Null` for a document of only comments).
    pub value: Value,
}

/// A document that is not valid YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {number} (line {line}): not valid YAML: {message}")]
pub struct ParseError {
    /// 1-based position of the document in the stream.
    pub number: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// The parser's message (its line numbers are the stream's).
    pub message: String,
}

/// Splits `text` into its documents and parses each; stops at the first that is not YAML.
pub fn parse(text: &str) -> Result<Vec<Parsed<'_>>, ParseError> {
    split(text)
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            // Blank lines first, so the parser's line numbers are the stream's.
            let padded = format!("{}{}", "\n".repeat(doc.line - 1), doc.body);
            match serde_yaml_ng::from_str(&padded) {
                Ok(value) => Ok(Parsed { doc, value }),
                Err(e) => Err(ParseError {
                    number: i + 1,
                    line: doc.line,
                    message: e.to_string(),
                }),
            }
        })
        .collect()
}

fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("List")
}

/// The objects of a document: itself, or each item of a `kind: List` with its field prefix
/// (`items[3].`) for error messages.
pub fn objects(value: &Value) -> Vec<(String, &Value)> {
    if !is_list(value) {
        return vec![(String::new(), value)];
    }
    value
        .get("items")
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, item)| (format!("items[{i}]."), item))
        .collect()
}

/// [`objects`], for changing them.
pub fn objects_mut(value: &mut Value) -> Vec<(String, &mut Value)> {
    if !is_list(value) {
        return vec![(String::new(), value)];
    }
    match value.get_mut("items").and_then(Value::as_sequence_mut) {
        Some(items) => items
            .iter_mut()
            .enumerate()
            .map(|(i, item)| (format!("items[{i}]."), item))
            .collect(),
        None => Vec::new(),
    }
}

/// A value that has no YAML form kubectl would read back as the same value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EmitError {
    /// Where in the document, like `spec.template.metadata.labels.app`; empty for the whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for EmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Writes one document in block style, two-space indentation, sequences at their key's
/// indentation (as kubectl writes them), ending with a newline.
pub fn to_string(value: &Value) -> Result<String, EmitError> {
    let mut out = String::new();
    match value {
        Value::Mapping(m) if !m.is_empty() => write_mapping(&mut out, m, 0, "")?,
        Value::Sequence(s) if !s.is_empty() => write_sequence(&mut out, s, 0, "")?,
        scalar => {
            write_inline(&mut out, scalar, 0, "")?;
            out.push('\n');
        }
    }
    Ok(out)
}

/// [`to_string`] of anything serde can write (a Kubernetes object, a sidecar config).
pub fn to_yaml<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, EmitError> {
    let value = serde_yaml_ng::to_value(value).map_err(|e| EmitError {
        field: String::new(),
        message: e.to_string(),
    })?;
    to_string(&value)
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_mapping(out: &mut String, m: &Mapping, level: usize, path: &str) -> Result<(), EmitError> {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a mapping inside a sequence item shares the line with `- `.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        let key = match k {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(EmitError {
                    field: path.to_owned(),
                    message: "a mapping key must be a string".into(),
                });
            }
        };
        let here = child(path, &key);
        match k {
            Value::String(s) => write_string(out, s, level),
            other => write_inline(out, other, level, &here)?,
        }
        out.push(':');
        write_value(out, v, level, &here, false)?;
    }
    Ok(())
}

fn write_sequence(
    out: &mut String,
    s: &[Value],
    level: usize,
    path: &str,
) -> Result<(), EmitError> {
    for (i, item) in s.iter().enumerate() {
        if !out.ends_with("- ") || i > 0 {
            indent(out, level);
        }
        out.push('-');
        write_value(out, item, level, &format!("{path}[{i}]"), true)?;
    }
    Ok(())
}

/// Writes what follows `key:` or `-`: a space and a scalar, or a newline and a block.
fn write_value(
    out: &mut String,
    v: &Value,
    level: usize,
    path: &str,
    in_sequence: bool,
) -> Result<(), EmitError> {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            // `- key: v` on the item's line; `key:` then the mapping below.
            out.push(if in_sequence { ' ' } else { '\n' });
            write_mapping(out, m, level + 2, path)
        }
        Value::Sequence(s) if !s.is_empty() => {
            if in_sequence {
                out.push(' ');
                write_sequence(out, s, level + 2, path)
            } else {
                // kubectl's style: a sequence sits at its key's indentation.
                out.push('\n');
                write_sequence(out, s, level, path)
            }
        }
        scalar => {
            out.push(' ');
            // A block scalar's lines are indented one step past the line that introduces it.
            write_inline(out, scalar, level + 2, path)?;
            out.push('\n');
            Ok(())
        }
    }
}

fn write_inline(out: &mut String, v: &Value, level: usize, path: &str) -> Result<(), EmitError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s, level),
        Value::Mapping(_) => out.push_str("{}"),
        Value::Sequence(_) => out.push_str("[]"),
        Value::Tagged(t) => {
            return Err(EmitError {
                field: path.to_owned(),
                message: format!(
                    "the YAML tag {} is not supported in Kubernetes objects; remove it",
                    t.tag
                ),
            });
        }
    }
    Ok(())
}

/// Plain when it can only be read as this string (YAML 1.1 and 1.2 alike), a literal block for
/// multi-line text, else a double-quoted JSON string (JSON escapes are YAML escapes).
fn write_string(out: &mut String, s: &str, level: usize) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if let Some(block) = literal_block(s, level) {
        out.push_str(&block);
    } else {
        out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
    }
}

/// Words YAML 1.1 or 1.2 read as a boolean or null when plain.
const RESERVED: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // A leading digit, sign or dot could be a number (octal, sexagesimal, `1_000`, `.5`) in one
    // of the two versions; a leading indicator character changes the parse.
    (first.is_ascii_alphabetic() || first == '/')
        && !RESERVED.contains(&s)
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    ' ' | '-' | '_' | '.' | '/' | ':' | '@' | '+' | '=' | ',' | '(' | ')'
                )
        })
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
}

/// `|`, `|-` or `|+` for text of several lines that a literal block holds exactly (no tabs or
/// other control characters, no trailing spaces, no leading space on the first line).
fn literal_block(s: &str, level: usize) -> Option<String> {
    let content = s.trim_end_matches('\n');
    if !content.contains('\n')
        || content.starts_with(' ')
        || s.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{feff}')
        || content.split('\n').any(|l| l.ends_with(' '))
    {
        return None;
    }
    let chomp = match s.len() - content.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut lines: Vec<&str> = s.split('\n').collect();
    if s.ends_with('\n') {
        lines.pop();
    }
    let pad = " ".repeat(level.max(2));
    let mut block = format!("|{chomp}");
    for line in lines {
        block.push('\n');
        if !line.is_empty() {
            block.push_str(&pad);
            block.push_str(line);
        }
    }
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(s: &str) -> Value {
        serde_yaml_ng::from_str(s).expect("valid YAML")
    }

    #[test]
    fn split_keeps_every_byte_and_cuts_only_at_column_zero_markers() {
        let text = "# header\n---\na: 1\n--- # second\nb: |\n  ---\n  x\n...\n---\n\n";
        let docs = split(text);
        let raw: String = docs.iter().map(|d| d.raw).collect();
        assert_eq!(raw, text);
        assert_eq!(docs.len(), 4, "{docs:#?}");
        assert_eq!(docs[0].body, "# header\n");
        assert!(!docs[0].marked);
        assert_eq!(docs[1].body, "\na: 1\n");
        assert_eq!(docs[1].line, 2);
        assert_eq!(parse_one(&docs[2].body), parse_one("b: \"---\\nx\\n\""));
        assert_eq!(docs[3].body, "\n\n");
        assert_eq!(docs[0].header(), "# header\n");
        assert_eq!(docs[1].header(), "---\n");
        assert_eq!(docs[2].header(), "--- # second\n");
        assert_eq!(split("--- {a: 1}\n# c\n")[0].header(), "---\n");
        assert_eq!(
            split("# one\n\n# two\nkind: X\n# not header\n")[0].header(),
            "# one\n\n# two\n"
        );
    }

    #[test]
    fn split_takes_content_on_the_marker_line_and_ignores_dashes_that_are_not_markers() {
        let docs = split("--- {a: 1}\n");
        assert_eq!(parse_one(&docs[0].body), parse_one("a: 1"));
        let docs = split("---\na: 1\n----: 2\n---x: 3\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            parse_one(&docs[0].body),
            parse_one("{a: 1, '----': 2, '---x': 3}")
        );
    }

    #[test]
    fn split_of_a_leading_marker_has_no_empty_first_document() {
        let docs = split("---\na: 1\n");
        assert_eq!(docs.len(), 1);
        assert!(docs[0].marked);
    }

    #[test]
    fn parse_names_the_document_and_the_stream_line_of_an_error() {
        let text = "a: 1\n---\nb: 2\n---\n# c\nc: [1,\n";
        let err = parse(text).expect_err("the third is broken");
        assert_eq!((err.number, err.line), (3, 4), "{err}");
        assert!(
            err.to_string()
                .starts_with("document 3 (line 4): not valid YAML")
        );
        // The end of the stream is its line 7 (the parser counts the lines before the document).
        assert!(
            err.message.contains("line 7"),
            "stream lines: {}",
            err.message
        );
        let ok = parse("a: 1\n---\n# only a comment\n").expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].value, parse_one("a: 1"));
        assert!(ok[1].value.is_null());
    }

    #[test]
    fn objects_see_through_a_list_to_its_items() {
        let list = parse_one("{kind: List, items: [{kind: A}, {kind: B}]}");
        let items = objects(&list);
        let prefixes: Vec<&str> = items.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(prefixes, ["items[0].", "items[1]."]);
        assert_eq!(items[1].1, &parse_one("{kind: B}"));
        let one = parse_one("{kind: Deployment}");
        assert_eq!(objects(&one), vec![(String::new(), &one)]);
        let mut list = list;
        for (_, item) in objects_mut(&mut list) {
            item["seen"] = Value::Bool(true);
        }
        assert_eq!(list["items"][1]["seen"], Value::Bool(true));
    }

    #[test]
    fn to_yaml_writes_any_serializable_value_readably_for_both_yaml_versions() {
        #[derive(serde::Serialize)]
        struct Labels {
            workload: &'static str,
            mode: &'static str,
        }
        let out = to_yaml(&Labels {
            workload: "on",
            mode: "0644",
        })
        .expect("emits");
        assert_eq!(out, "workload: \"on\"\nmode: \"0644\"\n");
    }

    #[test]
    fn ambiguous_strings_are_quoted_so_yaml_1_1_reads_strings() {
        for s in [
            "y", "yes", "on", "Off", "N", "true", "null", "~", "0644", "1_000", "1:20", "08", ".5",
            "-x", "12", "1e3", "", " lead", "trail ", "a: b", "a #b", "*ref", "&x", "!t", "%d",
            "@x", "`x", "[x]", "{x}", "x\ty", "ü",
        ] {
            let out = to_string(&Value::String(s.into())).expect("emits");
            assert!(out.starts_with('"'), "{s:?} must be quoted, got {out:?}");
            assert_eq!(parse_one(&out), Value::String(s.into()), "{s:?}");
        }
    }

    #[test]
    fn unmistakable_strings_stay_plain() {
        for s in [
            "nginx",
            "ghcr.io/streamkeeper/streamkeeper:0.1.0",
            "/etc/streamkeeper",
            "metadata.name",
            "RuntimeDefault",
            "app.kubernetes.io/name",
            "a b",
        ] {
            let out = to_string(&Value::String(s.into())).expect("emits");
            assert_eq!(out, format!("{s}\n"));
        }
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_with_the_right_chomping() {
        for s in [
            "a\nb\n",
            "a\nb",
            "a\nb\n\n",
            "# not a comment\nnext\n",
            "a\n\nb\n",
        ] {
            let doc = Value::Mapping(Mapping::from_iter([(
                Value::String("k".into()),
                Value::String(s.into()),
            )]));
            let out = to_string(&doc).expect("emits");
            assert!(out.starts_with("k: |"), "{s:?}: {out}");
            assert_eq!(parse_one(&out), doc, "{s:?}: {out}");
        }
    }

    #[test]
    fn documents_round_trip_through_serde_yaml_ng() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web, "on": "yes"}, annotations: {}}
spec:
  replicas: 3
  template:
    spec:
      containers:
      - name: app
        args: ["--x", "1", "y"]
        env: [{name: A, value: "0644"}, {name: B, value: ""}]
        command: [sh, -c, "echo a\necho b\n"]
        workingDir: []
        ports: [{containerPort: 80}]
        resources: {limits: {cpu: 0.5}}
        script: "line 1\nline 2\n"
      nested: [[1, 2], [], [{a: null}]]
      f: 1.5
      t: true
"#;
        let value = parse_one(text);
        let out = to_string(&value).expect("emits");
        assert_eq!(parse_one(&out), value, "{out}");
        assert!(
            out.contains("\n      containers:\n      - name: app\n"),
            "{out}"
        );
        assert!(out.contains("\"on\": \"yes\""), "{out}");
        assert_eq!(to_string(&parse_one(&out)).expect("emits"), out, "stable");
    }

    #[test]
    fn tags_are_refused_with_their_field() {
        let value = parse_one("a:\n  b: !Ref x\n");
        let err = to_string(&value).expect_err("a tag");
        assert_eq!(err.field, "a.b");
    }
}
