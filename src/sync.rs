//! Locks that a panic elsewhere does not disable. A thread that panics while it holds a
//! `Mutex` poisons it, and `lock()` then returns an error forever. Skipping the write
//! on that error, as corral once did in about forty places, left caches, leadership and
//! metrics silently stale; every corral lock now goes on with what the panicking thread
//! left (each guarded value is whole between statements), says so once, and clears the
//! poison.

use std::sync::{Mutex, MutexGuard};

/// [`Mutex::lock`] that survives poisoning.
pub trait Lock<T: ?Sized> {
    /// The guard, whether or not a thread panicked while holding it.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| {
            tracing::error!("a thread panicked while holding a lock; going on with what it left");
            self.clear_poison();
            poisoned.into_inner()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_with_its_value_and_healed() {
        let mutex = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let mut guard = mutex.lock().unwrap();
            *guard = 2;
            panic!("while holding the lock");
        });
        assert!(mutex.is_poisoned());
        *mutex.locked() += 1;
        assert_eq!(*mutex.locked(), 3);
        assert!(!mutex.is_poisoned());
    }
}
