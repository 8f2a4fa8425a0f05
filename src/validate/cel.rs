//! The CRDs' CEL rules (`x-kubernetes-validations`), evaluated by kube-cel exactly as written
//! in the generated schema, so that `corral validate` and the apiserver apply the same rules.

use std::collections::BTreeMap;

use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use serde_json::Value;

use super::FieldError;
use crate::api::quantity::{Exact, SCHEMA_QUANTITY_PATTERN};
use crate::source::yaml::FieldPath;

/// A kind's schema with its rules compiled once.
pub struct CelRules {
    compiled: CompiledSchema,
    validator: Validator,
}

impl CelRules {
    /// Compiles the rules of an `openAPIV3Schema`.
    pub fn new(schema: &Value) -> Self {
        CelRules {
            compiled: compile_schema(schema),
            validator: Validator::new(),
        }
    }

    /// Evaluates every rule against `object` (a whole object, as the apiserver sees it on
    /// create, with the fields the schema refused removed).
    ///
    /// kube-cel's quantity arithmetic does not check for overflow, so quantities reach it only
    /// in the canonical form of [`Exact::canonical_millis`]; one without such a form is left
    /// out (the semantic check reports it), so a rule about it passes.
    ///
    /// A message that quotes a quantity (`must be at least requests.cpu (500m), not 200m`)
    /// quotes it as written, as the apiserver does, not in that canonical form.
    pub fn check(&self, schema: &Value, object: &Value) -> Vec<FieldError> {
        let mut written = BTreeMap::new();
        let object = canonical_quantities(schema, object, &mut written);
        let Err(errors) = self
            .validator
            .validate_compiled(&self.compiled, &object, None)
        else {
            return Vec::new();
        };
        errors
            .iter()
            .map(|e| FieldError {
                path: FieldPath::parse(&e.field_path),
                message: match e.kind {
                    ErrorKind::ValidationFailure => as_written(&e.message, &written),
                    // A rule that cannot be evaluated is corral's bug; say so rather than
                    // pass the object.
                    _ => format!(
                        "rule `{}` could not be evaluated ({}); please report this",
                        e.rule, e.message
                    ),
                },
            })
            .collect()
    }
}

/// `message` with each canonical quantity it quotes (`1073741824000m`) as it was written
/// (`1Gi`), per `written` (canonical → written).
fn as_written(message: &str, written: &BTreeMap<String, String>) -> String {
    static MILLIS: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\b[0-9]+m\b").ok());
    let Some(millis) = MILLIS.as_ref() else {
        return message.to_string();
    };
    millis
        .replace_all(message, |found: &regex::Captures<'_>| {
            let text = &found[0];
            written
                .get(text)
                .cloned()
                .unwrap_or_else(|| text.to_string())
        })
        .into_owned()
}

/// `value` with every quantity (per `schema`) in canonical form, or removed if it has none;
/// records in `written` the text each canonical form was written as.
fn canonical_quantities(
    schema: &Value,
    value: &Value,
    written: &mut BTreeMap<String, String>,
) -> Value {
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties");
            let additional = schema.get("additionalProperties");
            let mut out = serde_json::Map::new();
            for (key, child) in map {
                let child_schema = properties
                    .and_then(|p| p.get(key))
                    .or(additional)
                    .unwrap_or(&Value::Null);
                if is_quantity(child_schema) {
                    if let Some((canonical, text)) = canonical(child) {
                        written.insert(canonical.clone(), text);
                        out.insert(key.clone(), Value::String(canonical));
                    }
                } else {
                    out.insert(
                        key.clone(),
                        canonical_quantities(child_schema, child, written),
                    );
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            Value::Array(
                items
                    .iter()
                    .map(|item| canonical_quantities(item_schema, item, written))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn is_quantity(schema: &Value) -> bool {
    schema.get("pattern").and_then(Value::as_str) == Some(SCHEMA_QUANTITY_PATTERN)
}

/// The canonical form of a quantity, and the text it was written as.
fn canonical(value: &Value) -> Option<(String, String)> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let canonical = Exact::parse(&text).ok()?.canonical_millis()?;
    Some((canonical, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd;
    use serde_json::json;

    fn workload_rules() -> (CelRules, Value) {
        let crd = serde_json::to_value(&crd::all()[0].crd).unwrap();
        let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        (CelRules::new(&schema), schema)
    }

    fn messages(rules: &(CelRules, Value), spec: Value) -> Vec<String> {
        let object = json!({"apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec});
        rules
            .0
            .check(&rules.1, &object)
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn a_valid_workload_passes_every_rule() {
        let rules = workload_rules();
        let spec = json!({"command": {"args": ["sleep", "1"]},
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi", "pids": 10},
                          "limits": {"cpu": 1, "memory": "128Mi", "pids": 10}}});
        assert_eq!(messages(&rules, spec), Vec::<String>::new());
    }

    #[test]
    fn limits_below_requests_are_refused_for_each_resource() {
        let rules = workload_rules();
        let spec = json!({"command": {"args": ["sleep"]},
            "resources": {"requests": {"cpu": "1500m", "memory": "1Gi", "pids": 20},
                          "limits": {"cpu": 1, "memory": "1000Mi", "pids": 10}}});
        assert_eq!(
            messages(&rules, spec),
            [
                "spec.resources.limits.cpu: must be at least requests.cpu (1500m), not 1",
                "spec.resources.limits.memory: must be at least requests.memory (1Gi), not 1000Mi",
                "spec.resources.limits.pids: must be at least requests.pids (20), not 10",
            ]
        );
    }

    #[test]
    fn command_and_adopt_are_exclusive_and_adopt_takes_one_matcher() {
        let rules = workload_rules();
        assert_eq!(
            messages(&rules, json!({})),
            ["spec: exactly one of command or adopt must be set"]
        );
        assert_eq!(
            messages(
                &rules,
                json!({"adopt": {"pidFile": "/run/a.pid", "commandPattern": "nginx"}})
            ),
            ["spec.adopt: exactly one of cgroupPath, pidFile or commandPattern must be set"]
        );
    }

    #[test]
    fn quantities_without_a_canonical_form_are_left_to_the_semantic_check() {
        let rules = workload_rules();
        // kube-cel would overflow comparing these; they never reach it.
        let spec = json!({"command": {"args": ["x"]}, "resources": {
            "requests": {"cpu": "0.000000000000000000000000000000000000001", "memory": -1},
            "limits": {"cpu": "1e400", "memory": "1e-30"}}});
        assert_eq!(messages(&rules, spec), Vec::<String>::new());
    }

    #[test]
    fn bad_names_are_refused() {
        let rules = workload_rules();
        let object = json!({"metadata": {"name": "Web_1"}, "spec": {"command": {"args": ["x"]}}});
        let errors = rules.0.check(&rules.1, &object);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path.as_str(), "metadata.name");
    }
}
