//! Hostile clients against the real router and connection loop on an ephemeral loopback port
//! (issue #5, part 3): slowloris heads and bodies, idle-connection floods, pipelining and
//! half-closed connections, invalid UTF-8, huge bodies, huge query strings and URLs, and writers
//! racing a listing loop.
//!
//! Every case says in a comment what the server must answer and asserts it; where a request is
//! rejected, the store (entries and index high water) must be unchanged. The connection limits
//! are small (1 s header and body timeouts, 8 connections) so the whole file runs in a few
//! seconds. Every loop here is bounded both in count and in time, and all traffic is loopback.

#[path = "support/raw.rs"]
mod raw;
#[path = "support/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caskv::server::ConnLimits;
use caskv::Entry;
use raw::{answered, request, status_of, Conn};
use serde_json::{json, Value};
use server::{in_memory, Client, Server, CLIENT_TIMEOUT};

/// The server's header-read timeout in these tests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// The server's request-body timeout in these tests.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// The server's connection bound in these tests.
const MAX_CONNECTIONS: usize = 8;
/// A healthy client must be served within this while hostile ones do their worst.
const PROMPT: Duration = Duration::from_secs(1);
/// The pace of a trickling client: one byte per interval.
const DRIP: Duration = Duration::from_millis(200);
/// The default body limit (SPEC §3: 1 MiB).
const BODY_LIMIT: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The server under test.

impl Server {
    /// `support/server.rs`'s server with the small connection limits above.
    fn start() -> Server {
        Server::spawn(
            in_memory(),
            ConnLimits {
                max_connections: MAX_CONNECTIONS,
                header_timeout: HEADER_TIMEOUT,
                body_timeout: BODY_TIMEOUT,
                shutdown_grace: Duration::from_secs(1),
                ..ConnLimits::default()
            },
        )
    }

    /// `PUT /kv/{key}` that must succeed; returns its `modify_index`.
    fn set(&self, key: &str, value: &str) -> u64 {
        let (status, reply) =
            self.call("PUT", &format!("/kv/{key}"), Some(&json!({"value": value})));
        assert_eq!(status, 200, "PUT /kv/{key}: {reply}");
        reply["modify_index"].as_u64().expect("modify_index")
    }

    /// Everything a rejected request must leave alone: the entries and the index high water.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            entries: self.state.store.entries(),
            high_water: self.state.store.global_index().high_water(),
            services: self
                .state
                .registry
                .list()
                .into_iter()
                .map(|e| (e.service.name, e.modify_index))
                .collect(),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    entries: Vec<(String, Entry<caskv::server::KvValue>)>,
    high_water: u64,
    services: Vec<(String, u64)>,
}

// ---------------------------------------------------------------------------------------------
// Healthy and trickling clients, over raw connections (`support/raw.rs`).

/// A healthy client: `GET /health` on a fresh connection must be answered 200
/// `{"status":"ok"}`. Returns how long it took.
#[track_caller]
fn healthy(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let reply = answered(addr, request("GET", b"/health", None));
    let took = start.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"status": "ok"}));
    took
}

/// What a trickling client saw.
#[derive(Debug)]
struct Trickle {
    /// When (after connecting) the server closed the connection, if it did before the deadline.
    closed_after: Option<Duration>,
    /// What the server sent before it closed.
    received: Vec<u8>,
    /// Bytes the client dripped after its opening.
    dripped: usize,
}

/// Connects, sends `opening` at once, then one byte of `drip` per [`DRIP`] (repeating its last
/// byte) until the server closes the connection or `deadline` passes.
fn trickle(addr: SocketAddr, opening: &[u8], drip: &[u8], deadline: Duration) -> Trickle {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DRIP)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    let mut dripped = 0;
    let closed = |received, dripped| Trickle {
        closed_after: Some(start.elapsed()),
        received,
        dripped,
    };
    if stream.write_all(opening).is_err() {
        return closed(received, dripped);
    }
    let mut chunk = [0u8; 4096];
    // Bounded by the deadline; each turn waits at most one DRIP.
    while start.elapsed() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return closed(received, dripped),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let byte = drip[dripped.min(drip.len() - 1)];
                if stream.write_all(&[byte]).is_err() {
                    return closed(received, dripped);
                }
                dripped += 1;
            }
            Err(_) => return closed(received, dripped),
        }
    }
    Trickle {
        closed_after: None,
        received,
        dripped,
    }
}

/// The opening of a request head that never ends: a header line dripped byte by byte.
const SLOW_HEAD_OPENING: &[u8] = b"GET /kv/k HTTP/1.1\r\nHost: localhost\r\n";
const SLOW_HEAD_DRIP: &[u8] = b"X-Slowloris: a";
/// A complete head promising 1000 body bytes, and the body dripped byte by byte.
const SLOW_BODY_OPENING: &[u8] = b"PUT /kv/slow HTTP/1.1\r\nHost: localhost\r\n\
    Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
const SLOW_BODY_DRIP: &[u8] = b"{\"value\":\"a";

/// Runs `clients` trickling clients while a healthy client checks in every 100 ms; returns what
/// each trickler saw and the healthy client's slowest answer.
fn trickle_with_healthy_client(
    s: &Server,
    clients: Vec<(&'static [u8], &'static [u8])>,
    deadline: Duration,
) -> (Vec<Trickle>, Duration, usize) {
    let addr = s.addr;
    let tricklers: Vec<_> = clients
        .into_iter()
        .map(|(opening, drip)| std::thread::spawn(move || trickle(addr, opening, drip, deadline)))
        .collect();
    // Let the tricklers connect and start dripping before measuring.
    std::thread::sleep(DRIP);
    let mut slowest = Duration::ZERO;
    let mut checks = 0;
    let until = Instant::now() + HEADER_TIMEOUT.max(BODY_TIMEOUT) + Duration::from_millis(500);
    while Instant::now() < until && checks < 50 {
        slowest = slowest.max(healthy(addr));
        checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = tricklers.into_iter().map(|t| t.join().unwrap()).collect();
    (seen, slowest, checks)
}

// ---------------------------------------------------------------------------------------------
// Slow clients.

/// Slowloris heads (a request line, then one header byte every 200 ms, never ending the head)
/// from several connections. The server must serve a healthy client promptly (< 1 s) all along,
/// and must close each slow connection once its header timeout (1 s) passes, without a
/// response or with a 408; nothing reaches the store.
#[test]
fn slowloris_heads_are_cut_off_by_the_header_timeout() {
    let s = Server::start();
    s.set("k", "v");
    let before = s.snapshot();
    let clients = vec![(SLOW_HEAD_OPENING, SLOW_HEAD_DRIP); 4];
    let (seen, slowest, checks) =
        trickle_with_healthy_client(&s, clients, HEADER_TIMEOUT + Duration::from_secs(3));
    assert!(checks >= 5, "only {checks} healthy checks ran");
    assert!(
        slowest < PROMPT,
        "a healthy client waited {slowest:?} while slowloris heads trickled"
    );
    for t in &seen {
        let closed = t
            .closed_after
            .unwrap_or_else(|| panic!("a slowloris head was never cut off: {t:?}"));
        assert!(
            closed >= HEADER_TIMEOUT - DRIP && closed < HEADER_TIMEOUT + Duration::from_secs(2),
            "a slowloris head was cut off after {closed:?}, not at the header timeout"
        );
        if !t.received.is_empty() {
            assert_eq!(status_of(&t.received), Some(408), "{t:?}");
        }
    }
    assert_eq!(s.snapshot(), before);
    healthy(s.addr);
}

/// Slow bodies (a complete head with `Content-Length: 1000`, then one body byte every 200 ms)
/// from several connections. The server must answer each 408 (the SPEC's JSON) once its body
/// timeout (1 s) passes, and the `PUT` must not land.
#[test]
fn slow_bodies_are_answered_408_by_the_body_timeout() {
    let s = Server::start();
    let before = s.snapshot();
    let clients = vec![(SLOW_BODY_OPENING, SLOW_BODY_DRIP); 4];
    let (seen, slowest, _) =
        trickle_with_healthy_client(&s, clients, BODY_TIMEOUT + Duration::from_secs(3));
    assert!(slowest < PROMPT, "a healthy client waited {slowest:?}");
    for t in &seen {
        assert_eq!(
            status_of(&t.received),
            Some(408),
            "a slow body got no 408 (dripped {} bytes): {:?}",
            t.dripped,
            String::from_utf8_lossy(&t.received)
        );
        let closed = t
            .closed_after
            .expect("the server kept the connection open after its 408");
        assert!(
            closed < BODY_TIMEOUT + Duration::from_secs(2),
            "a slow body was answered after {closed:?}"
        );
        let text = String::from_utf8_lossy(&t.received);
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let body: Value = serde_json::from_str(body).expect("a JSON 408");
        assert_eq!(body["error"], json!("request timeout"));
    }
    assert_eq!(s.snapshot(), before);
}

/// Slow heads and slow bodies together, half the connection bound: whatever the server does
/// with them, a healthy client must be served promptly (< 1 s) all along and the slow `PUT`s
/// must not land.
#[test]
fn slow_clients_do_not_delay_a_healthy_client() {
    let s = Server::start();
    s.set("k", "v");
    let before = s.snapshot();
    let mut clients = vec![(SLOW_HEAD_OPENING, SLOW_HEAD_DRIP); MAX_CONNECTIONS / 4];
    clients.extend(vec![
        (SLOW_BODY_OPENING, SLOW_BODY_DRIP);
        MAX_CONNECTIONS / 4
    ]);
    let (seen, slowest, checks) =
        trickle_with_healthy_client(&s, clients, Duration::from_millis(2500));
    assert!(checks >= 5, "only {checks} healthy checks ran");
    assert!(
        slowest < PROMPT,
        "a healthy client waited {slowest:?} while slow clients trickled"
    );
    for t in &seen {
        if let Some(status) = status_of(&t.received) {
            assert!(
                status == 408 || status == 400,
                "a slow client was answered {status}: {t:?}"
            );
        }
    }
    assert_eq!(s.snapshot(), before);
}

// ---------------------------------------------------------------------------------------------
// Connection floods.

/// 50 idle connections against a bound of 8. The server must hold at most 8 at once: the rest
/// wait in the listen backlog, so a request sent on the 9th is not answered before one of the
/// first 8 is released; the idle ones must be released by the header timeout (1 s, not
/// earlier), 8 at a time; and once the flood is closed, a healthy client must be served
/// promptly, request after request. Nothing reaches the store.
#[test]
fn an_idle_flood_is_bounded_by_max_connections() {
    const FLOOD: usize = 50;
    let s = Server::start();
    s.set("k", "v");
    let before = s.snapshot();

    // Every header timer starts after t0, so no idle connection may be released before t0 + 1 s.
    let t0 = Instant::now();
    let mut flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(s.addr).expect("connect (the backlog holds the flood)"))
        .collect();
    // The first connection beyond the bound asks for /health at once.
    let probe = MAX_CONNECTIONS;
    flood[probe]
        .write_all(&request("GET", b"/health", None))
        .unwrap();
    for c in &flood {
        c.set_nonblocking(true).unwrap();
    }

    // Poll every connection every 20 ms: record when each first got data and when it was closed.
    let mut got_data: Vec<Option<Duration>> = vec![None; FLOOD];
    let mut data: Vec<Vec<u8>> = vec![Vec::new(); FLOOD];
    let mut closed: Vec<Option<Duration>> = vec![None; FLOOD];
    let mut first_close: Option<Duration> = None;
    let give_up = HEADER_TIMEOUT * 5;
    let mut chunk = [0u8; 4096];
    loop {
        let now = t0.elapsed();
        if let Some(t1) = first_close {
            // Until a little before the second round of header timeouts could end.
            if now > t1 + HEADER_TIMEOUT * 7 / 10 {
                break;
            }
        }
        assert!(
            now < give_up,
            "no idle connection was released within {give_up:?}: the header timeout does not \
             apply to a connection that sends nothing"
        );
        for (i, c) in flood.iter_mut().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            match c.read(&mut chunk) {
                Ok(0) => closed[i] = Some(now),
                Ok(n) => {
                    got_data[i].get_or_insert(now);
                    data[i].extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed[i] = Some(now),
            }
            if closed[i].is_some() && i != probe && first_close.is_none() {
                first_close = Some(now);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let released: Vec<Duration> = closed
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != probe)
        .filter_map(|(_, c)| *c)
        .collect();
    assert!(
        released.len() <= MAX_CONNECTIONS,
        "{} idle connections were released in the first round: the server held more than \
         {MAX_CONNECTIONS} at once ({released:?})",
        released.len()
    );
    let earliest = released.iter().min().unwrap();
    assert!(
        *earliest >= HEADER_TIMEOUT * 9 / 10,
        "an idle connection was released after {earliest:?}, before the header timeout"
    );
    // The probe was queued behind the first 8: served only once one of them was released.
    let answered_at = got_data[probe].expect("the queued request was answered");
    assert!(
        answered_at >= HEADER_TIMEOUT * 9 / 10,
        "the request on connection #{probe} was answered after {answered_at:?}, while \
         {MAX_CONNECTIONS} idle connections should have held every slot"
    );
    assert!(
        answered_at < first_close.unwrap() + PROMPT,
        "the queued request waited {answered_at:?}, long after a slot freed"
    );
    assert_eq!(status_of(&data[probe]), Some(200));

    // Close the flood: the server must drain its backlog and serve a healthy client promptly.
    drop(flood);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        slowest = slowest.max(healthy(s.addr));
    }
    assert!(
        slowest < PROMPT,
        "a healthy client waited {slowest:?} after the flood closed"
    );
    assert_eq!(s.snapshot(), before);
}

// ---------------------------------------------------------------------------------------------
// Pipelining and half-close.

/// Seven requests written in one write on one connection, a malformed body among them. The
/// server must answer all of them, in order: PUT 200, GET "1", PUT 400 (bad JSON), PUT 200,
/// GET with metadata "2", DELETE 200, GET 404, and the store ends empty.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start();
    let mut batch = Vec::new();
    batch.extend(request("PUT", b"/kv/p", Some(br#"{"value":"1"}"#)));
    batch.extend(request("GET", b"/kv/p", None));
    batch.extend(request("PUT", b"/kv/p", Some(b"{\"value\":")));
    batch.extend(request("PUT", b"/kv/p", Some(br#"{"value":"2"}"#)));
    batch.extend(request("GET", b"/kv/p?metadata=true", None));
    batch.extend(request("DELETE", b"/kv/p", None));
    batch.extend(request("GET", b"/kv/p", None));
    let mut conn = Conn::open(s.addr);
    conn.send(&batch);

    let mut next = || conn.reply().expect("a pipelined request went unanswered");
    let first = next();
    assert_eq!(first.status, 200, "{}", first.text());
    let set1 = first.json()["modify_index"].as_u64().unwrap();
    let r = next();
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"key": "p", "value": "1"}))
    );
    next().assert_json_error(400);
    let r = next();
    assert_eq!(r.status, 200, "{}", r.text());
    let set2 = r.json()["modify_index"].as_u64().unwrap();
    assert!(set2 > set1);
    let r = next();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], json!("2"));
    assert_eq!(r.json()["modify_index"], json!(set2));
    assert_eq!(r.json()["create_index"], json!(set1));
    let r = next();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["modify_index"].as_u64().unwrap() > set2);
    next().assert_json_error(404);
    assert!(s.state.store.entries().is_empty());
    // The connection is still usable afterwards.
    conn.send(&request("GET", b"/health", None));
    assert_eq!(conn.reply().expect("answered").status, 200);
}

/// A client that shuts down its write side right after a complete request (a GET, and a PUT
/// with a body). The server must still answer it (200), apply the PUT, and then close.
#[test]
fn a_half_closed_connection_still_gets_its_response() {
    let s = Server::start();
    for (req, expect) in [
        (
            request("PUT", b"/kv/half", Some(br#"{"value":"closed"}"#)),
            "key set",
        ),
        (request("GET", b"/kv/half", None), "closed"),
    ] {
        let mut conn = Conn::open(s.addr);
        conn.send(&req);
        conn.stream.shutdown(Shutdown::Write).unwrap();
        let reply = conn
            .reply()
            .expect("no response after the client half-closed");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains(expect), "{}", reply.text());
        assert!(
            conn.closed_by_server(),
            "the server kept the connection open"
        );
    }
    let entry = s
        .state
        .store
        .get("half")
        .expect("the half-closed PUT landed");
    assert_eq!(entry.value.as_str(), Some("closed"));
}

/// Requests whose body the handler never reads, the body's end arriving 50 ms after the head: a
/// heartbeat `PUT` and a `DELETE` with an empty chunked body (what ureq sends for a bodiless
/// `PUT`), and `GET /health` with a 5-byte body. The server must answer as usual (200, 404,
/// 200), and then either serve the next request on the same connection or say
/// `Connection: close` in that answer: a keep-alive connection closed silently after a complete
/// exchange makes a pooling client's next request fail ("peer disconnected").
#[test]
fn an_unread_request_body_does_not_silently_end_keep_alive() {
    let s = Server::start();
    let registered = s.call(
        "POST",
        "/services",
        Some(&json!({"name": "svc", "address": "10.0.0.1", "port": 80})),
    );
    assert_eq!(registered.0, 200, "{}", registered.1);
    for (head, tail, status) in [
        (
            "PUT /services/svc/heartbeat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0\r\n\r\n",
            200,
        ),
        (
            "DELETE /kv/absent HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            "0\r\n\r\n",
            404,
        ),
        (
            "GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
            "hello",
            200,
        ),
    ] {
        let mut conn = Conn::open(s.addr);
        conn.send(head.as_bytes());
        std::thread::sleep(Duration::from_millis(50));
        conn.send(tail.as_bytes());
        let reply = conn.reply().expect("answered");
        assert_eq!(reply.status, status, "{head:?}: {}", reply.text());
        if reply.close {
            continue;
        }
        // The connection was left open for reuse: the next request must be served on it.
        let _ = conn.stream.write_all(&request("GET", b"/health", None));
        let next = conn.reply();
        assert!(
            next.as_ref().is_some_and(|r| r.status == 200),
            "{head:?}: the kept-alive connection was closed without Connection: close"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid input.

/// Invalid UTF-8 in paths (raw bytes, `%FF`-style escapes, a truncated sequence), in query
/// values, and in JSON bodies (raw bytes and a lone surrogate escape). The server must answer
/// 400 each time: the SPEC's JSON where the router sees the request, an empty 400 where hyper
/// refuses the request line itself. No panic (every request is answered), the store unchanged.
#[test]
fn invalid_utf8_is_a_400_and_changes_nothing() {
    let s = Server::start();
    s.set("k", "v");
    let registered = s.call(
        "POST",
        "/services",
        Some(&json!({"name": "svc", "address": "10.0.0.1", "port": 80})),
    );
    assert_eq!(registered.0, 200, "{}", registered.1);
    let before = s.snapshot();

    // Raw bytes that no URI may hold: refused before routing.
    for target in [
        &b"/kv/\xff\xfe"[..],
        b"/kv/k\x80",
        b"/kv/?prefix=\xff",
        b"/services/\xc3",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let body = (method == "PUT").then_some(&br#"{"value":"x"}"#[..]);
            let reply = answered(s.addr, request(method, target, body));
            reply.assert_rejected(400);
        }
    }

    // Escapes that decode to invalid UTF-8: the router sees them.
    let value = &br#"{"value":"x"}"#[..];
    for (method, target, body) in [
        ("GET", &b"/kv/%FF"[..], None),
        ("GET", b"/kv/%FF?metadata=true", None),
        ("PUT", b"/kv/%FF%FE", Some(value)),
        ("PUT", b"/kv/ok%C3", Some(value)),
        ("DELETE", b"/kv/%FF", None),
        ("DELETE", b"/kv/k%E2%82", None),
        ("GET", b"/services/%FF", None),
        ("DELETE", b"/services/%FF", None),
        ("PUT", b"/services/%FF/heartbeat", None),
        ("PUT", b"/heartbeat/%C0%AF", None),
        ("DELETE", b"/kv/k?cas=%FF", None),
        ("GET", b"/kv/k?metadata=%FF", None),
    ] {
        let reply = answered(s.addr, request(method, target, body));
        reply.assert_json_error(400);
    }

    // An escaped prefix that is not UTF-8: a listing (nothing matches) or a 400, never a 5xx.
    let reply = answered(s.addr, request("GET", b"/kv/?prefix=%FF", None));
    if reply.status == 200 {
        assert_eq!(reply.json(), json!([]));
    } else {
        reply.assert_json_error(400);
    }

    // Invalid UTF-8 inside JSON bodies.
    for (method, target, body) in [
        ("PUT", &b"/kv/k"[..], &b"{\"value\":\"\xff\"}"[..]),
        ("PUT", b"/kv/k", b"{\"value\":\"ok\xc3\"}"),
        ("PUT", b"/kv/k", br#"{"value":"\ud800"}"#),
        ("PUT", b"/kv/k", b"{\"value\":\"v\",\"cas\":1\xff}"),
        ("POST", b"/batch/kv/set", b"{\"items\":{\"\xff\":\"v\"}}"),
        (
            "POST",
            b"/batch/kv/set",
            b"{\"items\":{\"k\":\"\xfe\xff\"}}",
        ),
        ("POST", b"/batch/kv/get", b"{\"keys\":[\"\xff\"]}"),
        ("POST", b"/batch/kv/delete", b"{\"keys\":[\"k\xc3\"]}"),
        (
            "POST",
            b"/batch/kv/set-cas",
            b"{\"items\":{\"k\":\"\xff\"},\"expected_indices\":{\"k\":1}}",
        ),
        (
            "POST",
            b"/batch/kv/delete-cas",
            b"{\"keys\":[\"k\"],\"expected_indices\":{\"k\xff\":1}}",
        ),
        (
            "POST",
            b"/services",
            b"{\"name\":\"\xff\",\"address\":\"a\",\"port\":1}",
        ),
        (
            "PUT",
            b"/register",
            b"{\"name\":\"svc\",\"address\":\"\xc0\x80\",\"port\":1}",
        ),
    ] {
        let reply = answered(s.addr, request(method, target, Some(body)));
        reply.assert_json_error(400);
    }

    assert_eq!(s.snapshot(), before, "a rejected request changed the store");
    healthy(s.addr);
}

/// A 100 MiB body declared by `Content-Length`. The server must answer 413 (JSON) at once,
/// without reading it: the answer must come while the client has sent only 64 KiB of it and
/// then waits (a server that buffered the body would wait forever), within 1 s. Store unchanged.
#[test]
fn a_huge_declared_body_is_refused_at_once() {
    const DECLARED: usize = 100 * 1024 * 1024;
    const SENT: usize = 64 * 1024;
    let s = Server::start();
    s.set("k", "v");
    let before = s.snapshot();
    for (method, path, opening) in [
        ("PUT", "/kv/big", &br#"{"value":""#[..]),
        ("POST", "/batch/kv/set", br#"{"items":{"big":""#),
        ("POST", "/services", br#"{"name":"big","address":""#),
    ] {
        let mut conn = Conn::open(s.addr);
        conn.stream.set_read_timeout(Some(PROMPT)).unwrap();
        let start = Instant::now();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {DECLARED}\r\n\r\n"
        )
        .into_bytes();
        head.extend_from_slice(opening);
        head.resize(head.len() + SENT - opening.len(), b'a');
        // The server may already have answered and closed: a failed write is fine.
        let _ = conn.stream.write_all(&head);
        let reply = conn.reply().unwrap_or_else(|| {
            panic!(
                "{method} {path}: closed without a 413 after {:?}",
                start.elapsed()
            )
        });
        let took = start.elapsed();
        reply.assert_json_error(413);
        assert!(took < PROMPT, "{method} {path}: the 413 took {took:?}");
    }
    assert_eq!(s.snapshot(), before);
    healthy(s.addr);
}

/// A chunked 100 MiB body with no `Content-Length`, written as fast as the server takes it. The
/// server must answer 413 (JSON) after reading at most about the body limit (1 MiB): the client
/// must get the answer, or find its writes failing, long before it has sent the whole body, and
/// within a bounded time. Store unchanged.
#[test]
fn a_huge_chunked_body_is_cut_off_at_the_body_limit() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    // The limit, plus what loopback socket buffers can absorb on both sides, with room to spare.
    const MOST_SENT: usize = 32 * 1024 * 1024;
    let s = Server::start();
    s.set("k", "v");
    let before = s.snapshot();

    let mut conn = Conn::open(s.addr);
    let mut writer = conn.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let sender = {
        let answered = answered.clone();
        let sent = sent.clone();
        std::thread::spawn(move || {
            let head =
                "PUT /kv/big HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
            chunk.extend_from_slice(br#"{"value":""#);
            chunk.resize(chunk.len() + CHUNK - 10, b'a');
            chunk.extend_from_slice(b"\r\n");
            // Bounded: at most TOTAL bytes, and no longer than the client's patience.
            while sent.load(Ordering::SeqCst) < TOTAL
                && !answered.load(Ordering::SeqCst)
                && start.elapsed() < CLIENT_TIMEOUT
            {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
                sent.fetch_add(CHUNK, Ordering::SeqCst);
            }
        })
    };
    let reply = conn.reply();
    let sent_at_answer = sent.load(Ordering::SeqCst);
    answered.store(true, Ordering::SeqCst);
    let took = start.elapsed();
    let _ = conn.stream.shutdown(Shutdown::Both);
    sender.join().unwrap();
    let reply = reply.expect("the chunked upload was closed without a 413");
    reply.assert_json_error(413);
    assert!(
        sent_at_answer < MOST_SENT,
        "the 413 came after the client had sent {sent_at_answer} bytes (limit {BODY_LIMIT})"
    );
    assert!(
        sent.load(Ordering::SeqCst) < MOST_SENT,
        "the server kept reading after its 413"
    );
    assert!(took < Duration::from_secs(5), "the 413 took {took:?}");
    eprintln!(
        "chunked upload: 413 after {took:?}, the client having sent {sent_at_answer} bytes \
         ({} when its writer stopped)",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(s.snapshot(), before);
    healthy(s.addr);
}

/// Query strings with 5,000 parameters on `GET /kv/k`, `GET /kv/?prefix=`, `DELETE /kv/k`: the
/// server must answer as for the parameters that matter (200 / 404 / 400 for a bad `cas`), no
/// hang or panic. A 100 KiB path, a 100 KiB query value, and a request head with 200 headers
/// must be refused with a 4xx promptly (< 1 s). Store unchanged.
#[test]
fn thousands_of_parameters_and_very_long_urls() {
    let s = Server::start();
    let index = s.set("k", "v");
    s.set("k2", "v2");
    s.set("other", "o");
    let before = s.snapshot();
    let same: String = "&a=b".repeat(5000);
    let distinct: String = (0..5000).map(|i| format!("&p{i}={i}")).collect();

    let timed = |method: &str, target: String| {
        let start = Instant::now();
        let reply = answered(s.addr, request(method, target.as_bytes(), None));
        let took = start.elapsed();
        assert!(
            took < PROMPT,
            "{method} {}…: took {took:?}",
            &target[..target.len().min(40)]
        );
        reply
    };

    // 200: the key exists; the other parameters are ignored.
    let r = timed("GET", format!("/kv/k?x=1{same}"));
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"key": "k", "value": "v"}))
    );
    let r = timed("GET", format!("/kv/k?metadata=true{distinct}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["modify_index"], json!(index));
    // 404: absent.
    timed("GET", format!("/kv/absent?x=1{distinct}")).assert_json_error(404);
    // 200: the prefix filters, the rest are ignored.
    let r = timed("GET", format!("/kv/?prefix=k{same}"));
    assert_eq!((r.status, r.json()), (200, json!(["k", "k2"])));
    let r = timed("GET", format!("/kv/?prefix=o{distinct}"));
    assert_eq!((r.status, r.json()), (200, json!(["other"])));
    let r = timed("GET", format!("/kv/?{}", &same[1..]));
    assert_eq!((r.status, r.json()), (200, json!(["k", "k2", "other"])));
    // The last `prefix` wins; 5,000 of them are just as fine.
    let r = timed(
        "GET",
        format!("/kv/?prefix=zzz{}&prefix=k2", "&prefix=o".repeat(5000)),
    );
    assert_eq!((r.status, r.json()), (200, json!(["k2"])));
    // 400: a bad cas among thousands, and nothing is deleted.
    timed("DELETE", format!("/kv/k?cas=abc{same}")).assert_json_error(400);
    timed("DELETE", format!("/kv/k?{}&cas=-1", &distinct[1..])).assert_json_error(400);
    // A listing of services with a query string it does not read.
    assert_eq!(
        timed("GET", format!("/services?{}", &same[1..])).status,
        200
    );

    // 4xx, promptly: a 100 KiB path, a 100 KiB query value, a 100 KiB key in a PUT.
    let long = "a".repeat(100 * 1024);
    for (method, target) in [
        ("GET", format!("/kv/{long}")),
        ("GET", format!("/kv/?prefix={long}")),
        ("DELETE", format!("/kv/k?cas={long}")),
    ] {
        let r = timed(method, target);
        assert!(
            (400..500).contains(&r.status),
            "a 100 KiB URL was answered {}",
            r.status
        );
    }
    let start = Instant::now();
    let r = answered(
        s.addr,
        request(
            "PUT",
            format!("/kv/{long}").as_bytes(),
            Some(br#"{"value":"v"}"#),
        ),
    );
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert!(start.elapsed() < PROMPT);
    // 4xx (431): more headers than the server parses.
    let mut many = b"GET /kv/k HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let start = Instant::now();
    let r = answered(s.addr, many);
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert!(start.elapsed() < PROMPT);

    assert_eq!(s.snapshot(), before);
    healthy(s.addr);
}

// ---------------------------------------------------------------------------------------------
// Writers racing a listing.

/// One successful write, as its client saw it.
#[derive(Debug, Clone)]
enum Landed {
    /// A batch set-cas that wrote `value` to `key` at `index`, expecting `expected` (0: absent).
    SetCas {
        index: u64,
        expected: u64,
        value: String,
    },
    /// A delete of the key at `index`.
    Delete { index: u64 },
}

impl Landed {
    fn index(&self) -> u64 {
        match self {
            Landed::SetCas { index, .. } | Landed::Delete { index } => *index,
        }
    }
}

/// Two threads doing batch CAS (batch get, then set-cas with the indices read, 0 where absent)
/// and one deleting, all over the same 5 keys, while another lists `GET /kv/` and
/// `GET /kv/?prefix=race/` in a loop. The server must answer every listing 200 with a valid,
/// strictly sorted JSON array that always holds the 10 keys no one touches; the writers only
/// 200, 404 or 409; never a 5xx. Afterwards, the successful writes, ordered by their indices,
/// must replay into exactly the final store: every set-cas found the state it expected, every
/// delete found the key present, the counts of creates and deletes match what is left, and the
/// indices are distinct and account for the whole high-water advance.
#[test]
fn deletes_and_batch_cas_race_a_listing_loop() {
    const KEYS: usize = 5;
    const ROUNDS: usize = 400;
    let budget = Duration::from_secs(4);
    let s = Server::start();
    let statics: Vec<String> = (0..10).map(|i| format!("static/{i}")).collect();
    for k in &statics {
        s.set(k, "fixed");
    }
    let race: Vec<String> = (0..KEYS).map(|i| format!("race/{i}")).collect();
    let start_high = s.state.store.global_index().high_water();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let base = s.base.clone();

    let cas_writer = |id: usize| {
        let (base, race) = (base.clone(), race.clone());
        std::thread::spawn(move || {
            let client = Client::new(&base);
            let mut rng = fastrand::Rng::with_seed(id as u64);
            let mut done: Vec<(String, Landed)> = Vec::new();
            let mut batches: Vec<u64> = Vec::new();
            let mut failed = 0usize;
            for round in 0..ROUNDS {
                if start.elapsed() > budget {
                    break;
                }
                let mut keys: Vec<String> = race.clone();
                rng.shuffle(&mut keys);
                keys.truncate(rng.usize(1..=3));
                let (status, read) =
                    client.call("POST", "/batch/kv/get", Some(&json!({"keys": keys})));
                assert_eq!(status, 200, "batch get: {read}");
                let mut items = serde_json::Map::new();
                let mut expected = serde_json::Map::new();
                let value = format!("w{id}-{round}");
                for k in &keys {
                    let index = read["found"][k]["modify_index"].as_u64().unwrap_or(0);
                    items.insert(k.clone(), json!(value));
                    expected.insert(k.clone(), json!(index));
                }
                let (status, reply) = client.call(
                    "POST",
                    "/batch/kv/set-cas",
                    Some(&json!({"items": items, "expected_indices": expected})),
                );
                match status {
                    200 => {
                        // One index for the whole batch.
                        let index = reply["new_indices"][&keys[0]].as_u64().expect("new index");
                        batches.push(index);
                        for k in &keys {
                            assert_eq!(reply["new_indices"][k], json!(index), "{reply}");
                            done.push((
                                k.clone(),
                                Landed::SetCas {
                                    index,
                                    expected: expected[k].as_u64().unwrap(),
                                    value: value.clone(),
                                },
                            ));
                        }
                    }
                    404 | 409 => failed += 1,
                    other => panic!("set-cas answered {other}: {reply}"),
                }
            }
            (done, batches, failed)
        })
    };
    let writers = vec![cas_writer(1), cas_writer(2)];
    let deleter = {
        let (base, race) = (base.clone(), race.clone());
        std::thread::spawn(move || {
            let client = Client::new(&base);
            let mut rng = fastrand::Rng::with_seed(99);
            let mut done: Vec<(String, Landed)> = Vec::new();
            let mut absent = 0usize;
            for _ in 0..ROUNDS {
                if start.elapsed() > budget {
                    break;
                }
                let k = &race[rng.usize(..KEYS)];
                let (status, reply) = client.call("DELETE", &format!("/kv/{k}"), None);
                match status {
                    200 => done.push((
                        k.clone(),
                        Landed::Delete {
                            index: reply["modify_index"].as_u64().expect("index"),
                        },
                    )),
                    404 => absent += 1,
                    other => panic!("delete answered {other}: {reply}"),
                }
            }
            (done, absent)
        })
    };
    let lister = {
        let (base, stop, statics, race) =
            (base.clone(), stop.clone(), statics.clone(), race.clone());
        std::thread::spawn(move || {
            let client = Client::new(&base);
            let mut listings = 0usize;
            // Bounded by count and by time; the writers' end stops it early.
            for round in 0..5 * ROUNDS {
                if stop.load(Ordering::SeqCst) || start.elapsed() > budget * 2 {
                    break;
                }
                let path = if round % 2 == 0 {
                    "/kv/"
                } else {
                    "/kv/?prefix=race/"
                };
                let (status, list) = client.call("GET", path, None);
                assert_eq!(status, 200, "GET {path}: {list}");
                let keys: Vec<&str> = list
                    .as_array()
                    .unwrap_or_else(|| panic!("GET {path}: not an array: {list}"))
                    .iter()
                    .map(|k| k.as_str().expect("a string key"))
                    .collect();
                assert!(
                    keys.windows(2).all(|w| w[0] < w[1]),
                    "GET {path}: not strictly sorted: {keys:?}"
                );
                for k in &keys {
                    assert!(
                        statics.iter().chain(&race).any(|x| x == k),
                        "GET {path}: a key no one wrote: {k}"
                    );
                }
                if round % 2 == 0 {
                    for k in &statics {
                        assert!(keys.contains(&k.as_str()), "GET /kv/ lost {k}: {keys:?}");
                    }
                }
                listings += 1;
            }
            listings
        })
    };

    let mut writes: Vec<(String, Landed)> = Vec::new();
    let mut batch_indices: Vec<u64> = Vec::new();
    let mut cas_failed = 0;
    for w in writers {
        let (done, batches, failed) = w.join().expect("a CAS writer failed");
        writes.extend(done);
        batch_indices.extend(batches);
        cas_failed += failed;
    }
    let (deletes, absent) = deleter.join().expect("the deleter failed");
    writes.extend(deletes.iter().cloned());
    stop.store(true, Ordering::SeqCst);
    let listings = lister.join().expect("the lister failed");
    assert!(listings > 10, "only {listings} listings ran");

    // Every successful request took its own index (a batch one for all its keys). The high
    // water may run ahead of them: the core burns an index when a single-key write loses a race
    // on its cell and retries (`Store::put`/`remove` take `clock.next()` before the swap).
    let mut op_indices: Vec<u64> = batch_indices.clone();
    op_indices.extend(deletes.iter().map(|(_, w)| w.index()));
    let ops_n = op_indices.len();
    op_indices.sort_unstable();
    op_indices.dedup();
    assert_eq!(
        op_indices.len(),
        ops_n,
        "two successful writes got the same index"
    );
    let high = s.state.store.global_index().high_water();
    assert!(
        high - start_high >= ops_n as u64,
        "the index advanced by {} for {ops_n} successful writes",
        high - start_high
    );
    let burnt = high - start_high - ops_n as u64;
    let (batches_n, deletes_n) = (batch_indices.len(), deletes.len());

    // Replay each key's successful writes in index order from "absent".
    let mut by_key: BTreeMap<&str, Vec<&Landed>> = BTreeMap::new();
    for (k, w) in &writes {
        by_key.entry(k.as_str()).or_default().push(w);
    }
    for k in &race {
        let mut history = by_key.remove(k.as_str()).unwrap_or_default();
        history.sort_by_key(|w| w.index());
        let mut state: Option<(u64, &str)> = None;
        let (mut creates, mut removals) = (0, 0);
        for w in &history {
            match w {
                Landed::SetCas {
                    index,
                    expected,
                    value,
                } => {
                    match (*expected, state) {
                        (0, None) => creates += 1,
                        (n, Some((current, _))) if n == current => {}
                        _ => panic!("{k}: set-cas at {index} expected {expected}, but the state was {state:?}"),
                    }
                    state = Some((*index, value));
                }
                Landed::Delete { index } => {
                    assert!(state.is_some(), "{k}: delete at {index} of an absent key");
                    removals += 1;
                    state = None;
                }
            }
        }
        assert_eq!(
            creates - removals,
            usize::from(state.is_some()),
            "{k}: {creates} creates and {removals} deletes"
        );
        let actual = s.state.store.get(k.as_str());
        match (state, actual) {
            (None, None) => {}
            (Some((index, value)), Some(e)) => {
                assert_eq!(
                    (e.modify_index, e.value.as_str()),
                    (index, Some(value)),
                    "{k}"
                );
            }
            (expected, actual) => panic!("{k}: replay gives {expected:?}, the store {actual:?}"),
        }
    }
    for k in &statics {
        assert_eq!(
            s.state.store.get(k.as_str()).unwrap().value.as_str(),
            Some("fixed")
        );
    }
    eprintln!(
        "race: {batches_n} set-cas batches, {cas_failed} conflicts, {deletes_n} deletes, \
         {absent} absent, {listings} listings, {burnt} indices burnt in {:?}",
        start.elapsed()
    );
}
