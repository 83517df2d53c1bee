//! `process`: a typed, bidirectional channel to a worker.

use std::sync::Arc;

use futures_channel::oneshot;
use parallel_proto::channel::Outcome;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{Codec, Postcard};
use super::driver::Link;
use super::kill::Killer;
use super::messages::{MessageSender, MessageStream};
use super::run::outcome_into;
use super::Error;

/// A worker with a typed channel, from [`Parallel::process`](super::Parallel::process).
///
/// Dropping it whole ends the worker's input stream (a half close) and
/// discards what the worker sends; the worker runs until its function
/// returns. Keep the parts you need: each field's drop is described in
/// [Dropping handles](crate::async_core#dropping-handles).
#[must_use = "dropping a Process ends the worker's input and discards its output; the worker \
              runs on until its function returns"]
pub struct Process<In, Out, C: Codec> {
    /// Messages to the worker. Dropping every clone ends its input stream.
    pub sender: MessageSender<In, C>,
    /// Messages from the worker. Ends when the worker's function returns.
    pub stream: MessageStream<Out, C>,
    /// Kill the worker or wait for its function's end.
    pub handle: ProcessHandle,
}

/// Controls a `process` worker. Dropping it leaves the worker running
/// until its function returns (see
/// [Dropping handles](crate::async_core#dropping-handles)).
pub struct ProcessHandle {
    killer: Arc<Killer>,
    returned: oneshot::Receiver<Result<Outcome, Error>>,
}

impl<In: Serialize + Send + 'static, Out: DeserializeOwned + 'static, C: Codec>
    Process<In, Out, C>
{
    pub(crate) fn new<R: super::runtime::Runtime>(link: Link<R>) -> Self {
        Process {
            sender: MessageSender::new(link.outgoing, link.shared),
            stream: MessageStream::new(link.data),
            handle: ProcessHandle {
                killer: link.killer,
                returned: link.returned,
            },
        }
        // `link.commands` is dropped here: a process takes no calls, so only
        // the sender keeps the worker's input open.
    }
}

impl ProcessHandle {
    /// The worker's pid, once the zygote reported it.
    pub fn pid(&self) -> Option<i32> {
        self.killer.pid()
    }

    /// Kills the worker (SIGKILL).
    pub fn kill(&self) {
        self.killer.kill();
    }

    /// Waits until the worker's function returned.
    ///
    /// # Errors
    /// [`Error::Panicked`] or [`Error::WorkerDied`]: what ended it.
    pub async fn wait(self) -> Result<(), Error> {
        let outcome = self.returned.await;
        let pid = self.killer.pid();
        match outcome {
            Ok(Ok(Outcome::Ok(_))) => Ok(()),
            Ok(Ok(outcome)) => outcome_into(
                outcome,
                super::codec::decode_owned_value::<Postcard, ()>,
                pid,
                None,
                "()",
            ),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(self.killer.death(None)),
        }
    }
}
