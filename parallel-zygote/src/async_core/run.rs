//! `run`: a persistent worker; each call runs the function once more there.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_channel::oneshot;
use parallel_proto::channel::Outcome;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{
    decode_owned_value, encode_owned_split, Codec, CodecError, Decode, SplitEncoding,
};
use std::any::type_name;

use super::driver::{CallFailed, Command, Link, Served, Submit};
use super::kill::{KillOnDrop, Killer};
use super::runtime::{timeout, Runtime};
use super::worker::WorkerFailure;
use super::Error;

/// A function running in a persistent worker process, from
/// [`Parallel::run`](super::Parallel::run).
///
/// Cheap to clone. When the last clone is dropped the worker finishes the
/// calls in flight and exits: a graceful end, so `Run` is not `#[must_use]`
/// (dropping a [`call`](Self::call) future is what kills the worker). See
/// what each handle's drop does in [Dropping handles](crate::async_core#dropping-handles).
pub struct Run<A, T, C: Codec, R: Runtime> {
    commands: async_channel::Sender<Command>,
    submit: Submit<R>,
    killer: Arc<Killer>,
    /// The argument's encoding and the result's decoding (see
    /// [`Values`]).
    values: Values<A, T>,
    _types: PhantomData<fn(A) -> T>,
    _codec: PhantomData<fn() -> (C, R)>,
}

/// How a [`Run`] encodes its argument and decodes its result, chosen by
/// [`Parallel::run`](super::Parallel::run), where both types are known to
/// be `'static`: a plain `Vec<u8>` then takes the byte path, and with the
/// default codec a large `Vec<u8>` or `ByteBuf` is neither copied out nor
/// in ([`encode_owned_split`], [`decode_owned_value`]), which `Run`'s own
/// bounds could not tell.
pub(crate) struct Values<A, T> {
    encode: fn(A) -> Result<SplitEncoding, CodecError>,
    decode: Decode<T>,
}

impl<A: Serialize + 'static, T: DeserializeOwned + 'static> Values<A, T> {
    /// The codec `C`'s.
    pub(crate) fn of<C: Codec>() -> Self {
        Values {
            encode: encode_owned_split::<C, A>,
            decode: decode_owned_value::<C, T>,
        }
    }
}

impl<A, T> Clone for Values<A, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, T> Copy for Values<A, T> {}

impl<A, T, C: Codec, R: Runtime> Clone for Run<A, T, C, R> {
    fn clone(&self) -> Self {
        Run {
            commands: self.commands.clone(),
            submit: self.submit.clone(),
            killer: Arc::clone(&self.killer),
            values: self.values,
            _types: PhantomData,
            _codec: PhantomData,
        }
    }
}

impl<A, T, C: Codec, R: Runtime> std::fmt::Debug for Run<A, T, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("pid", &self.killer.pid())
            .finish()
    }
}

impl<A: Serialize, T: DeserializeOwned, C: Codec, R: Runtime> Run<A, T, C, R> {
    pub(crate) fn new(link: Link<R>, values: Values<A, T>) -> Self {
        // `run` sends no stream data: close that direction now, so that
        // dropping the last `Run` is what ends the worker's input.
        drop(link.outgoing);
        Run {
            commands: link.commands,
            submit: link.submit,
            killer: link.killer,
            values,
            _types: PhantomData,
            _codec: PhantomData,
        }
    }

    /// Calls the function in the worker.
    ///
    /// Dropping the returned future before it completes (cancellation, a
    /// `select!` that lost, a timeout) kills the worker: its other calls then
    /// fail with [`Error::WorkerDied`].
    ///
    /// # Errors
    /// [`Error::Panicked`] when the function panicked (the worker survives),
    /// [`Error::WorkerDied`] when the worker died, [`Error::Codec`] when the
    /// argument or result could not be encoded or decoded.
    pub async fn call(&self, argument: A) -> Result<T, Error> {
        let args = (self.values.encode)(argument).map_err(Error::encode::<A>)?;
        let (call, outcome) = self
            .call_encoded(args)
            .await
            .map_err(|failed| failed.error)?;
        outcome_into(
            outcome,
            self.values.decode,
            self.killer.pid(),
            Some(call),
            type_name::<A>(),
        )
    }

    /// Sends encoded arguments and waits for the outcome, saying on failure
    /// whether the call reached the worker.
    pub(crate) async fn call_encoded(
        &self,
        args: SplitEncoding,
    ) -> Result<(u64, Outcome), CallFailed> {
        // The kill may not have landed yet (it goes through the zygote):
        // a call sent now could still be answered by a worker its caller
        // already killed.
        if self.killer.kill_requested() {
            return Err(CallFailed::undelivered(self.killer.killed_error().await));
        }
        let (reply, answer) = oneshot::channel();
        let mut guard = KillOnDrop::new(Arc::clone(&self.killer));
        // Written at once when the driver is idle; queued for it otherwise.
        if let Err(command) = self.submit.try_call(Command::Call { args, reply }) {
            if self.commands.send(command).await.is_err() {
                guard.disarm();
                return Err(CallFailed::undelivered(self.killer.death(None)));
            }
        }
        let mut answer = answer;
        let mut own_reply = None;
        let mut reading = Reading {
            submit: &self.submit,
            waker: None,
        };
        let outcome = std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = Pin::new(&mut answer).poll(cx) {
                reading.stop();
                return Poll::Ready(outcome);
            }
            // Read it here, on this thread, where the runtime says so; the
            // read may have brought this call its answer.
            let waiting = reading
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            match self.submit.poll_read(cx, waiting, &answer) {
                Served::No => {}
                Served::Answered(reply, outcome) => {
                    self.submit.stop_reading(cx.waker());
                    reading.waker = None;
                    own_reply = Some(reply);
                    return Poll::Ready(Ok(outcome));
                }
                Served::Reading => {
                    // Its answer may have come meanwhile, read by the
                    // driver or by another caller.
                    if let Poll::Ready(outcome) = Pin::new(&mut answer).poll(cx) {
                        self.submit.stop_reading(cx.waker());
                        reading.waker = None;
                        return Poll::Ready(outcome);
                    }
                    if !reading
                        .waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        reading.stop();
                        reading.waker = Some(cx.waker().clone());
                    }
                }
            }
            Poll::Pending
        })
        .await;
        // The receiver first: the sender of an answer handed back
        // (`Served::Answered`), dropped unsent before it, would wake this
        // task.
        drop(answer);
        drop(own_reply);
        guard.disarm();
        match outcome {
            Ok(result) => result,
            Err(_) => Err(CallFailed::undelivered(self.killer.death(None))),
        }
    }

    /// A handle on the call channel that does not keep it open: closing
    /// it through [`async_channel::WeakSender::upgrade`] ends the worker
    /// gracefully, as dropping every handle does.
    pub(crate) fn downgrade_commands(&self) -> async_channel::WeakSender<Command> {
        self.commands.downgrade()
    }

    /// The worker's kill and pid bookkeeping.
    pub(crate) fn killer(&self) -> &Arc<Killer> {
        &self.killer
    }

    /// Whether the worker is known to have exited, or been killed, even if
    /// its driver has not noticed yet.
    pub(crate) fn is_dead(&self) -> bool {
        self.commands.is_closed() || self.killer.is_dead()
    }

    /// [`call`](Self::call) with a time limit; on timeout the worker is
    /// killed and [`Error::Timeout`] returned.
    ///
    /// # Errors
    /// As [`call`](Self::call), plus [`Error::Timeout`].
    pub async fn call_timeout(&self, argument: A, limit: Duration) -> Result<T, Error> {
        match timeout::<R, _>(limit, self.call(argument)).await {
            Some(result) => result,
            None => {
                let pid = self.killer.pid();
                tracing::warn!(parent: self.killer.span(), after = ?limit, pid, "run call timed out: worker killed");
                Err(Error::Timeout { after: limit, pid })
            }
        }
    }

    /// The worker's pid, once the zygote reported it.
    pub fn pid(&self) -> Option<i32> {
        self.killer.pid()
    }

    /// Kills the worker (SIGKILL); calls in flight fail with
    /// [`Error::WorkerDied`], and so does every call made afterwards,
    /// without reaching the worker, once its death is known.
    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Whether the worker is known to be dead (its channel broke).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

/// A call's reading of its channel on its own thread (see
/// `Submit::poll_read`), stopped when the call has its answer or is
/// dropped: while the caller is the channel's reader, what the channel
/// registered for wakes it alone, so a call dropped without stopping would
/// leave the driver unwoken until its watchdog noticed.
struct Reading<'a, R: Runtime> {
    submit: &'a Submit<R>,
    /// The waker the caller read under, while it may still be the reader.
    waker: Option<std::task::Waker>,
}

impl<R: Runtime> Reading<'_, R> {
    fn stop(&mut self) {
        if let Some(waker) = self.waker.take() {
            self.submit.stop_reading(&waker);
        }
    }
}

impl<R: Runtime> Drop for Reading<'_, R> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// [`outcome_into`] for a pooled call of a function taking `A` and
/// returning `T` with codec `C` (a plain `Vec<u8>` decoded as a byte
/// string, see [`decode_owned_value`]); no call number, as in a pool it
/// would be the worker's, not the caller's.
pub(crate) fn pooled_outcome<A, T: DeserializeOwned + 'static, C: Codec>(
    outcome: Outcome,
    pid: Option<i32>,
) -> Result<T, Error> {
    outcome_into(
        outcome,
        decode_owned_value::<C, T>,
        pid,
        None,
        type_name::<A>(),
    )
}

/// Turns a worker's outcome into the caller's value; `arguments` names the
/// type of the arguments it was sent, for a decode failure in the worker.
pub(crate) fn outcome_into<T>(
    outcome: Outcome,
    decode: Decode<T>,
    pid: Option<i32>,
    call: Option<u64>,
    arguments: &'static str,
) -> Result<T, Error>
where
    T: DeserializeOwned,
{
    match outcome {
        Outcome::Ok(bytes) => decode(bytes).map_err(Error::decode::<T>),
        Outcome::Err(bytes) => Err(match WorkerFailure::from_bytes(&bytes) {
            WorkerFailure::DecodeArguments(message) => Error::Codec {
                action: "decode",
                type_name: arguments,
                in_worker: true,
                source: message.into(),
            },
            WorkerFailure::EncodeResult(message) => Error::Codec {
                action: "encode",
                type_name: std::any::type_name::<T>(),
                in_worker: true,
                source: message.into(),
            },
            WorkerFailure::Other(message) => Error::InWorker {
                pid: pid.unwrap_or(0),
                message,
            },
        }),
        Outcome::Panic(report) => Err(Error::Panicked {
            pid: pid.unwrap_or(0),
            call,
            report,
        }),
    }
}
