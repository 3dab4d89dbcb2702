//! One input document: parsing it, naming it in errors, and the errors themselves.

use std::fmt;

use serde_yaml_ng::Value;

use streamkeeper_api::kube_yaml::{self, Document};

/// An input inject cannot transform, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// The file, document and object, like `app.yaml, document 2 (line 14, Deployment cc/web)`.
    pub place: String,
    /// The field, like `spec.template.spec.initContainers[0]`; empty for the whole document.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.place, self.message)
        } else {
            write!(f, "{}: {}: {}", self.place, self.field, self.message)
        }
    }
}

impl std::error::Error for InjectError {}

/// A field-level failure, placed in its document by the caller.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) field: String,
    pub(super) message: String,
}

pub(super) fn fail(field: impl Into<String>, message: impl Into<String>) -> Fail {
    Fail {
        field: field.into(),
        message: message.into(),
    }
}

impl Fail {
    /// The same failure one level down, in `items[3]` of a List.
    pub(super) fn under(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}{}", self.field),
            message: self.message,
        }
    }
}

/// One document of an input, parsed, with where it came from.
pub(super) struct Parsed<'a> {
    /// The text it came from.
    pub(super) doc: Document<'a>,
    /// Its value.
    pub(super) value: Value,
    source: String,
    index: usize,
}

impl Parsed<'_> {
    /// An error at `field` of this document, in the object `what` (like `Deployment cc/web`).
    pub(super) fn error(&self, what: Option<&str>, f: Fail) -> InjectError {
        InjectError {
            place: place(&self.source, self.index + 1, self.doc.line, what),
            field: f.field,
            message: f.message,
        }
    }
}

fn place(source: &str, n: usize, line: usize, what: Option<&str>) -> String {
    match what {
        Some(w) => format!("{source}, document {n} (line {line}, {w})"),
        None => format!("{source}, document {n} (line {line})"),
    }
}

/// Parses every document of `text`, which errors call `source`.
pub(super) fn parse_all<'a>(source: &str, text: &'a str) -> Result<Vec<Parsed<'a>>, InjectError> {
    let parsed = kube_yaml::parse(text).map_err(|e| InjectError {
        place: place(source, e.number, e.line, None),
        field: String::new(),
        message: format!("not valid YAML: {}", e.message),
    })?;
    Ok(parsed
        .into_iter()
        .enumerate()
        .map(|(index, p)| Parsed {
            doc: p.doc,
            value: p.value,
            source: source.to_owned(),
            index,
        })
        .collect())
}

/// The items of a sequence, or none when it is absent or not a sequence.
pub(super) fn sequence(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `kind` of an object.
pub(super) fn kind_of(value: &Value) -> Option<&str> {
    value.get("kind").and_then(Value::as_str)
}

/// `metadata.{key}` of an object, when it is a string.
pub(super) fn metadata<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value
        .get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

/// How errors and warnings name an object: `Deployment cc/web`.
pub(super) fn describe(value: &Value, kind: &str, namespace: &str) -> String {
    let name = metadata(value, "name").unwrap_or("(no name)");
    format!("{kind} {namespace}/{name}")
}
