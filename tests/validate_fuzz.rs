//! No input makes the loader or the validator panic: arbitrary bytes, arbitrary YAML built
//! from corral's own field names and awkward values, and random edits of the examples.
//! Whatever is accepted is also accepted again after a round trip through serialization.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use corral::source::files::{ManifestText, Origin};
use corral::validate::{Manifests, Validator};

fn check(text: String) -> Manifests {
    let texts = [ManifestText {
        origin: Origin::File(PathBuf::from("fuzz.yaml")),
        text,
    }];
    thread_local! {
        static VALIDATOR: Validator = Validator::new();
    }
    VALIDATOR.with(|v| v.check(&texts, &[]))
}

/// Field names that reach deep into both kinds, and a few that do not exist.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "replicas",
    "priority",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "pids",
    "ioWeight",
    "placement",
    "nodeSelector",
    "mode",
    "command",
    "args",
    "env",
    "value",
    "workingDir",
    "restartPolicy",
    "adopt",
    "cgroupPath",
    "pidFile",
    "commandPattern",
    "policyRef",
    "terminationGracePeriodSeconds",
    "precedence",
    "namespaces",
    "workloadSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "strategy",
    "reserved",
    "overcommit",
    "tenants",
    "weight",
    "guarantee",
    "limit",
    "defaults",
    "preemption",
    "policy",
    "demand",
    "floorPercent",
    "usage",
    "percentile",
    "memoryPressurePercent",
    "cgroup",
    "cpuPeriodMicros",
    "memoryHighRatio",
    "memoryProtection",
    "nodeGracePeriodSeconds",
    "",
    "💥",
    "a.b/c",
];

/// Scalars that have broken parsers before: quantities out of range or malformed, YAML 1.1
/// words, paths, regexes, huge and tiny numbers.
const SCALARS: &[&str] = &[
    "500m",
    "1.5",
    "256Mi",
    "1G",
    "12XB",
    "-1",
    "1e400",
    "1e-400",
    "0.000000000000000000000000000000000000001",
    "99999999999999999999999999999999999999999Ei",
    "8Ei",
    "1E",
    "no",
    "yes",
    "on",
    "~",
    "null",
    ".inf",
    "-.inf",
    ".nan",
    "0x1F",
    "0o17",
    "1_000",
    "true",
    "Priority",
    "Fair",
    "Demand",
    "Usage",
    "Spread",
    "Pack",
    "In",
    "NotIn",
    "Exists",
    "Always",
    "Never",
    "Min",
    "..",
    "/",
    "../../etc",
    "(unclosed",
    "a{99999}",
    "web",
    "team-a",
    "corral.dev/v1alpha1",
    "Workload",
    "ResourcePolicy",
    "",
    " ",
    "é",
    "\u{0}",
    "x\ny",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(SCALARS).prop_map(|s| Value::String(s.to_string())),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<String, Value>>(),
                )
            }),
        ]
    })
}

/// An object of one of corral's kinds with an arbitrary body, so that it gets past
/// `apiVersion`/`kind` and into every later layer.
fn corral_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["Workload", "ResourcePolicy"][..]),
        value(),
        value(),
    )
        .prop_map(|(kind, metadata, spec)| {
            let metadata = match metadata {
                Value::Object(mut m) => {
                    m.entry("name").or_insert(json!("x"));
                    Value::Object(m)
                }
                other => other,
            };
            json!({"apiVersion": "corral.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
        })
}

fn example_texts() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    corral::source::files::expand(&root)
        .unwrap()
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Random edits: insert, delete or replace bytes with YAML's special characters.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    const SPECIAL: &[u8] = b":-{}[],&*!|>'\"%@`# \n\t?0.e";
    let mut bytes = text.as_bytes().to_vec();
    for &(at, op, c) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        let c = SPECIAL[c as usize % SPECIAL.len()];
        match op % 3 {
            0 => bytes.insert(at, c),
            1 => {
                bytes.remove(at);
            }
            _ => bytes[at] = c,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A set accepted without any problem is accepted again after a round trip through
/// serialization.
fn reaccepted(manifests: &Manifests) -> Result<(), TestCaseError> {
    if !manifests.problems.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for w in &manifests.workloads {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&w.object).unwrap());
    }
    for p in &manifests.policies {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&p.object).unwrap());
    }
    let again = check(text);
    prop_assert!(
        again.problems.is_empty(),
        "accepted once, refused after a round trip: {:?}",
        again.problems
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = check(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn arbitrary_yaml(docs in prop::collection::vec(value(), 1..4)) {
        let text: String = docs.iter().map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap())).collect();
        let manifests = check(text);
        reaccepted(&manifests)?;
    }

    #[test]
    fn arbitrary_corral_objects(docs in prop::collection::vec(corral_object(), 1..4)) {
        let text: String = docs.iter().map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap())).collect();
        let manifests = check(text);
        reaccepted(&manifests)?;
    }

    #[test]
    fn edited_examples(which in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let examples = example_texts();
        let text = mutate(&examples[which.index(examples.len())], &edits);
        let manifests = check(text);
        reaccepted(&manifests)?;
    }
}

/// Every problem line has the promised shape: `FILE:LINE: ...`.
#[test]
fn problem_lines_always_name_file_and_line() {
    for text in example_texts() {
        for cut in (0..text.len()).step_by(7) {
            let manifests = check(mutate(&text, &[(cut, 2, 0)]));
            for p in &manifests.problems {
                let line = p.to_string();
                assert!(line.starts_with("fuzz.yaml:"), "{line}");
                assert!(p.line > 0, "no line in {line}");
            }
        }
    }
}
