//! YAML text to JSON values that remember the line of every field.
//!
//! serde-saphyr does the parsing (YAML 1.2 core schema: `no` stays a string, `0x1F` is an
//! integer), with its default budget against alias bombs and deep nesting. Every node is read
//! as a `Spanned` so that a problem found later, by field path, can be reported at its line.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// One document of a YAML stream.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position of the document in its stream (empty documents are not counted).
    pub index: usize,
    /// The document's content.
    pub value: Value,
    /// The line of every field, by field path.
    pub lines: LineIndex,
    /// Values that have no JSON form (a list used as a mapping key), each with its path.
    pub unrepresentable: Vec<(FieldPath, String)>,
    /// Unquoted words that YAML 1.1 reads as booleans (`yes`, `no`, `on`, `off`, `y`,
    /// `n`): strings here, but booleans to kubectl and every tool built on Go's YAML
    /// libraries. Each with its path and the word as written.
    pub yaml11_booleans: Vec<(FieldPath, String)>,
}

/// The words YAML 1.1 reads as booleans and YAML 1.2 as strings.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// The first YAML syntax error in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line, 0 when the parser does not know.
    pub line: usize,
    /// What is wrong, on one line.
    pub message: String,
}

/// Parses every document of a YAML stream. A syntax error anywhere refuses the whole stream,
/// as `kubectl apply` does.
///
/// # Errors
/// [`SyntaxError`] with the line of the first syntax error, or of a budget breach.
pub fn parse_stream(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        // YAML 1.2: `no`, `yes`, `on` and `off` are strings, only `true`/`false` are booleans.
        strict_booleans: true,
        // `.inf` and `.nan` reach the converter, which reports them by field.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    };
    let nodes: Vec<Spanned<Node>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|err| SyntaxError {
            line: err
                .location()
                .map_or(0, |l| usize::try_from(l.line()).unwrap_or(0)),
            message: one_line(&err.to_string()),
        })?;
    Ok(nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let mut doc = Document {
                index: i + 1,
                value: Value::Null,
                lines: LineIndex::default(),
                unrepresentable: Vec::new(),
                yaml11_booleans: Vec::new(),
            };
            doc.value = convert(node, &FieldPath::root(), text, &mut doc);
            doc
        })
        .collect())
}

/// The parser's message without its location suffix and on one line.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or("invalid YAML").trim();
    let trimmed = match first.rfind(" at line ") {
        Some(at) => &first[..at],
        None => first,
    };
    trimmed.trim_end_matches(':').to_string()
}

fn convert(node: Spanned<Node>, path: &FieldPath, source: &str, doc: &mut Document) -> Value {
    let line = usize::try_from(node.referenced.line()).unwrap_or(0);
    let span = node.referenced.span();
    doc.lines.record(path, line);
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(i.into()),
        Node::UInt(u) => Value::Number(u.into()),
        // kubectl sends YAML through Go's JSON encoder, which writes 2.0 as 2: do the same,
        // so that `replicas: 2.0` means what it means to `kubectl apply`.
        Node::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Number((f as i64).into()),
        Node::Float(f) => match Number::from_f64(f) {
            Some(n) => Value::Number(n),
            // `.inf`, `.nan` or a literal too large for a float (`1e400`): JSON has no such
            // number, so keep the text as written and let the field's checks say what is wrong.
            None => Value::String(raw_text(source, span).unwrap_or_else(|| f.to_string())),
        },
        Node::Str(s) => {
            if YAML11_BOOLEANS.contains(&s.as_str())
                && raw_text(source, span).as_deref() == Some(s.as_str())
            {
                doc.yaml11_booleans.push((path.clone(), s.clone()));
            }
            Value::String(s)
        }
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| convert(item, &path.index(i), source, doc))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let key_line = usize::try_from(key.referenced.line()).unwrap_or(0);
                let key = match key.value {
                    Node::Str(s) => s,
                    Node::Int(i) => i.to_string(),
                    Node::UInt(u) => u.to_string(),
                    Node::Bool(b) => b.to_string(),
                    Node::Float(f) => f.to_string(),
                    Node::Null => "null".to_string(),
                    Node::Seq(_) | Node::Map(_) => {
                        doc.lines.record(path, key_line);
                        doc.unrepresentable.push((
                            path.clone(),
                            "a mapping key must be a plain value".to_string(),
                        ));
                        continue;
                    }
                };
                let child = path.key(&key);
                // A field's line is the line of its key, which is where a person looks.
                let value = convert(value, &child, source, doc);
                doc.lines.record_exact(&child, key_line);
                map.insert(key, value);
            }
            Value::Object(map)
        }
    }
}

/// The text a node was written as.
fn raw_text(source: &str, span: serde_saphyr::Span) -> Option<String> {
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    source
        .get(start..start.checked_add(len)?)
        .map(str::to_string)
}

/// A YAML node as read, before conversion to JSON.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        // Beyond 64 bits: keep the digits, as JSON would need a string for them anyway.
        Ok(Node::Str(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A path to a field, written as Kubernetes writes them: `spec.tenants[1].namespace`, with
/// map keys that are not plain words in brackets: `metadata.labels[app.kubernetes.io/name]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        FieldPath(String::new())
    }

    /// A path written as text, such as `spec.replicas`.
    pub fn parse(text: &str) -> Self {
        FieldPath(text.trim_start_matches('.').to_string())
    }

    /// The child field or map entry `key`.
    pub fn key(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match (self.0.is_empty(), plain) {
            (true, true) => FieldPath(key.to_string()),
            (false, true) => FieldPath(format!("{}.{key}", self.0)),
            (_, false) => FieldPath(format!("{}[{key}]", self.0)),
        }
    }

    /// The list element `i`.
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }

    /// True for the document itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The enclosing field, or `None` at the root.
    pub fn parent(&self) -> Option<FieldPath> {
        if self.0.is_empty() {
            return None;
        }
        let cut = if self.0.ends_with(']') {
            self.0.rfind('[')
        } else {
            self.0.rfind(['.', '['])
        };
        Some(FieldPath(
            cut.map_or_else(String::new, |at| self.0[..at].to_string()),
        ))
    }

    /// True when `other` is this path or lies below it.
    pub fn encloses(&self, other: &FieldPath) -> bool {
        let (me, them) = (self.0.as_str(), other.0.as_str());
        me.is_empty()
            || them == me
            || (them.starts_with(me) && matches!(them.as_bytes().get(me.len()), Some(b'.' | b'[')))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Line numbers by field path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineIndex(HashMap<FieldPath, usize>);

impl LineIndex {
    fn record(&mut self, path: &FieldPath, line: usize) {
        if line > 0 {
            self.0.entry(path.clone()).or_insert(line);
        }
    }

    fn record_exact(&mut self, path: &FieldPath, line: usize) {
        if line > 0 {
            self.0.insert(path.clone(), line);
        }
    }

    /// The line of `path`, or of its nearest enclosing field that has one (a missing field is
    /// reported where its parent is); 0 when nothing is known.
    pub fn line_of(&self, path: &FieldPath) -> usize {
        let mut current = Some(path.clone());
        while let Some(p) = current {
            if let Some(line) = self.0.get(&p) {
                return *line;
            }
            current = p.parent();
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_carry_values_and_lines() {
        let text = "a: 1\n---\n# comment\nkind: Workload\nspec:\n  list:\n  - x: no\n  - y: 0x10\n";
        let docs = parse_stream(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].index, 2);
        assert_eq!(
            docs[1].value,
            json!({"kind": "Workload", "spec": {"list": [{"x": "no"}, {"y": 16}]}})
        );
        let lines = &docs[1].lines;
        assert_eq!(lines.line_of(&FieldPath::parse("kind")), 4);
        assert_eq!(lines.line_of(&FieldPath::parse("spec.list[1].y")), 8);
        assert_eq!(lines.line_of(&FieldPath::parse("spec.list[0].missing")), 7);
        assert_eq!(lines.line_of(&FieldPath::parse("spec")), 5);
    }

    #[test]
    fn whole_floats_become_integers_as_kubectl_sends_them() {
        let docs = parse_stream("a: 2.0\nb: 0.5\nc: -0.0\n").unwrap();
        assert_eq!(docs[0].value, json!({"a": 2, "b": 0.5, "c": 0}));
    }

    #[test]
    fn yaml_1_2_keeps_words_as_strings() {
        let docs = parse_stream("a: no\nb: yes\nc: on\nd: off\ne: true\nf: ~\n").unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": "no", "b": "yes", "c": "on", "d": "off", "e": true, "f": null})
        );
    }

    #[test]
    fn unquoted_yaml_1_1_booleans_are_noted_quoted_ones_are_not() {
        let docs = parse_stream("a: no\nb: 'no'\nc: \"yes\"\nd: [on, Off]\ne: nope\n").unwrap();
        let noted: Vec<(String, String)> = docs[0]
            .yaml11_booleans
            .iter()
            .map(|(p, w)| (p.to_string(), w.clone()))
            .collect();
        assert_eq!(
            noted,
            [
                ("a".to_string(), "no".to_string()),
                ("d[0]".to_string(), "on".to_string()),
                ("d[1]".to_string(), "Off".to_string()),
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = parse_stream("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        assert!(!err.message.contains('\n'));
        let err = parse_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
    }

    #[test]
    fn non_finite_numbers_keep_their_text_and_complex_keys_are_reported() {
        let docs = parse_stream("a: .inf\nb: 1e400\n? [1]\n: x\n").unwrap();
        assert_eq!(docs[0].value, json!({"a": ".inf", "b": "1e400"}));
        let paths: Vec<_> = docs[0]
            .unrepresentable
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(paths, [""]);
    }

    #[test]
    fn field_paths_read_like_kubernetes() {
        let p = FieldPath::root()
            .key("metadata")
            .key("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(p.to_string(), "metadata.labels[app.kubernetes.io/name]");
        assert_eq!(p.parent().unwrap().to_string(), "metadata.labels");
        let p = FieldPath::root()
            .key("spec")
            .key("tenants")
            .index(1)
            .key("namespace");
        assert_eq!(p.to_string(), "spec.tenants[1].namespace");
        assert_eq!(
            p.parent().unwrap().parent().unwrap().to_string(),
            "spec.tenants"
        );
    }
}
