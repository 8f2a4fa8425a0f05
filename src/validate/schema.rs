//! Checks a JSON value against a CRD's structural OpenAPI schema, as the apiserver does
//! before it stores an object: types, unknown fields (kubectl's strict field validation),
//! required fields, enums, bounds, lengths, patterns and list-map keys.
//!
//! Written here because no crate checks the Kubernetes dialect: `nullable`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-list-type` and the rule that a `null` for a
//! non-nullable field is dropped rather than refused. The CEL rules
//! (`x-kubernetes-validations`) are evaluated separately by kube-cel, see [`super::cel`].

use std::collections::HashSet;

use regex::Regex;
use serde_json::{Map, Value};

use super::FieldError;
use crate::api::names::{
    ABSOLUTE_PATH_PATTERN, DNS_LABEL_MESSAGE, DNS_LABEL_PATTERN, NO_NUL_PATTERN,
    absolute_path_problem,
};
use crate::api::quantity::{QUANTITY_HINT, SCHEMA_QUANTITY_PATTERN};
use crate::source::yaml::FieldPath;

/// Checks `value` at `path` against `schema`, appending every problem found.
///
/// Returns the value without the parts that failed (unknown fields, wrong types, values out
/// of bounds, a list with any bad item, a mapping missing a required field), so that the
/// later checks can run on the rest and report their own problems, not echoes of these.
pub fn check(schema: &Value, value: &Value, path: &FieldPath, out: &mut Vec<FieldError>) -> Pruned {
    let mut checker = Checker {
        patterns: Vec::new(),
        dropped: Vec::new(),
        out,
    };
    let value = checker.check(schema, value, path);
    Pruned {
        value,
        dropped: checker.dropped,
    }
}

/// What is left of a value after the schema check.
#[derive(Debug, PartialEq)]
pub struct Pruned {
    /// The value without its bad parts; `None` if the value itself was bad.
    pub value: Option<Value>,
    /// The paths removed.
    pub dropped: Vec<FieldPath>,
}

impl Pruned {
    /// True when a rule reporting at `path` saw only part of what it judges: `path` is a
    /// removed field or encloses one.
    pub fn saw_partial(&self, path: &FieldPath) -> bool {
        self.dropped.iter().any(|d| path.encloses(d))
    }
}

struct Checker<'a> {
    /// Compiled patterns, few and reused across many values.
    patterns: Vec<(String, Option<Regex>)>,
    dropped: Vec<FieldPath>,
    out: &'a mut Vec<FieldError>,
}

impl Checker<'_> {
    fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.out.push(FieldError {
            path: path.clone(),
            message: message.into(),
        });
    }

    /// Checks one node and returns what survives of it: a mapping without its bad fields,
    /// anything else only if it had no problem.
    fn check(&mut self, schema: &Value, value: &Value, path: &FieldPath) -> Option<Value> {
        if value.is_null() {
            // The apiserver drops a null given for a non-nullable field, then defaults it;
            // a required one is then reported missing by the parent.
            return None;
        }
        let kept = self.check_node(schema, value, path);
        if kept.is_none() {
            self.dropped.push(path.clone());
        }
        kept
    }

    fn check_node(&mut self, schema: &Value, value: &Value, path: &FieldPath) -> Option<Value> {
        let before = self.out.len();
        if flag(schema, "x-kubernetes-int-or-string") {
            self.check_int_or_string(schema, value, path);
        } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
            if !type_matches(expected, value) {
                self.error(
                    path,
                    format!("must be {}, not {}", article(expected), describe(value)),
                );
                return None;
            }
            self.check_enum(schema, value, path);
            match value {
                Value::Number(_) => self.check_bounds(schema, value, path),
                Value::String(s) => self.check_string(schema, s, path),
                Value::Array(items) => return self.check_array(schema, items, path),
                Value::Object(map) => return self.check_object(schema, map, path),
                Value::Bool(_) | Value::Null => {}
            }
        }
        // No type: x-kubernetes-preserve-unknown-fields or an empty schema, anything goes.
        (self.out.len() == before).then(|| value.clone())
    }

    fn check_int_or_string(&mut self, schema: &Value, value: &Value, path: &FieldPath) {
        match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => self.check_bounds(schema, value, path),
            // A YAML float such as `0.5` is written by people for quantities; it is what
            // kubectl sends as a number and the apiserver refuses, so say how to write it.
            Value::Number(n) => self.error(
                path,
                format!("must be an integer or a string; write {n} in quotes: \"{n}\""),
            ),
            Value::String(s) => self.check_string(schema, s, path),
            other => self.error(
                path,
                format!("must be an integer or a string, not {}", describe(other)),
            ),
        }
    }

    fn check_enum(&mut self, schema: &Value, value: &Value, path: &FieldPath) {
        let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
            return;
        };
        if allowed.contains(value) {
            return;
        }
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        let hint = match value.as_str() {
            Some(given) => closest(given, allowed.iter().filter_map(Value::as_str))
                .map(|c| format!(" (did you mean \"{c}\"?)"))
                .unwrap_or_default(),
            None => String::new(),
        };
        self.error(
            path,
            format!(
                "unsupported value {value}{hint}; supported values: {}",
                listed.join(", ")
            ),
        );
    }

    fn check_bounds(&mut self, schema: &Value, value: &Value, path: &FieldPath) {
        let Some(v) = value.as_f64() else { return };
        let quantity =
            schema.get("pattern").and_then(Value::as_str) == Some(SCHEMA_QUANTITY_PATTERN);
        if quantity && v < 0.0 {
            let text = Value::from(value.to_string());
            self.error(path, format!("{text} must not be negative"));
            return;
        }
        let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && exclusive
            && v <= min
        {
            self.error(
                path,
                format!("must be more than {}, not {value}", number(min)),
            );
        } else if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && v < min
        {
            self.error(
                path,
                format!("must be at least {}, not {value}", number(min)),
            );
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && v > max
        {
            self.error(
                path,
                format!("must be at most {}, not {value}", number(max)),
            );
        }
    }

    fn check_string(&mut self, schema: &Value, s: &str, path: &FieldPath) {
        let length = s.chars().count();
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && (length as u64) < min
        {
            if min == 1 {
                self.error(path, "must not be empty");
            } else {
                self.error(path, format!("must be at least {min} characters long"));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length as u64 > max
        {
            self.error(
                path,
                format!("must be at most {max} characters long, not {length}"),
            );
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !self.matches(pattern, s)
        {
            let message = if pattern == DNS_LABEL_PATTERN {
                DNS_LABEL_MESSAGE.to_string()
            } else if pattern == ABSOLUTE_PATH_PATTERN {
                absolute_path_problem(s)
            } else if pattern == NO_NUL_PATTERN {
                "must not contain a NUL byte".to_string()
            } else if pattern == SCHEMA_QUANTITY_PATTERN && s.trim_start().starts_with('-') {
                format!("{} must not be negative", Value::from(s))
            } else if pattern == SCHEMA_QUANTITY_PATTERN {
                format!("{} {QUANTITY_HINT}", Value::from(s))
            } else {
                format!("{} does not match {pattern}", Value::from(s))
            };
            self.error(path, message);
        }
    }

    fn matches(&mut self, pattern: &str, s: &str) -> bool {
        let compiled = match self.patterns.iter().find(|(p, _)| p == pattern) {
            Some((_, compiled)) => compiled,
            None => {
                self.patterns
                    .push((pattern.to_string(), Regex::new(pattern).ok()));
                &self.patterns[self.patterns.len() - 1].1
            }
        };
        // A pattern the regex crate cannot compile is the schema's fault, not the user's.
        compiled.as_ref().is_none_or(|re| re.is_match(s))
    }

    fn check_array(&mut self, schema: &Value, items: &[Value], path: &FieldPath) -> Option<Value> {
        let before = self.out.len();
        let count = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            if min == 1 {
                self.error(path, "must have at least one item");
            } else {
                self.error(path, format!("must have at least {min} items"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            self.error(path, format!("must have at most {max} items, not {count}"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &path.index(i));
            }
        }
        let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
        match list_type {
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        self.error(&path.index(i), format!("duplicate value {item}"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<&Value> = keys
                        .iter()
                        .map(|k| item.get(*k).unwrap_or(&Value::Null))
                        .collect();
                    if key.iter().all(|v| !v.is_null())
                        && !seen.insert(serde_json::to_string(&key).unwrap_or_default())
                    {
                        let described: Vec<String> = keys
                            .iter()
                            .zip(&key)
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect();
                        self.error(
                            &path.index(i),
                            format!("duplicate entry with {}", described.join(", ")),
                        );
                    }
                }
            }
            _ => {}
        }
        // Any bad item drops the whole list: dropping only the item would renumber the rest.
        (self.out.len() == before).then(|| Value::Array(items.to_vec()))
    }

    /// Checks a mapping and returns it without its unknown or bad fields, or `None` when a
    /// required field is missing or bad.
    fn check_object(
        &mut self,
        schema: &Value,
        map: &Map<String, Value>,
        path: &FieldPath,
    ) -> Option<Value> {
        let mut kept = Map::new();
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if map.get(name).is_none_or(Value::is_null) {
                    self.error(&path.key(name), "required field is missing");
                }
            }
        }
        for (key, value) in map {
            let child = path.key(key);
            if let Some(property) = properties.and_then(|p| p.get(key)) {
                if let Some(v) = self.check(property, value, &child) {
                    kept.insert(key.clone(), v);
                }
            } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                if let Some(v) = self.check(additional, value, &child) {
                    kept.insert(key.clone(), v);
                }
            } else if preserve || additional == Some(&Value::Bool(true)) {
                kept.insert(key.clone(), value.clone());
            } else {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = match closest(key, known.iter().copied()) {
                    Some(c) => format!(" (did you mean \"{c}\"?)"),
                    None if known.is_empty() => String::new(),
                    None => format!("; known fields: {}", known.join(", ")),
                };
                self.error(&child, format!("unknown field{hint}"));
                self.dropped.push(child);
            }
        }
        let complete = schema
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|required| {
                required
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|name| kept.contains_key(name))
            });
        complete.then_some(Value::Object(kept))
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn article(expected: &str) -> &'static str {
    match expected {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        _ => "of another type",
    }
}

/// A value described for a message: its type, and the value itself when short.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("the number {n}"),
        Value::Number(n) => format!("the integer {n}"),
        Value::String(s) if s.chars().count() <= 40 => format!("the string {value}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

/// `3` rather than `3.0` for whole bounds.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// The candidate closest to `given`, if it is close enough to be a likely typo.
pub fn closest<'a>(given: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    candidates
        .map(|c| (strsim::levenshtein(&given_lower, &c.to_lowercase()), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema, &value, &FieldPath::root().key("spec"), &mut out);
        out.iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    fn object(properties: Value) -> Value {
        json!({"type": "object", "properties": properties})
    }

    #[test]
    fn wrong_types_are_named() {
        let schema = object(
            json!({"n": {"type": "integer"}, "s": {"type": "string"}, "b": {"type": "boolean"}}),
        );
        assert_eq!(
            errors(schema, json!({"n": "two", "s": 3, "b": "yes"})),
            [
                "spec.b: must be true or false, not the string \"yes\"",
                "spec.n: must be an integer, not the string \"two\"",
                "spec.s: must be a string, not the integer 3",
            ]
        );
    }

    #[test]
    fn unknown_fields_suggest_the_closest_known_one() {
        let schema =
            object(json!({"replicas": {"type": "integer"}, "priority": {"type": "integer"}}));
        assert_eq!(
            errors(schema.clone(), json!({"replica": 1, "zzz": 2})),
            [
                "spec.replica: unknown field (did you mean \"replicas\"?)",
                "spec.zzz: unknown field; known fields: priority, replicas",
            ]
        );
        let preserved = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        assert!(errors(preserved, json!({"anything": 1})).is_empty());
    }

    #[test]
    fn bounds_lengths_and_enums() {
        let schema = object(json!({
            "r": {"type": "integer", "minimum": 0.0, "maximum": 1000.0},
            "s": {"type": "string", "minLength": 1, "maxLength": 3},
            "e": {"type": "string", "enum": ["Fair", "Priority"]},
            "l": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        }));
        assert_eq!(
            errors(schema, json!({"r": 5000, "s": "", "e": "fair", "l": []})),
            [
                "spec.e: unsupported value \"fair\" (did you mean \"Fair\"?); supported values: \"Fair\", \"Priority\"",
                "spec.l: must have at least one item",
                "spec.r: must be at most 1000, not 5000",
                "spec.s: must not be empty",
            ]
        );
    }

    #[test]
    fn an_exclusive_minimum_refuses_the_minimum_itself() {
        let schema = object(json!({
            "x": {"type": "number", "minimum": 0.0, "exclusiveMinimum": true, "maximum": 1.0},
        }));
        assert_eq!(
            errors(schema.clone(), json!({"x": 0})),
            ["spec.x: must be more than 0, not 0"]
        );
        assert!(errors(schema, json!({"x": 0.001})).is_empty());
    }

    #[test]
    fn required_and_null() {
        let schema = json!({"type": "object", "required": ["args"], "properties": {"args": {"type": "array"}, "x": {"type": "string"}}});
        assert_eq!(
            errors(schema.clone(), json!({"x": null})),
            ["spec.args: required field is missing"]
        );
        assert_eq!(
            errors(schema, json!({"args": null})),
            ["spec.args: required field is missing"]
        );
    }

    #[test]
    fn bad_parts_are_pruned_and_the_rest_kept() {
        let schema = object(json!({
            "n": {"type": "integer", "maximum": 10.0},
            "s": {"type": "string"},
            "l": {"type": "array", "items": {"type": "integer"}},
            "m": {"type": "array", "items": {"type": "integer"}},
        }));
        let mut out = Vec::new();
        let pruned = check(
            &schema,
            &json!({"n": 11, "s": "ok", "l": [1, "x"], "m": [1, 2], "zz": 1}),
            &FieldPath::root(),
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(pruned.value, Some(json!({"s": "ok", "m": [1, 2]})));
        let dropped: Vec<_> = pruned.dropped.iter().map(FieldPath::to_string).collect();
        assert_eq!(dropped, ["l[1]", "l", "n", "zz"]);
        assert!(pruned.saw_partial(&FieldPath::root()));
        assert!(pruned.saw_partial(&FieldPath::parse("l")));
        assert!(!pruned.saw_partial(&FieldPath::parse("s")));
        assert!(!pruned.saw_partial(&FieldPath::parse("nn")));

        let required = json!({"type": "object", "properties": {"c": {"type": "object", "required": ["args"],
            "properties": {"args": {"type": "array", "minItems": 1}}}}});
        let pruned = check(
            &required,
            &json!({"c": {"args": []}}),
            &FieldPath::root(),
            &mut out,
        );
        assert_eq!(
            pruned.value,
            Some(json!({})),
            "a mapping without its required field goes"
        );
    }

    #[test]
    fn list_maps_refuse_duplicate_keys() {
        let schema = json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["namespace"],
            "items": {"type": "object", "properties": {"namespace": {"type": "string"}}}});
        assert_eq!(
            errors(
                schema,
                json!([{"namespace": "a"}, {"namespace": "b"}, {"namespace": "a"}])
            ),
            ["spec[2]: duplicate entry with namespace \"a\""]
        );
    }

    #[test]
    fn quantities_are_int_or_string_with_the_upstream_pattern() {
        let q = json!({"x-kubernetes-int-or-string": true, "pattern": SCHEMA_QUANTITY_PATTERN, "minimum": 0});
        let schema = object(json!({"a": q, "b": q, "c": q, "d": q, "e": q}));
        assert_eq!(
            errors(
                schema,
                json!({"a": "500m", "b": 2, "c": "12XB", "d": 0.5, "e": true})
            ),
            [
                format!("spec.c: \"12XB\" {QUANTITY_HINT}"),
                "spec.d: must be an integer or a string; write 0.5 in quotes: \"0.5\"".to_string(),
                "spec.e: must be an integer or a string, not the boolean true".to_string(),
            ]
        );
    }
}
