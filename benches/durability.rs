//! What durability costs, measured side by side in one run (issue #4's figures):
//!
//! 1. **Acknowledged CAS writes per second at 64 concurrent clients**, for the in-memory store
//!    and for `--fsync always`, `everysec` and `never`: once in-process through the library
//!    (64 threads, `set_cas` then `Pending::wait`), once over HTTP against the real
//!    `caskv serve` binary (64 keep-alive clients, `PUT /kv/{key}` with `cas`). Each client
//!    CASes a key of its own, so every write succeeds and each one is acknowledged.
//! 2. **Recovery time for 1M keys**: replaying a log of 1M sets, and loading a snapshot of them.
//! 3. **Log bytes per entry**: a 16-byte key and a 64-byte value, as logged one write at a time
//!    and as held in a snapshot.
//!
//! Run: `cargo bench --bench durability` (`-- --quick` for short runs and 100K keys).
//! Ratios are against the in-memory store measured in the same run; nothing here is asserted.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caskv::persist::{FsyncPolicy, Options};
use caskv::Db;
use caskv::Store;

const CLIENTS: usize = 64;

struct Config {
    run_for: Duration,
    recovery_keys: usize,
}

/// Runs `op(client)` on `CLIENTS` threads for `run_for`; returns completed ops per second.
fn throughput(run_for: Duration, op: impl Fn(usize, u64) -> bool + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (stop, done, op) = (&stop, &done, &op);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !op(c, n) {
                        break;
                    }
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn library_cas(config: &Config, policy: Option<FsyncPolicy>) -> f64 {
    let value = "v".repeat(64);
    match policy {
        None => {
            let store: Store<String, String> = Store::new();
            let last: Vec<AtomicU64> = (0..CLIENTS).map(|_| AtomicU64::new(0)).collect();
            throughput(config.run_for, |c, _| {
                let expected = last[c].load(Ordering::Relaxed);
                let index = store
                    .set_cas(format!("client-{c:08}"), value.clone(), expected)
                    .expect("own key");
                last[c].store(index, Ordering::Relaxed);
                true
            })
        }
        Some(policy) => {
            let dir = tempfile::tempdir().unwrap();
            let db: Db<String, String> =
                Db::open(dir.path(), Options::default().fsync(policy)).unwrap();
            let last: Vec<AtomicU64> = (0..CLIENTS).map(|_| AtomicU64::new(0)).collect();
            throughput(config.run_for, |c, _| {
                let expected = last[c].load(Ordering::Relaxed);
                let index = db
                    .set_cas(format!("client-{c:08}"), value.clone(), expected)
                    .expect("own key")
                    .wait()
                    .expect("durable");
                last[c].store(index, Ordering::Relaxed);
                true
            })
        }
    }
}

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(data_dir: Option<(&Path, &str)>) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caskv"));
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some((dir, fsync)) = data_dir {
        cmd.arg("--data-dir").arg(dir).args(["--fsync", fsync]);
    }
    let server = Server(
        cmd.spawn().expect("spawn caskv"),
        format!("http://127.0.0.1:{port}"),
    );
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if agent.get(format!("{}/health", server.1)).call().is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("caskv serve did not start");
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn http_cas(config: &Config, fsync: Option<&str>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(fsync.map(|f| (dir.path(), f)));
    let agents: Vec<ureq::Agent> = (0..CLIENTS).map(|_| agent()).collect();
    let last: Vec<AtomicU64> = (0..CLIENTS).map(|_| AtomicU64::new(0)).collect();
    let value = "v".repeat(64);
    let base = server.1.clone();
    throughput(config.run_for, |c, _| {
        let expected = last[c].load(Ordering::Relaxed);
        let body = format!("{{\"value\":\"{value}\",\"cas\":{expected}}}");
        let Ok(mut response) = agents[c]
            .put(format!("{base}/kv/client-{c:08}"))
            .header("content-type", "application/json")
            .send(body)
        else {
            return false;
        };
        let text = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(response.status(), 200, "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        last[c].store(parsed["modify_index"].as_u64().unwrap(), Ordering::Relaxed);
        true
    })
}

fn dir_bytes(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn recovery(config: &Config) {
    let n = config.recovery_keys;
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .fsync(FsyncPolicy::Never)
            .snapshot_after_bytes(0)
    };
    let write_started = Instant::now();
    {
        let db: Db<String, String> = Db::open(dir.path(), options()).unwrap();
        let value = "v".repeat(64);
        let db = Arc::new(db);
        std::thread::scope(|s| {
            for t in 0..2 {
                let db = db.clone();
                let value = value.clone();
                s.spawn(move || {
                    for i in (t..n).step_by(2) {
                        // 16-byte keys; not waited for (the drop flushes them all).
                        drop(db.set(format!("key-{i:012}"), value.clone()).unwrap());
                    }
                });
            }
        });
        db.sync().unwrap();
    }
    let wrote = write_started.elapsed();
    let log_bytes = dir_bytes(dir.path(), "log-");

    let started = Instant::now();
    let db: Db<String, String> = Db::open(dir.path(), options()).unwrap();
    let replay = started.elapsed();
    assert_eq!(db.store().len(), n);
    let report = db.snapshot().unwrap().unwrap();
    drop(db);
    let started = Instant::now();
    let db: Db<String, String> = Db::open(dir.path(), options()).unwrap();
    let load = started.elapsed();
    assert_eq!(db.store().len(), n);
    drop(db);

    println!();
    println!("recovery of {n} keys (16-byte keys, 64-byte values):");
    println!("  writing them (2 threads, fsync never): {wrote:.2?}");
    println!(
        "  log replay:    {replay:.2?}  ({:.0} keys/s), log {} bytes = {:.1} bytes/entry",
        n as f64 / replay.as_secs_f64(),
        log_bytes,
        log_bytes as f64 / n as f64
    );
    println!(
        "  snapshot load: {load:.2?}  ({:.0} keys/s), snapshot {} bytes = {:.1} bytes/entry (written in {:.2?})",
        n as f64 / load.as_secs_f64(),
        report.bytes,
        report.bytes as f64 / n as f64,
        report.elapsed
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        Config {
            run_for: Duration::from_secs(2),
            recovery_keys: 100_000,
        }
    } else {
        Config {
            run_for: Duration::from_secs(5),
            recovery_keys: 1_000_000,
        }
    };
    println!(
        "caskv durability bench: {CLIENTS} clients, {:?} per mode, {} cores",
        config.run_for,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let policies = [
        ("always", FsyncPolicy::Always),
        ("everysec", FsyncPolicy::EverySec),
        ("never", FsyncPolicy::Never),
    ];

    println!();
    println!("library: acknowledged set_cas/s at {CLIENTS} threads");
    let memory = library_cas(&config, None);
    println!("  {:<10} {:>12.0}  1.000", "in-memory", memory);
    for (name, policy) in policies {
        let rate = library_cas(&config, Some(policy));
        println!("  {name:<10} {rate:>12.0}  {:.3}", rate / memory);
    }

    println!();
    println!("http: acknowledged PUT /kv/{{key}} with cas, req/s at {CLIENTS} keep-alive clients");
    let memory = http_cas(&config, None);
    println!("  {:<10} {:>12.0}  1.000", "in-memory", memory);
    for (name, _) in policies {
        let rate = http_cas(&config, Some(name));
        println!("  {name:<10} {rate:>12.0}  {:.3}", rate / memory);
    }

    recovery(&config);
}
