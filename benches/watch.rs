//! Issue #12's goals, measured (figures in BENCHMARKS.md).
//!
//! 1. `writers`: write throughput of a `Store<u64, u64>` (1M keys, uniform `set`s from 1 and 2
//!    threads) with no watch registered, and with 10,000 key watches registered on other keys
//!    (the writes wake nobody; the wake-up count is printed and must stay 0). Alternating
//!    rounds; medians.
//! 2. `feed`: write throughput of an in-memory `Db<String, String>` (its change feed always on)
//!    from one thread, with no reader, and with a reader that follows `Db::changes` at a tenth
//!    of the write rate (and is cut when the history passes it, then resumes from the oldest).
//! 3. `http` (needs the release binary: `cargo build --release` first): `caskv serve` as its
//!    own process; 1,000 blocked long-polls (`GET /kv/w{i}?index=..&wait=60s`) on distinct
//!    keys; then each key is written in turn and the time from the write's acknowledgement
//!    (and from its request) to its long-poll's answer is measured; and the server's RSS
//!    before and with the long-polls held.
//!
//! `cargo bench --bench watch` (all), `CASKV_WATCH_PARTS=writers,feed,http`. Without
//! `--bench` (as `cargo test --benches` runs it) every part is a short smoke run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caskv::persist::Options;
use caskv::{Db, Store};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Sets per second from `threads` threads for `dur`, uniform over `keys` keys.
fn set_rate(store: &Store<u64, u64>, threads: usize, keys: u64, dur: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, done) = (&stop, &done);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        store.set(rng.u64(0..keys), n);
                        n += 1;
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
}

fn writers(dur: Duration, rounds: usize) {
    const KEYS: u64 = 1_000_000;
    const WATCHES: u64 = 10_000;
    println!("### Writers with 10,000 watches registered on other keys\n");
    println!("`Store<u64, u64>`, {KEYS} keys, uniform `set`; M sets/s, median of {rounds} alternating rounds of {dur:?}\n");
    println!("| threads | no watch | 10,000 watches | ratio | wake-ups |");
    println!("|---:|---:|---:|---:|---:|");
    for threads in [1, 2] {
        let store: Store<u64, u64> = Store::with_capacity(KEYS as usize + WATCHES as usize);
        for k in 0..KEYS {
            store.set(k, 0);
        }
        let (mut none, mut watched) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            none.push(set_rate(&store, threads, KEYS, dur));
            let watches: Vec<_> = (KEYS..KEYS + WATCHES).map(|k| store.watch(&k, 0)).collect();
            watched.push(set_rate(&store, threads, KEYS, dur));
            drop(watches);
        }
        let (a, b) = (median(none), median(watched));
        println!(
            "| {threads} | {:.2} | {:.2} | {:.3} | {} |",
            a / 1e6,
            b / 1e6,
            b / a,
            store.watch_counts().1
        );
    }
    println!();
}

fn db_rate(db: &Db<String, String>, reader: bool, dur: Duration, target: f64) -> (f64, u64, u64) {
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let (read, cuts) = std::thread::scope(|s| {
        let follower = s.spawn(|| {
            if !reader {
                return (0u64, 0u64);
            }
            // A tenth of the expected write rate, in 1 ms steps.
            let per_ms = ((target / 10.0) / 1000.0).max(1.0) as usize;
            let (mut after, mut read, mut cuts) = (db.feed().watermark(), 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match db.changes(after, per_ms) {
                    Ok(changes) => {
                        read += changes.len() as u64;
                        if let Some(last) = changes.last() {
                            after = last.index();
                        }
                    }
                    Err(compacted) => {
                        cuts += 1;
                        after = compacted.oldest;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (read, cuts)
        });
        let mut i = 0u64;
        let started = Instant::now();
        while started.elapsed() < dur {
            for _ in 0..256 {
                let key = format!("k{}", i % 100_000);
                let _ = db.set(key, "v".repeat(32));
                i += 1;
            }
        }
        written.store(i, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        follower.join().unwrap()
    });
    (
        written.load(Ordering::Relaxed) as f64 / dur.as_secs_f64(),
        read,
        cuts,
    )
}

fn feed(dur: Duration, rounds: usize) {
    println!("### A reader of the change feed at a tenth of the write rate\n");
    println!("`Db<String, String>` in memory (feed on, default history), one writer thread, 100,000 keys, 32 B values; M sets/s, median of {rounds} alternating rounds of {dur:?}\n");
    let db: Db<String, String> = Db::memory(Options::default());
    let warm = db_rate(&db, false, dur, 0.0).0;
    let (mut none, mut with) = (Vec::new(), Vec::new());
    let (mut read, mut cuts) = (0, 0);
    for _ in 0..rounds {
        none.push(db_rate(&db, false, dur, warm).0);
        let (rate, r, c) = db_rate(&db, true, dur, warm);
        with.push(rate);
        read += r;
        cuts += c;
    }
    let (a, b) = (median(none), median(with));
    println!("| no reader | reader at 1/10 | ratio | changes read | times cut (compacted) |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.3} | {:.3} | {:.3} | {read} | {cuts} |\n",
        a / 1e6,
        b / 1e6,
        b / a
    );
}

/// The server's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends one request on `conn`; reads one whole response (Content-Length bodies only).
fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> String {
    conn.get_mut().write_all(request.as_bytes()).unwrap();
    read_response(conn)
}

fn read_response(conn: &mut BufReader<TcpStream>) -> String {
    let mut len = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(watchers: usize) {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/caskv");
    if !bin.exists() {
        println!(
            "### HTTP: skipped ({} is missing: `cargo build --release`)\n",
            bin.display()
        );
        return;
    }
    let addr: SocketAddr = "127.0.0.1:18712".parse().unwrap();
    let server = Server(
        Command::new(&bin)
            .args([
                "serve",
                "--addr",
                &addr.to_string(),
                "--max-connections",
                "4096",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let mut writer = loop {
        if let Ok(c) = TcpStream::connect(addr) {
            break BufReader::new(c);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let put = |w: &mut BufReader<TcpStream>, key: &str| {
        let body = r#"{"value":"x"}"#;
        let reply = exchange(
            w,
            &format!(
                "PUT /kv/{key} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        let at = reply.find("\"modify_index\":").unwrap() + 15;
        reply[at..].trim_end_matches('}').parse::<u64>().unwrap()
    };
    let indices: Vec<u64> = (0..watchers)
        .map(|i| put(&mut writer, &format!("w{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // What an idle keep-alive connection costs, to compare a long-poll with.
    let base = rss_kib(server.0.id());
    let idle: Vec<BufReader<TcpStream>> = (0..watchers)
        .map(|i| {
            let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
            exchange(&mut c, &format!("GET /kv/w{i} HTTP/1.1\r\nHost: b\r\n\r\n"));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let with_idle = rss_kib(server.0.id());
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(server.0.id());
    let mut polls: Vec<BufReader<TcpStream>> = indices
        .iter()
        .enumerate()
        .map(|(i, index)| {
            let mut c = BufReader::new(TcpStream::connect(addr).unwrap());
            c.get_mut()
                .write_all(
                    format!("GET /kv/w{i}?index={index}&wait=60s HTTP/1.1\r\nHost: b\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let held = rss_kib(server.0.id());
    let (mut from_ack, mut from_request) = (Vec::new(), Vec::new());
    for (i, poll) in polls.iter_mut().enumerate() {
        let sent = Instant::now();
        put(&mut writer, &format!("w{i}"));
        let acked = Instant::now();
        let body = read_response(poll);
        let woke = Instant::now();
        assert!(body.contains("\"value\":\"x\""), "{body}");
        from_ack.push(woke.saturating_duration_since(acked).as_secs_f64() * 1e6);
        from_request.push((woke - sent).as_secs_f64() * 1e6);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    println!("### HTTP: {watchers} blocked long-polls on distinct keys (`caskv serve`, release, loopback)\n");
    println!("| measure | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("wake after the write's acknowledgement (µs)", &mut from_ack),
        ("wake after the write's request (µs)", &mut from_request),
    ] {
        let max = pct(v, 1.0);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            pct(v, 0.5),
            pct(v, 0.99),
            max
        );
    }
    println!(
        "\nServer RSS: {base} KiB, {with_idle} KiB with {watchers} idle keep-alive connections ({:.1} KiB each); {before} KiB after they closed, {held} KiB with {watchers} long-polls held: {:.1} KiB per idle long-poll\n",
        (with_idle.saturating_sub(base)) as f64 / watchers as f64,
        (held.saturating_sub(before)) as f64 / watchers as f64
    );
}

fn main() {
    let timed = std::env::args().any(|a| a == "--bench");
    let parts = std::env::var("CASKV_WATCH_PARTS").unwrap_or_else(|_| "writers,feed,http".into());
    let (dur, rounds, watchers) = if timed {
        (Duration::from_secs(1), 5, 1000)
    } else {
        (Duration::from_millis(20), 1, 20)
    };
    println!("## watches: issue #12's goals\n");
    if parts.contains("writers") {
        writers(dur, rounds);
    }
    if parts.contains("feed") {
        feed(dur, rounds);
    }
    if parts.contains("http") {
        http(watchers);
    }
}
