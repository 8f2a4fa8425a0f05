//! `corral validate` on good and bad manifests: one line per problem, naming file, line,
//! object and field; exit 1 on any problem, 0 otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use corral::source::files::{ManifestText, Origin};
use corral::validate::Validator;

/// Validates `text` as if read from `name` and returns the problem lines.
fn problems(name: &str, text: &str) -> Vec<String> {
    let texts = [ManifestText {
        origin: Origin::File(PathBuf::from(name)),
        text: text.to_string(),
    }];
    Validator::new()
        .check(&texts, &[])
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

const WORKLOAD_HEAD: &str =
    "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: web\n  namespace: shop\n";

fn workload(spec: &str) -> String {
    format!("{WORKLOAD_HEAD}spec:\n{spec}")
}

#[test]
fn a_valid_workload_has_no_problem() {
    let text = workload(
        "  replicas: 2\n  resources:\n    requests: {cpu: 500m, memory: 256Mi, pids: 10}\n    limits: {cpu: \"1.5\", memory: 1G, pids: 20}\n  command:\n    args: [sleep, infinity]\n",
    );
    assert_eq!(problems("w.yaml", &text), Vec::<String>::new());
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let lines = problems(
        "bad.yaml",
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nspec: [1, 2\nmetadata: {}\n",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("bad.yaml:4: invalid YAML: "),
        "{lines:?}"
    );
}

#[test]
fn wrong_types_and_unknown_fields() {
    let text = workload(
        "  replicas: two\n  priorty: 5\n  command:\n    args: [x]\n    restartPolicy: [Always]\n",
    );
    assert_eq!(
        problems("w.yaml", &text),
        [
            "w.yaml:7: Workload shop/web: spec.replicas: must be an integer, not the string \"two\"",
            "w.yaml:8: Workload shop/web: spec.priorty: unknown field (did you mean \"priority\"?)",
            "w.yaml:11: Workload shop/web: spec.command.restartPolicy: must be a string, not a list",
        ]
    );
}

#[test]
fn bad_quantities() {
    let text = workload(
        "  resources:\n    requests:\n      cpu: 12XB\n      memory: -1\n    limits:\n      cpu: 1e400\n      memory: 1.5\n  command:\n    args: [x]\n",
    );
    assert_eq!(
        problems("q.yaml", &text),
        [
            "q.yaml:9: Workload shop/web: spec.resources.requests.cpu: \"12XB\" is not a quantity; write a number with an optional suffix, such as 500m, 1.5, 256Mi or 1G",
            "q.yaml:10: Workload shop/web: spec.resources.requests.memory: \"-1\" must not be negative",
            "q.yaml:12: Workload shop/web: spec.resources.limits.cpu: \"1e400\" is too large",
            "q.yaml:13: Workload shop/web: spec.resources.limits.memory: must be an integer or a string; write 1.5 in quotes: \"1.5\"",
        ]
    );
}

#[test]
fn limits_below_requests() {
    let text = workload(
        "  resources:\n    requests: {cpu: \"2\", memory: 1Gi, pids: 100}\n    limits: {cpu: 1500m, memory: 1G, pids: 50}\n  command:\n    args: [x]\n",
    );
    assert_eq!(
        problems("l.yaml", &text),
        [
            "l.yaml:9: Workload shop/web: spec.resources.limits.cpu: must be at least requests.cpu (2), not 1500m",
            "l.yaml:9: Workload shop/web: spec.resources.limits.memory: must be at least requests.memory (1Gi), not 1G",
            "l.yaml:9: Workload shop/web: spec.resources.limits.pids: must be at least requests.pids (100), not 50",
        ]
    );
}

#[test]
fn names_that_are_not_dns_labels_or_could_escape_a_path() {
    for name in ["..", "a/b", "../../etc", "Web", "web.1", "-web", "\"\""] {
        let text = format!(
            "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  command: {{args: [x]}}\n"
        );
        let lines = problems("n.yaml", &text);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(
            lines[0].starts_with("n.yaml:4: Workload default/")
                && lines[0].contains(": metadata.name: must be a DNS-1123 label"),
            "{name}: {lines:?}"
        );
    }
    let lines = problems(
        "n.yaml",
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: ok\n  namespace: ../x\nspec:\n  command: {args: [x]}\n",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "n.yaml:5: Workload ../x/ok: metadata.namespace: must be a DNS-1123 label"
        )
    );
}

#[test]
fn replicas_out_of_range() {
    let lines = problems(
        "r.yaml",
        &workload("  replicas: 1001\n  command: {args: [x]}\n"),
    );
    assert_eq!(
        lines,
        ["r.yaml:7: Workload shop/web: spec.replicas: must be at most 1000, not 1001"]
    );
    let lines = problems(
        "r.yaml",
        &workload("  replicas: -1\n  command: {args: [x]}\n"),
    );
    assert_eq!(
        lines,
        ["r.yaml:7: Workload shop/web: spec.replicas: must be at least 0, not -1"]
    );
}

const POLICY_HEAD: &str =
    "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata:\n  name: gold\n";

#[test]
fn unknown_strategy_and_duplicate_tenants() {
    let text = format!(
        "{POLICY_HEAD}spec:\n  strategy: fair\n  tenants:\n  - namespace: a\n  - namespace: b\n  - namespace: a\n    weight: 2\n"
    );
    assert_eq!(
        problems("p.yaml", &text),
        [
            "p.yaml:6: ResourcePolicy gold: spec.strategy: unsupported value \"fair\" (did you mean \"Fair\"?); supported values: \"Priority\", \"Fair\", \"Demand\", \"Usage\"",
            "p.yaml:10: ResourcePolicy gold: spec.tenants[2]: duplicate entry with namespace \"a\"",
        ]
    );
}

#[test]
fn a_policy_reference_to_nothing() {
    let text = workload("  policyRef: {name: silver}\n  command: {args: [x]}\n");
    assert_eq!(
        problems("w.yaml", &text),
        [
            "w.yaml:7: Workload shop/web: spec.policyRef.name: ResourcePolicy \"silver\" is not defined in the manifests given"
        ]
    );
}

#[test]
fn duplicates_across_files_name_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let text = workload("  command: {args: [x]}\n");
    std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
    std::fs::write(dir.path().join("b.yaml"), &text).unwrap();
    let manifests = corral::source::load(&[dir.path().to_path_buf()]);
    let lines: Vec<String> = manifests.problems.iter().map(ToString::to_string).collect();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    assert_eq!(
        lines,
        [format!(
            "{}:4: Workload shop/web: metadata.name: defined twice; first at {}:4",
            b.display(),
            a.display()
        )]
    );
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = format!(
        "{}---\n{POLICY_HEAD}spec:\n  strategy: Best\n  overcommit: {{cpu: 0}}\n",
        workload(
            "  replicas: 5000\n  priority: -3\n  resources:\n    limits: {cpu: 12XB}\n  command: {args: []}\n  adopt: {pidFile: x.pid}\n"
        )
    );
    let lines = problems("m.yaml", &text);
    let fields: Vec<&str> = lines
        .iter()
        .map(|l| l.split(": ").nth(2).unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.replicas",
            "spec.priority",
            "spec.resources.limits.cpu",
            "spec.command.args",
            "spec.adopt.pidFile",
            "spec.strategy",
            "spec.overcommit.cpu",
        ],
        "{lines:#?}"
    );
}

#[test]
fn other_kinds_are_skipped_with_a_notice_and_yaml_1_2_words_stay_strings_with_a_warning() {
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n---\n{}",
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: web\n  labels: {enabled: no, country: NO}\nspec:\n  command: {args: [x]}\n"
    );
    let texts = [ManifestText {
        origin: Origin::File(PathBuf::from("k.yaml")),
        text,
    }];
    let manifests = Validator::new().check(&texts, &[]);
    assert!(manifests.problems.is_empty(), "{:?}", manifests.problems);
    let notices: Vec<String> = manifests.notices.iter().map(ToString::to_string).collect();
    assert_eq!(
        notices,
        [
            "k.yaml:1: skipped Deployment (apps/v1): not a corral kind",
            "k.yaml:9: Workload default/web: metadata.labels.enabled: warning: unquoted no is the string \"no\" to corral (YAML 1.2) but a boolean to kubectl (YAML 1.1), which refuses it here; write \"no\"",
            "k.yaml:9: Workload default/web: metadata.labels.country: warning: unquoted NO is the string \"NO\" to corral (YAML 1.2) but a boolean to kubectl (YAML 1.1), which refuses it here; write \"NO\"",
        ]
    );
    let labels = manifests.workloads[0]
        .object
        .metadata
        .labels
        .clone()
        .unwrap();
    assert_eq!(labels["enabled"], "no");
    assert_eq!(labels["country"], "NO");
}

#[test]
fn corral_kinds_with_a_wrong_version_or_a_typo_are_problems_not_skipped() {
    let lines = problems(
        "v.yaml",
        "apiVersion: corral.dev/v1\nkind: Workload\nmetadata: {name: a}\n---\napiVersion: corral.dev/v1alpha1\nkind: Workloads\nmetadata: {name: b}\n---\nkind: ResourcePolicy\nmetadata: {name: c}\n",
    );
    assert_eq!(
        lines,
        [
            "v.yaml:1: apiVersion: unsupported version \"corral.dev/v1\"; corral serves corral.dev/v1alpha1",
            "v.yaml:6: kind: unknown kind \"Workloads\" in corral.dev (did you mean \"Workload\"?); corral has Workload and ResourcePolicy",
            "v.yaml:9: apiVersion: required field is missing; write apiVersion: corral.dev/v1alpha1",
        ]
    );
}

fn corral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corral"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn every_example_validates() {
    let mut count = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let output = corral()
            .arg("validate")
            .arg("-f")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        count += 1;
    }
    assert!(
        count >= 3,
        "expected the quickstart, tenants and priority examples"
    );
}

#[test]
fn the_cli_exits_1_with_one_line_per_problem_and_reads_stdin() {
    let mut child = corral()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(workload("  replicas: 2000\n  command: {args: []}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "<stdin>:7: Workload shop/web: spec.replicas: must be at most 1000, not 2000\n\
         <stdin>:8: Workload shop/web: spec.command.args: must have at least one item\n"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("2 problems"));
}

#[test]
fn the_cli_reports_unreadable_paths_and_keeps_going() {
    let output = corral()
        .args(["validate", "-f", "/nonexistent/corral.yaml", "-f"])
        .arg(examples().join("quickstart"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("/nonexistent/corral.yaml: cannot read: "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
}

/// What a tenant may ask for is its policy's to say: each refusal names the workload's
/// field and the policy's field that bounds it.
#[test]
fn a_tenant_gets_what_its_policy_allows_and_nothing_more() {
    let policy = "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata:\n  name: shared\nspec:\n  namespaces: [team-a]\n  tenantDefaults:\n    maxPriority: 100\n    maxWorkloads: 2\n  replicaBounds:\n    min: {cpu: 10m, memory: 4Mi}\n  tenants:\n  - namespace: team-a\n    security: {runAsUser: 2000, runAsGroup: 2000}\n---\napiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata:\n  name: open\nspec:\n  namespaces: [team-b]\n  nodeSelector: {matchLabels: {pool: b}}\n";
    let workloads = "---\napiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: greedy, namespace: team-a}\nspec:\n  priority: 1000000000\n  resources:\n    requests: {cpu: \"0\", memory: \"0\"}\n  command:\n    args: [id]\n    securityContext: {runAsUser: 0}\n---\napiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: intruder, namespace: team-b}\nspec:\n  policyRef: {name: shared}\n  command: {args: [id]}\n---\napiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: adopter, namespace: team-a}\nspec:\n  adopt: {pidFile: /run/sshd.pid}\n---\napiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: zz-third, namespace: team-a}\nspec:\n  command: {args: [id]}\n";
    let lines = problems("t.yaml", &format!("{policy}{workloads}"));
    assert_eq!(
        lines,
        [
            "t.yaml:28: Workload team-a/greedy: spec.priority: 1000000000 is above 100, the highest ResourcePolicy \"shared\" allows namespace team-a (spec.tenantDefaults.maxPriority)",
            "t.yaml:30: Workload team-a/greedy: spec.resources.requests.cpu: 0 is below 10m, the least ResourcePolicy \"shared\" allows a replica (spec.replicaBounds.min.cpu)",
            "t.yaml:30: Workload team-a/greedy: spec.resources.requests.memory: 0 is below 4Mi, the least ResourcePolicy \"shared\" allows a replica (spec.replicaBounds.min.memory)",
            "t.yaml:33: Workload team-a/greedy: spec.command.securityContext.runAsUser: user 0 is root, which namespace team-a under ResourcePolicy \"shared\" may not use (allowRoot: true in the tenant's security allows it)",
            "t.yaml:39: Workload team-b/intruder: spec.policyRef.name: names ResourcePolicy \"shared\", which governs only namespaces team-a (its spec.namespaces), not team-b",
            "t.yaml:46: Workload team-a/adopter: spec.adopt: ResourcePolicy \"shared\" does not let namespace team-a adopt processes (an administrator enables it with security.adopt.enabled)",
            "t.yaml:50: Workload team-a/zz-third: metadata.namespace: namespace team-a may have at most 2 Workload(s) under ResourcePolicy \"shared\" (spec.tenantDefaults.maxWorkloads), and has 3; the oldest are admitted first",
        ]
    );
}
