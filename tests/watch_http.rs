//! Watches over HTTP (issue #12), on a real server on loopback: the `X-Caskv-Index` header,
//! blocking reads of keys, prefixes and services, the change feed as server-sent events
//! (resume, 410, lagged), their 400s, and shutdown while clients wait.

#[path = "support/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use caskv::server::{AppState, ConnLimits, Limits};
use caskv::HistoryLimits;
use serde_json::{json, Value};
use server::{assert_error, in_memory, Server};

fn start() -> Server {
    Server::spawn(in_memory(), ConnLimits::default())
}

/// A GET through ureq: status, `X-Caskv-Index` (absent: `None`), JSON body.
fn get(s: &Server, path: &str) -> (u16, Option<u64>, Value) {
    let mut r = s
        .agent
        .get(format!("{}{path}", s.base))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let index = r
        .headers()
        .get("x-caskv-index")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        index,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn put(s: &Server, key: &str, value: &str) -> u64 {
    let (status, body) = s.put(&format!("/kv/{key}"), json!({"value": value}));
    assert_eq!(status, 200, "{body}");
    body["modify_index"].as_u64().unwrap()
}

#[test]
fn every_read_carries_the_index_of_the_state_it_shows() {
    let s = start();
    // Nothing written yet: never 0.
    assert_eq!(get(&s, "/kv/a").1, Some(1));
    let a = put(&s, "a", "1");
    let (status, index, _) = get(&s, "/kv/a");
    assert_eq!((status, index), (200, Some(a)));
    let b = put(&s, "dir/b", "2");
    let deleted = s.delete("/kv/a").1["modify_index"].as_u64().unwrap();
    // A deleted key: 404 with the delete's index.
    assert_eq!(get(&s, "/kv/a").0, 404);
    assert_eq!(get(&s, "/kv/a").1, Some(deleted));
    // Listings: the highest index under the prefix, deletes included.
    assert_eq!(get(&s, "/kv/?prefix=dir/").1, Some(b));
    assert_eq!(get(&s, "/kv/").1, Some(deleted));
    let (status, index, body) = get(&s, "/kv/dir/?recurse=true");
    assert_eq!((status, index), (200, Some(b)));
    assert_eq!(body[0]["key"], "dir/b");
    // A batch read: the highest of its keys'.
    let reply = s
        .agent
        .post(format!("{}/batch/kv/get", s.base))
        .send_json(json!({"keys": ["a", "dir/b"]}))
        .unwrap();
    let index: u64 = reply.headers()["x-caskv-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(index, deleted);
    // Services.
    let (_, reg) = s.post(
        "/services",
        json!({"name": "web", "address": "10.0.0.1", "port": 80}),
    );
    let registered = reg["modify_index"].as_u64().unwrap();
    assert_eq!(get(&s, "/services/web").1, Some(registered));
    assert_eq!(get(&s, "/services").1, Some(registered));
    assert_eq!(get(&s, "/services/none").0, 404);
    assert!(get(&s, "/services/none").1.unwrap() >= 1);
}

#[test]
fn a_blocking_read_answers_at_once_when_the_index_is_already_passed() {
    let s = start();
    let first = put(&s, "k", "1");
    let second = put(&s, "k", "2");
    let started = Instant::now();
    let (status, index, body) = get(&s, &format!("/kv/k?index={first}&wait=30s"));
    assert_eq!(
        (status, index, body["value"].as_str()),
        (200, Some(second), Some("2"))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // index=0 is a plain read.
    assert_eq!(get(&s, "/kv/k?index=0&wait=30s").1, Some(second));
}

#[test]
fn a_blocking_read_is_woken_by_its_key_only_and_times_out_unchanged() {
    let s = start();
    let first = put(&s, "k", "1");
    let store = s.state.store.clone();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| get(&s, &format!("/kv/k?index={first}&wait=30s")));
        // Wait until the read is registered, then write other keys: nobody is woken.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.watch_counts().0 == 0 {
            assert!(
                Instant::now() < deadline,
                "the blocking read never registered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..20 {
            put(&s, &format!("other{i}"), "x");
        }
        assert_eq!(
            store.watch_counts().1,
            0,
            "a write to another key woke the read"
        );
        assert!(!waiter.is_finished());
        let written = put(&s, "k", "2");
        let (status, index, body) = waiter.join().unwrap();
        assert_eq!(
            (status, index, body["value"].as_str()),
            (200, Some(written), Some("2"))
        );
    });
    // Nothing changes within the wait: 200, the same state and index, after the wait.
    let now = get(&s, "/kv/k").1.unwrap();
    let started = Instant::now();
    let (status, index, body) = get(&s, &format!("/kv/k?index={now}&wait=300ms"));
    assert_eq!(
        (status, index, body["value"].as_str()),
        (200, Some(now), Some("2"))
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn blocking_reads_of_missing_keys_prefixes_and_services_wake_on_deletes_and_batches() {
    let s = start();
    // A key that does not exist yet: block on the index the 404 gave.
    let (status, missing, _) = get(&s, "/kv/new");
    assert_eq!(status, 404);
    let missing = missing.unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| get(&s, &format!("/kv/new?index={missing}&wait=30s")));
        std::thread::sleep(Duration::from_millis(50));
        let (_, batch) = s.post("/batch/kv/set", json!({"items": {"new": "1", "x": "2"}}));
        let (status, index, body) = waiter.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(Some(batch["modify_index"].as_u64().unwrap()), index);
        assert_eq!(body["value"], "1");
    });
    // A prefix: a delete under it wakes the listing.
    put(&s, "app/a", "1");
    let (_, at, _) = get(&s, "/kv/app/?recurse=true");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            get(
                &s,
                &format!("/kv/app/?recurse=true&index={}&wait=30s", at.unwrap()),
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        put(&s, "elsewhere", "1");
        let deleted = s.delete("/kv/app/a").1["modify_index"].as_u64().unwrap();
        let (status, index, body) = waiter.join().unwrap();
        assert_eq!((status, index), (200, Some(deleted)));
        assert_eq!(body, json!([]));
    });
    // A service.
    let (_, reg) = s.post(
        "/services",
        json!({"name": "db", "address": "10.0.0.2", "port": 5432}),
    );
    let at = reg["modify_index"].as_u64().unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| get(&s, &format!("/services/db?index={at}&wait=30s")));
        std::thread::sleep(Duration::from_millis(50));
        let gone = s.delete("/services/db").1["modify_index"].as_u64().unwrap();
        let (status, index, _) = waiter.join().unwrap();
        assert_eq!((status, index), (404, Some(gone)));
    });
}

#[test]
fn malformed_index_wait_after_and_last_event_id_are_400s() {
    let s = start();
    put(&s, "k", "1");
    for path in [
        "/kv/k?index=x",
        "/kv/k?index=-1",
        "/kv/k?index=1&wait=soon",
        "/kv/k?wait=10",
        "/kv/?index=1&wait=bad",
        "/services/x?index=abc",
        "/watch?after=x",
        "/watch?after=-3",
    ] {
        assert_error(&s.get(path), 400);
    }
    let reply = s
        .send_with("GET", "/watch", &[("Last-Event-ID", "nope")], None)
        .unwrap();
    assert_eq!(reply.0, 400, "{}", reply.1);
    // A wait over the cap is cut to it, not refused.
    assert_eq!(get(&s, "/kv/k?index=0&wait=1h").0, 200);
}

/// One server-sent event.
#[derive(Debug)]
struct Event {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// A change-feed stream read off a ureq response.
struct Stream {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl Stream {
    fn open(s: &Server, path: &str, last_event_id: Option<u64>) -> Result<Stream, (u16, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut request = agent.get(format!("{}{path}", s.base));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let mut response = request.call().unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap();
            return Err((status, serde_json::from_str(&text).unwrap()));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let reader: Box<dyn Read + Send> = Box::new(response.into_body().into_reader());
        Ok(Stream {
            lines: BufReader::new(reader),
        })
    }

    /// The next event (comments skipped), or `None` when the stream ended.
    fn next(&mut self) -> Option<Event> {
        let (mut id, mut kind, mut data) = (None, String::new(), None);
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some(Event { id, kind, data });
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).unwrap());
            }
        }
    }
}

#[test]
fn the_feed_streams_sets_deletes_batches_and_services_in_order_and_resumes() {
    let s = start();
    let mut all = Stream::open(&s, "/watch?after=0", None).unwrap();
    let mut app = Stream::open(&s, "/watch?after=0&prefix=app/", None).unwrap();
    let a = put(&s, "app/a", "1");
    put(&s, "other", "1");
    let d = s.delete("/kv/app/a").1["modify_index"].as_u64().unwrap();
    let (_, b) = s.post("/batch/kv/set", json!({"items": {"app/x": "1", "zz": "2"}}));
    let b = b["modify_index"].as_u64().unwrap();
    let (_, r) = s.post(
        "/services",
        json!({"name": "web", "address": "h", "port": 1}),
    );
    let r = r["modify_index"].as_u64().unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let e = all.next().unwrap();
        ids.push(e.id.unwrap());
        if e.id == Some(r) {
            assert_eq!(e.kind, "service");
            assert_eq!(e.data["op"], "register");
            assert_eq!(e.data["service"]["name"], "web");
        }
        if e.id == Some(b) {
            assert_eq!(e.data["op"], "batch");
            assert_eq!(e.data["items"].as_array().unwrap().len(), 2);
        }
    }
    assert_eq!(
        ids,
        (1..=5).collect::<Vec<u64>>(),
        "gap-free, in index order"
    );
    // The prefix stream: only app/ keys, a batch filtered to them.
    let e = app.next().unwrap();
    assert_eq!(
        (e.id, e.data["op"].as_str(), e.data["value"].as_str()),
        (Some(a), Some("set"), Some("1"))
    );
    let e = app.next().unwrap();
    assert_eq!((e.id, e.data["op"].as_str()), (Some(d), Some("delete")));
    let e = app.next().unwrap();
    assert_eq!(e.id, Some(b));
    assert_eq!(
        e.data["items"],
        json!([{"op": "set", "key": "app/x", "value": "1", "flags": 0, "create_index": b, "modify_index": b}])
    );
    // Resume with Last-Event-ID: the events after it, nothing before.
    let mut resumed = Stream::open(&s, "/watch?after=0", Some(d)).unwrap();
    assert_eq!(resumed.next().unwrap().id, Some(d + 1));
}

#[test]
fn a_compacted_index_is_a_410_naming_the_oldest() {
    let limits = Limits {
        history: HistoryLimits {
            max_changes: 3,
            ..HistoryLimits::default()
        },
        ..Limits::default()
    };
    let s = Server::spawn(
        AppState::new(limits, Duration::from_secs(30)),
        ConnLimits::default(),
    );
    for i in 0..10 {
        put(&s, &format!("k{i}"), "v");
    }
    let (status, body) = Stream::open(&s, "/watch?after=1", None).err().unwrap();
    assert_eq!(status, 410);
    assert_eq!(body["error"], "compacted");
    assert_eq!(body["oldest"], 7);
    // An index the server never handed out: the same answer.
    let (status, body) = Stream::open(&s, "/watch?after=1000", None).err().unwrap();
    assert_eq!((status, body["oldest"].as_u64()), (410, Some(7)));
    let mut from_oldest = Stream::open(&s, "/watch?after=7", None).unwrap();
    assert_eq!(from_oldest.next().unwrap().id, Some(8));
}

#[test]
fn a_consumer_that_falls_behind_is_cut_with_lagged_and_resumes_without_a_gap() {
    let limits = Limits {
        watch_lag_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = Server::spawn(
        AppState::new(limits, Duration::from_secs(30)),
        ConnLimits::default(),
    );
    let mut slow = Stream::open(&s, "/watch?after=0", None).unwrap();
    // Batches of 500 keys with 1 KiB values: ~0.5 MiB an event; the stream's 1 MiB buffer and
    // the socket's fill long before 60 of them are written.
    let value = "v".repeat(1024);
    let mut last = 0;
    for round in 0..60 {
        let items: serde_json::Map<String, Value> = (0..500)
            .map(|i| (format!("k{i}"), json!(format!("{round}{value}"))))
            .collect();
        let (status, body) = s.post("/batch/kv/set", json!({"items": items}));
        assert_eq!(status, 200, "{body}");
        last = body["modify_index"].as_u64().unwrap();
    }
    // The client reads nothing for longer than the lag timeout.
    std::thread::sleep(Duration::from_millis(600));
    let mut got = Vec::new();
    let lagged = loop {
        let e = slow
            .next()
            .expect("the stream ended without a lagged event");
        if e.kind == "lagged" {
            break e;
        }
        got.push(e.id.unwrap());
    };
    let resume_from = lagged.data["last_index"].as_u64().unwrap();
    assert_eq!(got.last().copied().unwrap_or(0), resume_from);
    assert!(resume_from < last, "the consumer was not behind");
    assert!(slow.next().is_none(), "the stream goes on after lagged");
    // Resume: the rest, with no gap.
    let mut resumed = Stream::open(&s, &format!("/watch?after={resume_from}"), None).unwrap();
    let mut next = resume_from + 1;
    while next <= last {
        assert_eq!(resumed.next().unwrap().id, Some(next));
        next += 1;
    }
}

#[test]
fn shutdown_answers_held_reads_and_ends_feed_streams() {
    let mut s = start();
    let k = put(&s, "k", "1");
    let mut stream = Stream::open(&s, "/watch", None).unwrap();
    let base = s.base.clone();
    let held = std::thread::spawn(move || {
        let client = server::Client::new(&base);
        client.send("GET", &format!("/kv/k?index={k}&wait=60s"), None)
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    s.stop();
    let (status, body) = held.join().unwrap().expect("the held read was answered");
    assert_eq!(status, 200, "{body}");
    assert!(stream.next().is_none(), "the stream ended");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown waited for the blocked clients: {:?}",
        started.elapsed()
    );
}

#[test]
fn the_feed_resumes_from_the_log_after_a_restart_or_answers_410() {
    use caskv::persist::FsyncPolicy;
    let dir = tempfile::tempdir().unwrap();
    let open = |limits: Limits| {
        let state = AppState::open(
            dir.path(),
            FsyncPolicy::Always,
            limits,
            Duration::from_secs(30),
        )
        .unwrap();
        Server::spawn(state, ConnLimits::default())
    };
    let (a, b, c);
    {
        let mut s = open(Limits::default());
        a = put(&s, "k1", "1");
        b = put(&s, "k2", "2");
        c = s.delete("/kv/k1").1["modify_index"].as_u64().unwrap();
        let (_, batch) = s.post("/batch/kv/set", json!({"items": {"x": "1", "y": "2"}}));
        assert_eq!(batch["modify_index"], c + 1);
        s.stop();
    }
    {
        let mut s = open(Limits::default());
        // A client that had seen `a` resumes: b, the delete, the batch, then what comes next.
        let mut stream = Stream::open(&s, "/watch", Some(a)).unwrap();
        let e = stream.next().unwrap();
        assert_eq!(
            (e.id, e.data["op"].as_str(), e.data["key"].as_str()),
            (Some(b), Some("set"), Some("k2"))
        );
        let e = stream.next().unwrap();
        assert_eq!((e.id, e.data["op"].as_str()), (Some(c), Some("delete")));
        let e = stream.next().unwrap();
        assert_eq!((e.id, e.data["op"].as_str()), (Some(c + 1), Some("batch")));
        let d = put(&s, "k3", "3");
        assert_eq!(stream.next().unwrap().id, Some(d));
        s.stop();
    }
    {
        // Reopened with a history of one change: the index is gone, a 410.
        let limits = Limits {
            history: HistoryLimits {
                max_changes: 1,
                ..HistoryLimits::default()
            },
            ..Limits::default()
        };
        let s = open(limits);
        let (status, body) = Stream::open(&s, "/watch", Some(a)).err().unwrap();
        assert_eq!((status, body["error"].as_str()), (410, Some("compacted")));
    }
}
