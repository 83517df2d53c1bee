//! A hostile worker's references to shared buffers: a `Bytes` block that
//! names a memfd beside the message (the zero-copy form of a
//! `SharedBytesMut`), forged to point at bad memory, at no descriptor, or
//! malformed. Each is refused as that message's decode error, in words; the
//! stream goes on, and the parent keeps none of the descriptors.

use std::os::fd::OwnedFd;

use futures_util::StreamExt;
use libtest_mimic::Failed;
use parallel_zygote::async_core::{Bytes, Fd, MessageSender, MessageStream, Parallel, Runtime};

use super::bad_input::{error_chain, hostile_memfd, hostile_memfds_released};
use super::{check, report};

/// The wire form of a shared `Bytes` (pinned here as a golden form would
/// be): the mark, 1, the descriptor's index (u32 LE), the length (u64 LE).
fn reference(tag: u8, index: u32, len: u64) -> Vec<u8> {
    let mut block = b"\xffPARbuf\x00".to_vec();
    block.push(tag);
    block.extend_from_slice(&index.to_le_bytes());
    block.extend_from_slice(&len.to_le_bytes());
    block
}

/// Case `which`: its name, the descriptor and block the worker sends, and
/// what the parent's error must say.
fn case(which: u8) -> (&'static str, Option<OwnedFd>, Vec<u8>, &'static str) {
    match which {
        0 => (
            "an unsealed memfd",
            Some(hostile_memfd(4096, false)),
            reference(1, 0, 4096),
            "not sealed",
        ),
        1 => (
            "a memfd shorter than announced",
            Some(hostile_memfd(4096, true)),
            reference(1, 0, 8192),
            "the memfd holds 4096 bytes",
        ),
        2 => (
            "a pipe instead of a memfd",
            Some(nix::unistd::pipe().unwrap().0),
            reference(1, 0, 0),
            "not a sealable memfd",
        ),
        3 => (
            "a terabyte announced",
            Some(hostile_memfd(1, true)),
            reference(1, 0, 1 << 40),
            "past its limit",
        ),
        4 => (
            "no descriptor at the index",
            Some(hostile_memfd(4096, true)),
            reference(1, 7, 4096),
            "did not arrive with the message",
        ),
        _ => (
            "an unknown form",
            None,
            reference(9, 0, 0),
            "neither escaped data nor a memfd reference",
        ),
    }
}

const CASES: u8 = 6;

/// Sent by the worker as a raw block and a descriptor (a plain `Vec<u8>`
/// encodes as a `Bytes` block does, unescaped), read by the parent as a
/// `Bytes` and the descriptor's index.
struct Forged {
    block: Vec<u8>,
    fd: Option<Fd>,
    /// The parent's reading.
    received: Option<Bytes>,
}

impl serde::Serialize for Forged {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.block, &self.fd).serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Forged {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Forged, D::Error> {
        let (bytes, _index) = <(Bytes, Option<u32>)>::deserialize(deserializer)?;
        Ok(Forged {
            block: Vec::new(),
            fd: None,
            received: Some(bytes),
        })
    }
}

/// The worker: for each case asked, the forged block and descriptor, then
/// one good message.
async fn forger(mut input: MessageStream<u8>, output: MessageSender<Forged>) {
    let output = output.with_shared_memory_min(None);
    while let Some(Ok(which)) = input.recv().await {
        let (_, fd, block, _) = case(which);
        let forged = Forged {
            block,
            fd: fd.map(Fd),
            received: None,
        };
        output.send(forged).await.unwrap();
        let good = Forged {
            block: vec![1, 2, 3],
            fd: None,
            received: None,
        };
        output.send(good).await.unwrap();
    }
}

pub async fn forged_shared_buffers_from_a_hostile_worker<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let process = parallel.process(forger)?;
    let mut stream = process.stream;
    let mut figures = Vec::new();
    for which in 0..CASES {
        let (name, _, _, expected) = case(which);
        process.sender.send(which).await?;
        let text = match stream.next().await {
            Some(Err(error)) => error_chain(&error),
            Some(Ok(_)) => return Err(format!("case {name:?}: decoded").into()),
            None => return Err(format!("case {name:?}: the stream ended").into()),
        };
        check(
            text.contains("could not decode") && text.contains(expected),
            format!("case {name:?}: {text:?} does not say {expected:?}"),
        )?;
        let next = stream.next().await;
        let good = matches!(&next, Some(Ok(Forged { received: Some(bytes), .. })) if bytes[..] == [1, 2, 3]);
        check(
            good,
            format!("case {name:?}: the next message did not come intact"),
        )?;
        figures.push(format!("{name}: \"{text}\""));
    }
    drop(process.sender);
    while stream.next().await.is_some() {}
    process.handle.wait().await?;
    hostile_memfds_released::<R>().await?;
    report::<R>("bad_shared_buffers_on_a_worker_channel", &figures);
    Ok(())
}
