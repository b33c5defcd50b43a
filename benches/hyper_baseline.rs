//! The ceiling of the HTTP stack caskv is built on: a bare hyper 1 server (HTTP/1.1,
//! keep-alive, the same tokio multi-thread runtime and hyper-util connection glue as
//! `caskv serve`) that answers every request with a constant JSON body of the size of caskv's
//! `GET /kv/{key}` answer. Built from the benches, never shipped.
//!
//! `benches/server.sh` runs it beside `caskv serve` and `redis-server` and loads all three with
//! the same clients. By hand: `cargo bench --bench hyper_baseline -- --addr 127.0.0.1:18600`
//! (without `--addr` it prints what it is and exits, so a plain `cargo bench` passes through).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What `GET /kv/hot` answers in caskv for a 64-byte value.
const BODY: &str =
    r#"{"key":"hot","value":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#;

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap_or_default())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args
        .iter()
        .position(|a| a == "--addr")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        println!("hyper_baseline: a constant-body hyper server; run it with --addr HOST:PORT (see benches/server.sh)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
