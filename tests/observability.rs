//! What operators watch corral with, checked by Prometheus' own promtool: the alerts of
//! `charts/corral/rules/corral.rules.yaml` pass `promtool check rules` and the unit tests
//! of `tests/chart/corral.rules.test.yaml` (each alert fires on what should fire it and
//! stays silent otherwise); the `/metrics` of a real controller and a real agent, with a
//! replica running and one pending, pass `promtool check metrics`; and the Grafana
//! dashboard `charts/corral/dashboards/corral.json` asks only for metrics those scrapes
//! hold, from the data source the user picks. The chart's rendering of both is in
//! `tests/chart.rs`.
//!
//! Needs promtool, which `tests/chart/setup.sh` builds into `/var/tmp/corral-tools` (or
//! `$CORRAL_TOOLS`) when missing; the scrape needs root (cgroups), java and the zookeeper
//! package.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::cluster::{Cluster, free_addr, http_get, web, write_manifest};
use common::zk::ZkCluster;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_file() -> PathBuf {
    root().join("charts/corral/rules/corral.rules.yaml")
}

fn rules_test_file() -> PathBuf {
    root().join("tests/chart/corral.rules.test.yaml")
}

fn dashboard() -> Value {
    let path = root().join("charts/corral/dashboards/corral.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// promtool, installed by `tests/chart/setup.sh` (run once for all the tests of this file).
fn promtool() -> PathBuf {
    common::tools::dir().join("bin/promtool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn promtool_run(args: &[&str], input: Option<&str>) -> Output {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn both(output: &Output) -> String {
    text(&output.stdout) + &text(&output.stderr)
}

/// `promtool check metrics` on an exposition: its complaints, none when it passes.
fn check_metrics(exposition: &str) -> Option<String> {
    let output = promtool_run(&["check", "metrics"], Some(exposition));
    (!output.status.success()).then(|| both(&output))
}

#[test]
fn the_rules_file_passes_promtool_check_rules() {
    let file = rules_file();
    let output = promtool_run(&["check", "rules", file.to_str().unwrap()], None);
    assert!(
        output.status.success(),
        "promtool check rules:\n{}",
        both(&output)
    );
    assert!(
        text(&output.stdout).contains("SUCCESS: 7 rules found"),
        "{}",
        both(&output)
    );
    // And it does refuse a broken file.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&broken, source.replace("== 0", "== ")).unwrap();
    let output = promtool_run(&["check", "rules", broken.to_str().unwrap()], None);
    assert!(!output.status.success(), "{}", both(&output));
}

/// Every rule of the rules file, from all its groups.
fn rules() -> Vec<Value> {
    let source = std::fs::read_to_string(rules_file()).unwrap();
    let file: Value = serde_saphyr::from_str(&source).unwrap();
    file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// The alerts the rules file defines.
fn alert_names() -> BTreeSet<String> {
    rules()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_alert_fires_on_its_series_and_stays_silent_otherwise() {
    let tests = rules_test_file();
    let output = promtool_run(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(
        output.status.success(),
        "promtool test rules:\n{}",
        both(&output)
    );

    // Every alert is expected to fire somewhere and to stay silent somewhere.
    let source = std::fs::read_to_string(&tests).unwrap();
    let file: Value = serde_saphyr::from_str(&source).unwrap();
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in file["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().unwrap() {
            let name = check["alertname"].as_str().unwrap().to_string();
            if check["exp_alerts"].as_array().is_some_and(|a| a.is_empty()) {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    assert_eq!(fires, alert_names(), "alerts never expected to fire");
    assert_eq!(
        silent,
        alert_names(),
        "alerts never expected to stay silent"
    );

    // The tests can fail: without their `for`, the alerts fire on the blips the tests
    // expect them to ignore.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let hasty: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                format!("{}for: 0s\n", &l[..l.len() - l.trim_start().len()])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("hasty.rules.yaml"), hasty).unwrap();
    let hasty_tests = source.replace(
        "../../charts/corral/rules/corral.rules.yaml",
        "hasty.rules.yaml",
    );
    assert_ne!(hasty_tests, source);
    let hasty_file = dir.path().join("hasty.test.yaml");
    std::fs::write(&hasty_file, hasty_tests).unwrap();
    let output = promtool_run(&["test", "rules", hasty_file.to_str().unwrap()], None);
    assert!(
        !output.status.success(),
        "the unit tests pass without any `for`:\n{}",
        both(&output)
    );
}

/// The sample names of an exposition, and of each family it declares, with the suffixes
/// of its type (a counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" if !name.ends_with("_total") => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The metric names a PromQL expression selects: the identifiers before a `{` or a `[`,
/// and those that name corral's metrics anywhere (a bare `corral_leader`).
fn selected_names(expr: &str) -> BTreeSet<String> {
    let selector = regex::Regex::new(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[\{\[]").unwrap();
    let corral = regex::Regex::new(r"\bcorral_[A-Za-z0-9_:]*").unwrap();
    // Label matchers' values may hold anything: leave out what is quoted.
    let unquoted = regex::Regex::new(r#""[^"]*""#)
        .unwrap()
        .replace_all(expr, "\"\"");
    let mut names: BTreeSet<String> = selector
        .captures_iter(&unquoted)
        .map(|c| c[1].to_string())
        .collect();
    names.extend(corral.find_iter(&unquoted).map(|m| m.as_str().to_string()));
    names
}

/// Every PromQL expression of the dashboard: its panels' targets and its variables'
/// queries.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().expect("a query");
            queries.push(query.to_string());
        }
    }
    queries
}

/// The expressions of the rules file.
fn rule_exprs() -> Vec<String> {
    rules()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn names_in_expressions_are_found() {
    assert_eq!(
        selected_names(
            r#"max by (policy) (corral_policy_capacity{job=~"a{b}"} and on (job) (corral_leader == 1)) + rate(x_total[5m])"#
        ),
        BTreeSet::from([
            "corral_leader".to_string(),
            "corral_policy_capacity".to_string(),
            "x_total".to_string()
        ])
    );
    assert_eq!(
        selected_names("label_values(corral_leader, job)"),
        BTreeSet::from(["corral_leader".to_string()])
    );
}

/// The families only a cgroup v2 node shows; this machine mounts v1.
const V2_ONLY: &[&str] = &[
    "corral_replica_pressure_avg10_ratio",
    "corral_replica_pressure_stalled_seconds_total",
    "corral_replica_memory_events_total",
];

/// The families only the Kubernetes source fills (the scraped controller reads files; its
/// reconciles need an API server, which tests/k8s_operator.rs starts).
const KUBE_ONLY: &[&str] = &[
    "corral_reconciles_total",
    "corral_reconcile_errors_total",
    "corral_status_writes_total",
];

/// The controller's metrics after the reconciles, a failed one and the status writes the
/// operator counts, rendered by corral's own code through the calls the operator makes.
fn kube_controller_exposition() -> String {
    let metrics = corral::metrics::ControllerMetrics::default();
    metrics.reconciled("Workload");
    metrics.reconciled("ResourcePolicy");
    metrics.error("conflict");
    metrics.status_written("Workload");
    corral::metrics::render_prometheus_text(&metrics)
}

/// The agent's metrics for a replica on cgroup v2, rendered by corral's own code from a
/// report as the agent makes it (this machine cannot give a real one).
fn v2_agent_exposition() -> String {
    use corral::alloc::ReplicaKey;
    use corral::cgroup::observe::MemoryEvents;
    use corral::cgroup::pressure::{Pressure, Pressures, Stall};
    use corral::lease::{Report, UsageSample};
    let stall = Stall {
        avg10: 12.5,
        avg60: 3.0,
        total_micros: 2_500_000,
    };
    let pressure = Pressure {
        some: stall,
        full: Some(stall),
    };
    let metrics = corral::metrics::AgentMetrics::default();
    metrics.report(&[Report {
        key: Some(ReplicaKey::new("shop", "web", 0)),
        usage: Some(UsageSample {
            cpu: 250,
            memory: 32 << 20,
            pressure: Some(Pressures {
                cpu: Some(pressure),
                memory: Some(pressure),
                io: Some(pressure),
            }),
            memory_events: Some(MemoryEvents {
                high: 4,
                max: 1,
                oom_kill: 1,
            }),
            ..UsageSample::default()
        }),
        ..Report::default()
    }]);
    // As /metrics serves it to promtool, which does not ask for OpenMetrics.
    corral::metrics::render_prometheus_text(&metrics)
}

/// A controller and an agent of a real cluster, with three replicas running and a fourth
/// pending: both `/metrics` pass `promtool check metrics`, and the dashboard and the
/// alerts ask only for what they expose (`up` aside, which Prometheus makes).
#[test]
fn real_scrapes_pass_promtool_and_hold_what_the_dashboard_and_alerts_ask_for() {
    let mut c = Cluster::on(ZkCluster::standalone());
    // Four replicas of 300m on one node of cpu=1: three fit.
    write_manifest(&c.manifests(), "web.yaml", &web(4, "500m"));
    let (controller_addr, agent_addr) = (free_addr(), free_addr());
    let state = c.path().join("state-n1");
    let root = c.root_for("n1");
    let agent_args: Vec<String> = [
        "agent",
        "--node",
        "n1",
        "--zookeeper",
        &c.zk.connect_string(),
        "--session-timeout",
        c.session_timeout,
        "--cgroup-root",
        &root,
        "--state-dir",
        &state.to_string_lossy(),
        "--capacity",
        c.agent_capacity,
        "--resync",
        "1",
        "--metrics-addr",
        &agent_addr,
    ]
    .map(String::from)
    .to_vec();
    c.add("n1", agent_args, Some(root.clone()));
    c.start("n1");
    let manifests = c.manifests();
    let controller_args: Vec<String> = [
        "controller",
        "--source",
        &format!("dir:{}", manifests.display()),
        "--zookeeper",
        &c.zk.connect_string(),
        "--session-timeout",
        c.session_timeout,
        "--identity",
        "c1",
        "--resync",
        "1",
        "--metrics-addr",
        &controller_addr,
    ]
    .map(String::from)
    .to_vec();
    c.add("c1", controller_args, None);
    c.start("c1");
    c.wait_for_log("c1", "leading epoch=", Duration::from_secs(30));
    let scrape = |addr: &str| {
        let (line, body) = http_get(addr, "/metrics");
        assert!(line.contains("200"), "{addr}: {line}");
        body
    };
    c.wait_until(
        "3 replicas running, their use reported, 1 pending",
        Duration::from_secs(60),
        |_| {
            // The agent's server may not listen yet.
            if std::net::TcpStream::connect(&agent_addr).is_err() {
                return false;
            }
            let agent = scrape(&agent_addr);
            let controller = scrape(&controller_addr);
            agent
                .lines()
                .filter(|l| l.starts_with("corral_replica_cpu_usage_cores{"))
                .count()
                == 3
                && controller.contains("corral_pending_replicas 1")
                && controller.contains("corral_allocated_replicas 3")
        },
    );
    let controller = scrape(&controller_addr);
    let agent = scrape(&agent_addr);
    for needle in [
        "corral_leader 1",
        "corral_zookeeper_session{state=\"connected\"} 1",
        "corral_policy_pending_replicas{policy=\"cluster\"} 1",
        "corral_policy_allocated{policy=\"cluster\",resource=\"cpu\"} 0.9",
        "corral_tenant_allocated{policy=\"cluster\",tenant=\"shop\",resource=\"cpu\"} 0.9",
    ] {
        assert!(
            controller.contains(needle),
            "{needle} missing from the controller's /metrics:\n{controller}"
        );
    }
    let granted_cpu = controller
        .lines()
        .filter(|l| {
            l.starts_with("corral_replica_granted{namespace=\"shop\",workload=\"web\",")
                && l.ends_with(",resource=\"cpu\"} 0.3")
        })
        .count();
    assert_eq!(granted_cpu, 3, "{controller}");
    assert!(
        agent.contains("corral_replica_memory_usage_bytes{namespace=\"shop\",workload=\"web\""),
        "{agent}"
    );

    let v2 = v2_agent_exposition();
    let kube = kube_controller_exposition();
    for (what, exposition) in [
        ("the controller's /metrics", &controller),
        ("the agent's /metrics", &agent),
        ("the agent's metrics of a cgroup v2 replica", &v2),
        ("the operator's reconcile metrics", &kube),
    ] {
        if let Some(complaints) = check_metrics(exposition) {
            panic!(
                "promtool check metrics on {what}:\n{complaints}\n--- exposition ---\n{exposition}"
            );
        }
    }
    // promtool does complain where it should.
    assert!(
        check_metrics("# TYPE corral_things counter\ncorral_things 1\n").is_some(),
        "a counter without _total passes promtool check metrics"
    );

    let scraped: BTreeSet<String> = exposed_names(&controller)
        .into_iter()
        .chain(exposed_names(&agent))
        .collect();
    let v2_names = exposed_names(&v2);
    for name in V2_ONLY {
        assert!(v2_names.contains(*name), "{name} not in {v2_names:?}");
    }
    let kube_names = exposed_names(&kube);
    for name in KUBE_ONLY {
        assert!(kube_names.contains(*name), "{name} not in {kube_names:?}");
    }
    let mut unknown = Vec::new();
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 20, "{queries:?}");
    let rules = rule_exprs();
    let all = queries
        .iter()
        .map(|q| ("dashboard", q))
        .chain(rules.iter().map(|e| ("rules", e)));
    for (what, expr) in all {
        for name in selected_names(expr) {
            let known = scraped.contains(&name)
                || V2_ONLY.contains(&name.as_str())
                || KUBE_ONLY.contains(&name.as_str())
                || (what == "rules" && name == "up");
            if !known {
                unknown.push(format!("{what}: {name} in {expr}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names corral does not expose:\n{}\n--- exposed ---\n{scraped:?}",
        unknown.join("\n")
    );
    // The families this scrape cannot show are ones the dashboard does ask for: the lists
    // above excuse nothing else.
    let asked: BTreeSet<String> = queries.iter().flat_map(|q| selected_names(q)).collect();
    for name in V2_ONLY.iter().chain(KUBE_ONLY) {
        assert!(asked.contains(*name), "the dashboard shows no {name}");
    }
}

/// The dashboard takes its data source from a variable, so that it works with whatever
/// Prometheus Grafana has: every panel and every query names `${datasource}`.
#[test]
fn the_dashboard_is_templated_on_its_data_source() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "corral-overview");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let templated = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the dashboard");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], templated, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], templated, "{title}");
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], templated, "{}", variable["name"]);
    }
    // No data source is named anywhere else.
    let text = dashboard.to_string();
    assert_eq!(
        text.matches("\"uid\":\"${datasource}\"").count(),
        text.matches("\"uid\":").count() - 1,
        "every uid but the dashboard's is ${{datasource}}"
    );
}
