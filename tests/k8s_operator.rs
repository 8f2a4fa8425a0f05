//! End to end against a real API server: kube-apiserver and etcd (built from their Go
//! modules by scripts/k8s-apiserver.sh), a real ZooKeeper, two `corral controller
//! --source kubernetes` (leader-elected) and one `corral agent`. Objects go in with
//! kubectl; the test waits on status conditions, never on sleeps, and checks what reached
//! the cgroup filesystem.
//!
//! Needs root (cgroups), Go and kubectl (the API server), java and the zookeeper package.

mod common;

use std::path::Path;
use std::time::Duration;

use common::apiserver::ApiServer;
use common::cluster::{Cluster, free_addr, gone, http_get, policy, quota, web};
use common::zk::ZkCluster;
use serde_json::Value;

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");

fn get_json(api: &ApiServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&api.kubectl_ok(&all)).unwrap()
}

fn wait(api: &ApiServer, c: &Cluster, args: &[&str]) {
    let mut all = vec!["wait", "--timeout=60s"];
    all.extend(args);
    let output = api.kubectl(&all);
    assert!(
        output.status.success(),
        "kubectl {} failed:\n{}{}\n--- logs ---{}",
        all.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        c.logs()
    );
}

/// Applies `manifest` (Workload `shop/<name>`), which the API server accepts and corral
/// refuses: waits for its `Allocated` condition to say `Invalid`, with a message that
/// starts with `message`.
fn refused_with(api: &ApiServer, c: &Cluster, name: &str, manifest: &str, message: &str) {
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(applied.status.success(), "{applied:?}");
    let object = format!("workload/{name}");
    wait(
        api,
        c,
        &[
            "--for=jsonpath={.status.conditions[?(@.type==\"Allocated\")].reason}=Invalid",
            "-n",
            "shop",
            &object,
        ],
    );
    let refused = get_json(api, &["get", "-n", "shop", &object]);
    let said = refused["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(said.starts_with(message), "{said}");
}

fn events(api: &ApiServer, namespace: &str, name: &str) -> Vec<(String, String)> {
    let list = get_json(
        api,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            namespace,
            "--field-selector",
            &format!("regarding.name={name}"),
        ],
    );
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The operator end to end on a real API server, one cluster through named steps: two
/// controllers (a leader and a standby) and an agent, then each step below in turn.
#[test]
fn workloads_applied_with_kubectl_run_and_show_status_events_and_metrics() {
    let api = ApiServer::start();
    let mut c = shop_cluster(&api);
    let (m1, m2) = a_leader_and_a_standby(&mut c, &api);
    applied_workloads_run_and_their_status_says_so(&api, &c);
    the_leader_serves_metrics_and_the_standby_does_not_lead(&m1, &m2);
    what_corral_refuses_says_why_in_its_status(&api, &c);
    an_object_corral_cannot_read_is_reported_and_the_watch_goes_on(&api, &mut c);
    a_workload_that_fits_nowhere_is_pending_with_the_reason(&api, &c);
    drift_is_corrected_and_an_event_says_so(&api, &mut c);
    the_standby_takes_over_and_keeps_status_current(&api, &mut c);
    a_workload_deleted_while_no_controller_runs_waits_for_one(&api, &mut c);
}

/// An agent, a leading controller and a standby, each controller with its metrics
/// address.
fn a_leader_and_a_standby(c: &mut Cluster, api: &ApiServer) -> (String, String) {
    c.start_agent("n1");
    let (m1, m2) = (free_addr(), free_addr());
    c.start_kube_controller("c1", api.kubeconfig(), "1", Some(&m1));
    c.wait_for_log("c1", "leading epoch=", Duration::from_secs(30));
    c.start_kube_controller("c2", api.kubeconfig(), "1", Some(&m2));
    (m1, m2)
}

/// A policy and a Workload applied with kubectl: allocated, enforced and running, as the
/// conditions, columns, events and managed fields say.
fn applied_workloads_run_and_their_status_says_so(api: &ApiServer, c: &Cluster) {
    let applied = api.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("{}---\n{}", policy(), web(3, "500m")),
    );
    assert!(applied.status.success(), "{applied:?}");

    // Allocated, enforced and running, as the conditions say.
    wait(
        api,
        c,
        &["--for=condition=Ready", "-n", "shop", "workload/web"],
    );
    wait(api, c, &["--for=condition=Ready", "resourcepolicy/cluster"]);
    let workload = get_json(api, &["get", "-n", "shop", "workload/web"]);
    let status = &workload["status"];
    assert_eq!(status["phase"], "Running", "{status:#}");
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(
        status["observedGeneration"],
        workload["metadata"]["generation"]
    );
    assert_eq!(
        workload["metadata"]["finalizers"],
        serde_json::json!(["corral.dev/cleanup"])
    );
    for replica in status["replicaStatuses"].as_array().unwrap() {
        assert_eq!(replica["node"], "n1", "{replica:#}");
        assert_eq!(replica["granted"]["cpu"], "300m");
        let index = replica["index"].as_u64().unwrap();
        // What the status says was applied is what the cgroup holds.
        assert_eq!(
            replica["applied"]["cpu.cfs_quota_us"].as_str(),
            Some(quota(500).as_str())
        );
        assert_eq!(
            c.knob("n1", index, "cpu.cfs_quota_us"),
            Some(quota(500)),
            "replica {index}"
        );
    }
    let managed = get_json(
        api,
        &["get", "-n", "shop", "workload/web", "--show-managed-fields"],
    );
    let managers: Vec<&str> = managed["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subresource"] == "status")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["corral-controller"]);
    // The finalizer too is corral's, not `unknown`'s.
    let finalizer_managers: Vec<&str> = managed["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fieldsV1"]["f:metadata"]["f:finalizers"].is_object())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(finalizer_managers, ["corral-controller"], "{managed:#}");
    let policy_status = get_json(api, &["get", "resourcepolicy/cluster"]);
    assert_eq!(policy_status["status"]["nodeCount"], 1);
    assert_eq!(policy_status["status"]["allocated"]["cpu"], "900m");
    assert!(
        events(api, "shop", "web")
            .iter()
            .any(|(reason, note)| reason == "Allocated" && note.ends_with("3 on n1")),
        "{:?}",
        events(api, "shop", "web")
    );
    let columns = api.kubectl_ok(&["get", "-n", "shop", "workloads"]);
    assert!(
        columns
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("Running")),
        "{columns}"
    );
}

/// Metrics and health of the leader; the standby is ready but does not lead.
fn the_leader_serves_metrics_and_the_standby_does_not_lead(m1: &str, m2: &str) {
    let (line, body) = http_get(m1, "/metrics");
    assert!(line.contains("200"), "{line}");
    for needle in [
        "corral_leases 3",
        "corral_allocated_replicas 3",
        "corral_pending_replicas 0",
        "corral_leader 1",
        "corral_zookeeper_session{state=\"connected\"} 1",
    ] {
        assert!(body.contains(needle), "{needle} missing:\n{body}");
    }
    assert!(http_get(m1, "/healthz").0.contains("200"));
    assert!(http_get(m2, "/readyz").0.contains("200"));
    assert!(http_get(m2, "/metrics").1.contains("corral_leader 0"));
}

/// Objects the API server accepts and corral refuses.
fn what_corral_refuses_says_why_in_its_status(api: &ApiServer, c: &Cluster) {
    // An object the API server accepts and corral refuses (a schema cannot say that a
    // regular expression compiles): its status says why.
    let bad = web(1, "500m")
        .replace("name: web", "name: unclosed")
        .replace(
            "command: {args: [sleep, \"600\"]}",
            "adopt: {commandPattern: \"(unclosed\"}",
        );
    refused_with(
        api,
        c,
        "unclosed",
        &bad,
        "spec.adopt.commandPattern: is not a valid regular expression",
    );

    // A tenant asking for what its policy does not allow (root): refused with the field.
    let root = web(1, "500m").replace("name: web", "name: rooted").replace(
        "command: {args: [sleep, \"600\"]}",
        "command: {args: [id], securityContext: {runAsUser: 0}}",
    );
    refused_with(
        api,
        c,
        "rooted",
        &root,
        "spec.command.securityContext.runAsUser: user 0 is root",
    );
}

/// An object corral cannot read at all.
fn an_object_corral_cannot_read_is_reported_and_the_watch_goes_on(
    api: &ApiServer,
    c: &mut Cluster,
) {
    // An object corral cannot read at all, as the API server may hold after its CRD
    // changed: it is reported, and the watch goes on for every other object.
    let crd = get_json(api, &["get", "crd/workloads.corral.dev"]);
    let mut loose = crd.clone();
    loose["metadata"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k == "name");
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["replicas"] = serde_json::json!({"x-kubernetes-int-or-string": true});
    // The scale subresource reads spec.replicas as an integer: not in the looser CRD.
    if let Some(subresources) = loose["spec"]["versions"][0]["subresources"].as_object_mut() {
        subresources.remove("scale");
    }
    let applied = api.kubectl_stdin(&["replace", "-f", "-"], &loose.to_string());
    assert!(applied.status.success(), "{applied:?}");
    let garbled = web(1, "500m")
        .replace("name: web", "name: garbled")
        .replace("replicas: 1", "replicas: three");
    let mut created = api.kubectl_stdin(&["create", "-f", "-"], &garbled);
    for _ in 0..50 {
        // The API server takes the new schema within a moment.
        if created.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        created = api.kubectl_stdin(&["create", "-f", "-"], &garbled);
    }
    assert!(created.status.success(), "{created:?}");
    api.kubectl_ok(&["apply", "-f", &format!("{CRDS}/workloads.corral.dev.yaml")]);
    c.wait_for_log("c1", "cannot read the object", Duration::from_secs(30));
    let small = web(1, "500m")
        .replace("name: web", "name: after")
        .replace("cpu: 300m", "cpu: 10m");
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], &small);
    assert!(applied.status.success(), "{applied:?}");
    wait(
        api,
        c,
        &["--for=condition=Ready", "-n", "shop", "workload/after"],
    );
    let log = c.log("c1");
    assert!(
        log.lines().any(|l| l.contains("cannot read the object")
            && l.contains("shop/garbled")
            && l.contains("spec.replicas")),
        "{log}"
    );
    c.wait_until(
        "the problem in corral status",
        Duration::from_secs(30),
        |c| {
            c.try_status().is_ok_and(|s| {
                s["controller"]["manifestProblems"]
                    .as_array()
                    .is_some_and(|p| {
                        p.iter().any(|p| {
                            p.as_str().is_some_and(|p| {
                                p.starts_with("Workload shop/garbled: spec.replicas:")
                            })
                        })
                    })
            })
        },
    );
    // Its status says so, for kubectl describe.
    wait(
        api,
        c,
        &[
            "--for=jsonpath={.status.conditions[?(@.type==\"Allocated\")].reason}=Unreadable",
            "-n",
            "shop",
            "workload/garbled",
        ],
    );
    let described = api.kubectl_ok(&["describe", "-n", "shop", "workload/garbled"]);
    assert!(
        described.contains("corral cannot read this object") && described.contains("spec.replicas"),
        "{described}"
    );
    api.kubectl_ok(&[
        "delete",
        "-n",
        "shop",
        "workload/garbled",
        "workload/after",
        "--timeout=60s",
    ]);
}

/// A workload that fits nowhere.
fn a_workload_that_fits_nowhere_is_pending_with_the_reason(api: &ApiServer, c: &Cluster) {
    // A workload that fits nowhere: pending, with the allocator's reason, as an event too.
    let big = web(1, "4")
        .replace("name: web", "name: big")
        .replace("cpu: 300m", "cpu: \"3\"");
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], &big);
    assert!(applied.status.success(), "{applied:?}");
    wait(
        api,
        c,
        &[
            "--for=jsonpath={.status.conditions[?(@.type==\"Allocated\")].reason}=ReplicasPending",
            "-n",
            "shop",
            "workload/big",
        ],
    );
    let pending: Vec<(String, String)> = events(api, "shop", "big")
        .into_iter()
        .filter(|(reason, _)| reason == "Pending")
        .collect();
    assert!(
        pending.iter().any(
            |(_, note)| note.starts_with("1 of 1 replica pending: replica 0: ")
                && note.contains("cpu")
        ),
        "{pending:?}"
    );
    api.kubectl_ok(&["delete", "-n", "shop", "workload/big", "--timeout=60s"]);
}

/// Drift in a replica's group.
fn drift_is_corrected_and_an_event_says_so(api: &ApiServer, c: &mut Cluster) {
    // Drift: something else changes a value in a replica's group; the agent restores it
    // at its next resync, and the workload's events say so.
    let shares = Path::new("/sys/fs/cgroup/cpu")
        .join(c.root("n1"))
        .join("shop/web.0/cpu.shares");
    let want = std::fs::read_to_string(&shares).unwrap();
    std::fs::write(&shares, "2").unwrap();
    c.wait_until("the drift corrected event", Duration::from_secs(30), |_| {
        events(api, "shop", "web")
            .iter()
            .any(|(reason, note)| reason == "DriftCorrected" && note.contains("cpu.shares was 2"))
    });
    assert_eq!(std::fs::read_to_string(&shares).unwrap(), want);
}

/// The leader dies.
fn the_standby_takes_over_and_keeps_status_current(api: &ApiServer, c: &mut Cluster) {
    // The leader dies: the standby takes over and keeps status current.
    c.kill("c1");
    api.kubectl_ok(&[
        "patch",
        "-n",
        "shop",
        "workload/web",
        "--type=merge",
        "-p",
        "{\"spec\":{\"replicas\":2}}",
    ]);
    wait(
        api,
        c,
        &[
            "--for=jsonpath={.status.readyReplicas}=2",
            "-n",
            "shop",
            "workload/web",
        ],
    );
    let workload = get_json(api, &["get", "-n", "shop", "workload/web"]);
    assert_eq!(workload["status"]["observedGeneration"], 2);
    assert_eq!(workload["status"]["replicas"], 2);
    assert_eq!(
        workload["status"]["replicaStatuses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        c.knob("n1", 2, "cpu.cfs_quota_us").is_none(),
        "replica 2's group is gone"
    );
}

/// Deleted while no controller runs.
fn a_workload_deleted_while_no_controller_runs_waits_for_one(api: &ApiServer, c: &mut Cluster) {
    // Deleted while no controller runs: the finalizer holds it, and the agent keeps its
    // processes, until a controller comes back.
    c.terminate("c2");
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/cpu")
            .join(c.root("n1"))
            .join("shop/web.0/cgroup.procs"),
    )
    .unwrap();
    let pid: u64 = procs.lines().next().unwrap().trim().parse().unwrap();
    api.kubectl_ok(&["delete", "-n", "shop", "workload/web", "--wait=false"]);
    let held = get_json(api, &["get", "-n", "shop", "workload/web"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    assert!(!gone(pid), "the replica runs while no controller does");
    c.start("c2");
    wait(api, c, &["--for=delete", "-n", "shop", "workload/web"]);
    assert!(
        gone(pid),
        "the replica's process is stopped before the object goes"
    );
    assert!(
        c.knob("n1", 0, "cpu.cfs_quota_us").is_none(),
        "its group is removed"
    );
    assert!(
        events(api, "shop", "web")
            .iter()
            .any(|(reason, _)| reason == "Released")
    );
}

/// Helm, as `tests/chart/setup.sh` installs it (it runs first, once).
fn helm() -> std::path::PathBuf {
    let dir = std::env::var_os("CORRAL_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/corral-tools"));
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/setup.sh");
    let output = std::process::Command::new("bash")
        .arg(setup)
        .env("CORRAL_TOOLS", &dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    dir.join("bin/helm")
}

#[test]
fn the_chart_installs_and_the_controller_works_with_only_its_rbac() {
    let api = ApiServer::start();
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/corral");
    let install = std::process::Command::new(helm())
        .args([
            "install",
            "corral",
            chart,
            "-n",
            "corral-system",
            "--create-namespace",
            "--set",
            "zookeeper.embedded.enabled=true",
        ])
        .envs(api.envs())
        .output()
        .unwrap();
    assert!(install.status.success(), "helm install: {install:?}");
    // The API server took every object (no kubelet runs them here).
    api.kubectl_ok(&[
        "wait",
        "--timeout=60s",
        "--for=condition=Established",
        "crd/workloads.corral.dev",
    ]);
    for object in [
        "deployment/corral-controller",
        "daemonset/corral-agent",
        "statefulset/corral-zookeeper",
        "poddisruptionbudget/corral-controller",
        "service/corral-controller",
        "service/corral-agent",
        "configmap/corral",
        "serviceaccount/corral-controller",
    ] {
        api.kubectl_ok(&["get", "-n", "corral-system", object]);
    }

    // The controller's ServiceAccount may do what corral needs, and nothing more.
    let sa = "system:serviceaccount:corral-system:corral-controller";
    let can = |verb: &str, resource: &str| {
        let (resource, status) = match resource.strip_suffix("/status") {
            Some(r) => (r, true),
            None => (resource, false),
        };
        let mut args = vec!["auth", "can-i", verb, resource, "--as", sa, "-A"];
        if status {
            args.push("--subresource=status");
        }
        let out = api.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource) in [
        ("watch", "workloads.corral.dev"),
        ("patch", "workloads.corral.dev"),
        ("patch", "workloads.corral.dev/status"),
        ("list", "resourcepolicies.corral.dev"),
        ("patch", "resourcepolicies.corral.dev/status"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can(verb, resource), "{sa} cannot {verb} {resource}");
    }
    for (verb, resource) in [
        ("create", "workloads.corral.dev"),
        ("delete", "workloads.corral.dev"),
        ("update", "workloads.corral.dev"),
        ("get", "workloads.corral.dev"),
        ("update", "workloads.corral.dev/status"),
        ("create", "events"),
        ("get", "secrets"),
        ("list", "pods"),
        ("get", "nodes"),
    ] {
        assert!(!can(verb, resource), "{sa} may {verb} {resource}");
    }
    let agent = "system:serviceaccount:corral-system:corral-agent";
    let out = api.kubectl(&["auth", "can-i", "--list", "--as", agent]);
    let agent_rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        !agent_rules.contains("corral.dev"),
        "the agent needs no API access:\n{agent_rules}"
    );

    // Run the controller with that ServiceAccount's token: it must finalize, write status
    // and record events with nothing else.
    let token = api
        .kubectl_ok(&[
            "create",
            "token",
            "corral-controller",
            "-n",
            "corral-system",
        ])
        .trim()
        .to_string();
    let mut c = Cluster::on(ZkCluster::standalone());
    c.agent_resync = "2";
    let kubeconfig = c.path().join("controller.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: sa, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: sa}}}}]\ncurrent-context: c\n",
            api.url(),
            api.ca_cert().display()
        ),
    )
    .unwrap();
    c.start_agent("n1");
    c.start_kube_controller("sa", &kubeconfig, "1", None);
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let applied = api.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("{}---\n{}", policy(), web(1, "500m")),
    );
    assert!(applied.status.success(), "{applied:?}");
    wait(
        &api,
        &c,
        &["--for=condition=Ready", "-n", "shop", "workload/web"],
    );
    wait(
        &api,
        &c,
        &["--for=condition=Ready", "resourcepolicy/cluster"],
    );
    assert!(
        events(&api, "shop", "web")
            .iter()
            .any(|(reason, _)| reason == "Allocated")
    );
    api.kubectl_ok(&["delete", "-n", "shop", "workload/web", "--timeout=60s"]);
    let log = c.log("sa");
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the controller was refused something:\n{log}"
    );

    let uninstall = std::process::Command::new(helm())
        .args(["uninstall", "corral", "-n", "corral-system"])
        .envs(api.envs())
        .output()
        .unwrap();
    assert!(uninstall.status.success(), "helm uninstall: {uninstall:?}");
}

/// What kstatus makes of an object as the API server serves it, computed by the library
/// itself (tests/kstatus, built by tests/kstatus/build.sh): `(status, message)`.
fn kstatus(api: &ApiServer, args: &[&str]) -> (String, String) {
    let tools = std::env::var("CORRAL_TOOLS").unwrap_or_else(|_| "/var/tmp/corral-tools".into());
    let checker = Path::new(&tools).join("bin/kstatus-check");
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    let object = api.kubectl_ok(&all);
    let mut child = std::process::Command::new(&checker)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; tests/kstatus/build.sh builds it (.ci/run runs that)",
                checker.display()
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let mut words = line.trim_end().splitn(3, ' ');
    let (_, status, message) = (words.next(), words.next(), words.next());
    (
        status.unwrap_or_default().to_string(),
        message.unwrap_or_default().to_string(),
    )
}

/// The processes of `shop/web.0` on n1.
fn procs(c: &Cluster) -> Option<String> {
    std::fs::read_to_string(c.group_dir("n1", "cpu", 0).join("cgroup.procs")).ok()
}

/// Waits until kstatus reads `args`' object as `expected`; returns the message.
fn wait_kstatus(api: &ApiServer, c: &Cluster, args: &[&str], expected: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, message) = kstatus(api, args);
        if status == expected {
            return message;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kstatus still says {status} ({message}) for {args:?}, not {expected}\n--- logs ---{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A ZooKeeper for a cluster whose agents resync every 2 s, and on `api` the CRDs and
/// the namespace `shop`.
fn shop_cluster(api: &ApiServer) -> Cluster {
    let mut c = Cluster::on(ZkCluster::standalone());
    c.agent_resync = "2";
    api.kubectl_ok(&["apply", "-f", CRDS]);
    wait(api, &c, &["--for=condition=Established", "crd", "--all"]);
    api.kubectl_ok(&["create", "namespace", "shop"]);
    c
}

/// Each state as GitOps tools read it, through the real kstatus library on the real API
/// server: a new Workload is InProgress until corral has read it (and with no controller
/// at all); Current once it runs; a refused edit is Failed, never Ready, and the last
/// accepted spec keeps running untouched; a Workload that can never fit and one with a
/// pattern that does not compile are Failed with the reason; so is a policy whose tenant
/// limit is below its guarantee.
#[test]
fn kstatus_reads_each_state_as_gitops_tools_do() {
    let api = ApiServer::start();
    let mut c = shop_cluster(&api);
    let web_object = ["-n", "shop", "workload/web"];

    // No controller yet: the CRD's default status says corral has not read it.
    let applied = api.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("{}---\n{}", policy(), web(1, "500m")),
    );
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(
        kstatus(&api, &web_object),
        (
            "InProgress".to_string(),
            "corral has not read this object yet".to_string()
        )
    );

    c.start_agent("n1");
    c.start_kube_controller("c1", api.kubeconfig(), "1", None);
    wait_kstatus(&api, &c, &web_object, "Current");
    wait_kstatus(&api, &c, &["resourcepolicy/cluster"], "Current");
    let pids = procs(&c);
    assert!(pids.as_deref().is_some_and(|p| !p.is_empty()), "{pids:?}");

    // `kubectl scale`, through the scale subresource: InProgress, then Current at two.
    api.kubectl_ok(&["scale", "-n", "shop", "workload/web", "--replicas=2"]);
    wait_kstatus(&api, &c, &web_object, "Current");
    let scaled = get_json(&api, &["get", "-n", "shop", "workload/web"]);
    assert_eq!(scaled["status"]["observedGeneration"], 2, "{scaled:#}");
    assert_eq!(scaled["status"]["replicas"], 2, "{scaled:#}");
    assert_eq!(scaled["status"]["readyReplicas"], 2, "{scaled:#}");
    assert_eq!(procs(&c), pids, "scaling up leaves replica 0 alone");

    // A refused edit: sub-millicore, which the server accepts and corral refuses.
    let refused = web(2, "500m").replace("limits: {cpu: 500m", "limits: {cpu: 500.5m");
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], &refused);
    assert!(applied.status.success(), "{applied:?}");
    let message = wait_kstatus(&api, &c, &web_object, "Failed");
    assert!(
        message.contains("generation 3 is refused")
            && message.contains("spec.resources.limits.cpu"),
        "{message}"
    );
    let workload = get_json(&api, &["get", "-n", "shop", "workload/web"]);
    let ready = workload["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False", "{ready:#}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("What runs is the last accepted spec: 2 of 2 replicas running"),
        "{ready:#}"
    );
    assert_eq!(workload["status"]["observedGeneration"], 3);
    assert_eq!(procs(&c), pids, "the old spec runs on");
    assert_eq!(c.knob("n1", 0, "cpu.cfs_quota_us"), Some(quota(500)));

    // Can never fit on the 1-CPU node, and a pattern that does not compile.
    let huge = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: huge, namespace: shop}\n\
        spec:\n  resources:\n    requests: {cpu: \"500\", memory: 16Mi}\n  command: {args: [sleep, \"600\"]}\n";
    let bad = "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {name: badre, namespace: shop}\n\
        spec:\n  resources:\n    requests: {cpu: 10m, memory: 8Mi}\n  adopt: {commandPattern: \"([\"}\n";
    let lopsided = "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {name: lopsided}\n\
        spec:\n  namespaces: [elsewhere]\n  nodeSelector: {matchLabels: {pool: none}}\n  tenants:\n  \
        - namespace: elsewhere\n    guarantee: {cpu: \"2\"}\n    limit: {cpu: \"1\"}\n";
    for manifest in [huge, bad, lopsided] {
        let applied = api.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(applied.status.success(), "{applied:?}");
    }
    let message = wait_kstatus(&api, &c, &["-n", "shop", "workload/huge"], "Failed");
    assert!(
        message
            .contains("replica 0: needs 500 cpu per replica, more than any matching node offers"),
        "{message}"
    );
    let message = wait_kstatus(&api, &c, &["-n", "shop", "workload/badre"], "Failed");
    assert!(message.contains("spec.adopt.commandPattern"), "{message}");
    let message = wait_kstatus(&api, &c, &["resourcepolicy/lopsided"], "Failed");
    assert!(message.contains("generation 1 is refused"), "{message}");
    // An event says so too, once; cluster-scoped objects' events go to `default`.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let invalid = loop {
        let invalid: Vec<(String, String)> = events(&api, "default", "lopsided")
            .into_iter()
            .filter(|(reason, _)| reason == "Invalid")
            .collect();
        if !invalid.is_empty() || std::time::Instant::now() > deadline {
            break invalid;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert!(invalid[0].1.contains("limit"), "{invalid:?}");
    let columns = api.kubectl_ok(&["get", "resourcepolicy/lopsided"]);
    let header = columns.lines().next().unwrap_or_default();
    assert!(
        header.contains("VALID") && header.contains("READY"),
        "{columns}"
    );
    assert!(
        columns
            .lines()
            .nth(1)
            .is_some_and(|row| row.contains("False")),
        "{columns}"
    );
    // The running workload is untouched by all of it.
    assert_eq!(procs(&c), pids);
}

/// The command of `shop/web.<index>` on n1: its group's `sleep`, not its log pump or a
/// health check.
fn command_pid(c: &Cluster, index: u64) -> Option<u32> {
    let procs =
        std::fs::read_to_string(c.group_dir("n1", "cpu", index).join("cgroup.procs")).ok()?;
    procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .find(|pid: &u32| {
            !gone(u64::from(*pid))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"sleep\0"))
        })
}

/// `shop/web`, two replicas of `sleep` with `V=version`, a health check that runs `test`
/// in a shell (as the replica's user, with its environment), one replica replaced at a
/// time.
fn checked_web(version: &str, test: &str) -> String {
    format!(
        "{}  update: {{maxUnavailable: 1}}\n",
        web(2, "500m").replace(
            "  command: {args: [sleep, \"600\"]}\n",
            &format!(
                "  command:\n    args: [sleep, \"600\"]\n    env: [{{name: V, value: \"{version}\"}}]\n    \
                 healthCheck: {{exec: {{command: [sh, -c, '{test}']}}, periodSeconds: 1, timeoutSeconds: 5, failureThreshold: 3}}\n"
            ),
        )
    )
}

/// A rollout as GitOps tools and kubectl see it: an edit of the environment is InProgress
/// while a replaced replica fails its health check, which holds the other replica on the
/// old spec; a check that passes, applied in place, lets the rollout finish (Current);
/// `corral.dev/restartedAt` replaces both replicas again, one at a time.
#[test]
fn a_rollout_is_in_progress_until_every_replica_runs_the_new_spec_ready() {
    let api = ApiServer::start();
    let mut c = shop_cluster(&api);
    let web_object = ["-n", "shop", "workload/web"];
    let apply = |manifest: &str| {
        let applied = api.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(applied.status.success(), "{applied:?}");
    };
    let only_v1 = "test \"$V\" = 1";
    apply(&format!("{}---\n{}", policy(), checked_web("1", only_v1)));
    c.start_agent("n1");
    c.start_kube_controller("c1", api.kubeconfig(), "1", None);
    wait_kstatus(&api, &c, &web_object, "Current");
    let first = [command_pid(&c, 0).unwrap(), command_pid(&c, 1).unwrap()];

    // V=2 fails the check: replica 0 is replaced and never ready, replica 1 waits.
    apply(&checked_web("2", only_v1));
    let message = wait_kstatus(&api, &c, &web_object, "InProgress");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let workload = get_json(&api, &["get", "-n", "shop", "workload/web"]);
        let rolled_out = workload["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "RolledOut").cloned())
            .unwrap_or_default();
        if rolled_out["message"]
            .as_str()
            .is_some_and(|m| m.contains("replica 1 waits (maxUnavailable 1)"))
        {
            break workload;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{workload:#}\n{message}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(held["status"]["updatedReplicas"], 1, "{held:#}");
    let ready = held["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&"False".into(), &"RollingOut".into())
    );
    assert_ne!(command_pid(&c, 0), Some(first[0]), "replica 0 is replaced");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        command_pid(&c, 1),
        Some(first[1]),
        "replica 1 waits for replica 0"
    );
    assert_eq!(kstatus(&api, &web_object).0, "InProgress");
    let columns = api.kubectl_ok(&["get", "-n", "shop", "workload/web"]);
    assert!(
        columns
            .lines()
            .next()
            .unwrap_or_default()
            .contains("UP-TO-DATE"),
        "{columns}"
    );

    // A check that passes is applied in place; the rollout finishes.
    let replaced = command_pid(&c, 0).unwrap();
    apply(&checked_web("2", "true"));
    wait_kstatus(&api, &c, &web_object, "Current");
    let second = [command_pid(&c, 0).unwrap(), command_pid(&c, 1).unwrap()];
    assert_eq!(second[0], replaced, "a new health check restarts nothing");
    assert_ne!(second[1], first[1], "replica 1 runs the new spec");
    let done = get_json(&api, &["get", "-n", "shop", "workload/web"]);
    assert_eq!(done["status"]["updatedReplicas"], 2, "{done:#}");
    assert_eq!(done["status"]["readyReplicas"], 2, "{done:#}");

    // `kubectl rollout restart`, corral's way: every replica is replaced.
    api.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "-n",
        "shop",
        "workload/web",
        "corral.dev/restartedAt=2026-11-30T04:00:00Z",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..2).all(|i| command_pid(&c, i).is_some_and(|p| !second.contains(&p))) {
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_kstatus(&api, &c, &web_object, "Current");
}
