//! Raw HTTP/1.1 over a `TcpStream`, for what no client library sends: bytes no URI may hold,
//! pipelined and half-closed requests, bodies that never end. Included by path
//! (`#[path = "support/raw.rs"] mod raw;`), so a test file compiles only the support it uses.

// Each test file uses part of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long a raw connection waits on a read or a write before the test fails instead of
/// hanging.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// The response said `Connection: close`.
    pub close: bool,
    pub body: Vec<u8>,
    /// The status line and headers, as sent.
    pub head: String,
}

impl RawReply {
    /// The value of header `name` (case-insensitive), if the response has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// An error the router produced: `{"error", "message"}`, both non-empty strings.
    #[track_caller]
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        for field in ["error", "message"] {
            assert!(
                body[field].as_str().is_some_and(|s| !s.is_empty()),
                "error body lacks a string {field:?}: {body}"
            );
        }
    }

    /// A rejection: `status`, with the SPEC's JSON body where the router saw the request, or an
    /// empty body where hyper refused it before routing (an unparsable request line).
    #[track_caller]
    pub fn assert_rejected(&self, status: u16) {
        if self.body.is_empty() {
            assert_eq!(self.status, status, "an empty-bodied answer");
        } else {
            self.assert_json_error(status);
        }
    }
}

/// A raw connection that keeps what it read past one response for the next (pipelining).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects, with [`RAW_TIMEOUT`] on reads and writes.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(RAW_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RAW_TIMEOUT)).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send a request");
    }

    /// Reads into the buffer; 0 on EOF or reset. Panics on a read timeout: the server hung.
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no response within {RAW_TIMEOUT:?}: the server hung")
            }
            Err(_) => 0,
        }
    }

    /// Reads one response head (through its blank line, which it includes), leaving what
    /// follows for the next read; `None` if the server closed the connection before sending
    /// any of it.
    pub fn head(&mut self) -> Option<String> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill() == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed mid-head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        Some(head)
    }

    /// Reads one response (its body by `Content-Length`, or up to EOF); `None` if the server
    /// closed the connection before sending any of it.
    pub fn reply(&mut self) -> Option<RawReply> {
        let head = self.head()?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        assert!(
            header("transfer-encoding").is_none(),
            "unexpected chunked response: {head}"
        );
        let body = match header("content-length") {
            Some(len) => {
                let len: usize = len.parse().unwrap();
                while self.buf.len() < len {
                    assert!(self.fill() > 0, "connection closed mid-body");
                }
                self.buf.drain(..len).collect()
            }
            None if status < 200 || status == 204 || status == 304 => Vec::new(),
            None => {
                while self.fill() > 0 {}
                std::mem::take(&mut self.buf)
            }
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Some(RawReply {
            status,
            close,
            body,
            head,
        })
    }

    /// True when the server has closed the connection (EOF or reset) with nothing more to read.
    pub fn closed_by_server(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}

/// `METHOD target HTTP/1.1` with a JSON body (a `Content-Length` one) if given; `target` is raw
/// bytes, so it may hold what no URI may.
pub fn request(method: &str, target: &[u8], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} ").into_bytes();
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(body) = body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One request on a fresh connection. The request is written from another thread, as the
/// server may answer and close before it has read all of it (write errors are then expected).
/// `None` if the server closed without answering.
pub fn exchange(addr: SocketAddr, request: Vec<u8>) -> Option<RawReply> {
    let mut conn = Conn::open(addr);
    let mut writer = conn.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let reply = conn.reply();
    // Unblocks the writer if the server stopped reading.
    let _ = conn.stream.shutdown(Shutdown::Both);
    sender.join().unwrap();
    reply
}

/// [`exchange`] that must get an answer.
#[track_caller]
pub fn answered(addr: SocketAddr, request: Vec<u8>) -> RawReply {
    let shown = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
    exchange(addr, request).unwrap_or_else(|| panic!("no answer to {shown:?}"))
}

/// The status of the response in `bytes`, if they hold a status line.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
