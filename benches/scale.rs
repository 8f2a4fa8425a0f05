//! corral at scale on this machine: a 3-server ZooKeeper ensemble (`forceSync=yes`), one
//! `corral controller` reading manifests from a directory, and hollow nodes
//! (`corral hollow-agents`: each its own ZooKeeper session, registering, following its
//! leases and reporting them running, without cgroups). Measured:
//!
//! 1. the time from the controller's start to the first full convergence: every replica
//!    leased and every lease reported `Running` by its node;
//! 2. one Workload edit (its manifest file replaced, as editors do) to its replicas'
//!    leases changed in ZooKeeper, as a watch on `/leases` sees it: p50, p99, max;
//! 3. the controller's CPU (utime + stime from /proc over each phase) and memory (VmRSS,
//!    VmHWM), and the hollow processes' as the cost of the simulation;
//! 4. znodes and bytes in ZooKeeper (`mntr`: zk_znode_count, zk_approximate_data_size);
//! 5. node death: one hollow process of a few nodes killed (SIGKILL) to all of its
//!    replicas leased elsewhere and reported `Running` there.
//!
//! Run as `cargo bench --bench scale` (no root needed: hollow nodes touch no cgroup), with
//! `java` and Debian's `zookeeper` package. Options: `--nodes N` (1000), `--workloads N`
//! (1000), `--replicas N` per workload (10), `--edits N` (60), `--dying N` nodes in the
//! process killed (10), `--idle SECONDS` (30), `--out FILE` for the figures as JSON.
//! `CORRAL_SCALE_CONTROLLER_BIN` names another corral binary whose controller to measure
//! (a build of an earlier commit, as a baseline); the hollow nodes are always this one's.

// zk.rs runs its servers' four-letter words inside a namespace when it has one.
#[path = "../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;
#[path = "../tests/common/zk.rs"]
#[allow(dead_code)]
mod zk;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral::lease::zookeeper::{Role, ZkConfig, ZkStore};
use corral::lease::{LeaseStore, Report};
use zk::ZkCluster;
use zookeeper_client::{AddWatchMode, Client, EventType};

const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// The policy's grace period for a node whose registration went: the least it allows.
const NODE_GRACE: u64 = 5;
/// The session timeout of the hollow nodes killed for the node-death measure (the tests'),
/// so that their death is seen sooner; every other process keeps corral's default, 15 s.
const DYING_SESSION: &str = "4";
/// Names another corral binary whose controller to measure, e.g. a build of an earlier
/// commit kept as a baseline.
const CONTROLLER_BIN_ENV: &str = "CORRAL_SCALE_CONTROLLER_BIN";
const POLL: Duration = Duration::from_millis(250);

struct Options {
    nodes: usize,
    workloads: usize,
    replicas: usize,
    edits: usize,
    dying: usize,
    idle: u64,
    out: Option<PathBuf>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num =
        |name: &str, default: usize| get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Options {
        nodes: num("--nodes", 1000),
        workloads: num("--workloads", 1000),
        replicas: num("--replicas", 10),
        edits: num("--edits", 60),
        dying: num("--dying", 10),
        idle: num("--idle", 30) as u64,
        out: get("--out").map(PathBuf::from),
    }
}

/// A process started here, killed (SIGKILL, by its PID) when dropped, also on a panic.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, args: &[String]) -> Proc {
        Proc::start_bin(BIN, name, dir, args)
    }

    fn start_bin(bin: &str, name: &str, dir: &Path, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("cannot create a log file");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("cannot share the log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} for {name}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU seconds (utime + stime) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: the fields after it start past the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ')': state is field 0, utime field 11, stime field 12.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn policy() -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: ResourcePolicy\nmetadata: {{name: cluster}}\n\
         spec: {{strategy: Priority, nodeGracePeriodSeconds: {NODE_GRACE}}}\n"
    )
}

fn workload(namespace: &str, name: &str, replicas: usize, cpu_limit_m: usize) -> String {
    format!(
        "apiVersion: corral.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  replicas: {replicas}\n  resources:\n    requests: {{cpu: 100m, memory: 64Mi}}\n    \
         limits: {{cpu: {cpu_limit_m}m, memory: 128Mi}}\n  terminationGracePeriodSeconds: 1\n  \
         command: {{args: [sleep, \"600\"]}}\n"
    )
}

/// Writes a manifest as editors do: a new file renamed over the old one.
fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).expect("cannot write a manifest");
    fs::rename(&tmp, dir.join(name)).expect("cannot rename a manifest");
}

/// The namespace and name of workload `i`: ten tenants.
fn workload_id(i: usize) -> (String, String) {
    (format!("tenant-{}", i % 10), format!("w{i:05}"))
}

fn mntr(zk: &ZkCluster) -> BTreeMap<String, String> {
    let leader = zk.leader().unwrap_or(1);
    zk.four_letter(leader, "mntr")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

async fn observer(hosts: &str) -> Client {
    let root = Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(hosts)
        .await
        .expect("the observer cannot connect to ZooKeeper");
    root.chroot("/corral").expect("chroot")
}

/// Registered nodes: children of `/nodes` with their ephemeral `agent`.
async fn registered(client: &Client) -> usize {
    let Ok(names) = client.list_children("/nodes").await else {
        return 0;
    };
    let mut alive = 0;
    for chunk in names.chunks(500) {
        let mut reader = client.new_multi_reader();
        for n in chunk {
            let _ = reader.add_get_data(&format!("/nodes/{n}/agent"));
        }
        if let Ok(results) = reader.commit().await {
            alive += results
                .iter()
                .filter(|r| matches!(r, zookeeper_client::MultiReadResult::Data { .. }))
                .count();
        }
    }
    alive
}

/// Lease znodes: the children of each `/leases/<node>`.
async fn lease_count(client: &Client) -> usize {
    let Ok(names) = client.list_children("/leases").await else {
        return 0;
    };
    let mut count = 0;
    for chunk in names.chunks(500) {
        let mut reader = client.new_multi_reader();
        for n in chunk {
            let _ = reader.add_get_data(&format!("/leases/{n}"));
        }
        if let Ok(results) = reader.commit().await {
            for r in results {
                if let zookeeper_client::MultiReadResult::Data { stat, .. } = r {
                    count += usize::try_from(stat.num_children).unwrap_or(0);
                }
            }
        }
    }
    count
}

fn running(reports: &[Report]) -> usize {
    reports
        .iter()
        .filter(|r| r.process.state == "Running")
        .count()
}

fn main() {
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(measure(opts));
}

async fn measure(opts: Options) {
    let total = opts.workloads * opts.replicas;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "corral at scale: {} hollow nodes, {} workloads × {} = {total} replicas, a 3-server \
         ensemble, all on this machine ({cores} cores)",
        opts.nodes, opts.workloads, opts.replicas
    );
    let dir = tempfile::Builder::new()
        .prefix("corral-scale-")
        .tempdir()
        .expect("tempdir");
    let manifests = dir.path().join("manifests");
    fs::create_dir_all(&manifests).expect("mkdir");
    write_manifest(&manifests, "policy.yaml", &policy());
    for i in 0..opts.workloads {
        let (ns, name) = workload_id(i);
        write_manifest(
            &manifests,
            &format!("{name}.yaml"),
            &workload(&ns, &name, opts.replicas, 200),
        );
    }
    let started = Instant::now();
    let zk = ZkCluster::durable_ensemble(3);
    let hosts = zk.connect_string();
    println!("ensemble up in {:.1} s", started.elapsed().as_secs_f64());
    let mut figures: BTreeMap<&str, serde_json::Value> = BTreeMap::new();

    // The hollow nodes first, all registered before the controller starts.
    let main_count = opts.nodes - opts.dying;
    let hollow_args = |count: usize, prefix: &str, session: Option<&str>| {
        let mut args: Vec<String> = [
            "hollow-agents",
            "--count",
            &count.to_string(),
            "--prefix",
            prefix,
            "--zookeeper",
            &hosts,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(session) = session {
            args.extend(["--session-timeout".to_string(), session.to_string()]);
        }
        args
    };
    let t = Instant::now();
    let mut hollow = Proc::start(
        "hollow-a",
        dir.path(),
        &hollow_args(main_count, "hollow-a-", None),
    );
    let mut dying = (opts.dying > 0).then(|| {
        Proc::start(
            "hollow-b",
            dir.path(),
            &hollow_args(opts.dying, "hollow-b-", Some(DYING_SESSION)),
        )
    });
    // The layout exists once the first hollow agent connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = observer(&hosts).await;
    let mut store_config = ZkConfig::new(&hosts);
    store_config.role = Role::Controller;
    let reader = ZkStore::connect(store_config)
        .await
        .expect("observer store");
    loop {
        let n = registered(&client).await;
        if n >= opts.nodes {
            break;
        }
        assert!(
            hollow.alive(),
            "the hollow agents died:\n{}",
            hollow.log_tail()
        );
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "only {n} of {} nodes registered after 600 s",
            opts.nodes
        );
        tokio::time::sleep(POLL).await;
    }
    let registration = t.elapsed();
    println!(
        "{} hollow nodes registered in {:.2} s",
        opts.nodes,
        registration.as_secs_f64()
    );
    figures.insert("registration_seconds", registration.as_secs_f64().into());

    // 1. First full convergence.
    let t = Instant::now();
    // Another build's controller may be measured against the same hollow nodes (a baseline).
    let controller_bin = std::env::var(CONTROLLER_BIN_ENV).unwrap_or_else(|_| BIN.to_string());
    println!("controller: {controller_bin}");
    let mut controller = Proc::start_bin(
        &controller_bin,
        "controller",
        dir.path(),
        &[
            "controller".into(),
            "--source".into(),
            format!("dir:{}", manifests.display()),
            "--zookeeper".into(),
            hosts.clone(),
            "--identity".into(),
            "c1".into(),
        ],
    );
    let pid = controller.pid();
    let cpu0 = cpu_seconds(pid);
    let mut leased_at = None;
    let converged = loop {
        assert!(
            controller.alive(),
            "the controller died:\n{}",
            controller.log_tail()
        );
        let leases = lease_count(&client).await;
        if leases >= total && leased_at.is_none() {
            leased_at = Some(t.elapsed());
        }
        if leases >= total {
            let reports = reader.reports().await.unwrap_or_default();
            if running(&reports) >= total {
                break t.elapsed();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "no convergence in 900 s: {leases} leases of {total}\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(POLL).await;
    };
    let cpu_converge = cpu_seconds(pid) - cpu0;
    let (rss, hwm) = memory_mib(pid);
    let leased = leased_at.unwrap_or(converged);
    println!(
        "first full convergence: every lease written after {:.2} s, every replica Running after {:.2} s; \
         controller CPU {:.2} s ({:.0}% of a core), RSS {rss:.1} MiB, peak {hwm:.1} MiB",
        leased.as_secs_f64(),
        converged.as_secs_f64(),
        cpu_converge,
        100.0 * cpu_converge / converged.as_secs_f64()
    );
    figures.insert("leased_seconds", leased.as_secs_f64().into());
    figures.insert("converged_seconds", converged.as_secs_f64().into());
    figures.insert("converge_cpu_seconds", cpu_converge.into());

    // 2. Idle: the controller's steady cost with nothing changing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_seconds(pid);
    let hollow_cpu0 = cpu_seconds(hollow.pid());
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.idle)).await;
    let idle = cpu_seconds(pid) - cpu0;
    let hollow_idle = cpu_seconds(hollow.pid()) - hollow_cpu0;
    let idle_share = idle / t.elapsed().as_secs_f64();
    println!(
        "idle, {} s: controller {:.1}% of a core; the hollow process of {main_count} nodes {:.1}%",
        opts.idle,
        100.0 * idle_share,
        100.0 * hollow_idle / t.elapsed().as_secs_f64()
    );
    figures.insert("idle_cpu_share", idle_share.into());

    // 3. Edits: each a workload's CPU limit, its manifest replaced; timed to the last of
    //    its replicas' leases changed, as a persistent watch on /leases sees it.
    let mut events = client
        .watch("/leases", AddWatchMode::PersistentRecursive)
        .await
        .expect("watch /leases");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
    let watcher = tokio::spawn(async move {
        loop {
            let event = events.changed().await;
            if event.event_type == EventType::NodeDataChanged
                && tx.send((Instant::now(), event.path)).is_err()
            {
                return;
            }
            if event.session_state.is_terminated() {
                return;
            }
        }
    });
    let cpu0 = cpu_seconds(pid);
    let t_edits = Instant::now();
    let mut latencies = Vec::with_capacity(opts.edits);
    let mut missed = 0;
    for e in 0..opts.edits {
        let i = (e * 7919) % opts.workloads;
        let (ns, name) = workload_id(i);
        let prefix = format!("{ns}.{name}.");
        while rx.try_recv().is_ok() {}
        let t = Instant::now();
        write_manifest(
            &manifests,
            &format!("{name}.yaml"),
            &workload(&ns, &name, opts.replicas, 300 + e),
        );
        let mut seen = BTreeSet::new();
        let deadline = t + Duration::from_secs(30);
        let mut last = None;
        while seen.len() < opts.replicas {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some((at, path))) => {
                    let key = path.rsplit('/').next().unwrap_or_default().to_string();
                    if key.starts_with(&prefix) {
                        seen.insert(key);
                        last = Some(at);
                    }
                }
                _ => break,
            }
        }
        match last {
            Some(at) if seen.len() == opts.replicas => latencies.push(at.duration_since(t)),
            _ => missed += 1,
        }
        // Edits a little apart, as people make them, not back to back.
        tokio::time::sleep(Duration::from_millis(300 + (e as u64 * 37) % 400)).await;
    }
    let edit_cpu = cpu_seconds(pid) - cpu0;
    let edit_share = edit_cpu / t_edits.elapsed().as_secs_f64();
    watcher.abort();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default(),
    );
    println!(
        "edit → lease, {} edits ({missed} missed): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         controller {:.1}% of a core meanwhile",
        latencies.len(),
        ms(p50),
        ms(p99),
        ms(max),
        100.0 * edit_share
    );
    let slowest: Vec<String> = latencies
        .iter()
        .rev()
        .take(5)
        .map(|d| format!("{:.1}", ms(*d)))
        .collect();
    println!("the slowest edits, ms: {}", slowest.join(", "));
    figures.insert("edits", latencies.len().into());
    figures.insert("edits_missed", missed.into());
    figures.insert("edit_p50_ms", ms(p50).into());
    figures.insert("edit_p99_ms", ms(p99).into());
    figures.insert("edit_max_ms", ms(max).into());
    figures.insert("edit_cpu_share", edit_share.into());

    // 4. ZooKeeper's size.
    let m = mntr(&zk);
    for key in [
        "zk_znode_count",
        "zk_approximate_data_size",
        "zk_watch_count",
        "zk_num_alive_connections",
        "zk_ephemerals_count",
    ] {
        let value = m.get(key).cloned().unwrap_or_default();
        println!("{key}: {value} (on the ensemble's leader)");
        figures.insert(
            match key {
                "zk_znode_count" => "znodes",
                "zk_approximate_data_size" => "data_bytes",
                "zk_watch_count" => "watches_on_leader",
                "zk_num_alive_connections" => "connections_on_leader",
                _ => "ephemerals",
            },
            value.into(),
        );
    }

    // 5. Node death: the process of the dying nodes killed.
    if let Some(mut dying) = dying.take() {
        let reports = reader.reports().await.unwrap_or_default();
        let moved: BTreeSet<String> = reports
            .iter()
            .filter(|r| r.node.starts_with("hollow-b-"))
            .filter_map(|r| r.key.as_ref().map(ToString::to_string))
            .collect();
        let t = Instant::now();
        dying.kill();
        let mut gone_at = None;
        let done = loop {
            if gone_at.is_none() && registered(&client).await <= main_count {
                gone_at = Some(t.elapsed());
            }
            let reports = reader.reports().await.unwrap_or_default();
            let elsewhere = reports
                .iter()
                .filter(|r| !r.node.starts_with("hollow-b-") && r.process.state == "Running")
                .filter_map(|r| r.key.as_ref().map(ToString::to_string))
                .filter(|k| moved.contains(k))
                .count();
            if elsewhere >= moved.len() {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{elsewhere} of {} replicas moved after 120 s",
                moved.len()
            );
            tokio::time::sleep(POLL).await;
        };
        let gone = gone_at.unwrap_or(done);
        println!(
            "node death: {} nodes killed ({} replicas, sessions of {DYING_SESSION} s, a {NODE_GRACE} s grace): \
             registrations gone after {:.2} s, every replica Running elsewhere after {:.2} s",
            opts.dying,
            moved.len(),
            gone.as_secs_f64(),
            done.as_secs_f64()
        );
        figures.insert("death_replicas", moved.len().into());
        figures.insert("death_gone_seconds", gone.as_secs_f64().into());
        figures.insert("death_moved_seconds", done.as_secs_f64().into());
    }

    let controller_cpu = cpu_seconds(pid);
    let (rss, hwm) = memory_mib(pid);
    let (hrss, hhwm) = memory_mib(hollow.pid());
    let hollow_cpu = cpu_seconds(hollow.pid());
    let zk_cpu: f64 = zk.pids().iter().map(|p| cpu_seconds(*p)).sum();
    let zk_rss: f64 = zk.pids().iter().map(|p| memory_mib(*p).0).sum();
    println!(
        "controller: {controller_cpu:.1} CPU seconds in all, RSS {rss:.1} MiB, peak {hwm:.1} MiB"
    );
    println!(
        "hollow process of {main_count} nodes: {hollow_cpu:.1} CPU seconds, RSS {hrss:.1} MiB, peak {hhwm:.1} MiB"
    );
    println!("ZooKeeper's three JVMs: {zk_cpu:.1} CPU seconds, RSS {zk_rss:.0} MiB together");
    figures.insert("controller_rss_mib", rss.into());
    figures.insert("controller_hwm_mib", hwm.into());
    figures.insert("hollow_rss_mib", hrss.into());
    figures.insert("hollow_cpu_seconds", hollow_cpu.into());
    figures.insert("zk_cpu_seconds", zk_cpu.into());
    figures.insert("zk_rss_mib", zk_rss.into());
    if let Some(out) = &opts.out {
        let text = serde_json::to_string_pretty(&figures).unwrap_or_default();
        if let Err(e) = fs::write(out, text) {
            eprintln!("cannot write {}: {e}", out.display());
        }
    }
    controller.kill();
    hollow.kill();
    drop(reader);
    drop(zk);
}
