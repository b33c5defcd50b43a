//! Support for the integration tests. `mod support;` brings the linearizability checker
//! ([`lin`]); the others are included one by one with `#[path = "support/<name>.rs"]`, so that a
//! test file compiles only what it uses: `watchdog.rs` (a deadlock fails the test), `server.rs`
//! (the in-process server and its `ureq` client), `raw.rs` (raw HTTP/1.1 over a `TcpStream`) and
//! `model.rs` (the sequential model of the store, which the `store_model` fuzz target includes
//! too).

pub mod lin;
