//! The zygote process: a single-threaded loop that forks workers on request,
//! reaps them, signals them, and cleans up when its parent goes away.
//!
//! The zygote is forked while the parent is single-threaded, so it may
//! allocate and take locks freely; so may its children, which it forks from
//! its own single thread.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use parallel_proto::zygote::{ExitStatus, ServerEvent, SpawnFailure, SpawnOptions, ZygoteServer};
use parallel_proto::{Limits, WireEntry};

use crate::child;
use crate::entry::Entry;
use crate::io::{Inbox, Outbox};
use crate::WorkerContext;

/// How long workers get between SIGTERM and SIGKILL when the zygote shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// How soon after a child's exit the zygote also sweeps for exits whose
/// SIGCHLD was merged into another's (see `Zygote::handle_signals`).
const SWEEP_DELAY: Duration = Duration::from_millis(5);

/// What a zygote process needs to run.
pub(crate) struct ServeConfig {
    pub(crate) control: UnixStream,
    pub(crate) limits: Limits,
    pub(crate) name: String,
    /// The signal mask to restore in children (the zygote blocks SIGCHLD and SIGTERM).
    pub(crate) child_mask: SigSet,
}

/// The pipe over which a child says whether its setup (the fallible settings
/// of its [`SpawnOptions`]) succeeded: created before the fork only when
/// there are such settings, so a spawn with default options has none.
struct SetupReport {
    read: OwnedFd,
    write: OwnedFd,
}

impl SetupReport {
    fn open(setup: &child::Setup) -> Result<Option<SetupReport>, SpawnFailure> {
        if !setup.is_fallible() {
            return Ok(None);
        }
        // Close-on-exec: neither end may outlive an exec in a worker.
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SpawnFailure {
            errno: Some(errno as i32),
            message: format!(
                "creating the pipe for the worker's setup report failed: {}",
                errno.desc()
            ),
        })?;
        Ok(Some(SetupReport { read, write }))
    }

    /// In the child: the write end (the read end closes here).
    fn into_child(self) -> OwnedFd {
        self.write
    }

    /// In the zygote after the fork: the child's pid once its setup is done,
    /// or the failure it reported (the child has exited then: reaped here,
    /// it never becomes a worker).
    fn wait(
        report: Option<SetupReport>,
        setup: &child::Setup,
        child: Pid,
    ) -> Result<i32, SpawnFailure> {
        let Some(SetupReport { read, write }) = report else {
            return Ok(child.as_raw());
        };
        // The zygote's copy of the write end: closed, so that the read sees
        // the end once the child closes its own.
        drop(write);
        match child::read_setup_report(&read) {
            None => Ok(child.as_raw()),
            Some((step, errno)) => {
                let _ = waitpid(child, None);
                Err(setup.failure(step, errno))
            }
        }
    }
}

/// Runs the zygote loop, then exits the process. Never returns.
pub(crate) fn serve(config: ServeConfig) -> ! {
    child::set_process_name(&config.name);
    // Once here rather than in each worker after its fork (see there).
    crate::async_core::install_panic_hook();
    let name = config.name.clone();
    let code = match Zygote::new(config) {
        Ok(mut zygote) => {
            let broken = zygote.run();
            zygote.terminate_children();
            match broken {
                None => 0,
                Some(error) => {
                    // The parent's side only sees the exit: say why here.
                    eprintln!(
                        "{name}: the parent broke the zygote protocol: {}; exiting",
                        crate::error::chain(&error)
                    );
                    child::ZYGOTE_PROTOCOL_EXIT_CODE
                }
            }
        }
        Err(_) => 1,
    };
    // _exit: the zygote must not run the parent's atexit handlers or flush
    // stdio buffers it inherited (they belong to the parent).
    // SAFETY: _exit is always safe to call; it ends the process at once.
    unsafe { libc::_exit(code) }
}

struct Zygote {
    control: UnixStream,
    signals: SignalFd,
    server: ZygoteServer,
    inbox: Inbox,
    outbox: Outbox,
    name: String,
    child_mask: SigSet,
    limits: Limits,
    /// When to sweep for children whose exit no SIGCHLD named (`None`: no
    /// exit seen since the last sweep).
    sweep_at: Option<Instant>,
    /// The pids the last SIGCHLDs named (kept to reuse its allocation).
    exited: Vec<i32>,
}

impl Zygote {
    fn new(config: ServeConfig) -> nix::Result<Zygote> {
        // Child exits and termination requests arrive as readable data on a
        // signalfd, so the loop waits on one poll and needs no signal handlers.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let pid = getpid().as_raw();
        Ok(Zygote {
            control: config.control,
            signals,
            server: ZygoteServer::new(config.limits, pid),
            inbox: Inbox::new(),
            outbox: Outbox::new(),
            name: config.name,
            child_mask: config.child_mask,
            limits: config.limits,
            sweep_at: None,
            exited: Vec::new(),
        })
    }

    /// Serves until the parent hangs up, asks to shut down, or SIGTERM arrives.
    /// Serves until the parent hangs up, asks to stop, or breaks the
    /// protocol (returned).
    fn run(&mut self) -> Option<parallel_proto::Error> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if self.flush().is_err() {
                return None;
            }
            let (control_ready, signal_ready) = {
                let mut fds = [
                    PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, self.sweep_timeout()) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return None,
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if self.sweep_at.is_some_and(|at| Instant::now() >= at) {
                self.sweep_at = None;
                self.reap();
            }
            if signal_ready && self.handle_signals() {
                return None;
            }
            if control_ready {
                let read = match self.inbox.read(&self.control, &mut buffer) {
                    Ok(0) | Err(_) => return None, // the parent hung up or died
                    Ok(read) => read,
                };
                let mut input = &buffer[..read];
                loop {
                    match self.server.handle_input(&mut input) {
                        Ok(Some(event)) => {
                            if self.handle(event) {
                                let _ = self.flush();
                                return None;
                            }
                        }
                        Ok(None) => break,
                        // A parent that breaks the protocol gets no more service.
                        Err(error) => return Some(error),
                    }
                }
            }
        }
    }

    /// Returns true when the zygote must stop.
    fn handle(&mut self, event: ServerEvent) -> bool {
        match event {
            ServerEvent::Spawn {
                request,
                boot,
                options,
                fds,
            } => {
                let Some(mut fds) = self.inbox.take_fds(fds as usize) else {
                    return true; // descriptors promised but not sent: protocol broken
                };
                let channel = fds.remove(0);
                let result = self.spawn_worker(boot, &options, channel, fds);
                let _ = match result {
                    Ok(pid) => self.server.spawned(request, pid).map(drop),
                    Err(failure) => self.server.spawn_failed(request, failure),
                };
                false
            }
            ServerEvent::Snapshot {
                request,
                init,
                args,
                options,
            } => {
                let Some(mut fds) = self.inbox.take_fds(1) else {
                    return true;
                };
                let control = UnixStream::from(fds.remove(0));
                let result = self.spawn_snapshot(init, args, &options, control);
                let _ = match result {
                    Ok(pid) => self.server.snapshot_ready(request, pid).map(drop),
                    Err(failure) => self.server.spawn_failed(request, failure),
                };
                false
            }
            ServerEvent::Kill { pid, signal, .. } => {
                // The pid is an unreaped child of ours, so it cannot have been reused.
                if let Ok(signal) = Signal::try_from(signal) {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
                false
            }
            ServerEvent::Shutdown => true,
            _ => false,
        }
    }

    fn spawn_worker(
        &mut self,
        boot: WireEntry,
        options: &SpawnOptions,
        channel: OwnedFd,
        fds: Vec<OwnedFd>,
    ) -> Result<i32, SpawnFailure> {
        // Verify before forking: a bad entry is refused and nothing runs.
        let boot = Entry::<WorkerContext>::verify(boot).map_err(|error| SpawnFailure {
            errno: None,
            message: error.to_string(),
        })?;
        // So is a setting this zygote cannot apply (an unknown resource
        // limit, an empty CPU set, an environment name with '=').
        let setup = child::Setup::new(options)?;
        let report = SetupReport::open(&setup)?;
        // The zygote's own name is inherited: most children set none.
        let name = child::ProcessName::new(
            options.name.as_deref().unwrap_or(&self.name),
            Some(&self.name),
        );
        let zygote_pid = getpid();
        // Gathered before the fork, so the child allocates nothing for it.
        let not_for_child = self.fds_not_for_children();
        // SAFETY: the zygote is single-threaded (forked from a process that
        // `start` checked was single-threaded, and it starts no threads), so
        // the child inherits no lock held by another thread and may run
        // ordinary code.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let context = WorkerContext {
                    channel: UnixStream::from(channel),
                    fds,
                };
                child::become_worker(
                    zygote_pid,
                    &not_for_child,
                    &self.child_mask,
                    &setup,
                    report.map(SetupReport::into_child),
                    &name,
                    move || {
                        crate::start::mark_worker();
                        boot.resolve()(context)
                    },
                )
            }
            Ok(ForkResult::Parent { child }) => SetupReport::wait(report, &setup, child),
            Err(errno) => Err(SpawnFailure {
                errno: Some(errno as i32),
                message: format!("fork failed: {}", errno.desc()),
            }),
        }
        // `channel` and `fds` were moved into the child branch; in the zygote
        // they drop here, so it holds no worker's channel.
    }

    fn spawn_snapshot(
        &mut self,
        init: WireEntry,
        args: Vec<u8>,
        options: &SpawnOptions,
        control: UnixStream,
    ) -> Result<i32, SpawnFailure> {
        let init = Entry::<Vec<u8>>::verify(init).map_err(|error| SpawnFailure {
            errno: None,
            message: error.to_string(),
        })?;
        let setup = child::Setup::new(options)?;
        let report = SetupReport::open(&setup)?;
        let zygote_pid = getpid();
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-snap", self.name));
        let limits = self.limits;
        let child_mask = self.child_mask;
        let not_for_child = self.fds_not_for_children();
        let process_name = child::ProcessName::new(&name, None);
        // SAFETY: as in `spawn_worker`: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => child::become_worker(
                zygote_pid,
                &not_for_child,
                &self.child_mask,
                &setup,
                report.map(SetupReport::into_child),
                &process_name,
                move || {
                    init.resolve()(args);
                    // Workers are forked from this process from now on: it
                    // must be single-threaded again, or it does not serve.
                    // Its hello (sent first thing by `serve`) tells the
                    // parent that init finished and this check passed.
                    child::exit_unless_single_threaded();
                    serve(ServeConfig {
                        control,
                        limits,
                        name,
                        child_mask,
                    })
                },
            ),
            Ok(ForkResult::Parent { child }) => SetupReport::wait(report, &setup, child),
            Err(errno) => Err(SpawnFailure {
                errno: Some(errno as i32),
                message: format!("fork failed: {}", errno.desc()),
            }),
        }
    }

    /// Descriptors a new child must close: the zygote's own, and those that
    /// arrived for requests not served yet (other workers' channels).
    fn fds_not_for_children(&self) -> Vec<std::os::fd::RawFd> {
        let mut fds = vec![self.control.as_raw_fd(), self.signals.as_raw_fd()];
        fds.extend(self.inbox.held_fds());
        fds
    }

    /// Drains the signalfd and reaps; returns true on SIGTERM.
    ///
    /// Each SIGCHLD names the child that exited, which is reaped by its pid.
    /// `waitpid(-1)` would find it too, but the kernel finds it by walking
    /// every child: with 500 live workers, that walk (twice per exit: once
    /// to find the zombie, once to see there is no other) cost the zygote
    /// ~50 µs per exit, right when the next spawn's request arrives. A
    /// SIGCHLD raised while another is still pending is merged into it,
    /// though, so the exit it would have named is found by a full sweep
    /// [`SWEEP_DELAY`] after the first exit (at most one sweep per delay).
    fn handle_signals(&mut self) -> bool {
        let mut terminate = false;
        let mut exited = std::mem::take(&mut self.exited);
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGTERM as u32 {
                terminate = true;
            } else if info.ssi_signo == Signal::SIGCHLD as u32 {
                exited.push(info.ssi_pid as i32);
            }
        }
        if !exited.is_empty() {
            self.sweep_at
                .get_or_insert_with(|| Instant::now() + SWEEP_DELAY);
        }
        for pid in exited.drain(..) {
            // A pid that is no child of ours (a SIGCHLD sent by hand) or
            // that did not exit (stopped, continued) reaps nothing.
            if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                self.report_exit(status);
            }
        }
        self.exited = exited;
        terminate
    }

    /// How long the loop may wait for input: until the sweep is due.
    fn sweep_timeout(&self) -> PollTimeout {
        match self.sweep_at {
            None => PollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Rounded up: waking before the deadline would spin.
                let millis = left.as_micros().div_ceil(1000);
                PollTimeout::try_from(millis.min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::ZERO)
            }
        }
    }

    /// Reaps every child that has exited.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => self.report_exit(status),
            }
        }
    }

    /// Tells the parent about a reaped child's exit; other statuses
    /// (stopped, continued, still alive) are not exits.
    fn report_exit(&mut self, status: WaitStatus) {
        let (pid, status) = match status {
            WaitStatus::Exited(pid, code) => (pid, ExitStatus::Exited(code)),
            WaitStatus::Signaled(pid, signal, core_dumped) => (
                pid,
                ExitStatus::Signaled {
                    signal: signal as i32,
                    core_dumped,
                },
            ),
            _ => return,
        };
        let pid = pid.as_raw();
        if self.server.reaped(pid, status).is_err() {
            // The reply queue is full (the parent reads slowly): write it
            // out, then report again, so no exit is lost.
            let _ = self.flush();
            let _ = self.server.reaped(pid, status);
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        while let Some(transmit) = self.server.poll_transmit() {
            self.outbox.push(transmit, []);
        }
        self.outbox.flush(&self.control)
    }

    /// SIGTERM to every child, a short grace, then SIGKILL; reaps them all.
    fn terminate_children(&mut self) {
        let pids: Vec<i32> = self.server.live_pids().collect();
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.server.live_pids().next().is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            let timeout =
                PollTimeout::try_from(left.as_millis().max(1) as i32).unwrap_or(PollTimeout::ZERO);
            let _ = poll(&mut fds, timeout);
            while let Ok(Some(_)) = self.signals.read_signal() {}
            self.reap();
        }
        let left: Vec<i32> = self.server.live_pids().collect();
        for &pid in &left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for &pid in &left {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        let _ = self.flush();
    }
}
