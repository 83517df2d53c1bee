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
//!
//! The refill also registers the waiting workers' channels with the
//! parent's runtime and builds their connections ([`Registered`]), where
//! the runtime allows it ([`Runtime::reactor`]: tokio and smol, not
//! glommio, whose sockets are `!Send` and per executor): a spawn taking
//! such a worker only queues its Start frame and writes it. A channel
//! registered with another runtime than the spawn's (a handle that
//! outlived its runtime) is dropped, its worker killed, and replaced.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};
use parallel_proto::channel::ParentChannel;
use parallel_proto::{Limits, WireEntry};

use super::conn::Conn;
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
    channel: Channel,
    pending: PendingSpawn,
}

/// A pre-forked worker's channel, as it waits.
enum Channel {
    /// Not registered with any runtime yet (forked outside one, or on a
    /// runtime that registers nothing ahead).
    Plain(UnixStream),
    /// Registered by a refill, on the runtime whose
    /// [`Runtime::reactor`] key is `reactor`, with its connection state
    /// built: a [`Registered`] of that runtime, boxed by [`Runtime::share`].
    Registered {
        reactor: u64,
        /// The channel's descriptor, owned by `conn`.
        fd: RawFd,
        conn: Box<dyn Any + Send>,
    },
}

impl Channel {
    fn fd(&self) -> RawFd {
        match self {
            Channel::Plain(stream) => stream.as_raw_fd(),
            Channel::Registered { fd, .. } => *fd,
        }
    }
}

/// A pre-forked worker's channel registered ahead with the parent's runtime,
/// with its connection (buffers, channel state) built: all a spawn that
/// takes it still does is queue Start and write it. Made by the refill of
/// a set of pre-forked workers, on the runtime (see
/// [`Parallel::warm_workers`](super::Parallel::warm_workers)); an adapter
/// only moves it ([`Runtime::share`]).
pub struct Registered<R: Runtime> {
    pub(crate) conn: Conn<ParentChannel, R::Socket>,
    pub(crate) fd: RawFd,
}

/// What [`WarmSet::take`] hands out: a waiting worker's channel, registered
/// with the caller's runtime already or not yet.
pub(crate) enum Taken<R: Runtime> {
    Plain(UnixStream),
    Registered(Box<Registered<R>>),
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
                self.channel.fd(),
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
    /// (reaped by the zygote) on the way, and so are those registered with
    /// another runtime than the caller's: they cannot serve here, and that
    /// runtime may be gone (a refill on this one forks their replacements).
    pub(crate) fn take<R: Runtime>(&self) -> Option<(Taken<R>, PendingSpawn)> {
        let mut idle = self.idle();
        let mut here = None;
        while let Some(warm) = idle.pop_front() {
            if !warm.is_waiting() {
                tracing::debug!("a pre-forked worker died while idle: dropped");
                continue;
            }
            let taken = match warm.channel {
                Channel::Plain(stream) => Taken::Plain(stream),
                Channel::Registered { reactor, conn, .. } => {
                    let here = *here.get_or_insert_with(R::reactor);
                    match conn.downcast::<Registered<R>>() {
                        Ok(registered) if here == Some(reactor) => Taken::Registered(registered),
                        _ => {
                            tracing::debug!(
                                "a pre-forked worker registered with another runtime: dropped"
                            );
                            continue;
                        }
                    }
                }
            };
            return Some((taken, warm.pending));
        }
        None
    }

    /// Registers the waiting workers that are not yet with the calling
    /// thread's runtime and builds their connections, so that a spawn
    /// taking one only writes its Start frame; on the runtime, from a
    /// refill. Nothing happens on a runtime that registers nothing ahead
    /// ([`Runtime::reactor`] is `None`).
    fn register_waiting<R: Runtime>(&self) {
        let Some(reactor) = R::reactor() else {
            return;
        };
        // Taken out of the set to be registered (system calls) outside its
        // lock; a spawn meanwhile finds the others, or forks.
        let plain: VecDeque<Warm> = {
            let mut idle = self.idle();
            let (plain, registered) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|warm| matches!(warm.channel, Channel::Plain(_)));
            *idle = registered;
            plain
        };
        let mut ready = Vec::with_capacity(plain.len());
        for Warm { channel, pending } in plain {
            let Channel::Plain(stream) = channel else {
                continue;
            };
            let fd = stream.as_raw_fd();
            let socket = match R::register(stream) {
                Ok(socket) => socket,
                Err(error) => {
                    // Its channel is closed: the worker exits, the zygote reaps it.
                    tracing::debug!(%error, "registering a pre-forked worker failed: dropped");
                    continue;
                }
            };
            let conn = Conn::new(ParentChannel::new(Limits::default()), socket);
            match R::share(Box::new(Registered { conn, fd })) {
                Ok(conn) => ready.push(Warm {
                    channel: Channel::Registered { reactor, fd, conn },
                    pending,
                }),
                Err(_) => {
                    tracing::debug!("this runtime's channels cannot be shared: dropped");
                }
            }
        }
        let mut idle = self.idle();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        idle.extend(ready);
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
                    Ok(()) => {
                        super::conn::widen_send_buffer(&stream);
                        idle.push_back(Warm {
                            channel: Channel::Plain(stream),
                            pending,
                        })
                    }
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
                set.register_waiting::<R>();
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
                    set.register_waiting::<R>();
                    return Poll::Ready(());
                }
            }
        }
    }
}
