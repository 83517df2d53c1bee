//! Wake-ups at a given instant from a thread of the library's own, for the
//! watchdog of a caller that reads its channel on its own thread (see the
//! driver's `READER_WATCH`), instead of a timer of the runtime.
//!
//! Why not the runtime's timer: on smol, a timer pending in async-io's
//! reactor makes every wait of the reactor arm a `timerfd` first
//! (`timerfd_settime` with the time left, where no timer means a cheap
//! disarm), 4.8-6.5 µs a call instead of 1.2 on this project's 2-vCPU VM
//! (likely the vCPU's timer being programmed through the hypervisor; not
//! measured further). The watchdog is
//! armed while calls are made from the `block_on` future, so every such
//! call paid it, on the thread that waits for the answer (BENCHMARKS.md,
//! session 15). The alarm thread instead wakes once per alarm: about
//! every 10 ms while callers read, never while none does.
//!
//! The thread is started on the first alarm, in a process with a runtime
//! (a driver's), never in a zygote; it lives as long as the process and
//! sleeps while no alarm is pending. Where it cannot be started,
//! [`wake_at`] says so and the caller keeps a timer of the runtime.

use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

/// The alarms not yet due, and the thread's wake-up.
struct Alarms {
    pending: Mutex<Vec<(Instant, Waker)>>,
    /// Signalled when an alarm is added that is due before every other.
    earlier: Condvar,
}

/// The process's alarms, or `None` when the thread could not be started.
static ALARMS: OnceLock<Option<&'static Alarms>> = OnceLock::new();

/// Wakes `waker` once `due` has passed (a little after: the thread's own
/// wake-up). False, and nothing will wake it, when the alarm thread could
/// not be started (the error is logged once).
pub(crate) fn wake_at(due: Instant, waker: &Waker) -> bool {
    let Some(alarms) = ALARMS.get_or_init(start) else {
        return false;
    };
    let mut pending = alarms.pending.lock().unwrap_or_else(|e| e.into_inner());
    let first = pending.iter().all(|(other, _)| due < *other);
    pending.push((due, waker.clone()));
    drop(pending);
    if first {
        alarms.earlier.notify_one();
    }
    true
}

/// Starts the alarm thread.
fn start() -> Option<&'static Alarms> {
    // Leaked: the thread uses it for as long as the process lives.
    let alarms: &'static Alarms = Box::leak(Box::new(Alarms {
        pending: Mutex::new(Vec::new()),
        earlier: Condvar::new(),
    }));
    let spawned = std::thread::Builder::new()
        .name("parallel-alarm".into())
        .spawn(move || ring(alarms));
    match spawned {
        Ok(_) => Some(alarms),
        Err(error) => {
            tracing::warn!(
                %error,
                "could not start the alarm thread: the watchdog of callers that read their \
                 channel uses the runtime's timer instead"
            );
            None
        }
    }
}

/// The alarm thread: wakes every alarm that is due, sleeps until the next.
fn ring(alarms: &'static Alarms) {
    let mut pending = alarms.pending.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= now);
        *pending = later;
        let next = pending.iter().map(|(at, _)| *at).min();
        if !due.is_empty() {
            // Woken outside the lock: a waker may run code that arms the
            // next alarm at once.
            drop(pending);
            due.into_iter().for_each(|(_, waker)| waker.wake());
            pending = alarms.pending.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        pending = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                alarms
                    .earlier
                    .wait_timeout(pending, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => alarms
                .earlier
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    /// When each of its wakes came.
    #[derive(Default)]
    struct Wakes(Mutex<Vec<Instant>>);

    impl Wakes {
        fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.lock().unwrap().push(Instant::now());
        }
    }

    fn wait_for(wakes: &Wakes, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while wakes.count() < n {
            assert!(Instant::now() < until, "alarms not rung within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn alarms_ring_once_each_and_not_before_they_are_due() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let start = Instant::now();
        // Added latest first: each one is due before those already pending.
        let dues: Vec<Instant> = [60, 40, 20]
            .iter()
            .map(|ms| start + Duration::from_millis(*ms))
            .collect();
        for due in &dues {
            assert!(wake_at(*due, &waker));
        }
        wait_for(&wakes, 3);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(wakes.count(), 3, "each alarm rings once");
        let rung = wakes.0.lock().unwrap().clone();
        let mut expected = dues.clone();
        expected.sort();
        for (at, due) in rung.iter().zip(&expected) {
            assert!(at >= due, "an alarm rang {:?} early", *due - *at);
        }
    }

    #[test]
    fn an_alarm_already_due_rings_at_once() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        assert!(wake_at(Instant::now(), &waker));
        wait_for(&wakes, 1);
    }
}
