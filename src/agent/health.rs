//! Health checks: whether a replica's command serves, as its lease's `health` probe says.
//! A check runs in a thread of its own, so no pass ever waits for one, and at most one
//! check per replica runs at a time, so a slow check cannot pile up. An exec check runs
//! through [`process::launch`] (the replica's user, its group, corral's sandbox), and is
//! killed at its timeout; a TCP check connects to 127.0.0.1 only.
//!
//! A replica is healthy from its first passing check until `failureThreshold` checks in a
//! row fail. Health gates readiness and rollouts; it never restarts anything.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::{self, LaunchSpec};
use crate::alloc::ReplicaKey;
use crate::lease::{HealthProbe, ProbeCheck};

/// One replica's checks.
#[derive(Debug, Default)]
struct State {
    /// The start of the process checked (Unix ms): a new process starts unhealthy.
    process_started_ms: u64,
    /// The check running now.
    running: Option<JoinHandle<bool>>,
    /// When the next check may start (Unix ms).
    next_ms: u64,
    healthy: bool,
    failures: u32,
}

/// The checks of one node's replicas.
#[derive(Debug, Default)]
pub struct Probes {
    states: HashMap<ReplicaKey, State>,
}

/// A replica to check now: its probe, the start of its running process (Unix ms), and for
/// an exec check how to launch it.
pub struct Target<'a> {
    /// The replica.
    pub key: &'a ReplicaKey,
    /// Its probe.
    pub probe: &'a HealthProbe,
    /// When its running process started.
    pub process_started_ms: u64,
    /// For an exec check: the replica's launch, whose arguments the check replaces.
    pub launch: Option<LaunchSpec>,
}

impl Probes {
    /// True when the process of `key` that started at `process_started_ms` passed its
    /// last check and has not failed enough since. A process not checked yet is not.
    pub fn healthy(&self, key: &ReplicaKey, process_started_ms: u64) -> bool {
        self.states
            .get(key)
            .is_some_and(|s| s.healthy && s.process_started_ms == process_started_ms)
    }

    /// Collects the checks that ended and starts those that are due for `targets` (the
    /// running replicas that have a probe); forgets every other replica. Returns true when
    /// a replica's health changed.
    pub fn tick(&mut self, targets: Vec<Target<'_>>, now_ms: u64) -> bool {
        let mut changed = false;
        let keep: std::collections::HashSet<ReplicaKey> =
            targets.iter().map(|t| t.key.clone()).collect();
        self.states.retain(|k, s| {
            let keep = keep.contains(k);
            changed |= !keep && s.healthy;
            keep
        });
        for target in targets {
            let state = self.states.entry(target.key.clone()).or_default();
            if state.process_started_ms != target.process_started_ms {
                // Another process: its health is unknown until it is checked. A check of the
                // earlier one still running ends unread.
                changed |= state.healthy;
                *state = State {
                    process_started_ms: target.process_started_ms,
                    ..State::default()
                };
            }
            if let Some(handle) = state.running.take_if(|h| h.is_finished()) {
                let passed = handle.join().unwrap_or(false);
                let before = state.healthy;
                if passed {
                    state.failures = 0;
                    state.healthy = true;
                } else {
                    state.failures = state.failures.saturating_add(1);
                    if state.failures >= target.probe.failure_threshold {
                        state.healthy = false;
                    }
                }
                changed |= before != state.healthy;
            }
            if state.running.is_none() && now_ms >= state.next_ms {
                state.next_ms = now_ms + u64::from(target.probe.period_seconds) * 1000;
                state.running = spawn(target.key, target.probe, target.launch);
            }
        }
        changed
    }

    /// True when [`Probes::tick`] would start a check of `key`, whose running process
    /// started at `process_started_ms`, at `now_ms`: so that the caller builds an exec
    /// check's launch only then, not at every tick.
    pub fn due(&self, key: &ReplicaKey, process_started_ms: u64, now_ms: u64) -> bool {
        match self.states.get(key) {
            None => true,
            Some(s) if s.process_started_ms != process_started_ms => true,
            Some(s) => {
                s.running.as_ref().is_none_or(JoinHandle::is_finished) && now_ms >= s.next_ms
            }
        }
    }

    /// True when a check has ended and its result is not read yet.
    pub fn any_finished(&self) -> bool {
        self.states
            .values()
            .any(|s| s.running.as_ref().is_some_and(JoinHandle::is_finished))
    }
}

fn spawn(
    key: &ReplicaKey,
    probe: &HealthProbe,
    launch: Option<LaunchSpec>,
) -> Option<JoinHandle<bool>> {
    let check = probe.check.clone();
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds));
    let name = format!("check {key}");
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || match check {
            ProbeCheck::Tcp(port) => tcp(port, timeout),
            ProbeCheck::Exec(args) => {
                launch.is_some_and(|spec| exec(LaunchSpec { args, ..spec }, timeout))
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(replica = %key, error = %e, "cannot start a thread for the health check");
            None
        }
    }
}

/// True when 127.0.0.1:`port` accepts a connection within `timeout`.
pub fn tcp(port: u16, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout).is_ok()
}

/// True when the command exits 0 within `timeout`; killed (with its process group) when it
/// does not.
pub fn exec(spec: LaunchSpec, timeout: Duration) -> bool {
    let mut launched = match process::launch(&spec) {
        Ok(launched) => launched,
        Err(e) => {
            tracing::debug!(error = %e, "health check cannot start");
            return false;
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        match launched.child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                // The check runs in a session of its own: end all of it.
                if let Ok(pid) = i32::try_from(launched.pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = launched.child.kill();
                let _ = launched.child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(port: u16, failure_threshold: u32) -> HealthProbe {
        HealthProbe {
            check: ProbeCheck::Tcp(port),
            period_seconds: 1,
            timeout_seconds: 1,
            failure_threshold,
        }
    }

    fn settle(
        probes: &mut Probes,
        key: &ReplicaKey,
        probe: &HealthProbe,
        started: u64,
        now: u64,
    ) -> bool {
        let mut changed = false;
        for _ in 0..200 {
            let target = Target {
                key,
                probe,
                process_started_ms: started,
                launch: None,
            };
            changed |= probes.tick(vec![target], now);
            if probes.states.get(key).is_some_and(|s| s.running.is_none()) {
                return changed;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the check did not end");
    }

    #[test]
    fn a_tcp_check_passes_on_a_listening_port_and_fails_after_the_threshold() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let key = ReplicaKey::new("t", "w", 0);
        let probe = probe(port, 2);
        let mut probes = Probes::default();
        assert!(
            settle(&mut probes, &key, &probe, 1, 0),
            "first pass: healthy"
        );
        assert!(probes.healthy(&key, 1));
        drop(listener);
        // One failure is below the threshold of 2.
        assert!(!settle(&mut probes, &key, &probe, 1, 1000));
        assert!(probes.healthy(&key, 1));
        assert!(settle(&mut probes, &key, &probe, 1, 2000));
        assert!(!probes.healthy(&key, 1));
    }

    #[test]
    fn a_check_is_due_when_none_runs_and_its_period_has_passed() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let mut probe = probe(listener.local_addr().unwrap().port(), 1);
        probe.period_seconds = 10;
        let mut probes = Probes::default();
        assert!(probes.due(&key, 1, 0), "never checked");
        settle(&mut probes, &key, &probe, 1, 0);
        assert!(!probes.due(&key, 1, 5_000), "within its period");
        assert!(probes.due(&key, 1, 10_000), "its period has passed");
        assert!(probes.due(&key, 2, 5_000), "another process");
    }

    #[test]
    fn a_new_process_starts_unhealthy_and_a_gone_replica_is_forgotten() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let key = ReplicaKey::new("t", "w", 0);
        let probe = probe(listener.local_addr().unwrap().port(), 1);
        let mut probes = Probes::default();
        settle(&mut probes, &key, &probe, 1, 0);
        assert!(probes.healthy(&key, 1));
        let target = Target {
            key: &key,
            probe: &probe,
            process_started_ms: 2,
            launch: None,
        };
        // Another process: unknown, so unhealthy until its own check passes.
        assert!(!probes.healthy(&key, 2), "before any tick");
        assert!(probes.tick(vec![target], 10));
        assert!(!probes.healthy(&key, 2));
        settle(&mut probes, &key, &probe, 2, 1010);
        assert!(probes.healthy(&key, 2));
        assert!(
            probes.tick(Vec::new(), 2000),
            "forgetting a healthy replica is a change"
        );
        assert!(!probes.healthy(&key, 2));
    }

    #[test]
    fn an_exec_check_without_a_launch_fails() {
        let key = ReplicaKey::new("t", "w", 0);
        let probe = HealthProbe {
            check: ProbeCheck::Exec(vec!["true".into()]),
            ..probe(1, 1)
        };
        let mut probes = Probes::default();
        settle(&mut probes, &key, &probe, 1, 0);
        assert!(!probes.healthy(&key, 1));
    }
}
