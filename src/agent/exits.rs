//! Notices at once when a process corral did not start exits: the main process of a replica
//! an earlier agent started, taken over across a restart (as after every upgrade). No
//! SIGCHLD comes for such a process, so without this its exit would be seen only at the
//! next pass (the next resync or lease change), and the replica would stay down that long
//! instead of its backoff.
//!
//! One thread polls a pidfd per process (Linux 5.3 and later), which becomes readable when
//! the process exits, zombie or not, and calls the waker, whose pass then reads the exit.
//! A pidfd names the very process it was opened for, so a PID reused meanwhile is never
//! mistaken for it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags};

use super::process::ProcessId;
use super::supervisor::Waker;
use crate::sync::Lock;

/// The processes watched, and the thread that watches them.
pub struct ExitWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// A pidfd per process watched.
    watched: Mutex<HashMap<ProcessId, OwnedFd>>,
    /// Written to make the thread take the new set, or end.
    wake: OwnedFd,
    stop: AtomicBool,
    on_exit: Waker,
}

impl ExitWatch {
    /// Starts the thread, which calls `on_exit` whenever a watched process exits.
    ///
    /// # Errors
    /// No eventfd, or no thread, could be made.
    pub fn start(on_exit: Waker) -> std::io::Result<ExitWatch> {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(Shared {
            watched: Mutex::new(HashMap::new()),
            wake,
            stop: AtomicBool::new(false),
            on_exit,
        });
        let thread = std::thread::Builder::new()
            .name("exit watch".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run()
            })?;
        Ok(ExitWatch {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches exactly `processes` from now on. A process that has exited already calls
    /// the waker at once: a pass reads it.
    pub fn set(&self, processes: impl IntoIterator<Item = ProcessId>) {
        let wanted: HashSet<ProcessId> = processes.into_iter().collect();
        let mut gone = false;
        let changed = {
            let mut watched = self.shared.watched.locked();
            let before = watched.len();
            watched.retain(|id, _| wanted.contains(id));
            let mut changed = watched.len() != before;
            for id in wanted {
                if watched.contains_key(&id) {
                    continue;
                }
                match open(id) {
                    Some(fd) => {
                        watched.insert(id, fd);
                        changed = true;
                    }
                    // Gone already: a pass reads its exit. Still running but without a
                    // pidfd (a kernel before 5.3): left to the resync, never a wake, which
                    // each pass would repeat without end.
                    None => gone |= !id.is_alive(),
                }
            }
            changed
        };
        if changed {
            self.shared.poke();
        }
        if gone {
            (self.shared.on_exit)();
        }
    }

    /// How many processes are watched.
    pub fn len(&self) -> usize {
        self.shared.watched.locked().len()
    }

    /// True when no process is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.poke();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A pidfd for `id`, if that very process still runs.
fn open(id: ProcessId) -> Option<OwnedFd> {
    let pid = Pid::from_raw(i32::try_from(id.pid).ok()?)?;
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()?;
    // Opened first, checked second: the pidfd now pins this PID, so a process that still
    // has `id`'s start time is the one the pidfd names.
    id.is_alive().then_some(fd)
}

impl Shared {
    fn poke(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    fn run(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            // Copies of the descriptors, so that `set` never waits for the poll.
            let copies: Vec<(ProcessId, OwnedFd)> = self
                .watched
                .locked()
                .iter()
                .filter_map(|(id, fd)| Some((*id, fd.try_clone().ok()?)))
                .collect();
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(copies.len() + 1);
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            fds.extend(copies.iter().map(|(_, fd)| PollFd::new(fd, PollFlags::IN)));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for exits; they are seen at the next pass");
                    return;
                }
            }
            if !fds[0].revents().is_empty() {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(self.wake.as_fd(), &mut count);
            }
            let readable: Vec<ProcessId> = fds[1..]
                .iter()
                .zip(&copies)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, (id, _))| *id)
                .collect();
            // Only those still watched: a process unwatched while this poll ran on its copy
            // calls nothing.
            let exited: Vec<ProcessId> = {
                let mut watched = self.watched.locked();
                readable
                    .into_iter()
                    .filter(|id| watched.remove(id).is_some())
                    .collect()
            };
            if exited.is_empty() {
                continue;
            }
            tracing::debug!(processes = ?exited, "exited");
            (self.on_exit)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    fn counting() -> (Arc<AtomicUsize>, Waker) {
        let calls = Arc::new(AtomicUsize::new(0));
        let waker: Waker = {
            let calls = Arc::clone(&calls);
            Arc::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            })
        };
        (calls, waker)
    }

    fn wait_for(calls: &AtomicUsize, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if calls.load(Ordering::SeqCst) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn the_exit_of_a_watched_process_wakes_at_once_and_unwatches_it() {
        let (calls, waker) = counting();
        let watch = ExitWatch::start(waker).unwrap();
        let mut a = Command::new("sleep").arg("30").spawn().unwrap();
        let mut b = Command::new("sleep").arg("30").spawn().unwrap();
        let ids = [a.id(), b.id()].map(|pid| ProcessId::of(pid).unwrap());
        watch.set(ids);
        assert_eq!(watch.len(), 2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no exit, no call");
        // Killed but not reaped: a zombie has exited.
        a.kill().unwrap();
        assert!(wait_for(&calls, 1), "the kill is noticed");
        assert_eq!(watch.len(), 1);
        let _ = a.wait();
        // Unwatched: its exit calls nothing.
        watch.set([]);
        assert!(watch.is_empty());
        b.kill().unwrap();
        let _ = b.wait();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_process_gone_before_it_is_watched_wakes_at_once() {
        let (calls, waker) = counting();
        let watch = ExitWatch::start(waker).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        child.wait().unwrap();
        watch.set([id]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(watch.is_empty());
    }
}
