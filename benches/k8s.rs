//! The operator measured on a real API server (kube-apiserver and etcd from
//! scripts/k8s-apiserver.sh), a real ZooKeeper, one `corral controller --source kubernetes`
//! and two `corral agent`s on this machine's cgroups, with their default resync (5 s):
//!
//! 1. one Workload created through the API: the time until its `Ready` condition is True
//!    (allocated, leases written, enforced, process running, status written), and the
//!    time from its deletion until the object is gone (leases released, process stopped,
//!    groups removed, finalizer removed);
//! 2. a burst: `--burst N` Workloads (200 by default) created at once (16 requests in
//!    flight), the time until all are Ready and until all are gone after deleting them,
//!    and the status writes the controller sent for them (its
//!    `corral_status_writes_total`).
//!
//! Run with `cargo bench --bench k8s` as root. `--runs N` repeats the single-workload
//! measurement (10).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::cluster::{Cluster, free_addr, http_get};
use common::zk::ZkCluster;
use corral::api::{ResourcePolicy, Workload};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const POLL: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let runs = number("--runs", 10);
    let burst = number("--burst", 200);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "corral controller --source kubernetes on a real API server, with ZooKeeper and two agents ({cores} cores)\n"
    );

    let api = ApiServer::start();
    api.kubectl_ok(&["apply", "-f", concat!(env!("CARGO_MANIFEST_DIR"), "/crds")]);
    api.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    api.kubectl_ok(&["create", "namespace", "bench"]);
    let mut c = Cluster::on(ZkCluster::standalone());
    c.agent_resync = "5";
    c.agent_capacity = "cpu=8,memory=16Gi,pids=100000";
    c.start_agents();
    let metrics = free_addr();
    c.start_kube_controller("c1", api.kubeconfig(), "5", Some(&metrics));
    c.wait_for_log("c1", "leading epoch=", Duration::from_secs(30));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let policies: Api<ResourcePolicy> = Api::all(client.clone());
        policies
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "corral.dev/v1alpha1", "kind": "ResourcePolicy",
                    // Two nodes hold the burst of 1000: above the default 110 per node.
                    "metadata": {"name": "bench"},
                    "spec": {"strategy": "Priority", "maxReplicasPerNode": 1000},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let workloads: Api<Workload> = Api::namespaced(client, "bench");

        println!("one Workload at a time ({runs} runs)");
        let mut ready = Vec::new();
        let mut gone = Vec::new();
        for run in 0..runs {
            let name = format!("one-{run}");
            let started = Instant::now();
            workloads
                .create(&PostParams::default(), &workload(&name))
                .await
                .unwrap();
            wait_until(|| async { all_ready(&workloads, "one-").await == 1 }).await;
            ready.push(started.elapsed());
            let started = Instant::now();
            workloads
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
            wait_until(|| async { workloads.get_opt(&name).await.unwrap().is_none() }).await;
            gone.push(started.elapsed());
        }
        println!("  create → Ready:  {}", summary(ready));
        println!("  delete → gone:   {}", summary(gone));

        println!("\na burst of {burst} Workloads, one replica each");
        let writes_before = status_writes(&metrics);
        let started = Instant::now();
        // 16 creates in flight, as a GitOps tool applying a directory would.
        futures::stream::iter(0..burst)
            .map(|i| {
                let workloads = workloads.clone();
                async move {
                    workloads
                        .create(&PostParams::default(), &workload(&format!("burst-{i}")))
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        let created = started.elapsed();
        wait_until(|| async { all_ready(&workloads, "burst-").await == burst }).await;
        let all_ready_after = started.elapsed();
        let writes = status_writes(&metrics) - writes_before;
        println!(
            "  created in {:.2} s; all Ready {:.2} s after the first create; {writes} status writes ({:.1} per Workload)",
            created.as_secs_f64(),
            all_ready_after.as_secs_f64(),
            writes as f64 / burst as f64
        );
        for line in http_get(&metrics, "/metrics").1.lines() {
            if line.starts_with("corral_reconcile_errors_total")
                || line.starts_with("corral_reconciles_total")
                || line.starts_with("corral_allocation_passes_total")
            {
                println!("  {line}");
            }
        }
        let started = Instant::now();
        workloads
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .unwrap();
        wait_until(|| async { workloads.list(&ListParams::default()).await.unwrap().items.is_empty() })
            .await;
        println!(
            "  all gone {:.2} s after deleting them (processes stopped, groups removed)",
            started.elapsed().as_secs_f64()
        );
    });
}

fn workload(name: &str) -> Workload {
    serde_json::from_value(json!({
        "apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "resources": {"requests": {"cpu": "10m", "memory": "4Mi"}},
            "terminationGracePeriodSeconds": 1,
            "command": {"args": ["sleep", "3600"]},
        },
    }))
    .unwrap()
}

/// How many Workloads named `prefix…` have `Ready` True.
async fn all_ready(api: &Api<Workload>, prefix: &str) -> usize {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|w| {
            w.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter(|w| {
            w.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}

async fn wait_until<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < TIMEOUT, "timed out");
        tokio::time::sleep(POLL).await;
    }
}

/// `corral_status_writes_total{kind="Workload"}` of the controller.
fn status_writes(addr: &str) -> u64 {
    http_get(addr, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("corral_status_writes_total{kind=\"Workload\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let p = |q: f64| {
        let rank = ((q / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms ({} runs)",
        p(50.0).as_secs_f64() * 1000.0,
        p(90.0).as_secs_f64() * 1000.0,
        samples.last().unwrap().as_secs_f64() * 1000.0,
        samples.len()
    )
}
