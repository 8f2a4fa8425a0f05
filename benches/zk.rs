//! corral against a real three-server ZooKeeper ensemble on this machine, measured:
//!
//! 1. lease writes through the ZooKeeper store, each a fenced multi-op (the check of the
//!    controller's election node plus the writes), on an ensemble that syncs its log to
//!    disk (`forceSync=yes`, ZooKeeper's default): the latency of one lease written at a
//!    time (p50, p99), and the throughput of one writer, of 32 concurrent writers, and of
//!    batches of 500;
//! 2. controller failover: from SIGSTOP of the leading `corral controller` to `corral
//!    status` showing the other one leading with a higher epoch;
//! 3. node death: from SIGKILL of a `corral agent` to all of its replicas Running on the
//!    other node, which includes the session timeout and the policy's grace period.
//!
//! Run with `cargo bench --bench zk` as root (cgroups), with `java` and Debian's
//! `zookeeper` package. Arguments: `writes`, `failover`, `death` choose what to measure
//! (all by default); `--runs N` sets how often failover and node death are repeated (5);
//! `--session SECONDS` sets the session timeout of every corral process (4, as in the
//! tests; corral's default is 15).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    Cluster, NODE_GRACE, SESSION_TIMEOUT, all_running, leader, placement, registered,
};
use common::zk::ZkCluster;
use corral::alloc::fixtures::mk_lease;
use corral::lease::zookeeper::{ZkConfig, ZkStore};
use corral::lease::{LeaseChange, LeaseStore};

const SEQUENTIAL_WRITES: usize = 2_000;
const WARMUP_WRITES: usize = 200;
const WRITERS: usize = 32;
const WRITES_PER_WRITER: usize = 200;
const BATCH: usize = 500;
const BATCHES: usize = 40;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let session: &'static str = args
        .iter()
        .position(|a| a == "--session")
        .and_then(|i| args.get(i + 1))
        .map_or(SESSION_TIMEOUT, |s| String::leak(s.clone()));
    let chosen: Vec<&str> = ["writes", "failover", "death"]
        .into_iter()
        .filter(|what| args.iter().any(|a| a == what))
        .collect();
    let wants = |what: &str| chosen.is_empty() || chosen.contains(&what);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("corral and a 3-server ZooKeeper ensemble on this machine ({cores} cores)\n");
    if wants("writes") {
        lease_writes();
    }
    if wants("failover") {
        failover(runs, session);
    }
    if wants("death") {
        node_death(runs, session);
    }
}

/// Milliseconds, to two decimals.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The `p`th percentile (0–100) of sorted samples, nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "p50 {}, p99 {}, max {} ({} samples)",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().unwrap()),
        samples.len()
    )
}

fn lease_writes() {
    let zk = ZkCluster::durable_ensemble(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = ZkConfig::new(&zk.connect_string());
        config.chroot = "/corral-bench".into();
        let store = ZkStore::connect(config).await.unwrap();
        let epoch = store.campaign("bench").await.unwrap();
        let size = serde_json::to_vec(&mk_lease("n1", "web", 0, epoch))
            .unwrap()
            .len();
        println!("lease writes (fenced multi-ops, forceSync=yes, {size}-byte leases)");

        // One lease at a time, as the controller writes a single change.
        let put = |index: usize| {
            let index = u32::try_from(index % 1_000).unwrap();
            vec![LeaseChange::Put(Box::new(mk_lease(
                "n1", "web", index, epoch,
            )))]
        };
        for i in 0..WARMUP_WRITES {
            store.write_leases(epoch, &put(i)).await.unwrap();
        }
        let mut samples = Vec::with_capacity(SEQUENTIAL_WRITES);
        let started = Instant::now();
        for i in 0..SEQUENTIAL_WRITES {
            let at = Instant::now();
            store.write_leases(epoch, &put(i)).await.unwrap();
            samples.push(at.elapsed());
        }
        let one_writer = SEQUENTIAL_WRITES as f64 / started.elapsed().as_secs_f64();
        println!("  one lease per write, one writer: {}", summary(samples));
        println!("  throughput, one writer:          {one_writer:.0} leases/s");

        // Concurrent writers on the one session, as a controller pipelining its writes.
        let store = Arc::new(store);
        let started = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(WRITES_PER_WRITER);
                    for i in 0..WRITES_PER_WRITER {
                        let index = u32::try_from((w * WRITES_PER_WRITER + i) % 1_000).unwrap();
                        let change =
                            LeaseChange::Put(Box::new(mk_lease("n1", "web", index, epoch)));
                        let at = Instant::now();
                        store.write_leases(epoch, &[change]).await.unwrap();
                        samples.push(at.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.unwrap());
        }
        let concurrent = samples.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "  {WRITERS} concurrent writers:           {}",
            summary(samples)
        );
        println!("  throughput, {WRITERS} writers:          {concurrent:.0} leases/s");

        // Batches of 500, as after a rebalance: one multi-op each.
        let batch = |b: usize| -> Vec<LeaseChange> {
            (0..BATCH)
                .map(|i| {
                    let index = u32::try_from(i).unwrap();
                    let node = format!("n{}", b % 4);
                    LeaseChange::Put(Box::new(mk_lease(&node, "batch", index, epoch)))
                })
                .collect()
        };
        for b in 0..4 {
            store.write_leases(epoch, &batch(b)).await.unwrap();
        }
        let mut samples = Vec::with_capacity(BATCHES);
        let started = Instant::now();
        for b in 0..BATCHES {
            let changes = batch(b);
            let at = Instant::now();
            store.write_leases(epoch, &changes).await.unwrap();
            samples.push(at.elapsed());
        }
        let batched = (BATCHES * BATCH) as f64 / started.elapsed().as_secs_f64();
        println!(
            "  batches of {BATCH} leases:            {}",
            summary(samples)
        );
        println!("  throughput, batches of {BATCH}:       {batched:.0} leases/s\n");
    });
}

/// A cluster on a durable ensemble: agents n1 and n2, controllers c1 (leading) and c2.
fn cluster(session: &'static str) -> Cluster {
    let mut c = Cluster::on(ZkCluster::durable_ensemble(3));
    c.session_timeout = session;
    Cluster::up_with(c)
}

fn failover(runs: usize, session: &'static str) {
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut c = cluster(session);
        let (first, epoch) = leader(&c.status());
        assert_eq!(first, "c1");
        let stopped = Instant::now();
        c.pause("c1");
        c.wait_until("c2 to lead", Duration::from_secs(60), |c| {
            c.try_status().is_ok_and(|s| {
                let (name, now) = leader(&s);
                name == "c2" && now > epoch
            })
        });
        samples.push(stopped.elapsed());
    }
    samples.sort();
    println!(
        "controller failover (SIGSTOP of the leader → the other leads; session timeout {session} s)"
    );
    println!(
        "  median {}, min {}, max {} ({runs} runs)\n",
        seconds(percentile(&samples, 50.0)),
        seconds(samples[0]),
        seconds(*samples.last().unwrap())
    );
}

fn node_death(runs: usize, session: &'static str) {
    let mut gone = Vec::new();
    let mut moved = Vec::new();
    for _ in 0..runs {
        let mut c = cluster(session);
        let placed = placement(&c.status());
        assert!(placed.values().any(|(node, _)| node == "n1"), "{placed:?}");
        let killed = Instant::now();
        c.kill("n1");
        c.wait_until("n1's registration to go", Duration::from_secs(60), |c| {
            c.try_status().is_ok_and(|s| registered(&s) == ["n2"])
        });
        gone.push(killed.elapsed());
        c.wait_until(
            "every replica Running on n2",
            Duration::from_secs(60),
            |c| {
                c.try_status().is_ok_and(|s| {
                    all_running(&s, 3) && placement(&s).values().all(|(node, _)| node == "n2")
                })
            },
        );
        moved.push(killed.elapsed());
    }
    gone.sort();
    moved.sort();
    println!(
        "node death (SIGKILL of an agent → its replicas Running elsewhere; session timeout {session} s, grace {NODE_GRACE} s)"
    );
    println!(
        "  registration gone: median {}, min {}, max {}",
        seconds(percentile(&gone, 50.0)),
        seconds(gone[0]),
        seconds(*gone.last().unwrap())
    );
    println!(
        "  replicas running elsewhere: median {}, min {}, max {} ({runs} runs)\n",
        seconds(percentile(&moved, 50.0)),
        seconds(moved[0]),
        seconds(*moved.last().unwrap())
    );
}
