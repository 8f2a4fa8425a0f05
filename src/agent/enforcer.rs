//! The one enforcement loop's core, for both loops that run an agent's passes:
//! `corral agent`'s ([`super::daemon`]) and `corral run`'s. Each loop brings its leases (read
//! from ZooKeeper and vetted, or written by the controller in the same process); the
//! [`Enforcer`] decides when a pass is due and runs it.
//!
//! A pass is due at the periodic resync, at a process's exit (SIGCHLD for the agent's
//! children; the waker for a background stop's end and for the exit of a process an
//! earlier agent started), and at a 250 ms tick when a restart or a readiness change is
//! due. After a stall, each timer fires once, not in a burst. A pass runs on the thread
//! it is called on, marked blocking ([`tokio::task::block_in_place`]): it writes cgroup
//! files and forks, and the runtime moves its other tasks elsewhere meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

use super::node::{Agent, Pass, Trigger, unix_now_ms};
use crate::lease::Lease;

/// How often the enforcer asks the agent whether a restart or a readiness change is due.
pub const TICK: Duration = Duration::from_millis(250);

/// What [`Enforcer::wake`] woke for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A pass is due, for this reason.
    Pass(Trigger),
    /// A tick with no pass due: for a caller whose own state changes with time (the
    /// daemon's time without a ZooKeeper session).
    Tick,
}

/// An agent with the sources of its passes.
pub struct Enforcer {
    agent: Agent,
    resync: Interval,
    tick: Interval,
    child_exited: Signal,
    woken: Arc<Notify>,
}

impl Enforcer {
    /// Enforces with `agent`, whose waker it takes, resyncing every `resync` from now (the
    /// first resync comes at once: see [`Enforcer::postpone_resync`]).
    ///
    /// # Errors
    /// SIGCHLD cannot be listened to.
    pub fn new(mut agent: Agent, resync: Duration) -> std::io::Result<Enforcer> {
        let woken = Arc::new(Notify::new());
        agent.set_waker({
            let woken = Arc::clone(&woken);
            Arc::new(move || woken.notify_one())
        });
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Enforcer {
            agent,
            resync,
            tick,
            child_exited: signal(SignalKind::child())?,
            woken,
        })
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Moves the next resync one period away: for a caller that has just run a pass.
    pub fn postpone_resync(&mut self) {
        self.resync.reset();
    }

    /// Waits until a pass is due, or the next tick. The one place that decides whether a
    /// tick calls for a pass: when [`Agent::restart_due`]. Cancel-safe, for use in
    /// `tokio::select!`.
    pub async fn wake(&mut self) -> Wake {
        let trigger = tokio::select! {
            _ = self.resync.tick() => Some(Trigger::Resync),
            _ = self.child_exited.recv() => Some(Trigger::Processes),
            () = self.woken.notified() => Some(Trigger::Processes),
            _ = self.tick.tick() => None,
        };
        match trigger {
            Some(trigger) => Wake::Pass(trigger),
            None if self.agent.restart_due(unix_now_ms()) => Wake::Pass(Trigger::Processes),
            None => Wake::Tick,
        }
    }

    /// Runs one pass for `trigger`, over `leases` when given (else over the last ones).
    pub fn pass(&mut self, trigger: Trigger, leases: Option<Vec<Lease>>) -> Pass {
        self.run(leases, |agent| agent.pass(trigger))
    }

    /// Runs passes for `trigger` until nothing is left to do, stops included (see
    /// [`Agent::settle`]): for a caller that exits next.
    pub fn settle(&mut self, trigger: Trigger, leases: Option<Vec<Lease>>) -> Pass {
        self.run(leases, |agent| agent.settle(trigger))
    }

    fn run(&mut self, leases: Option<Vec<Lease>>, passes: impl FnOnce(&mut Agent) -> Pass) -> Pass {
        if let Some(leases) = leases {
            self.agent.set_leases(leases);
        }
        let agent = &mut self.agent;
        tokio::task::block_in_place(|| passes(agent))
    }
}
