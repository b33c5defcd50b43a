//! `kill -9` under concurrent CAS load, on the real `caskv serve --data-dir` binary.
//!
//! Each cycle starts the server on the same data directory, lets eight clients run CAS loops
//! (each on keys of its own, with batches mixed in) over HTTP, kills the server with SIGKILL at
//! a random moment, and restarts it. After every restart:
//! - every acknowledged write is there: each key holds at least its last acknowledged index
//!   (a write in flight at the kill may also have landed), with the acknowledged value when the
//!   index is the same;
//! - the first write gets an index above every index acknowledged before.
//!
//! Cycles rotate through the three fsync policies (a process crash loses no acknowledged write
//! under any of them). `CASKV_CRASH_CYCLES` sets the number of cycles (default 3, one per policy);
//! `ci/crash.sh` runs many more.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_caskv");
const CLIENTS: usize = 8;
const KEYS_PER_CLIENT: usize = 4;

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(dir: &std::path::Path, fsync: &str) -> Server {
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(BIN)
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir)
                .args(["--fsync", fsync])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn caskv serve");
            let mut server = Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let agent = agent();
            while Instant::now() < deadline {
                if let Ok(r) = agent.get(format!("{}/health", server.base)).call() {
                    if r.status() == 200 {
                        return server;
                    }
                }
                if server.child.try_wait().unwrap().is_some() {
                    break;
                }
                sleep(Duration::from_millis(20));
            }
            server.kill();
        }
        panic!("caskv serve --data-dir did not become healthy");
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, no final flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Sends a request; `None` when the server is gone (connection refused or reset).
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let builder = ureq::http::Request::builder().method(method).uri(url);
    let result = match body {
        Some(b) => agent.run(
            builder
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).unwrap())
                .unwrap(),
        ),
        None => agent.run(builder.body(()).unwrap()),
    };
    let mut response = result.ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Per key: the last acknowledged (index, value).
type Acked = HashMap<String, (u64, String)>;

/// One client's CAS loop over its own keys until the server dies. `known` is where each key
/// stands (from the last restart).
fn client(base: &str, c: usize, known: &Acked, acked: &Mutex<Acked>, stop: &AtomicBool) {
    let agent = agent();
    let mut mine: HashMap<String, u64> = known.iter().map(|(k, (i, _))| (k.clone(), *i)).collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("c{c}-k{}", n as usize % KEYS_PER_CLIENT);
        let value = format!("{c}:{n}:{}", fastrand::u32(..));
        let expected = mine.get(&key).copied().unwrap_or(0);
        let (written, reply) = if n.is_multiple_of(4) {
            // A two-key batch CAS.
            let other = format!("c{c}-k{}", (n as usize + 1) % KEYS_PER_CLIENT);
            let other_expected = mine.get(&other).copied().unwrap_or(0);
            let body = json!({
                "items": {key.clone(): value.clone(), other.clone(): value.clone()},
                "expected_indices": {key.clone(): expected, other.clone(): other_expected},
            });
            let reply = call(
                &agent,
                "POST",
                &format!("{base}/batch/kv/set-cas"),
                Some(body),
            );
            (vec![key, other], reply)
        } else {
            let body = json!({"value": value, "cas": expected});
            let reply = call(&agent, "PUT", &format!("{base}/kv/{key}"), Some(body));
            (vec![key], reply)
        };
        let Some((status, body)) = reply else { return };
        match status {
            200 => {
                let index = body["modify_index"]
                    .as_u64()
                    .or_else(|| body["new_indices"][&written[0]].as_u64())
                    .unwrap_or_else(|| panic!("no index in {body}"));
                let mut acked = acked.lock().unwrap();
                for k in written {
                    mine.insert(k.clone(), index);
                    acked.insert(k, (index, value.clone()));
                }
            }
            other => panic!("a CAS from the only writer of its keys failed: {other} {body}"),
        }
    }
}

#[test]
fn kill_9_under_cas_load_loses_no_acknowledged_write_and_never_reuses_an_index() {
    let cycles: usize = std::env::var("CASKV_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Acked::new();
    let mut total_acked = 0usize;
    let agent = agent();
    for cycle in 0..cycles {
        let fsync = ["always", "everysec", "never"][cycle % 3];
        let mut server = Server::start(dir.path(), fsync);
        let base = server.base.clone();

        // After the restart: every acknowledged write is there.
        let mut max_acked = 0;
        for (key, (index, value)) in &acked {
            let (status, entry) = call(
                &agent,
                "GET",
                &format!("{base}/kv/{key}?metadata=true"),
                None,
            )
            .expect("the restarted server answers");
            assert_eq!(
                status, 200,
                "cycle {cycle}: {key} (acknowledged at {index}) is gone"
            );
            let got = entry["modify_index"].as_u64().unwrap();
            assert!(
                got >= *index,
                "cycle {cycle}: {key} acknowledged at {index}, back at {got}"
            );
            if got == *index {
                assert_eq!(entry["value"], *value, "cycle {cycle}: {key} at {index}");
            }
            max_acked = max_acked.max(*index);
        }
        // Where each key stands now (an unacknowledged write may have landed).
        let mut known = Acked::new();
        for key in acked.keys() {
            let (_, entry) = call(
                &agent,
                "GET",
                &format!("{base}/kv/{key}?metadata=true"),
                None,
            )
            .unwrap();
            let value = entry["value"].as_str().unwrap().to_string();
            known.insert(
                key.clone(),
                (entry["modify_index"].as_u64().unwrap(), value),
            );
        }
        // The first write after the restart is above everything acknowledged before.
        let (status, body) = call(
            &agent,
            "PUT",
            &format!("{base}/kv/probe"),
            Some(json!({"value": "x"})),
        )
        .unwrap();
        assert_eq!(status, 200);
        let first = body["modify_index"].as_u64().unwrap();
        assert!(
            first > max_acked,
            "cycle {cycle}: index {first} not above {max_acked}"
        );

        // Load, then SIGKILL at a random moment.
        let round = Mutex::new(Acked::new());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for c in 0..CLIENTS {
                let (base, known, round, stop) = (&base, &known, &round, &stop);
                s.spawn(move || client(base, c, known, round, stop));
            }
            sleep(Duration::from_millis(fastrand::u64(300..900)));
            server.kill();
            stop.store(true, Ordering::Relaxed);
        });
        let round = round.into_inner().unwrap();
        assert!(
            !round.is_empty(),
            "cycle {cycle}: no write was acknowledged"
        );
        total_acked += round.len();
        acked.extend(round);
    }
    // And once more after the last kill.
    let server = Server::start(dir.path(), "always");
    for (key, (index, _)) in &acked {
        let (status, entry) = call(
            &agent,
            "GET",
            &format!("{}/kv/{key}?metadata=true", server.base),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{key} (acknowledged at {index}) is gone");
        assert!(entry["modify_index"].as_u64().unwrap() >= *index);
    }
    assert!(total_acked > 0);
}
