//! `spawn`: one function call in a fresh process, awaited like a `JoinHandle`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parallel_proto::channel::Outcome;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::codec::Codec;
use crate::parent::{outcome_into, Killer, Link};
use crate::Error;

/// The result of [`Parallel::spawn`](crate::Parallel::spawn): a future of
/// the function's return value.
///
/// Unlike `tokio::task::JoinHandle`, dropping it before it resolves kills
/// the worker (cancellation means the work stops); call
/// [`detach`](Self::detach) to let it run on.
pub struct JoinHandle<R, C: Codec> {
    state: Result<Running, Option<Error>>,
    _types: PhantomData<fn() -> (R, C)>,
}

struct Running {
    killer: Arc<Killer>,
    returned: oneshot::Receiver<Result<Outcome, Error>>,
    detached: bool,
}

impl<R: DeserializeOwned, C: Codec> JoinHandle<R, C> {
    pub(crate) fn new(started: Result<Link, Error>) -> Self {
        JoinHandle {
            state: match started {
                Ok(link) => Ok(Running {
                    killer: link.killer,
                    returned: link.returned,
                    detached: false,
                }),
                Err(error) => Err(Some(error)),
            },
            _types: PhantomData,
        }
    }

    /// Kills the worker (SIGKILL). The handle then resolves to
    /// [`Error::WorkerDied`] naming the signal.
    pub fn abort(&self) {
        if let Ok(running) = &self.state {
            running.killer.kill();
        }
    }

    /// The worker's pid, once the zygote reported it.
    pub fn pid(&self) -> Option<i32> {
        self.state.as_ref().ok().and_then(|r| r.killer.pid())
    }

    /// Lets the worker finish even if this handle is dropped.
    pub fn detach(mut self) {
        if let Ok(running) = &mut self.state {
            running.detached = true;
        }
    }

    /// Waits at most `limit`; on timeout the worker is killed and
    /// [`Error::Timeout`] returned.
    pub async fn timeout(self, limit: Duration) -> Result<R, Error> {
        let pid = self.pid();
        match tokio::time::timeout(limit, self).await {
            Ok(result) => result,
            // Dropping the handle killed the worker.
            Err(_) => Err(Error::Timeout { after: limit, pid }),
        }
    }
}

impl<R: DeserializeOwned, C: Codec> Future for JoinHandle<R, C> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let running = match &mut self.state {
            Ok(running) => running,
            Err(error) => return Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
        };
        let outcome = match Pin::new(&mut running.returned).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(outcome)) => outcome,
            Poll::Ready(Err(_)) => Err(running.killer.death(None)),
        };
        running.detached = true; // finished: nothing left to kill
        let pid = running.killer.pid();
        Poll::Ready(outcome.and_then(|outcome| outcome_into::<R, C>(outcome, pid, None)))
    }
}

impl<R, C: Codec> Drop for JoinHandle<R, C> {
    fn drop(&mut self) {
        if let Ok(running) = &self.state {
            if !running.detached {
                running.killer.kill();
            }
        }
    }
}
