//! What calls for an agent's pass besides new leases, in one place for the two loops that
//! run passes (`corral agent`'s in [`super::daemon`], and `corral run`'s): the periodic
//! resync, a process's exit (SIGCHLD for the agent's children; the waker for a background
//! stop's end and for the exit of a process an earlier agent started), and a 250 ms tick
//! at which the caller asks the agent whether a restart or a readiness change is due.
//! After a stall, each timer fires once, not in a burst.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

use super::node::{Agent, Trigger};

/// How often the caller may ask whether a restart or a readiness change is due.
pub const TICK: Duration = Duration::from_millis(250);

/// The sources of passes.
pub struct Triggers {
    resync: Interval,
    tick: Interval,
    child_exited: Signal,
    woken: Arc<Notify>,
}

impl Triggers {
    /// The sources for `agent`, whose waker they take, resyncing every `resync` from now
    /// (the first resync comes at once).
    ///
    /// # Errors
    /// SIGCHLD cannot be listened to.
    pub fn new(agent: &mut Agent, resync: Duration) -> std::io::Result<Triggers> {
        let woken = Arc::new(Notify::new());
        agent.set_waker({
            let woken = Arc::clone(&woken);
            Arc::new(move || woken.notify_one())
        });
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Triggers {
            resync,
            tick,
            child_exited: signal(SignalKind::child())?,
            woken,
        })
    }

    /// Moves the next resync one period away: for a caller that has just run a pass.
    pub fn postpone_resync(&mut self) {
        self.resync.reset();
    }

    /// Waits for the next source: `Some` with the pass it calls for, `None` at a tick, when
    /// the caller decides (as a rule, whether [`Agent::restart_due`]). Cancel-safe, for
    /// use in `tokio::select!`.
    pub async fn next(&mut self) -> Option<Trigger> {
        tokio::select! {
            _ = self.resync.tick() => Some(Trigger::Resync),
            _ = self.child_exited.recv() => Some(Trigger::Processes),
            () = self.woken.notified() => Some(Trigger::Processes),
            _ = self.tick.tick() => None,
        }
    }
}
