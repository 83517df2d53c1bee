//! The worker's side: the boot function the zygote runs in every tokio
//! worker, and the drivers that run the user's function for `spawn`, `run`
//! and `process`.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Mutex;

use parallel_proto::channel::{Outcome, PanicReport, WorkerChannel, WorkerEvent};
use parallel_proto::{Limits, WireEntry};
use parallel_zygote::io::Inbox;
use parallel_zygote::{Entry, WorkerContext};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::codec::Codec;
use crate::conn::Conn;
use crate::messages::{MessageSender, MessageStream, RawMessage, QUEUE_DEPTH};

/// The runtime a worker builds before it runs its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkerRuntime {
    /// A current-thread runtime (the default): cheapest to build, and the
    /// worker is a process of its own anyway.
    #[default]
    CurrentThread,
    /// A multi-thread runtime with this many worker threads.
    MultiThread {
        /// Worker threads.
        threads: usize,
    },
}

/// What the Start frame's arguments carry in this adapter.
#[derive(Serialize, Deserialize)]
pub(crate) struct StartArgs {
    pub(crate) runtime: WorkerRuntime,
    pub(crate) args: Vec<u8>,
}

/// A task as the worker runs it.
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// What a task entry receives.
pub(crate) struct TaskContext {
    conn: Conn<WorkerChannel>,
    args: Vec<u8>,
}

/// The entry type of every task function.
pub(crate) type TaskEntry = Entry<TaskContext, LocalTask>;

/// The last panic's report, filled by the hook the worker installs.
static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".to_string());
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => Some(backtrace.to_string()),
            _ => None,
        };
        let report = PanicReport {
            message,
            location: info.location().map(|l| l.to_string()),
            backtrace,
        };
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }));
}

fn take_panic(payload: Box<dyn std::any::Any + Send>) -> PanicReport {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| PanicReport {
            message: payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into()),
            location: None,
            backtrace: None,
        })
}

/// The boot function of every tokio worker: waits for its Start frame,
/// builds the runtime it asks for, and runs the task it names.
pub(crate) fn boot(context: WorkerContext) {
    install_panic_hook();
    let stream = context.channel;
    let mut machine = WorkerChannel::new(Limits::default(), std::process::id() as i32);
    let mut inbox = Inbox::new();
    // Small: Hello and Start are a few dozen bytes, and anything read past
    // them moves on to the connection's own buffer.
    let mut buffer = vec![0u8; 4096];
    // Block (no runtime yet) until Start arrives: a warm worker idles here.
    let (task, start_args, unparsed) = loop {
        let read = match inbox.read(&stream, &mut buffer) {
            // The parent went away before starting us: nothing to do.
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let mut input = &buffer[..read];
        match machine.handle_input(&mut input) {
            Ok(Some(WorkerEvent::Start { task, args })) => break (task, args, input.to_vec()),
            Ok(None) => continue,
            // The state machine only lets Start come first; anything else is
            // a broken parent, which gets nothing more from us.
            Ok(Some(_)) | Err(_) => return,
        }
    };
    let start: StartArgs = match postcard::from_bytes(&start_args) {
        Ok(start) => start,
        Err(error) => {
            return fail_before_runtime(stream, machine, format!("bad start arguments: {error}"))
        }
    };
    let runtime = match start.runtime {
        WorkerRuntime::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        WorkerRuntime::MultiThread { threads } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail_before_runtime(
                stream,
                machine,
                format!("building the tokio runtime failed: {error}"),
            )
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let Ok(conn) = Conn::resume(machine, stream, inbox, &unparsed) else {
            return;
        };
        run_task(task, conn, start.args).await;
    });
    // The outcome is flushed: the process is done. Exiting here skips tearing
    // the runtime down, which the parent would otherwise wait through.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// Tells the parent why the task cannot run, with plain blocking writes
/// (there is no runtime to use).
fn fail_before_runtime(
    stream: std::os::unix::net::UnixStream,
    mut machine: WorkerChannel,
    message: String,
) {
    if machine.finish(Outcome::Err(message.into_bytes())).is_err() {
        return;
    }
    let mut outbox = parallel_zygote::io::Outbox::new();
    while let Some(transmit) = machine.poll_transmit() {
        outbox.push(transmit, []);
    }
    let _ = outbox.flush(&stream);
}

async fn run_task(task: WireEntry, mut conn: Conn<WorkerChannel>, args: Vec<u8>) {
    match TaskEntry::verify(task) {
        Ok(entry) => entry.resolve()(TaskContext { conn, args }).await,
        Err(error) => {
            let _ = conn
                .machine
                .finish(Outcome::Err(error.to_string().into_bytes()));
            let _ = conn.flush().await;
        }
    }
}

/// Runs `future` as a task of its own, turning a panic into a report.
async fn catching<T: 'static>(future: impl Future<Output = T> + 'static) -> Result<T, PanicReport> {
    match tokio::task::spawn_local(future).await {
        Ok(value) => Ok(value),
        Err(error) => match error.try_into_panic() {
            Ok(payload) => Err(take_panic(payload)),
            Err(_) => Err(PanicReport {
                message: "the task was cancelled".into(),
                location: None,
                backtrace: None,
            }),
        },
    }
}

/// Calls `function` on encoded arguments; the outcome, encoded.
async fn call_once<F, A, Fut, R, C>(function: F, args: Vec<u8>) -> Outcome
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = R> + 'static,
    R: Serialize + 'static,
    C: Codec,
{
    let argument = match C::decode::<A>(&args) {
        Ok(argument) => argument,
        Err(message) => {
            return Outcome::Err(
                format!(
                    "could not decode the arguments as {}: {message}",
                    std::any::type_name::<A>()
                )
                .into_bytes(),
            )
        }
    };
    match catching(function(argument)).await {
        Ok(result) => match C::encode(&result) {
            Ok(bytes) => Outcome::Ok(bytes),
            Err(message) => Outcome::Err(
                format!(
                    "could not encode the result {}: {message}",
                    std::any::type_name::<R>()
                )
                .into_bytes(),
            ),
        },
        Err(report) => Outcome::Panic(report),
    }
}

/// The task of `spawn`: one call, one outcome, exit.
pub(crate) fn spawn_task<F, A, Fut, R, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = R> + 'static,
    R: Serialize + 'static,
    C: Codec,
{
    Box::pin(async move {
        let TaskContext { mut conn, args } = context;
        let outcome = call_once::<F, A, Fut, R, C>(function, args).await;
        let _ = conn.machine.finish(outcome);
        let _ = conn.flush().await;
    })
}

/// The task of `run`: answers calls, concurrently, until the parent ends.
pub(crate) fn run_task_loop<F, A, Fut, R, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = R> + 'static,
    R: Serialize + 'static,
    C: Codec,
{
    Box::pin(async move {
        let TaskContext { mut conn, .. } = context;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut input_open = true;
        loop {
            if !input_open && conn.machine.calls_in_flight() == 0 {
                break;
            }
            tokio::select! {
                event = conn.next_event(), if input_open => match event {
                    Ok(Some((WorkerEvent::Call { call, args }, _))) => {
                        let done = done_tx.clone();
                        tokio::task::spawn_local(async move {
                            let outcome = call_once::<F, A, Fut, R, C>(function, args).await;
                            let _ = done.send((call, outcome));
                        });
                    }
                    Ok(Some((WorkerEvent::End, _))) => input_open = false,
                    Ok(Some(_)) => {}
                    // The parent is gone: nobody to answer.
                    Ok(None) | Err(_) => return,
                },
                Some((call, outcome)) = done_rx.recv() => {
                    if conn.machine.reply(call, outcome).is_err() || conn.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = conn.machine.finish(Outcome::Ok(Vec::new()));
        let _ = conn.flush().await;
    })
}

/// The task of `process`: pumps messages both ways around the user's function.
pub(crate) fn process_task<F, In, Out, Fut, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(MessageStream<In, C>, MessageSender<Out, C>) -> Fut + Copy + 'static,
    In: DeserializeOwned + 'static,
    Out: Serialize + 'static,
    Fut: Future<Output = ()> + 'static,
    C: Codec,
{
    Box::pin(async move {
        let TaskContext { mut conn, .. } = context;
        let (in_tx, in_rx) = mpsc::channel::<Result<RawMessage, crate::Error>>(QUEUE_DEPTH);
        let (out_tx, mut out_rx) = mpsc::channel::<RawMessage>(QUEUE_DEPTH);
        let mut task = Box::pin(catching(function(
            MessageStream::new(in_rx),
            MessageSender::new(out_tx),
        )));
        let mut input = Some(in_tx);
        let mut held: Option<RawMessage> = None;
        let mut output_open = true;
        let outcome = loop {
            let step = {
                let input_sender = input.clone();
                let holding = held.is_some();
                tokio::select! {
                    result = &mut task => Step::Done(result),
                    permit = async { input_sender.expect("guarded").reserve_owned().await }, if holding && input.is_some() => Step::Room(permit.ok()),
                    event = conn.next_event(), if !holding && input.is_some() => Step::Event(event.ok().flatten()),
                    message = out_rx.recv(), if output_open => Step::Output(message),
                }
            };
            match step {
                Step::Done(result) => {
                    // Send what the function queued before it returned.
                    while let Ok(message) = out_rx.try_recv() {
                        if send(&mut conn, message).is_err() {
                            return;
                        }
                    }
                    break match result {
                        Ok(()) => Outcome::Ok(Vec::new()),
                        Err(report) => Outcome::Panic(report),
                    };
                }
                Step::Room(Some(permit)) => {
                    permit.send(Ok(held.take().expect("guarded")));
                }
                Step::Room(None) => {
                    // The function dropped its input stream.
                    input = None;
                    held = None;
                }
                Step::Event(Some((WorkerEvent::Data { payload, .. }, fds))) => {
                    held = Some((payload, fds))
                }
                Step::Event(Some((WorkerEvent::End, _)) | None) => input = None,
                Step::Event(Some(_)) => {}
                Step::Output(Some(message)) => {
                    if send(&mut conn, message).is_err() || conn.flush().await.is_err() {
                        return;
                    }
                }
                Step::Output(None) => {
                    output_open = false;
                    if conn.machine.end().is_err() || conn.flush().await.is_err() {
                        return;
                    }
                }
            }
        };
        let _ = conn.machine.finish(outcome);
        let _ = conn.flush().await;
    })
}

enum Step {
    Done(Result<(), PanicReport>),
    Room(Option<mpsc::OwnedPermit<Result<RawMessage, crate::Error>>>),
    Event(Option<(WorkerEvent, Vec<OwnedFd>)>),
    Output(Option<RawMessage>),
}

fn send(conn: &mut Conn<WorkerChannel>, (bytes, fds): RawMessage) -> Result<(), crate::Error> {
    let count = fds.len();
    conn.attach_fds(fds);
    conn.machine.send_data(bytes, count)?;
    Ok(())
}

/// The sealed boot entry of tokio workers.
pub(crate) fn boot_entry() -> Result<WireEntry, parallel_zygote::Error> {
    static BOOT: std::sync::OnceLock<WireEntry> = std::sync::OnceLock::new();
    if let Some(entry) = BOOT.get() {
        return Ok(*entry);
    }
    let entry = Entry::<WorkerContext>::new(boot)?.wire();
    Ok(*BOOT.get_or_init(|| entry))
}

/// Seals a task entry from a zero-sized driver closure.
pub(crate) fn task_entry<G>(driver: G) -> Result<WireEntry, parallel_zygote::Error>
where
    G: Fn(TaskContext) -> LocalTask + Copy + 'static,
{
    Ok(TaskEntry::new(driver)?.wire())
}

/// Encodes a Start frame's arguments.
pub(crate) fn start_args(runtime: WorkerRuntime, args: Vec<u8>) -> Vec<u8> {
    postcard::to_stdvec(&StartArgs { runtime, args }).expect("postcard encodes a plain struct")
}
