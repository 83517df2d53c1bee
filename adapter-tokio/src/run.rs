//! `run`: a persistent worker; each call runs the function once more there.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::codec::Codec;
use crate::parent::{outcome_into, Command, KillOnDrop, Killer, Link};
use crate::Error;

/// A function running in a persistent worker process, from
/// [`Parallel::run`](crate::Parallel::run).
///
/// Cheap to clone. When the last clone is dropped the worker finishes the
/// calls in flight and exits.
pub struct Run<A, R, C: Codec> {
    commands: mpsc::Sender<Command>,
    killer: Arc<Killer>,
    _types: PhantomData<fn(A) -> (R, C)>,
}

impl<A, R, C: Codec> Clone for Run<A, R, C> {
    fn clone(&self) -> Self {
        Run {
            commands: self.commands.clone(),
            killer: Arc::clone(&self.killer),
            _types: PhantomData,
        }
    }
}

impl<A, R, C: Codec> std::fmt::Debug for Run<A, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("pid", &self.killer.pid())
            .finish()
    }
}

impl<A: Serialize, R: DeserializeOwned, C: Codec> Run<A, R, C> {
    pub(crate) fn new(link: Link) -> Self {
        // `run` sends no stream data: close that direction now, so that
        // dropping the last `Run` is what ends the worker's input.
        drop(link.outgoing);
        Run {
            commands: link.commands,
            killer: link.killer,
            _types: PhantomData,
        }
    }

    /// Calls the function in the worker.
    ///
    /// Dropping the returned future before it completes (cancellation, a
    /// `select!` that lost, a timeout) kills the worker: its other calls then
    /// fail with [`Error::WorkerDied`].
    pub async fn call(&self, argument: A) -> Result<R, Error> {
        let args = C::encode(&argument).map_err(Error::encode::<A>)?;
        let (reply, answer) = oneshot::channel();
        let mut guard = KillOnDrop::new(Arc::clone(&self.killer));
        if self
            .commands
            .send(Command::Call { args, reply })
            .await
            .is_err()
        {
            guard.disarm();
            return Err(self.killer.death(None));
        }
        let outcome = answer.await;
        guard.disarm();
        let pid = self.killer.pid();
        match outcome {
            Ok(Ok(outcome)) => outcome_into::<R, C>(outcome, pid, None),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(self.killer.death(None)),
        }
    }

    /// [`call`](Self::call) with a time limit; on timeout the worker is
    /// killed and [`Error::Timeout`] returned.
    pub async fn call_timeout(&self, argument: A, limit: Duration) -> Result<R, Error> {
        match tokio::time::timeout(limit, self.call(argument)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                after: limit,
                pid: self.killer.pid(),
            }),
        }
    }

    /// The worker's pid, once the zygote reported it.
    pub fn pid(&self) -> Option<i32> {
        self.killer.pid()
    }

    /// Kills the worker (SIGKILL); calls in flight fail with [`Error::WorkerDied`].
    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Whether the worker is known to be dead (its channel broke).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}
