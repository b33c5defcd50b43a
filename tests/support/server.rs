//! The in-process server the HTTP tests drive, and the `ureq` client they drive it with.
//!
//! [`Server::spawn`] serves through `caskv::server::spawn` (what `caskv serve` runs: the router,
//! the connection loop and the service reaper) on an ephemeral loopback port, on a background
//! thread that owns a two-worker tokio runtime. Each test file sets its own limits. Included by
//! path (`#[path = "support/server.rs"] mod server;`), so a test file compiles only the support
//! it uses.

// Each test file uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use caskv::server::{AppState, ConnLimits, Limits};
use serde_json::Value;
use tokio::sync::oneshot;

/// How long any single exchange through a [`Client`] may take before the test fails instead of
/// hanging.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on `127.0.0.1:0`. It derefs to its [`Client`]: `s.get("/kv/")`, `s.base`.
pub struct Server {
    pub addr: SocketAddr,
    /// What the server serves: a test may look at the store and the registry directly.
    pub state: AppState,
    client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// An in-memory state with the default size limits and a 30 s service TTL.
pub fn in_memory() -> AppState {
    AppState::new(Limits::default(), Duration::from_secs(30))
}

impl Server {
    /// Serves `state` under `conn` (its body timeout included) until [`begin_shutdown`]
    /// (or the drop); returns once the server listens.
    ///
    /// [`begin_shutdown`]: Server::begin_shutdown
    pub fn spawn(state: AppState, conn: ConnLimits) -> Server {
        let (shutdown, stop) = oneshot::channel::<()>();
        let (listening, bound) = mpsc::channel();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind loopback");
                let running = caskv::server::spawn(listener, served, conn).expect("serve");
                let _ = listening.send(running.addr());
                // A send or the handle's drop: either way, stop.
                let _ = stop.await;
                running.shutdown().await;
            });
        });
        let addr = bound.recv().expect("the server thread failed to start");
        Server {
            addr,
            state,
            client: Client::new(&format!("http://{addr}")),
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Begins a graceful shutdown: the server stops accepting and keeps serving in-flight
    /// requests.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for the serving thread to end (in-flight requests finished).
    pub fn stop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            t.join().expect("the server thread panicked");
        }
    }
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            // Do not turn a failing test's panic into an abort.
            let _ = t.join();
        }
    }
}

/// A pooling `ureq` client of one server (keep-alive connections). It hands back every status
/// (no error for a 4xx or 5xx) and gives up on an exchange after [`CLIENT_TIMEOUT`].
pub struct Client {
    pub agent: ureq::Agent,
    /// `http://{addr}`.
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(CLIENT_TIMEOUT))
                .build()
                .into(),
            base: base.to_string(),
        }
    }

    /// One request: status and body text, or the transport error. A body goes out as JSON with
    /// its `Content-Length`; without one, the request is what ureq sends bodiless.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, String), ureq::Error> {
        self.send_with(method, path, &[], body)
    }

    /// [`send`](Client::send) with extra headers.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, String), ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut response = match body {
            Some(b) => self.agent.run(
                builder
                    .header("content-type", "application/json")
                    .body(b.to_vec())
                    .unwrap(),
            ),
            None => self.agent.run(builder.body(()).unwrap()),
        }?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, text))
    }

    /// [`send`](Client::send) that must get an answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let (status, text) = self
            .send(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: no response: {e}"));
        Reply {
            status,
            text,
            request: format!("{method} {path}"),
        }
    }

    /// One request with a JSON body, if any, whose answer must be JSON: status and body.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let reply = self.request(method, path, bytes.as_deref());
        (reply.status, reply.json())
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(&body))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(&body))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None)
    }
}

/// A response through a [`Client`]: status and body text.
pub struct Reply {
    pub status: u16,
    pub text: String,
    /// `METHOD path`, for failure messages.
    request: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{}: {} body is not JSON ({e}): {:?}",
                self.request, self.status, self.text
            )
        })
    }
}

/// Asserts an error answer: `status`, and a JSON object with non-empty string `error` and
/// `message` (SPEC §3).
#[track_caller]
pub fn assert_error(reply: &(u16, Value), status: u16) {
    assert_eq!(reply.0, status, "body: {}", reply.1);
    for field in ["error", "message"] {
        assert!(
            reply.1[field].as_str().is_some_and(|s| !s.is_empty()),
            "error body lacks a string {field:?}: {}",
            reply.1
        );
    }
}
