//! From manifest text to typed, validated objects, with every problem found reported as
//! `FILE:LINE: Kind namespace/name: field.path: what is wrong`.
//!
//! Each document goes through the same layers the apiserver applies, then corral's own:
//! 1. YAML syntax ([`crate::source::yaml`]);
//! 2. `apiVersion` and `kind`: corral's kinds are checked, other kinds skipped with a notice;
//! 3. `metadata` ([`metadata`]);
//! 4. the CRD's structural schema ([`schema`]): types, unknown fields, bounds, enums;
//! 5. semantic checks on the typed object ([`semantic`]);
//! 6. the CRD's CEL rules ([`cel`]), evaluated by kube-cel;
//! 7. checks across objects ([`across`]): duplicates, references, ambiguous policies.
//!
//! Nothing here performs I/O; [`crate::source`] reads the files.

pub mod across;
pub mod cel;
pub mod metadata;
pub mod schema;
pub mod semantic;

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::identity::DEFAULT_NAMESPACE;
use crate::api::{API_VERSION, GROUP, ResourcePolicy, Workload};
use crate::source::files::{ManifestText, Origin, ReadError};
use crate::source::yaml::{self, Document, FieldPath};

/// A problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `spec.resources.limits.cpu`.
    pub path: FieldPath,
    /// What is wrong, for a person.
    pub message: String,
}

/// corral's kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A namespaced `Workload`.
    Workload,
    /// A cluster-scoped `ResourcePolicy`.
    ResourcePolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Which object a problem is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (Workloads only).
    pub namespace: Option<String>,
    /// Its name, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("(unnamed)");
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{name}", self.kind),
            None => write!(f, "{} {name}", self.kind),
        }
    }
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub origin: Origin,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// The object, once known.
    pub object: Option<ObjectRef>,
    /// The field; the root for problems with a whole document or file.
    pub path: FieldPath,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Something a person should know that is not a problem, such as a skipped object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The file.
    pub origin: Origin,
    /// 1-based line.
    pub line: usize,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.origin, self.line, self.message)
    }
}

/// A valid object and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    /// The file.
    pub origin: Origin,
    /// The line its document starts on.
    pub line: usize,
    /// The line of each field, for problems found across objects.
    pub lines: std::sync::Arc<yaml::LineIndex>,
    /// The object.
    pub object: T,
}

impl<T> Sourced<T> {
    /// The line of `path` in the object's document, else the document's first line.
    pub fn line_of(&self, path: &FieldPath) -> usize {
        match self.lines.line_of(path) {
            0 => self.line,
            line => line,
        }
    }
}

/// Everything read from a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// Valid Workloads.
    pub workloads: Vec<Sourced<Workload>>,
    /// Valid ResourcePolicies.
    pub policies: Vec<Sourced<ResourcePolicy>>,
    /// Every problem, in file and line order.
    pub problems: Vec<Problem>,
    /// Objects skipped and similar notes.
    pub notices: Vec<Notice>,
    /// How many files were read.
    pub files: usize,
}

impl Manifests {
    /// True when nothing is wrong.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What each file's text gave before the checks across files, by where it came from, so
/// that checking a set again re-checks only the files whose text changed: at a thousand
/// Workloads, checking every file again took 0.7 s of each edit. The checks across files
/// run over the whole set every time.
#[derive(Debug, Default)]
pub struct Memo {
    files: HashMap<Origin, (String, FileChecked)>,
}

/// One file's objects, problems and notices, and the objects the checks across files see.
#[derive(Clone, Debug, Default)]
struct FileChecked {
    out: Manifests,
    seen: Vec<across::Seen>,
}

/// The schemas and compiled rules of both kinds, built once.
pub struct Validator {
    workload: KindRules,
    policy: KindRules,
}

struct KindRules {
    schema: Value,
    cel: cel::CelRules,
}

impl KindRules {
    fn new(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Self {
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let cel = cel::CelRules::new(&schema);
        KindRules { schema, cel }
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// Builds the validator from the generated CRDs.
    pub fn new() -> Self {
        Validator {
            workload: KindRules::new(&crate::api::crd::workload()),
            policy: KindRules::new(&crate::api::crd::policy()),
        }
    }

    /// Validates manifest texts, plus the paths that could not be read, as one set.
    pub fn check(&self, texts: &[ManifestText], unreadable: &[(Origin, ReadError)]) -> Manifests {
        self.check_with(texts, unreadable, &mut Memo::default())
    }

    /// As [`Validator::check`], reusing from `memo` what a file whose text did not change
    /// gave last time, and keeping in it what this set's files gave.
    pub fn check_with(
        &self,
        texts: &[ManifestText],
        unreadable: &[(Origin, ReadError)],
        memo: &mut Memo,
    ) -> Manifests {
        let mut out = Manifests {
            files: texts.len(),
            ..Manifests::default()
        };
        let mut seen = Vec::new();
        for (origin, error) in unreadable {
            out.problems.push(Problem {
                origin: origin.clone(),
                line: 0,
                object: None,
                path: FieldPath::root(),
                message: error.to_string(),
            });
        }
        let mut kept = HashMap::with_capacity(texts.len());
        for text in texts {
            let file = match memo.files.remove(&text.origin) {
                Some((before, file)) if before == text.text => file,
                _ => self.check_file(text),
            };
            out.workloads.extend(file.out.workloads.iter().cloned());
            out.policies.extend(file.out.policies.iter().cloned());
            out.problems.extend(file.out.problems.iter().cloned());
            out.notices.extend(file.out.notices.iter().cloned());
            seen.extend(file.seen.iter().cloned());
            kept.insert(text.origin.clone(), (text.text.clone(), file));
        }
        memo.files = kept;
        across::check(&seen, &mut out);
        out.problems.sort_by(|a, b| {
            (&a.origin, a.line, a.path.as_str()).cmp(&(&b.origin, b.line, b.path.as_str()))
        });
        out.problems.dedup();
        out
    }

    /// Every check of one file's text that does not look at other files.
    fn check_file(&self, text: &ManifestText) -> FileChecked {
        let mut file = FileChecked::default();
        match yaml::parse_stream(&text.text) {
            Ok(documents) => {
                for document in &documents {
                    self.check_document(&text.origin, document, &mut file.out, &mut file.seen);
                }
            }
            Err(e) => file.out.problems.push(Problem {
                origin: text.origin.clone(),
                line: e.line,
                object: None,
                path: FieldPath::root(),
                message: format!("invalid YAML: {}", e.message),
            }),
        }
        file
    }

    fn check_document(
        &self,
        origin: &Origin,
        doc: &Document,
        out: &mut Manifests,
        seen: &mut Vec<across::Seen>,
    ) {
        let start = doc.lines.line_of(&FieldPath::root());
        let locate = |object: Option<&ObjectRef>, e: FieldError| Problem {
            origin: origin.clone(),
            line: doc.lines.line_of(&e.path),
            object: object.cloned(),
            path: e.path,
            message: e.message,
        };
        match self.check_object(doc) {
            Checked::Skipped(what) => out.notices.push(Notice {
                origin: origin.clone(),
                line: start,
                message: format!("skipped {what}: not a corral kind"),
            }),
            Checked::Unidentified(errors) => {
                out.problems
                    .extend(errors.into_iter().map(|e| locate(None, e)));
            }
            Checked::Object {
                object,
                errors,
                typed,
            } => {
                seen.push(across::Seen {
                    object: object.clone(),
                    origin: origin.clone(),
                    line: doc
                        .lines
                        .line_of(&FieldPath::root().key("metadata").key("name")),
                });
                if errors.is_empty() {
                    match typed {
                        Some(Typed::Workload(mut w)) => {
                            w.metadata
                                .namespace
                                .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
                            out.workloads.push(Sourced {
                                origin: origin.clone(),
                                line: start,
                                lines: std::sync::Arc::new(doc.lines.clone()),
                                object: *w,
                            });
                        }
                        Some(Typed::Policy(mut p)) => {
                            p.metadata.namespace = None;
                            out.policies.push(Sourced {
                                origin: origin.clone(),
                                line: start,
                                lines: std::sync::Arc::new(doc.lines.clone()),
                                object: *p,
                            });
                        }
                        None => {}
                    }
                }
                out.problems
                    .extend(errors.into_iter().map(|e| locate(Some(&object), e)));
                for (path, word) in &doc.yaml11_booleans {
                    out.notices.push(Notice {
                        origin: origin.clone(),
                        line: doc.lines.line_of(path),
                        message: format!(
                            "{object}: {path}: warning: unquoted {word} is the string {word:?} to corral (YAML 1.2) but a boolean to kubectl (YAML 1.1), which refuses it here; write {word:?}"
                        ),
                    });
                }
            }
        }
    }

    /// Every layer of checks on one document, without locating the problems.
    fn check_object(&self, doc: &Document) -> Checked {
        let unrepresentable = doc
            .unrepresentable
            .iter()
            .map(|(path, message)| FieldError {
                path: path.clone(),
                message: message.clone(),
            });
        let Value::Object(map) = &doc.value else {
            if doc.value.is_null() {
                return Checked::Unidentified(Vec::new());
            }
            return Checked::Unidentified(vec![FieldError {
                path: FieldPath::root(),
                message: format!(
                    "document {} is not a mapping, so not a Kubernetes object",
                    doc.index
                ),
            }]);
        };
        let kind = match classify(map) {
            Classified::Corral(kind) => kind,
            Classified::Other(what) => return Checked::Skipped(what),
            Classified::Invalid(mut errors) => {
                errors.extend(unrepresentable);
                return Checked::Unidentified(errors);
            }
        };
        let (object, mut errors) = metadata::check(kind, map.get("metadata"));
        let metadata_ok = errors.is_empty();
        errors.extend(unrepresentable);
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            ) {
                errors.push(FieldError {
                    path: FieldPath::root().key(key),
                    message: "unknown field; an object has apiVersion, kind, metadata and spec"
                        .to_string(),
                });
            }
        }
        let rules = match kind {
            Kind::Workload => &self.workload,
            Kind::ResourcePolicy => &self.policy,
        };
        let spec_path = FieldPath::root().key("spec");
        let pruned = match map.get("spec") {
            None | Some(Value::Null) => {
                errors.push(FieldError {
                    path: spec_path.clone(),
                    message: "required field is missing".to_string(),
                });
                schema::Pruned {
                    value: None,
                    dropped: vec![spec_path],
                }
            }
            Some(spec) => schema::check(
                &rules.schema["properties"]["spec"],
                spec,
                &spec_path,
                &mut errors,
            ),
        };
        // What the later layers see: the object as kubectl sends it (status belongs to the
        // controller) without the parts the schema refused, so that they report their own
        // problems and not echoes of those.
        let mut value = Value::Object(map.clone());
        if let Some(o) = value.as_object_mut() {
            o.remove("status");
            match &pruned.value {
                Some(spec) => o.insert("spec".to_string(), spec.clone()),
                None => o.remove("spec"),
            };
        }
        let typed = match kind {
            Kind::Workload => typed::<Workload>(&value).map(|w| Typed::Workload(Box::new(w))),
            Kind::ResourcePolicy => {
                typed::<ResourcePolicy>(&value).map(|p| Typed::Policy(Box::new(p)))
            }
        };
        // The metadata check has already said what is wrong with a name, and a rule that
        // saw only part of what it judges would only echo the schema's problems.
        errors.extend(
            rules
                .cel
                .check(&rules.schema, &value)
                .into_iter()
                .filter(|e| {
                    (metadata_ok || !e.path.as_str().starts_with("metadata"))
                        && !pruned.saw_partial(&e.path)
                }),
        );
        let typed = match typed {
            Ok(typed) => {
                errors.extend(typed.semantic());
                Some(typed)
            }
            // The schema check explains a wrong type better; serde's words are the fallback
            // for a gap between the schema and the types.
            Err(e) if errors.is_empty() => {
                errors.push(e);
                None
            }
            Err(_) => None,
        };
        Checked::Object {
            object,
            errors,
            typed,
        }
    }
}

/// What the checks of one document found.
enum Checked {
    /// Not a corral kind; described for the notice.
    Skipped(String),
    /// A corral document whose kind or apiVersion is wrong.
    Unidentified(Vec<FieldError>),
    /// A Workload or ResourcePolicy, with every problem found.
    Object {
        object: ObjectRef,
        errors: Vec<FieldError>,
        typed: Option<Typed>,
    },
}

enum Typed {
    Workload(Box<Workload>),
    Policy(Box<ResourcePolicy>),
}

impl Typed {
    fn semantic(&self) -> Vec<FieldError> {
        match self {
            Typed::Workload(w) => semantic::check_workload(&w.spec),
            Typed::Policy(p) => semantic::check_policy(&p.spec),
        }
    }
}

fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(object).map_err(|e| FieldError {
        path: FieldPath::parse(&e.path().to_string()),
        message: e.inner().to_string(),
    })
}

enum Classified {
    Corral(Kind),
    /// Another kind, described for the notice.
    Other(String),
    Invalid(Vec<FieldError>),
}

/// Sorts a document by its `apiVersion` and `kind`.
fn classify(map: &serde_json::Map<String, Value>) -> Classified {
    let api_version = map.get("apiVersion");
    let kind = map.get("kind");
    let mut errors = Vec::new();
    let api_path = FieldPath::root().key("apiVersion");
    let kind_path = FieldPath::root().key("kind");
    let (api_version, kind) = match (api_version, kind) {
        (None | Some(Value::Null), None | Some(Value::Null)) => {
            return Classified::Other("a document without apiVersion or kind".to_string());
        }
        (Some(a), Some(k)) if a.is_string() && k.is_string() => (
            a.as_str().unwrap_or_default(),
            k.as_str().unwrap_or_default(),
        ),
        (a, k) => {
            for (value, path) in [(a, &api_path), (k, &kind_path)] {
                match value {
                    None | Some(Value::Null) => errors.push(FieldError {
                        path: path.clone(),
                        message: "required field is missing".to_string(),
                    }),
                    Some(Value::String(_)) => {}
                    Some(_) => errors.push(FieldError {
                        path: path.clone(),
                        message: "must be a string".to_string(),
                    }),
                }
            }
            // A corral kind named without its apiVersion is a problem; other kinds are not
            // corral's business.
            let named_corral = k
                .and_then(Value::as_str)
                .is_some_and(|k| k == "Workload" || k == "ResourcePolicy");
            let corral_group = a
                .and_then(Value::as_str)
                .is_some_and(|a| a.split('/').next() == Some(GROUP));
            if named_corral || corral_group {
                if named_corral && a.is_none_or(Value::is_null) {
                    errors.retain(|e| e.path != api_path);
                    errors.push(FieldError {
                        path: api_path,
                        message: format!(
                            "required field is missing; write apiVersion: {API_VERSION}"
                        ),
                    });
                }
                return Classified::Invalid(errors);
            }
            let described = |v: Option<&Value>, missing: &str| {
                v.and_then(Value::as_str).unwrap_or(missing).to_string()
            };
            return Classified::Other(format!(
                "{} ({})",
                described(k, "an object without a kind"),
                described(a, "no apiVersion")
            ));
        }
    };
    let group = api_version.split('/').next().unwrap_or_default();
    let known_kind = match kind {
        "Workload" => Some(Kind::Workload),
        "ResourcePolicy" => Some(Kind::ResourcePolicy),
        _ => None,
    };
    if group != GROUP || !api_version.contains('/') {
        return Classified::Other(format!("{kind} ({api_version})"));
    }
    match known_kind {
        Some(k) if api_version == API_VERSION => Classified::Corral(k),
        Some(_) => Classified::Invalid(vec![FieldError {
            path: api_path,
            message: format!("unsupported version {api_version:?}; corral serves {API_VERSION}"),
        }]),
        None => {
            let hint = schema::closest(kind, ["Workload", "ResourcePolicy"].into_iter())
                .map(|c| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            Classified::Invalid(vec![FieldError {
                path: kind_path,
                message: format!(
                    "unknown kind {kind:?} in {GROUP}{hint}; corral has Workload and ResourcePolicy"
                ),
            }])
        }
    }
}

#[cfg(test)]
mod memo_tests {
    use super::*;

    fn text(name: &str, body: &str) -> ManifestText {
        ManifestText {
            origin: Origin::File(name.into()),
            text: body.to_string(),
        }
    }

    fn workload(name: &str, cpu: &str) -> String {
        format!(
            "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: t}}\n\
             spec:\n  replicas: 1\n  resources:\n    requests: {{cpu: {cpu}, memory: 8Mi}}\n  \
             command: {{args: [sleep, \"1\"]}}\n"
        )
    }

    #[test]
    fn a_memo_gives_what_a_fresh_check_gives_and_follows_edits() {
        let validator = Validator::new();
        let mut memo = Memo::default();
        let first = [
            text("a.yaml", &workload("a", "100m")),
            text("b.yaml", &workload("b", "100m")),
        ];
        let checked = validator.check_with(&first, &[], &mut memo);
        assert!(checked.is_valid(), "{:?}", checked.problems);
        assert_eq!(checked.workloads.len(), 2);
        // One file edited: its new text is checked, the other one's result is reused.
        let edited = [text("a.yaml", &workload("a", "300m")), first[1].clone()];
        let again = validator.check_with(&edited, &[], &mut memo);
        let fresh = validator.check(&edited, &[]);
        let cpu = |m: &Manifests| {
            m.workloads
                .iter()
                .map(|w| format!("{:?}", w.object.spec.resources))
                .collect::<Vec<_>>()
        };
        assert_eq!(cpu(&again), cpu(&fresh));
        assert!(cpu(&again)[0].contains("300m"), "{:?}", cpu(&again));
        // The checks across files still see every file: a duplicate is found.
        let duplicated = [edited[0].clone(), text("c.yaml", &workload("a", "100m"))];
        let dup = validator.check_with(&duplicated, &[], &mut memo);
        assert!(!dup.is_valid());
        assert_eq!(
            dup.problems.len(),
            validator.check(&duplicated, &[]).problems.len()
        );
        // A broken edit is seen, and fixing it again is too.
        let broken = [text("a.yaml", "kind: [")];
        assert!(!validator.check_with(&broken, &[], &mut memo).is_valid());
        assert!(validator.check_with(&first, &[], &mut memo).is_valid());
    }
}
