//! Tests of the ZooKeeper test harness itself (`tests/common/zk.rs`). They
//! talk to the servers with four-letter words over plain TCP only.
//!
//! Needs `java` and `/usr/share/java/zookeeper.jar` (`apt-get install -y
//! zookeeper`).

mod common;

use std::io::{BufRead, BufReader};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::zk::{ZkCluster, four_letter_word, parse_mode};

const SHORT: Duration = Duration::from_secs(1);
const FOUR_LW: Duration = Duration::from_secs(5);
const FAILOVER_LIMIT: Duration = Duration::from_secs(20);

fn modes(zk: &ZkCluster) -> Vec<String> {
    zk.ids()
        .map(|id| {
            let reply = four_letter_word(&zk.client_addr(id), "srvr", FOUR_LW)
                .unwrap_or_else(|e| panic!("srvr to server {id}: {e}"));
            parse_mode(&reply).unwrap_or_else(|| panic!("no Mode in srvr of {id}: {reply:?}"))
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls until none of `pids` exists any more, at most `timeout`.
fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| pid_alive(p)) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Polls a four-letter word until `pred` holds on the reply, at most `timeout`.
fn wait_reply(addr: &str, cmd: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if four_letter_word(addr, cmd, FOUR_LW).is_ok_and(|r| pred(&r)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn standalone_answers_imok() {
    let t = Instant::now();
    let zk = ZkCluster::standalone();
    eprintln!("standalone startup took {:?}", t.elapsed());

    assert!(zk.is_standalone());
    let addr = zk.client_addr(1);
    assert_eq!(zk.connect_string(), addr);
    assert_eq!(four_letter_word(&addr, "ruok", FOUR_LW).unwrap(), "imok");
    assert_eq!(modes(&zk), ["standalone"]);
    assert_eq!(zk.leader(), Some(1));
    let mntr = four_letter_word(&addr, "mntr", FOUR_LW).unwrap();
    assert!(
        mntr.lines().any(|l| l == "zk_server_state\tstandalone"),
        "{mntr}"
    );
}

#[test]
fn ensemble_has_exactly_one_leader() {
    let t = Instant::now();
    let zk = ZkCluster::ensemble(3);
    eprintln!("3-server ensemble startup took {:?}", t.elapsed());

    assert!(!zk.is_standalone());
    let expected: Vec<String> = zk.ids().map(|id| zk.client_addr(id)).collect();
    assert_eq!(zk.connect_string(), expected.join(","));
    for addr in &expected {
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    }

    let modes = modes(&zk);
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );
    let leader = zk.leader().expect("a leader");
    assert_eq!(modes[leader - 1], "leader");
    assert_eq!(zk.mode(leader).as_deref(), Some("leader"));
}

#[test]
fn killing_the_leader_elects_a_new_one_and_restart_rejoins_as_follower() {
    let mut zk = ZkCluster::ensemble(3);
    let old = zk.leader().expect("a leader");
    let old_pid = zk.pid(old).unwrap();

    let t = Instant::now();
    zk.kill(old);
    assert!(!zk.is_running(old));
    assert_eq!(zk.pid(old), None);
    assert!(!pid_alive(old_pid), "killed leader {old_pid} still exists");
    let new = zk
        .wait_for_leader(FAILOVER_LIMIT)
        .unwrap_or_else(|| panic!("no new leader within {FAILOVER_LIMIT:?}"));
    eprintln!("leader failover {old} -> {new} took {:?}", t.elapsed());
    assert_ne!(new, old);
    assert!(
        four_letter_word(&zk.client_addr(old), "ruok", SHORT).is_err(),
        "killed server still answers"
    );

    let t = Instant::now();
    zk.restart(old);
    eprintln!("restart of server {old} took {:?}", t.elapsed());
    assert_ne!(zk.pid(old), Some(old_pid));
    assert_eq!(zk.mode(old).as_deref(), Some("follower"));
    assert_eq!(zk.leader(), Some(new));
    // The leader sees both followers in sync again.
    assert!(
        wait_reply(&zk.client_addr(new), "mntr", Duration::from_secs(20), |r| {
            r.lines().any(|l| l == "zk_synced_followers\t2")
        }),
        "leader {new} never had 2 synced followers"
    );
}

#[test]
fn paused_follower_stops_answering_until_resumed() {
    let mut zk = ZkCluster::ensemble(3);
    let leader = zk.leader().expect("a leader");
    let follower = zk.ids().find(|&id| id != leader).unwrap();
    let addr = zk.client_addr(follower);
    assert_eq!(four_letter_word(&addr, "ruok", FOUR_LW).unwrap(), "imok");

    let paused_at = Instant::now();
    zk.pause(follower);
    assert!(zk.is_paused(follower));
    let err = four_letter_word(&addr, "ruok", SHORT).expect_err("paused server answered");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(zk.mode(follower), None);
    // The other two still form a quorum with the same leader, which drops
    // the silent follower after syncLimit ticks.
    assert_eq!(zk.leader(), Some(leader));
    assert!(
        wait_reply(
            &zk.client_addr(leader),
            "mntr",
            Duration::from_secs(20),
            |r| { r.lines().any(|l| l == "zk_synced_followers\t1") }
        ),
        "leader {leader} never dropped the paused follower"
    );
    eprintln!(
        "leader dropped paused follower {:?} after pause",
        paused_at.elapsed()
    );
    assert_eq!(zk.leader(), Some(leader));

    zk.resume(follower);
    assert!(!zk.is_paused(follower));
    let t = Instant::now();
    assert!(
        zk.wait_until_settled(Duration::from_secs(30)),
        "resumed follower did not rejoin:\n{}",
        zk.log_tail(follower, 30)
    );
    eprintln!("resumed follower rejoined after {:?}", t.elapsed());
    assert_eq!(four_letter_word(&addr, "ruok", FOUR_LW).unwrap(), "imok");
    assert_eq!(zk.mode(follower).as_deref(), Some("follower"));
    assert_eq!(zk.leader(), Some(leader));
}

#[test]
fn drop_kills_every_server_and_removes_dirs() {
    // Plain drop, with one server paused and one killed beforehand.
    let mut zk = ZkCluster::ensemble(3);
    let dir = zk.dir(1).parent().unwrap().to_path_buf();
    assert!(dir.exists());
    zk.pause(2);
    zk.kill(3);
    let pids = zk.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| pid_alive(p)));
    drop(zk);
    assert!(pids.iter().all(|&p| !pid_alive(p)), "left behind: {pids:?}");
    assert!(!dir.exists(), "{} not removed", dir.display());

    // Drop during a panic.
    let mut seen = Vec::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let zk = ZkCluster::standalone();
        seen.extend(zk.pids());
        panic!("deliberate panic with a running server");
    }));
    assert!(result.is_err());
    assert_eq!(seen.len(), 1);
    assert!(!pid_alive(seen[0]), "server {} survived a panic", seen[0]);
}

const ORPHAN_CHILD_ENV: &str = "ZK_HARNESS_ORPHAN_CHILD";
const ORPHAN_TEST: &str = "servers_die_with_a_killed_test_process";

/// If the test process dies without unwinding (SIGKILL), the watchdog still
/// kills its servers. Re-runs this test binary as a child that starts a
/// server, SIGKILLs the child, and checks that the server goes away.
#[test]
fn servers_die_with_a_killed_test_process() {
    if std::env::var_os(ORPHAN_CHILD_ENV).is_some() {
        let zk = ZkCluster::standalone();
        println!("ZKPID={}", zk.pid(1).unwrap());
        // The parent kills us long before this ends.
        thread::sleep(Duration::from_secs(60));
        return;
    }

    // The killed child cannot remove its server dirs; keep them in ours.
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([ORPHAN_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(ORPHAN_CHILD_ENV, "1")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may print "test NAME ... " on the same line first.
            if let Some((_, pid)) = line.split_once("ZKPID=") {
                let _ = tx.send(pid.trim().parse::<u32>().ok());
            }
        }
    });
    let pid = rx.recv_timeout(Duration::from_secs(40));
    child.kill().unwrap();
    child.wait().unwrap();
    let pid = pid
        .expect("child test process did not report a server pid")
        .expect("bad pid");

    let gone = wait_gone(&[pid], Duration::from_secs(10));
    if !gone {
        // Clean up the server we (indirectly) started before failing.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(gone, "server {pid} outlived its SIGKILLed test process");
}
