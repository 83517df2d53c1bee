//! `parallel-zygote`'s blocking client, with no async adapter: what the
//! library itself adds to fork + first byte.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use parallel_zygote::{Entry, SpawnOptions, WorkerContext, Zygote};
use tokio::io::AsyncWriteExt;

use super::raw::{RawKind, RawZygote};
use super::stats::{Budget, Sampler};

/// Worker boot: one byte back, no runtime.
fn write_byte(mut context: WorkerContext) {
    let _ = context.channel.write_all(&[1]);
}

/// Worker boot: builds a tokio current-thread runtime (as `parallel-tokio`'s
/// workers do), then writes one byte through it.
fn runtime_write_byte(context: WorkerContext) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let channel = context.channel;
        channel.set_nonblocking(true).expect("nonblocking");
        let mut stream = tokio::net::UnixStream::from_std(channel).expect("tokio stream");
        let _ = stream.write_all(&[1]).await;
    });
}

/// Reads the first byte, stops the clock, then waits for the end of stream
/// (the worker exited) so the next sample starts on a quiet machine.
fn first_byte(channel: &mut std::os::unix::net::UnixStream, start: Instant) -> Duration {
    let mut byte = [0u8];
    channel.read_exact(&mut byte).expect("first byte");
    let elapsed = start.elapsed();
    let mut rest = Vec::new();
    let _ = channel.read_to_end(&mut rest);
    elapsed
}

/// Raw floor, blocking parent: raw zygote fork (+ runtime) + first byte.
pub fn raw_floor(raw: &RawZygote, kind: RawKind, budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let start = Instant::now();
        let mut channel = raw.spawn(kind);
        sampler.record(first_byte(&mut channel, start));
    }
    sampler.finish()
}

/// `Zygote::spawn` (waits for the zygote's pid reply) + first byte.
pub fn spawn_first_byte(zygote: &Zygote, budget: Budget) -> Vec<Duration> {
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let start = Instant::now();
        let mut worker = zygote.spawn(write_byte).expect("spawn");
        let elapsed = first_byte(&mut worker.channel, start);
        worker.process.wait().expect("worker exit");
        sampler.record(elapsed);
    }
    sampler.finish()
}

/// `Zygote::spawn_entry` (zero round trip: the channel is usable at once, the
/// pid arrives later) + first byte, with or without a runtime in the worker.
pub fn spawn_entry_first_byte(zygote: &Zygote, runtime: bool, budget: Budget) -> Vec<Duration> {
    let boot = if runtime {
        Entry::<WorkerContext>::new(runtime_write_byte)
    } else {
        Entry::<WorkerContext>::new(write_byte)
    }
    .expect("entry")
    .wire();
    let mut sampler = Sampler::new(budget);
    while sampler.next() {
        let start = Instant::now();
        let (mut channel, pending) = zygote
            .spawn_entry(boot, SpawnOptions::default(), Vec::new())
            .expect("spawn_entry");
        let elapsed = first_byte(&mut channel, start);
        pending
            .wait()
            .expect("spawned")
            .wait()
            .expect("worker exit");
        sampler.record(elapsed);
    }
    sampler.finish()
}

/// Raw socketpair ping-pong, blocking parent, against a raw tokio echo worker.
pub fn raw_ping_pong(raw: &RawZygote, budget: Budget) -> Vec<Duration> {
    let (mut stream, _pid) = raw.spawn_ready(RawKind::Echo);
    let mut sampler = Sampler::new(budget);
    let mut reply = [0u8; 8];
    let mut n = 0u64;
    while sampler.next() {
        n += 1;
        let start = Instant::now();
        stream.write_all(&n.to_le_bytes()).expect("write");
        stream.read_exact(&mut reply).expect("read");
        sampler.record(start.elapsed());
    }
    sampler.finish()
}
