//! Proptest strategies for every message of both protocols.

use parallel_proto::channel::{FromWorker, Outcome, PanicLocation, PanicReport, ToWorker};
use parallel_proto::zygote::{
    ExitStatus, FromZygote, Resource, ResourceLimit, SnapshotRequest, SpawnFailure, SpawnOptions,
    SpawnRequest, ToZygote,
};
use parallel_proto::WireEntry;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Bytes of any length up to `max`, cheap to generate even when large: a
/// pattern from a seed rather than one strategy per byte.
pub fn bulk_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max, any::<u8>(), 1..=255u8).prop_map(|(len, start, step)| {
        (0..len)
            .map(|i| start.wrapping_add((i as u8).wrapping_mul(step)))
            .collect()
    })
}

/// Short bytes, each byte chosen (and shrunk) on its own.
pub fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

pub fn wire_entry() -> impl Strategy<Value = WireEntry> {
    (any::<i64>(), any::<[u8; 16]>()).prop_map(|(offset, tag)| WireEntry { offset, tag })
}

pub fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        Just(Resource::AddressSpace),
        Just(Resource::CpuTime),
        Just(Resource::FileSize),
        Just(Resource::OpenFiles),
        Just(Resource::CoreSize),
        Just(Resource::Data),
        Just(Resource::Stack),
        Just(Resource::LockedMemory),
    ]
}

pub fn spawn_options() -> impl Strategy<Value = SpawnOptions> {
    let rlimit =
        (resource(), any::<u64>(), any::<u64>()).prop_map(|(resource, soft, hard)| ResourceLimit {
            resource,
            soft,
            hard,
        });
    let basics = (option::of(".{0,20}"), vec(rlimit, 0..4)).prop_map(
        |(name, rlimits): (Option<String>, Vec<ResourceLimit>)| {
            let options = rlimits.iter().fold(SpawnOptions::default(), |options, l| {
                options.limit(l.resource, l.soft, l.hard)
            });
            match name {
                Some(name) => options.name(name),
                None => options,
            }
        },
    );
    // Protocol version 2: environment, working directory, identity, placement.
    let env_change = ("[A-Z_]{1,8}", option::of(".{0,12}"));
    (
        basics,
        any::<bool>(),
        vec(env_change, 0..4),
        option::of("/[a-z/]{0,16}"),
        (option::of(any::<u32>()), option::of(any::<u32>())),
        option::of(vec(0usize..4096, 0..4)),
        option::of(any::<i32>()),
    )
        .prop_map(|(options, clear, env, dir, (uid, gid), cpus, nice)| {
            let mut options = if clear { options.env_clear() } else { options };
            for (key, value) in env {
                options = match value {
                    Some(value) => options.env(key, value),
                    None => options.env_remove(key),
                };
            }
            if let Some(dir) = dir {
                options = options.current_dir(dir);
            }
            if let Some(uid) = uid {
                options = options.uid(uid);
            }
            if let Some(gid) = gid {
                options = options.gid(gid);
            }
            if let Some(cpus) = cpus {
                options = options.cpu_affinity(cpus);
            }
            match nice {
                Some(nice) => options.nice(nice),
                None => options,
            }
        })
}

pub fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Exited),
        (any::<i32>(), any::<bool>()).prop_map(|(signal, core_dumped)| ExitStatus::Signaled {
            signal,
            core_dumped
        }),
    ]
}

pub fn spawn_failure() -> impl Strategy<Value = SpawnFailure> {
    (option::of(any::<i32>()), ".{0,40}")
        .prop_map(|(errno, message)| SpawnFailure { errno, message })
}

pub fn to_zygote() -> impl Strategy<Value = ToZygote> {
    prop_oneof![
        any::<u32>().prop_map(|version| ToZygote::Hello { version }),
        (any::<u64>(), wire_entry(), spawn_options()).prop_map(|(request, boot, options)| {
            ToZygote::Spawn(SpawnRequest {
                request,
                boot,
                options,
            })
        }),
        (any::<u64>(), any::<i32>()).prop_map(|(worker, signal)| ToZygote::Kill { worker, signal }),
        (any::<u64>(), wire_entry(), small_bytes(), spawn_options()).prop_map(
            |(request, init, args, options)| ToZygote::Snapshot(SnapshotRequest {
                request,
                init,
                args,
                options,
            })
        ),
        Just(ToZygote::Shutdown),
    ]
}

pub fn from_zygote() -> impl Strategy<Value = FromZygote> {
    prop_oneof![
        (any::<u32>(), any::<i32>()).prop_map(|(version, pid)| FromZygote::Hello { version, pid }),
        (any::<u64>(), any::<u64>(), any::<i32>()).prop_map(|(request, worker, pid)| {
            FromZygote::Spawned {
                request,
                worker,
                pid,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<i32>()).prop_map(|(request, worker, pid)| {
            FromZygote::SnapshotReady {
                request,
                worker,
                pid,
            }
        }),
        (any::<u64>(), spawn_failure())
            .prop_map(|(request, failure)| FromZygote::SpawnFailed { request, failure }),
        (any::<u64>(), exit_status())
            .prop_map(|(worker, status)| FromZygote::Exited { worker, status }),
    ]
}

pub fn outcome() -> impl Strategy<Value = Outcome> {
    let location = (".{0,20}", any::<u32>(), any::<u32>())
        .prop_map(|(file, line, column)| PanicLocation { file, line, column });
    let report = (".{0,30}", option::of(location), option::of(".{0,40}")).prop_map(
        |(message, location, backtrace)| PanicReport {
            message,
            location,
            backtrace,
        },
    );
    prop_oneof![
        small_bytes().prop_map(Outcome::Ok),
        small_bytes().prop_map(Outcome::Err),
        report.prop_map(Outcome::Panic),
    ]
}

pub fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        any::<u32>().prop_map(|version| ToWorker::Hello { version }),
        (wire_entry(), small_bytes()).prop_map(|(task, args)| ToWorker::Start { task, args }),
        bulk_bytes(40_000).prop_map(ToWorker::Data),
        Just(ToWorker::End),
        (any::<u64>(), small_bytes()).prop_map(|(call, args)| ToWorker::Call { call, args }),
        any::<u64>().prop_map(|len| ToWorker::SharedData { len }),
    ]
}

pub fn from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        (any::<u32>(), any::<i32>()).prop_map(|(version, pid)| FromWorker::Hello { version, pid }),
        bulk_bytes(40_000).prop_map(FromWorker::Data),
        Just(FromWorker::End),
        (any::<u64>(), outcome()).prop_map(|(call, outcome)| FromWorker::Reply { call, outcome }),
        outcome().prop_map(FromWorker::Return),
        any::<u64>().prop_map(|len| FromWorker::SharedData { len }),
    ]
}

/// How a transport might cut a stream: one byte at a time, or runs of sizes.
pub fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![1]),
        4 => vec(1usize..300, 1..8),
        1 => vec(1usize..20_000, 1..4),
    ]
}
