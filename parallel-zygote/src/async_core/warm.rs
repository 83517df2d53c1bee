//! Pre-forked workers that wait for their task: a spawn that finds one
//! sends it its Start frame and skips the fork (as Android's USAP pool does
//! for app processes).
//!
//! A worker's first frame is Start, which names its task (and the options
//! of its runtime). So a worker can be forked before anyone knows what it
//! will run: it waits in its boot function, on the runtime built with the
//! default options (or before any runtime, when the handle asks for others;
//! see `warm_boot` in worker.rs). [`WarmSet`] keeps a few
//! such workers per [`Parallel`](super::Parallel) handle (and its clones):
//! when a spawn takes one, the set is refilled to its minimum shortly after
//! (1 ms unless set: not while the spawn that took the worker runs, whose
//! worker the refill's fork and boot would compete with for the CPU) and
//! to its maximum after a longer delay, so that a burst of spawns does not
//! turn into a burst of forks competing with the workers just started.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};
use parallel_proto::WireEntry;

use super::runtime::Runtime;
use crate::{PendingSpawn, SpawnOptions, Zygote};

/// How many pre-forked workers a [`Parallel`](super::Parallel) keeps, from
/// [`Parallel::warm_workers`](super::Parallel::warm_workers).
///
/// ```
/// use std::time::Duration;
/// use parallel_zygote::async_core::WarmConfig;
///
/// let config = WarmConfig::new(2, 8)
///     .min_refill_delay(Duration::from_millis(2))
///     .refill_delay(Duration::from_millis(100));
/// assert_eq!((config.min, config.max), (2, 8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmConfig {
    /// Refilled to this many [`min_refill_delay`](Self::min_refill_delay)
    /// after a spawn took one.
    pub min: usize,
    /// Refilled to this many after [`refill_delay`](Self::refill_delay); at
    /// least `min`.
    pub max: usize,
    /// How long after a spawn took a worker the set is topped up to `min`
    /// (1 ms unless set; zero forks at once, inside the spawn).
    pub min_refill_delay: Duration,
    /// How long after a spawn took a worker the set is topped up to `max`
    /// (100 ms unless set).
    pub refill_delay: Duration,
}

impl WarmConfig {
    /// At least `min` and at most `max` (raised to `min` if lower) idle
    /// pre-forked workers.
    pub const fn new(min: usize, max: usize) -> Self {
        WarmConfig {
            min,
            max: if max < min { min } else { max },
            min_refill_delay: Duration::from_millis(1),
            refill_delay: Duration::from_millis(100),
        }
    }

    /// How long after a spawn took a worker the set is topped up to `max`.
    #[must_use]
    pub const fn refill_delay(mut self, delay: Duration) -> Self {
        self.refill_delay = delay;
        self
    }

    /// How long after a spawn took a worker the set is topped up to `min`.
    ///
    /// The default, 1 ms, keeps the replacement's fork and boot (a few
    /// hundred µs of CPU, in the zygote and the new worker) out of the way
    /// of the spawn that took the worker: on a machine with few idle cores
    /// they compete, and a warm spawn that refilled at once measured
    /// 1.5-2× one refilled after 1 ms (see BENCHMARKS.md). Spawns that come
    /// faster than that drain the set; those finding it empty fork as
    /// without pre-forked workers. `Duration::ZERO` forks at once, inside
    /// the spawn that took the worker: for machines with idle cores to spare.
    #[must_use]
    pub const fn min_refill_delay(mut self, delay: Duration) -> Self {
        self.min_refill_delay = delay;
        self
    }
}

/// One pre-forked worker: its channel, and the zygote's answer to come.
struct Warm {
    stream: UnixStream,
    pending: PendingSpawn,
}

impl Warm {
    /// Whether the worker is still there to be started: the zygote has not
    /// reported its exit, and its socket is empty (it writes nothing before
    /// its Start frame), not at its end. The socket alone is not enough: a
    /// dead worker's io_uring (glommio) can hold its end open a moment
    /// after the process is gone.
    fn is_waiting(&self) -> bool {
        if self.pending.has_ended() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            recv(
                self.stream.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ),
            Err(nix::errno::Errno::EAGAIN)
        )
    }
}

/// The pre-forked workers of one `Parallel` handle and its clones. Dropping
/// it (the last clone gone, or a shutdown) closes their channels and kills
/// them: each is an abandoned spawn.
pub(crate) struct WarmSet {
    config: WarmConfig,
    zygote: Zygote,
    boot: WireEntry,
    options: SpawnOptions,
    idle: Mutex<VecDeque<Warm>>,
    /// A delayed refill to `max` is scheduled.
    refill_scheduled: AtomicBool,
    /// A delayed refill to `min` is scheduled.
    min_refill_scheduled: AtomicBool,
    closed: AtomicBool,
}

impl WarmSet {
    /// A set forking workers that boot with `boot` and `options`, filled to
    /// `config.max` at once.
    pub(crate) fn new(
        config: WarmConfig,
        zygote: Zygote,
        boot: WireEntry,
        options: SpawnOptions,
    ) -> Arc<Self> {
        let set = Arc::new(WarmSet {
            config,
            zygote,
            boot,
            options,
            idle: Mutex::new(VecDeque::new()),
            refill_scheduled: AtomicBool::new(false),
            min_refill_scheduled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        set.fill(config.max);
        set
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many pre-forked workers wait now.
    fn len(&self) -> usize {
        self.idle().len()
    }

    /// How many pre-forked workers wait now, dropping those found dead.
    pub(crate) fn waiting(&self) -> usize {
        let mut idle = self.idle();
        idle.retain(Warm::is_waiting);
        idle.len()
    }

    /// A waiting worker, if there is one; workers found dead are dropped
    /// (reaped by the zygote) on the way.
    pub(crate) fn take(&self) -> Option<(UnixStream, PendingSpawn)> {
        let mut idle = self.idle();
        while let Some(warm) = idle.pop_front() {
            if warm.is_waiting() {
                return Some((warm.stream, warm.pending));
            }
            tracing::debug!("a pre-forked worker died while idle: dropped");
        }
        None
    }

    /// After a take: back to `min` after `min_refill_delay` (at once if
    /// zero), and to `max` after `refill_delay`. One task does both when
    /// both are due: each task spawned costs the spawn that took a worker.
    pub(crate) fn refill<R: Runtime>(self: &Arc<Self>) {
        let len = self.len();
        let to_min = if self.config.min_refill_delay.is_zero() {
            self.fill(self.config.min);
            false
        } else {
            len < self.config.min && !self.min_refill_scheduled.swap(true, Ordering::AcqRel)
        };
        let to_max = len < self.config.max && !self.refill_scheduled.swap(true, Ordering::AcqRel);
        let (first, then_max) = match (to_min, to_max) {
            (false, false) => return,
            (true, false) => (self.config.min_refill_delay, None),
            (true, true) => (
                self.config.min_refill_delay,
                Some(
                    self.config
                        .refill_delay
                        .saturating_sub(self.config.min_refill_delay),
                ),
            ),
            (false, true) => (self.config.refill_delay, Some(Duration::ZERO)),
        };
        R::spawn_refill(Refill {
            set: Arc::downgrade(self),
            to_min,
            then_max,
            delay: Box::pin(R::sleep(first)),
        });
    }

    /// Forks workers until `target` wait (or the zygote refuses: the next
    /// spawn, forked cold, then reports why).
    fn fill(&self, target: usize) {
        let mut idle = self.idle();
        while idle.len() < target && !self.closed.load(Ordering::Acquire) {
            match self
                .zygote
                .spawn_entry(self.boot, self.options.clone(), Vec::new())
            {
                // Non-blocking now, so that the spawn that takes it does not
                // make that syscall.
                Ok((stream, pending)) => match stream.set_nonblocking(true) {
                    Ok(()) => idle.push_back(Warm { stream, pending }),
                    Err(error) => {
                        tracing::debug!(%error, "pre-forking a worker failed");
                        break;
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "pre-forking a worker failed");
                    break;
                }
            }
        }
    }

    /// Kills every waiting worker and forks no more.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle().clear();
    }
}

/// The delayed refill of a handle's pre-forked workers (see
/// [`Parallel::warm_workers`](super::Parallel::warm_workers)): a future the
/// adapter runs as a task of its own (see [`Runtime::spawn_refill`]). It
/// holds the set weakly, so that the set (and its workers) go when the last
/// `Parallel` handle does.
#[must_use = "a refill does nothing unless polled"]
pub struct Refill<R: Runtime> {
    set: Weak<WarmSet>,
    /// Tops the set up to `min` when `delay` fires.
    to_min: bool,
    /// Then tops it up to `max`, this much later.
    then_max: Option<Duration>,
    delay: Pin<Box<R::Sleep>>,
}

impl<R: Runtime> Future for Refill<R> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.delay.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(set) = self.set.upgrade() else {
                return Poll::Ready(());
            };
            // Each flag is cleared before its forks: a take from then on
            // schedules a refill of its own.
            if std::mem::take(&mut self.to_min) {
                set.min_refill_scheduled.store(false, Ordering::Release);
                set.fill(set.config.min);
            }
            match self.then_max.take() {
                None => return Poll::Ready(()),
                Some(later) if !later.is_zero() => {
                    self.delay = Box::pin(R::sleep(later));
                    self.then_max = Some(Duration::ZERO);
                }
                Some(_) => {
                    set.refill_scheduled.store(false, Ordering::Release);
                    set.fill(set.config.max);
                    return Poll::Ready(());
                }
            }
        }
    }
}
