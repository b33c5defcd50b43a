//! Soak (issue #5, part 4): the real router and connection loop in-process on a loopback port,
//! driven at full load for a fixed time by several client threads, then checked.
//!
//! The load mixes GETs, plain PUTs and DELETEs of data keys, CAS increments of a few counter
//! keys (read the metadata, then `PUT` with `cas`), batch set-cas over small key groups, and
//! service registrations and heartbeats. Afterwards:
//! - no lost update: each counter's value is its number of successful CAS increments, and the
//!   increments, ordered by the value they wrote, carry strictly increasing indices;
//! - every index handed to a client for a successful write is unique, and each client's indices
//!   for one key increase;
//! - no 5xx, no transport error, no 4xx other than the expected 404/409, ever;
//! - once the load stops and every key and service is removed, the process's resident memory
//!   (VmRSS) is at most [`RSS_SLACK`] above its level after warm-up.
//!
//! Run by `ci/soak.sh [SECONDS]` (`CASKV_SOAK_SECS`, default 30). It prints one line of figures.

#[path = "support/server.rs"]
mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use caskv::server::ConnLimits;
use serde_json::{json, Value};
use server::{in_memory, Server};

/// Client threads driving the load.
const CLIENTS: usize = 4;
/// Data keys read, written and deleted at random.
const DATA_KEYS: usize = 256;
/// Counter keys incremented by CAS.
const COUNTERS: usize = 4;
/// Batch groups, and keys per group.
const GROUPS: usize = 4;
const GROUP_KEYS: usize = 3;
/// Services per client.
const SERVICES: usize = 4;
/// How far above its post-warm-up level the resident set may end, once the load has stopped
/// and everything was deleted. The live data peaks near 1 MiB (256 keys of at most 4 KiB), so
/// anything close to this bound is a leak (unreclaimed versions, connections, metrics).
const RSS_SLACK: u64 = 64 * 1024 * 1024;

impl Server {
    /// `support/server.rs`'s server, with room for the clients' connections.
    fn start() -> Server {
        Server::spawn(
            in_memory(),
            ConnLimits {
                max_connections: 64,
                shutdown_grace: Duration::from_secs(2),
                ..ConnLimits::default()
            },
        )
    }
}

/// Responses by class.
#[derive(Debug, Default, Clone)]
struct Tally {
    ok: u64,
    not_found: u64,
    conflict: u64,
    other_4xx: u64,
    server_error: u64,
    transport: u64,
    /// The first few unexpected answers, for the failure message.
    unexpected: Vec<String>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok
            + self.not_found
            + self.conflict
            + self.other_4xx
            + self.server_error
            + self.transport
    }

    fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.conflict += other.conflict;
        self.other_4xx += other.other_4xx;
        self.server_error += other.server_error;
        self.transport += other.transport;
        for u in &other.unexpected {
            if self.unexpected.len() < 10 {
                self.unexpected.push(u.clone());
            }
        }
    }
}

/// One client thread: its connection, its tallies, and what it saw of indices.
struct Client {
    http: server::Client,
    id: usize,
    rng: fastrand::Rng,
    tally: Tally,
    /// Every successful write: (key, index), in the order this client issued them.
    writes: Vec<(String, u64)>,
    /// Every successful counter increment: (counter, value written, index).
    increments: Vec<(usize, u64, u64)>,
    /// The last request answered, for a transport error's message.
    last: String,
}

impl Client {
    fn new(base: &str, id: usize) -> Client {
        Client {
            // A request slower than `server::CLIENT_TIMEOUT` is a transport error.
            http: server::Client::new(base),
            id,
            rng: fastrand::Rng::with_seed(0x5eed_u64.wrapping_add(id as u64)),
            tally: Tally::default(),
            writes: Vec::new(),
            increments: Vec::new(),
            last: String::new(),
        }
    }

    /// One request; counts its class. `None` on a transport error or an unexpected status
    /// (anything but 2xx, and 404/409 where `allowed`).
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        allowed: &[u16],
    ) -> Option<(u16, Value)> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).unwrap()),
            // A bodiless PUT goes out with `Content-Length: 0`: ureq would send an empty chunked
            // body, which the server may answer and then close the connection on without saying
            // so (tests/hostile.rs, `an_unread_request_body_does_not_silently_end_keep_alive`).
            None if method == "PUT" => Some(Vec::new()),
            None => None,
        };
        let (status, text) = match self.http.send(method, path, body.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                self.tally.transport += 1;
                let after = std::mem::take(&mut self.last);
                self.note(format!("{method} {path}: {e} (after {after})"));
                return None;
            }
        };
        self.last = format!("{method} {path}: {status}");
        match status {
            200..=299 => self.tally.ok += 1,
            404 => self.tally.not_found += 1,
            409 => self.tally.conflict += 1,
            400..=499 => self.tally.other_4xx += 1,
            _ => self.tally.server_error += 1,
        }
        if !(200..300).contains(&status) && !allowed.contains(&status) {
            self.note(format!("{method} {path}: {status} {text}"));
            return None;
        }
        match serde_json::from_str(&text) {
            Ok(v) => Some((status, v)),
            Err(e) => {
                self.note(format!("{method} {path}: {status} not JSON ({e}): {text}"));
                None
            }
        }
    }

    fn note(&mut self, what: String) {
        if self.tally.unexpected.len() < 10 {
            self.tally.unexpected.push(what);
        }
    }

    fn wrote(&mut self, key: String, reply: &Value) {
        if let Some(index) = reply["modify_index"].as_u64() {
            self.writes.push((key, index));
        } else {
            self.note(format!(
                "{key}: a successful write without an index: {reply}"
            ));
        }
    }

    /// One operation drawn from the mix.
    fn step(&mut self) {
        match self.rng.u32(0..100) {
            0..=39 => {
                let k = self.rng.usize(..DATA_KEYS);
                self.call("GET", &format!("/kv/data/{k}"), None, &[404]);
            }
            40..=49 => {
                let k = format!("data/{}", self.rng.usize(..DATA_KEYS));
                let value = "v".repeat(self.rng.usize(64..4096));
                if let Some((_, reply)) = self.call(
                    "PUT",
                    &format!("/kv/{k}"),
                    Some(&json!({"value": value})),
                    &[],
                ) {
                    self.wrote(k, &reply);
                }
            }
            50..=54 => {
                let k = format!("data/{}", self.rng.usize(..DATA_KEYS));
                if let Some((200, reply)) = self.call("DELETE", &format!("/kv/{k}"), None, &[404]) {
                    self.wrote(k, &reply);
                }
            }
            55..=74 => {
                let c = self.rng.usize(..COUNTERS);
                self.increment(c);
            }
            75..=89 => {
                let g = self.rng.usize(..GROUPS);
                self.batch_cas(g);
            }
            _ => {
                let name = format!("svc-{}-{}", self.id, self.rng.usize(..SERVICES));
                if self.rng.bool() {
                    let service = json!({"name": name, "address": "10.0.0.1", "port": 8080,
                                         "tags": ["soak"], "meta": {"client": self.id.to_string()}});
                    if let Some((_, reply)) = self.call("POST", "/services", Some(&service), &[]) {
                        self.wrote(format!("service/{name}"), &reply);
                    }
                } else {
                    // Not registered yet (or expired): 404.
                    self.call("PUT", &format!("/services/{name}/heartbeat"), None, &[404]);
                }
            }
        }
    }

    /// Reads counter `c`'s value and index, then writes value + 1 with `cas` = that index.
    fn increment(&mut self, c: usize) {
        let path = format!("/kv/counter/{c}");
        let Some((_, meta)) = self.call("GET", &format!("{path}?metadata=true"), None, &[]) else {
            return;
        };
        let (Some(value), Some(index)) = (
            meta["value"].as_str().and_then(|v| v.parse::<u64>().ok()),
            meta["modify_index"].as_u64(),
        ) else {
            self.note(format!("{path}: a bad counter: {meta}"));
            return;
        };
        let body = json!({"value": (value + 1).to_string(), "cas": index});
        if let Some((200, reply)) = self.call("PUT", &path, Some(&body), &[409]) {
            let Some(new_index) = reply["modify_index"].as_u64() else {
                self.note(format!("{path}: no index: {reply}"));
                return;
            };
            self.increments.push((c, value + 1, new_index));
            self.writes.push((format!("counter/{c}"), new_index));
        }
    }

    /// Reads group `g` in one batch, then writes all of it with set-cas on the indices read.
    fn batch_cas(&mut self, g: usize) {
        let keys: Vec<String> = (0..GROUP_KEYS).map(|i| format!("group/{g}/{i}")).collect();
        let Some((_, read)) = self.call("POST", "/batch/kv/get", Some(&json!({"keys": keys})), &[])
        else {
            return;
        };
        let stamp = format!("c{}-{}", self.id, self.rng.u64(..));
        let mut items = serde_json::Map::new();
        let mut expected = serde_json::Map::new();
        for k in &keys {
            items.insert(k.clone(), json!(stamp));
            expected.insert(
                k.clone(),
                json!(read["found"][k]["modify_index"].as_u64().unwrap_or(0)),
            );
        }
        let body = json!({"items": items, "expected_indices": expected});
        if let Some((200, reply)) = self.call("POST", "/batch/kv/set-cas", Some(&body), &[409]) {
            // One index for the whole batch: record it once, under the group.
            match reply["new_indices"][&keys[0]].as_u64() {
                Some(index) => self.writes.push((format!("group/{g}"), index)),
                None => self.note(format!("set-cas without indices: {reply}")),
            }
        }
    }
}

/// The resident set of this process (VmRSS) and its peak (VmHWM), in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
#[ignore = "soak: minutes of full load; run by ci/soak.sh"]
fn soak() {
    let secs: u64 = std::env::var("CASKV_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("CASKV_SOAK_SECS: a number of seconds"))
        .unwrap_or(30);
    assert!(secs >= 2, "CASKV_SOAK_SECS must be at least 2");
    let load = Duration::from_secs(secs);
    let warm_up = (load / 5).min(Duration::from_secs(10));
    let server = Server::start();
    let base = server.base.clone();

    let mut setup = Client::new(&base, usize::MAX);
    for c in 0..COUNTERS {
        let created = setup.call(
            "PUT",
            &format!("/kv/counter/{c}"),
            Some(&json!({"value": "0", "cas": 0})),
            &[],
        );
        assert!(
            created.is_some(),
            "creating the counters: {:?}",
            setup.tally
        );
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<Client>> = (0..CLIENTS)
        .map(|id| {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(&base, id);
                // Bounded by time (the stop flag, or twice the load as a backstop).
                while !stop.load(Ordering::Relaxed) && start.elapsed() < load * 2 {
                    client.step();
                }
                client
            })
        })
        .collect();
    std::thread::sleep(warm_up);
    let (rss_warm, _) = rss();
    std::thread::sleep(load.saturating_sub(start.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread panicked"))
        .collect();
    let elapsed = start.elapsed();

    let mut tally = Tally::default();
    for c in &clients {
        tally.add(&c.tally);
    }

    // No lost update: every counter holds its number of successful increments, the values
    // written are exactly 1..=n, and their indices increase with the value.
    let mut by_counter: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    for c in &clients {
        for &(counter, value, index) in &c.increments {
            by_counter.entry(counter).or_default().push((value, index));
        }
    }
    let mut increments_total = 0;
    for c in 0..COUNTERS {
        let mut incs = by_counter.remove(&c).unwrap_or_default();
        incs.sort_unstable();
        let n = incs.len() as u64;
        increments_total += n;
        let stored = server
            .state
            .store
            .get(format!("counter/{c}").as_str())
            .expect("a counter vanished");
        assert_eq!(
            stored.value.as_str(),
            Some(n.to_string().as_str()),
            "counter/{c}: lost update ({n} successful increments)"
        );
        for (i, &(value, _)) in incs.iter().enumerate() {
            assert_eq!(
                value,
                i as u64 + 1,
                "counter/{c}: two increments wrote {value}"
            );
        }
        assert!(
            incs.windows(2).all(|w| w[0].1 < w[1].1),
            "counter/{c}: indices do not increase with the value"
        );
        if let Some(&(_, last)) = incs.last() {
            assert_eq!(
                stored.modify_index, last,
                "counter/{c}: the last increment's index"
            );
        }
    }

    // Indices: unique across all successful writes, increasing per key for each client.
    let mut seen = HashSet::new();
    for c in &clients {
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (key, index) in &c.writes {
            assert!(seen.insert(*index), "index {index} was handed out twice");
            if let Some(prev) = last.insert(key.as_str(), *index) {
                assert!(
                    *index > prev,
                    "client {}: {key} got index {index} after {prev}",
                    c.id
                );
            }
        }
    }

    assert!(
        tally.server_error == 0 && tally.transport == 0 && tally.other_4xx == 0,
        "unexpected answers: {tally:?}"
    );
    assert!(tally.unexpected.is_empty(), "unexpected answers: {tally:?}");

    // Remove everything, then let the collector catch up under a light load. A fresh client:
    // the setup one's pooled connection sat idle through the load, and the server may have
    // closed it as idle (the header timeout also bounds the wait for a next request).
    let mut cleanup = Client::new(&base, usize::MAX - 1);
    let keys = cleanup
        .call("GET", "/kv/", None, &[])
        .expect("a final listing")
        .1;
    let keys: Vec<Value> = keys.as_array().expect("an array").clone();
    for chunk in keys.chunks(500) {
        let deleted = cleanup.call(
            "POST",
            "/batch/kv/delete",
            Some(&json!({"keys": chunk})),
            &[],
        );
        assert!(deleted.is_some(), "deleting the keys: {:?}", cleanup.tally);
    }
    for id in 0..CLIENTS {
        for s in 0..SERVICES {
            cleanup.call("DELETE", &format!("/services/svc-{id}-{s}"), None, &[404]);
        }
    }
    for _ in 0..2000 {
        cleanup.call("GET", "/kv/data/0", None, &[404]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.state.store.len(), 0, "keys left after the deletes");
    assert_eq!(
        server.state.registry.len(),
        0,
        "services left after the deletes"
    );
    assert!(cleanup.tally.unexpected.is_empty(), "{:?}", cleanup.tally);
    let (rss_final, rss_peak) = rss();

    let requests = tally.total();
    println!(
        "soak: {:.1}s, {CLIENTS} clients, {requests} requests, {:.0} req/s, 2xx {}, 404 {}, \
         409 {}, other 4xx {}, 5xx {}, transport errors {}, {increments_total} counter \
         increments, RSS warm {:.1} MiB, peak {:.1} MiB, final {:.1} MiB (bound warm + {} MiB)",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        tally.ok,
        tally.not_found,
        tally.conflict,
        tally.other_4xx,
        tally.server_error,
        tally.transport,
        mib(rss_warm),
        mib(rss_peak),
        mib(rss_final),
        RSS_SLACK / (1024 * 1024),
    );
    assert!(
        rss_final <= rss_warm + RSS_SLACK,
        "resident memory {:.1} MiB after the load, over its post-warm-up {:.1} MiB + {} MiB",
        mib(rss_final),
        mib(rss_warm),
        RSS_SLACK / (1024 * 1024)
    );
}
