//! A peer that breaks the zygote protocol gets the right `RemoteError`, and
//! it is sticky: every later input (and, on the client, every send) returns it.

mod support;

use parallel_proto::zygote::{
    ExitStatus, FromZygote, ServerEvent, SnapshotRequest, SpawnFailure, SpawnOptions, SpawnRequest,
    ToZygote, ZygoteClient, ZygoteServer, ZYGOTE_PROTOCOL_VERSION,
};
use parallel_proto::{EntryKey, Error, Limits, RemoteError, WireEntry};
use support::{assert_sticky, feed, first_error, frame};

fn entry() -> WireEntry {
    EntryKey::from_bytes([8; 16]).seal(0x80, 2)
}

fn to_zygote(message: ToZygote, fds: usize) -> Vec<u8> {
    frame(message.kind(), fds, &message.encode_payload())
}

fn from_zygote(message: FromZygote) -> Vec<u8> {
    frame(message.kind(), 0, &message.encode_payload())
}

fn client_hello() -> Vec<u8> {
    to_zygote(
        ToZygote::Hello {
            version: ZYGOTE_PROTOCOL_VERSION,
        },
        0,
    )
}

fn server_hello() -> Vec<u8> {
    from_zygote(FromZygote::Hello {
        version: ZYGOTE_PROTOCOL_VERSION,
        pid: 77,
    })
}

fn spawn(request: u64) -> ToZygote {
    ToZygote::Spawn(SpawnRequest {
        request,
        boot: entry(),
        options: SpawnOptions::default(),
    })
}

fn snapshot(request: u64) -> ToZygote {
    ToZygote::Snapshot(SnapshotRequest {
        request,
        init: entry(),
        args: Vec::new(),
        options: SpawnOptions::default(),
    })
}

fn spawned(request: u64, worker: u64) -> FromZygote {
    FromZygote::Spawned {
        request,
        worker,
        pid: 1000 + worker as i32,
    }
}

fn unexpected(message: &'static str, reason: &'static str) -> Error {
    Error::Remote(RemoteError::Unexpected { message, reason })
}

fn wrong_fds(message: &'static str, got: u8, expected: &'static str) -> Error {
    Error::Remote(RemoteError::WrongFdCount {
        message,
        got,
        expected,
    })
}

/// A client with one spawn (request 1) and one snapshot (request 2) pending
/// and, if `hello`, the zygote's hello received.
fn client(hello: bool) -> ZygoteClient {
    let mut client = ZygoteClient::new(Limits::default());
    assert_eq!(client.spawn(entry(), SpawnOptions::default(), 0), Ok(1));
    assert_eq!(
        client.snapshot(entry(), Vec::new(), SpawnOptions::default()),
        Ok(2)
    );
    if hello {
        feed(&mut client, &server_hello(), &[], &mut Vec::new()).unwrap();
    }
    client
}

fn server(hello: bool) -> ZygoteServer {
    let mut server = ZygoteServer::new(Limits::default(), 77);
    if hello {
        feed(&mut server, &client_hello(), &[], &mut Vec::new()).unwrap();
    }
    server
}

fn client_fails(mut client: ZygoteClient, bytes: &[u8], expected: Error) {
    assert_eq!(first_error(&mut client, bytes), expected);
    assert_sticky(&mut client, &expected);
    assert_eq!(
        client.spawn(entry(), SpawnOptions::default(), 0),
        Err(expected.clone())
    );
    assert_eq!(client.shutdown(), Err(expected));
}

fn server_fails(mut server: ZygoteServer, bytes: &[u8], expected: Error) {
    assert_eq!(first_error(&mut server, bytes), expected);
    assert_sticky(&mut server, &expected);
}

// ---- what the client refuses ----

#[test]
fn zygote_messages_before_its_hello_are_sticky_fatal() {
    client_fails(
        client(false),
        &from_zygote(spawned(1, 1)),
        unexpected("Spawned", "before the zygote's hello"),
    );
}

#[test]
fn wrong_version_from_zygote_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::VersionMismatch {
        protocol: "zygote",
        ours: ZYGOTE_PROTOCOL_VERSION,
        theirs: 7,
    });
    let hello = from_zygote(FromZygote::Hello { version: 7, pid: 1 });
    client_fails(client(false), &hello, expected);
}

#[test]
fn second_hello_from_zygote_is_sticky_fatal() {
    client_fails(client(true), &server_hello(), unexpected("Hello", "twice"));
}

#[test]
fn spawned_for_an_unknown_request_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "Spawned",
        what: "request",
        id: 9,
    });
    assert_eq!(
        expected.to_string(),
        "peer sent Spawned for unknown request 9"
    );
    client_fails(client(true), &from_zygote(spawned(9, 1)), expected);
}

#[test]
fn spawn_failed_for_an_unknown_request_is_sticky_fatal() {
    let failed = from_zygote(FromZygote::SpawnFailed {
        request: 3,
        failure: SpawnFailure {
            errno: None,
            message: String::new(),
        },
    });
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "SpawnFailed",
        what: "request",
        id: 3,
    });
    client_fails(client(true), &failed, expected);
}

#[test]
fn an_answer_of_the_wrong_kind_is_sticky_fatal() {
    // Request 2 is a snapshot; Spawned does not answer it.
    client_fails(
        client(true),
        &from_zygote(spawned(2, 1)),
        unexpected("Spawned", "in answer to a request of the other kind"),
    );
    let ready = from_zygote(FromZygote::SnapshotReady {
        request: 1,
        worker: 1,
        pid: 5,
    });
    client_fails(
        client(true),
        &ready,
        unexpected("SnapshotReady", "in answer to a request of the other kind"),
    );
}

#[test]
fn a_reused_live_worker_id_is_sticky_fatal() {
    let ready = from_zygote(FromZygote::SnapshotReady {
        request: 2,
        worker: 1,
        pid: 5,
    });
    client_fails(
        client(true),
        &[from_zygote(spawned(1, 1)), ready].concat(),
        unexpected("SnapshotReady", "reusing the id of a live worker"),
    );
}

#[test]
fn exited_for_an_unknown_worker_is_sticky_fatal() {
    let exited = from_zygote(FromZygote::Exited {
        worker: 4,
        status: ExitStatus::Exited(0),
    });
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "Exited",
        what: "worker",
        id: 4,
    });
    assert_eq!(
        expected.to_string(),
        "peer sent Exited for unknown worker 4"
    );
    client_fails(client(true), &exited, expected);
}

#[test]
fn exited_twice_for_one_worker_is_sticky_fatal() {
    let exited = from_zygote(FromZygote::Exited {
        worker: 1,
        status: ExitStatus::Exited(0),
    });
    let expected = Error::Remote(RemoteError::UnknownId {
        message: "Exited",
        what: "worker",
        id: 1,
    });
    let bytes = [from_zygote(spawned(1, 1)), exited.clone(), exited].concat();
    client_fails(client(true), &bytes, expected);
}

#[test]
fn any_fds_from_the_zygote_are_sticky_fatal() {
    let hello = FromZygote::Hello {
        version: ZYGOTE_PROTOCOL_VERSION,
        pid: 77,
    };
    let bytes = frame(hello.kind(), 1, &hello.encode_payload());
    client_fails(client(false), &bytes, wrong_fds("Hello", 1, "none"));
    let message = spawned(1, 1);
    let bytes = frame(message.kind(), 3, &message.encode_payload());
    client_fails(client(true), &bytes, wrong_fds("Spawned", 3, "none"));
}

#[test]
fn an_unknown_kind_from_the_zygote_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::UnknownKind {
        protocol: "zygote",
        kind: 0x01,
    });
    client_fails(client(true), &client_hello(), expected);
}

// ---- what the server refuses ----

#[test]
fn parent_requests_before_its_hello_are_sticky_fatal() {
    server_fails(
        server(false),
        &to_zygote(spawn(1), 1),
        unexpected("Spawn", "before the parent's hello"),
    );
    server_fails(
        server(false),
        &to_zygote(ToZygote::Shutdown, 0),
        unexpected("Shutdown", "before the parent's hello"),
    );
}

#[test]
fn wrong_version_from_the_parent_is_sticky_fatal() {
    let expected = Error::Remote(RemoteError::VersionMismatch {
        protocol: "zygote",
        ours: ZYGOTE_PROTOCOL_VERSION,
        theirs: 0,
    });
    assert_eq!(
        expected.to_string(),
        "peer speaks zygote protocol version 0, we speak 2; both sides must come from the same build"
    );
    server_fails(
        server(false),
        &to_zygote(ToZygote::Hello { version: 0 }, 0),
        expected,
    );
}

#[test]
fn second_hello_from_the_parent_is_sticky_fatal() {
    server_fails(server(true), &client_hello(), unexpected("Hello", "twice"));
}

#[test]
fn spawn_without_the_channel_fd_is_sticky_fatal() {
    server_fails(
        server(true),
        &to_zygote(spawn(1), 0),
        wrong_fds("Spawn", 0, "at least 1 (the worker's channel)"),
    );
}

#[test]
fn snapshot_without_exactly_one_fd_is_sticky_fatal() {
    let expected = "exactly 1 (the snapshot's control socket)";
    server_fails(
        server(true),
        &to_zygote(snapshot(1), 0),
        wrong_fds("Snapshot", 0, expected),
    );
    server_fails(
        server(true),
        &to_zygote(snapshot(1), 2),
        wrong_fds("Snapshot", 2, expected),
    );
}

#[test]
fn fds_on_hello_kill_or_shutdown_are_sticky_fatal() {
    server_fails(
        server(false),
        &to_zygote(
            ToZygote::Hello {
                version: ZYGOTE_PROTOCOL_VERSION,
            },
            1,
        ),
        wrong_fds("Hello", 1, "none"),
    );
    server_fails(
        server(true),
        &to_zygote(
            ToZygote::Kill {
                worker: 1,
                signal: 9,
            },
            1,
        ),
        wrong_fds("Kill", 1, "none"),
    );
    server_fails(
        server(true),
        &to_zygote(ToZygote::Shutdown, 2),
        wrong_fds("Shutdown", 2, "none"),
    );
}

#[test]
fn a_reused_pending_request_id_is_sticky_fatal() {
    let bytes = [to_zygote(spawn(4), 1), to_zygote(snapshot(4), 1)].concat();
    server_fails(
        server(true),
        &bytes,
        unexpected(
            "Snapshot",
            "reusing the id of a request still awaiting its reply",
        ),
    );
}

#[test]
fn a_request_id_may_be_reused_once_answered() {
    let mut server = server(true);
    let mut events = Vec::new();
    feed(&mut server, &to_zygote(spawn(4), 1), &[], &mut events).unwrap();
    server.spawned(4, 100).unwrap();
    feed(&mut server, &to_zygote(spawn(4), 2), &[], &mut events).unwrap();
    assert_eq!(events.len(), 2);
}

#[test]
fn a_malformed_spawn_is_sticky_fatal() {
    let mut payload = spawn(1).encode_payload();
    payload.truncate(5);
    let error = first_error(&mut server(true), &frame(0x02, 1, &payload));
    assert!(
        matches!(
            error,
            Error::Remote(RemoteError::Malformed {
                message: "Spawn",
                ..
            })
        ),
        "{error:?}"
    );
}

#[test]
fn any_message_after_shutdown_is_sticky_fatal() {
    let kill = ToZygote::Kill {
        worker: 1,
        signal: 9,
    };
    let cases = [
        (to_zygote(spawn(2), 1), "Spawn"),
        (to_zygote(snapshot(2), 1), "Snapshot"),
        (to_zygote(kill, 0), "Kill"),
        (to_zygote(ToZygote::Shutdown, 0), "Shutdown"),
        (client_hello(), "Hello"),
    ];
    for (after, name) in cases {
        // A worker is live and a request pending: Kill and Spawn would be
        // served before Shutdown.
        let mut server = server(true);
        let mut events = Vec::new();
        feed(&mut server, &to_zygote(spawn(1), 1), &[], &mut events).unwrap();
        server.spawned(1, 100).unwrap();
        feed(&mut server, &to_zygote(spawn(3), 1), &[], &mut events).unwrap();
        let bytes = [to_zygote(ToZygote::Shutdown, 0), after].concat();
        let mut input = &bytes[..];
        assert_eq!(
            server.handle_input(&mut input),
            Ok(Some(ServerEvent::Shutdown))
        );
        let expected = unexpected(name, "after Shutdown");
        assert_eq!(
            expected.to_string(),
            format!("peer sent {name} after Shutdown")
        );
        server_fails(server, input, expected);
    }
}

#[test]
fn spawn_kill_shutdown_spawn_is_sticky_fatal() {
    // The sequence from the issue: the last Spawn must not be served.
    let kill = ToZygote::Kill {
        worker: 1,
        signal: 15,
    };
    let mut server = server(true);
    let mut events = Vec::new();
    feed(&mut server, &to_zygote(spawn(1), 1), &[], &mut events).unwrap();
    server.spawned(1, 100).unwrap();
    let bytes = [
        to_zygote(kill, 0),
        to_zygote(ToZygote::Shutdown, 0),
        to_zygote(spawn(2), 1),
    ]
    .concat();
    let error = feed(&mut server, &bytes, &[], &mut events).unwrap_err();
    assert_eq!(error, unexpected("Spawn", "after Shutdown"));
    assert_eq!(events.len(), 3, "Spawn, Kill and Shutdown were served");
    assert!(matches!(events[2], ServerEvent::Shutdown));
    assert_sticky(&mut server, &error);
}
