//! `spawn`: one function call in a fresh process, awaited like a `JoinHandle`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_channel::oneshot;
use parallel_proto::channel::Outcome;
use serde::de::DeserializeOwned;

use super::codec::{Codec, Decode};
use super::driver::{Held, OneShot};
use super::kill::Killer;
use super::run::outcome_into;
use super::runtime::{timeout, Runtime};
use super::Error;

/// The result of [`Parallel::spawn`](super::Parallel::spawn): a future of
/// the function's return value.
///
/// Unlike a runtime's task handle, dropping it before it resolves kills the
/// worker (cancellation means the work stops); call [`detach`](Self::detach)
/// to let it run on. The other handles' drops are compared in
/// [Dropping handles](crate::async_core#dropping-handles).
#[must_use = "dropping a JoinHandle kills its worker at once: await it, or call .detach()"]
pub struct JoinHandle<T, C: Codec, R: Runtime> {
    state: Result<Running<R>, Option<Error>>,
    /// The result's decoding, chosen by `spawn` (see [`Decode`]).
    decode: Decode<T>,
    _types: PhantomData<fn() -> T>,
    _codec: PhantomData<fn() -> (C, R)>,
}

struct Running<R: Runtime> {
    killer: Arc<Killer>,
    returned: oneshot::Receiver<Result<Outcome, Error>>,
    /// The driver, polled here until the outcome is in (see [`Held`]);
    /// `None` once its task has it.
    held: Option<Held<R>>,
    detached: bool,
    /// The type of the function's argument, for a decode failure there.
    arguments: &'static str,
}

impl<T: DeserializeOwned, C: Codec, R: Runtime> JoinHandle<T, C, R> {
    pub(crate) fn new(
        started: Result<OneShot<R>, Error>,
        arguments: &'static str,
        decode: Decode<T>,
    ) -> Self {
        JoinHandle {
            decode,
            state: match started {
                Ok(link) => Ok(Running {
                    killer: link.killer,
                    returned: link.returned,
                    held: link.held,
                    detached: false,
                    arguments,
                }),
                Err(error) => Err(Some(error)),
            },
            _types: PhantomData,
            _codec: PhantomData,
        }
    }

    /// Kills the worker (SIGKILL). The handle then resolves to
    /// [`Error::WorkerDied`] naming the signal.
    pub fn abort(&self) {
        if let Ok(running) = &self.state {
            running.killer.kill();
            // The driver's task reports the death, whether or not this
            // handle is polled again.
            running.killer.release();
        }
    }

    /// The worker's pid, once the zygote reported it.
    pub fn pid(&self) -> Option<i32> {
        self.state.as_ref().ok().and_then(|r| r.killer.pid())
    }

    /// Lets the worker finish even though this handle is dropped.
    pub fn detach(mut self) {
        if let Ok(running) = &mut self.state {
            running.detached = true;
        }
    }

    /// Waits at most `limit`; on timeout the worker is killed and
    /// [`Error::Timeout`] returned.
    ///
    /// # Errors
    /// As awaiting the handle, plus [`Error::Timeout`].
    pub async fn timeout(self, limit: Duration) -> Result<T, Error> {
        let pid = self.pid();
        match timeout::<R, _>(limit, self).await {
            Some(result) => result,
            // Dropping the handle killed the worker.
            None => {
                tracing::warn!(after = ?limit, pid, "spawn timed out: worker killed");
                Err(Error::Timeout { after: limit, pid })
            }
        }
    }
}

impl<T: DeserializeOwned, C: Codec, R: Runtime> Future for JoinHandle<T, C, R> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let decode = this.decode;
        let running = match &mut this.state {
            Ok(running) => running,
            Err(error) => return Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
        };
        if let Some(held) = &running.held {
            if held.poll(cx).is_ready() {
                running.held = None;
            }
        }
        let outcome = match Pin::new(&mut running.returned).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(outcome)) => outcome,
            Poll::Ready(Err(_)) => Err(running.killer.death(None)),
        };
        running.detached = true; // finished: nothing left to kill
        let pid = running.killer.pid();
        Poll::Ready(
            outcome.and_then(|outcome| outcome_into(outcome, decode, pid, None, running.arguments)),
        )
    }
}

impl<T, C: Codec, R: Runtime> Drop for JoinHandle<T, C, R> {
    fn drop(&mut self) {
        if let Ok(running) = &self.state {
            if !running.detached {
                running.killer.kill();
            }
            // Whatever is left of the driver's work (reaping the worker,
            // or reporting its death) is its task's now.
            running.killer.release();
        }
    }
}
