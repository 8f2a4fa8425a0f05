//! crds/ holds what `corral crd` generates; this fails when a type changed and the files did
//! not. Regenerate with `cargo run -- crd --dir crds`.

use corral::api::crd;

#[test]
fn crd_files_match_the_types() {
    for generated in crd::all() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds")
            .join(generated.file_name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run `cargo run -- crd --dir crds`", path.display())
        });
        let expected = crd::to_yaml(&generated.crd).unwrap();
        assert!(
            on_disk == expected,
            "{} is stale; run `cargo run -- crd --dir crds` and commit the result",
            path.display()
        );
    }
}

/// The server refuses a whole CRD over either of these, and they are easy to produce from
/// serde attributes: `default: []` beside `minItems`, and `null` among an enum's values.
#[test]
fn crds_avoid_what_the_apiserver_refuses() {
    fn walk(path: &str, node: &serde_json::Value, problems: &mut Vec<String>) {
        if let Some(map) = node.as_object() {
            if map.contains_key("minItems")
                && map
                    .get("default")
                    .is_some_and(|d| d == &serde_json::json!([]))
            {
                problems.push(format!("{path}: default [] with minItems"));
            }
            if let Some(values) = map.get("enum").and_then(|e| e.as_array())
                && values.iter().any(serde_json::Value::is_null)
            {
                problems.push(format!("{path}: null in enum"));
            }
            if map.contains_key("anyOf") && map.contains_key("x-kubernetes-int-or-string") {
                problems.push(format!("{path}: anyOf beside x-kubernetes-int-or-string"));
            }
            for (k, v) in map {
                walk(&format!("{path}/{k}"), v, problems);
            }
        } else if let Some(items) = node.as_array() {
            for (i, v) in items.iter().enumerate() {
                walk(&format!("{path}/{i}"), v, problems);
            }
        }
    }
    let mut problems = Vec::new();
    for generated in crd::all() {
        let value = serde_json::to_value(&generated.crd).unwrap();
        walk(generated.file_name, &value, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every field a user can write has a description, which `kubectl explain` shows.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                // The apiserver allows nothing in `metadata` but restrictions on the name,
                // and `kubectl explain` documents it anyway.
                if name == "metadata" {
                    continue;
                }
                let child = format!("{path}.{name}");
                if prop.get("description").is_none() {
                    missing.push(child.clone());
                }
                walk(&child, prop, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = map.get(key) {
                walk(&format!("{path}[]"), inner, missing);
            }
        }
    }
    let mut missing = Vec::new();
    for generated in crd::all() {
        let value = serde_json::to_value(&generated.crd).unwrap();
        let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(generated.file_name, schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:#?}"
    );
}

/// `kubectl explain` wraps descriptions itself: a line break left from a doc comment would
/// cut sentences in two. Paragraph breaks stay.
#[test]
fn descriptions_are_not_hard_wrapped() {
    fn walk(path: &str, node: &serde_json::Value, wrapped: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if key == "description"
                        && let Some(text) = value.as_str()
                        && text.replace("\n\n", "").contains('\n')
                    {
                        wrapped.push(format!("{path}: {text:?}"));
                    }
                    walk(&format!("{path}.{key}"), value, wrapped);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), item, wrapped);
                }
            }
            _ => {}
        }
    }
    let mut wrapped = Vec::new();
    for generated in crd::all() {
        let value = serde_json::to_value(&generated.crd).unwrap();
        walk(generated.file_name, &value, &mut wrapped);
    }
    assert!(wrapped.is_empty(), "{wrapped:#?}");
}

/// `kubectl get resourcepolicies` shows whether each policy is valid and ready.
#[test]
fn policies_list_valid_and_ready() {
    let policy = crd::policy();
    let columns: Vec<(String, String)> = policy.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    for name in ["Valid", "Ready"] {
        assert!(
            columns.contains(&(
                name.to_string(),
                format!(".status.conditions[?(@.type==\"{name}\")].status")
            )),
            "{columns:?}"
        );
    }
}
