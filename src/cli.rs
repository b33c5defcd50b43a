//! The command line: `caskv serve` and a small client (`caskv kv …`, `caskv service …`) for
//! people who live in a terminal.
//!
//! Client exit codes: 0 success, 1 any other failure (connection, bad request, server error),
//! 3 not found, 4 CAS conflict. Errors print as one line on stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::defaults;
use crate::persist::FsyncPolicy;
use crate::server::{AppState, ConnLimits, Limits};

/// Exit code: the key or service does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: a CAS condition failed.
pub const EXIT_CONFLICT: u8 = 4;
/// Exit code: the server's ACL refused the request (no token, an unknown one, or its rules).
pub const EXIT_DENIED: u8 = 5;

/// caskv: a lock-free versioned key-value store with compare-and-swap.
#[derive(Parser, Debug)]
#[command(name = "caskv", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Read and write keys on a running server.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Register and look up services on a running server.
    #[command(subcommand)]
    Service(ServiceCommand),
}

/// When a write is acknowledged relative to fsync (used with `--data-dir`).
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Fsync {
    Always,
    Everysec,
    Never,
}

impl From<FsyncPolicy> for Fsync {
    fn from(policy: FsyncPolicy) -> Self {
        match policy {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::EverySec => Fsync::Everysec,
            FsyncPolicy::Never => Fsync::Never,
        }
    }
}

impl From<Fsync> for FsyncPolicy {
    fn from(flag: Fsync) -> Self {
        match flag {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Everysec => FsyncPolicy::EverySec,
            Fsync::Never => FsyncPolicy::Never,
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CASKV_ADDR", default_value_t = defaults::ADDR)]
    addr: SocketAddr,
    /// Directory for the log and snapshots; without it the store lives in memory only.
    #[arg(long, env = "CASKV_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Durability of acknowledged writes (with --data-dir).
    #[arg(long, env = "CASKV_FSYNC", value_enum, default_value_t = Fsync::from(defaults::FSYNC))]
    fsync: Fsync,
    /// Time a service registration lives without a heartbeat.
    #[arg(long, env = "CASKV_SERVICE_TTL", default_value_t = defaults::SERVICE_TTL.into())]
    service_ttl: humantime::Duration,
    /// Longest key or service name, in bytes.
    #[arg(long, env = "CASKV_MAX_KEY_BYTES", default_value_t = defaults::MAX_KEY_BYTES)]
    max_key_bytes: usize,
    /// Longest value, in bytes.
    #[arg(long, env = "CASKV_MAX_VALUE_BYTES", default_value_t = defaults::MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "CASKV_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most operations in one batch.
    #[arg(long, env = "CASKV_MAX_BATCH", default_value_t = defaults::MAX_BATCH)]
    max_batch: usize,
    /// Most keys the KV store holds; beyond it, writes evict others (a cache). Default: none.
    #[arg(long, env = "CASKV_MAX_ENTRIES")]
    max_entries: Option<u64>,
    /// Most bytes of keys and values the KV store holds; beyond it, writes evict others.
    /// Split among up to four parts per core: a value larger than one part is evicted as soon
    /// as it is written. Default: none.
    #[arg(long, env = "CASKV_MAX_MEMORY")]
    max_memory: Option<u64>,
    /// Changes the feed (`GET /watch`) remembers; a client asking for older ones gets a 410.
    #[arg(long, env = "CASKV_HISTORY_CHANGES", default_value_t = defaults::HISTORY_CHANGES)]
    history_changes: usize,
    /// Bytes of changes (keys and values) the feed remembers.
    #[arg(long, env = "CASKV_HISTORY_BYTES", default_value_t = defaults::HISTORY_BYTES)]
    history_bytes: usize,
    /// How long a change-feed stream waits for a client that reads nothing before it cuts
    /// the stream with `event: lagged`.
    #[arg(long, env = "CASKV_WATCH_LAG_TIMEOUT", default_value_t = defaults::WATCH_LAG_TIMEOUT.into())]
    watch_lag_timeout: humantime::Duration,
    /// Most operations in one Consul transaction (`PUT /v1/txn`); more is a 413.
    #[arg(long, env = "CASKV_MAX_TXN_OPS", default_value_t = defaults::MAX_TXN_OPS)]
    max_txn_ops: usize,
    /// The shortest TTL a Consul session may ask for (Consul's own is 10s).
    #[arg(long, env = "CASKV_MIN_SESSION_TTL", default_value_t = defaults::MIN_SESSION_TTL.into())]
    min_session_ttl: humantime::Duration,
    /// Threads that serve requests. Default: one per core the process may run on.
    #[arg(long, env = "CASKV_WORKERS")]
    workers: Option<std::num::NonZeroUsize>,
    /// Most connections served at once.
    #[arg(long, env = "CASKV_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Time a client has to send a request head.
    #[arg(long, env = "CASKV_HEADER_TIMEOUT", default_value_t = defaults::HEADER_TIMEOUT.into())]
    header_timeout: humantime::Duration,
    /// Time a client has to send a request body.
    #[arg(long, env = "CASKV_BODY_TIMEOUT", default_value_t = defaults::BODY_TIMEOUT.into())]
    body_timeout: humantime::Duration,
    /// Tokens and their rules (JSON; see README "Securing caskv"); re-read on SIGHUP and on
    /// `POST /admin/reload`. Without it every request may read and write everything.
    #[arg(long, env = "CASKV_ACL_FILE")]
    acl_file: Option<std::path::PathBuf>,
    /// Serve a non-loopback address without an ACL file (refused otherwise).
    #[arg(long, env = "CASKV_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Serve TLS with this certificate chain (PEM); re-read on SIGHUP.
    #[arg(long, env = "CASKV_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "CASKV_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Ask every client for a certificate signed by these CAs (PEM): mutual TLS.
    #[arg(long, env = "CASKV_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct Remote {
    /// The server's address.
    #[arg(
        long,
        env = "CASKV_ADDR",
        default_value_t = defaults::ADDR.to_string(),
        global = true
    )]
    addr: String,
    /// The token to send (`Authorization: Bearer`), for a server with an ACL file.
    #[arg(long, env = "CASKV_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Trust the server certificates this CA (PEM) signed, for an `https://` address.
    #[arg(long, env = "CASKV_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Print a key's value (or its metadata as JSON).
    Get {
        key: String,
        /// Print value, flags and indices as JSON.
        #[arg(long)]
        metadata: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set a key; prints the new modify_index.
    Put {
        key: String,
        value: String,
        /// Only if the key's modify_index is N (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
        /// Opaque flags to store with the value.
        #[arg(long)]
        flags: Option<u64>,
        /// Time to live ("30s", "1h 30m"; at most a year): the key is gone once it passes.
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a key; prints the index of the delete.
    Delete {
        key: String,
        /// Only if the key's modify_index is N.
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List keys, one per line, sorted.
    List {
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print each change of a key as it happens, one JSON object per line, until interrupted
    /// or until the server ends the stream.
    Watch {
        key: String,
        /// Watch every key starting with KEY, not KEY alone.
        #[arg(long)]
        prefix: bool,
        /// Start after index N (changes since then first); default: only changes from now on.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Register (or replace) a service; prints the new modify_index.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        port: u16,
        /// A tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata as key=value (repeat for several).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// Only if the registration's modify_index is N (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a service as JSON.
    Get {
        name: String,
        /// Include indices and expiry.
        #[arg(long)]
        metadata: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print live services as JSON.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a service; prints the index of the removal.
    Deregister {
        name: String,
        /// Only if the registration's modify_index is N.
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Renew a service's TTL; prints the new expiry.
    Heartbeat {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not key=value"))
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Kv(cmd) => client(kv(cmd)),
        Command::Service(cmd) => client(service(cmd)),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    if args.acl_file.is_none() && !args.addr.ip().is_loopback() && !args.allow_unauthenticated {
        eprintln!(
            "caskv: refusing to serve {} without --acl-file: anyone who can reach it could read and write every key (give --acl-file, or --allow-unauthenticated to accept that)",
            args.addr
        );
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: `caskv serve 2>file` gets plain lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let limits = Limits {
        max_key_bytes: args.max_key_bytes,
        max_value_bytes: args.max_value_bytes,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        max_entries: args.max_entries,
        max_memory: args.max_memory,
        history: crate::HistoryLimits {
            max_changes: args.history_changes,
            max_bytes: args.history_bytes,
        },
        watch_lag_timeout: args.watch_lag_timeout.into(),
        max_txn_ops: args.max_txn_ops,
        min_session_ttl: args.min_session_ttl.into(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = crate::server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            };
            match crate::server::tls::Tls::load(files) {
                Ok(tls) => Some(std::sync::Arc::new(tls)),
                Err(e) => {
                    eprintln!("caskv: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let conn = ConnLimits {
        max_connections: args.max_connections.max(1),
        header_timeout: args.header_timeout.into(),
        body_timeout: args.body_timeout.into(),
        tls,
        ..ConnLimits::default()
    };
    let state = match &args.data_dir {
        None => AppState::new(limits, args.service_ttl.into()),
        Some(dir) => {
            let fsync = FsyncPolicy::from(args.fsync);
            match AppState::open(dir, fsync, limits, args.service_ttl.into()) {
                Ok(state) => state,
                Err(e) => {
                    eprintln!("caskv: cannot open the data directory: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let state = match &args.acl_file {
        None => state,
        Some(path) => match state.with_acl_file(path) {
            Ok(state) => state,
            Err(e) => {
                eprintln!("caskv: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.get());
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caskv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(args.addr, state, conn)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caskv: cannot serve on {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// A failed client call: the line to print and the exit code.
struct Failure(String, u8);

type Outcome = Result<String, Failure>;

fn client(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure(line, code)) => {
            eprintln!("caskv: {line}");
            ExitCode::from(code)
        }
    }
}

/// Percent-encodes a key for a URL path, keeping `/` as the separator it is in keys.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn encode_query(value: &str) -> String {
    encode_path(value).replace('/', "%2F")
}

/// The server's base URL: `--addr` as given when it is a URL, else `http://` before it.
fn base_url(remote: &Remote) -> String {
    if remote.addr.starts_with("http://") || remote.addr.starts_with("https://") {
        remote.addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", remote.addr)
    }
}

/// An agent for `remote` (its `--ca-cert`, if any) that hands back every status as a response.
/// `global` bounds a whole call, body included; without it (a stream, read for as long as it
/// lasts) the connect and the wait for the response head are still bounded.
fn agent(remote: &Remote, global: Option<Duration>) -> Result<ureq::Agent, Failure> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(global);
    if global.is_none() {
        config = config
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(CALL_TIMEOUT));
    }
    if let Some(path) = &remote.ca_cert {
        config = config.tls_config(trusting(path)?);
    }
    Ok(config.build().into())
}

/// The longest a plain call may take, and a stream may wait for its response head.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection (TCP and TLS) may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The failure for a non-2xx answer: the server's `message` (else the status and body) and
/// the exit code of its status.
fn http_failure(status: u16, body: &Value) -> Failure {
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}: {body}"));
    let code = match status {
        401 | 403 => EXIT_DENIED,
        404 => EXIT_NOT_FOUND,
        409 => EXIT_CONFLICT,
        _ => 1,
    };
    Failure(message, code)
}

/// Sends one request and returns the JSON body of a 2xx, or the one-line failure.
fn call(remote: &Remote, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
    let base = base_url(remote);
    let url = format!("{base}{path}");
    let agent = agent(remote, Some(CALL_TIMEOUT))?;
    let bearer = remote.token.as_ref().map(|t| format!("Bearer {t}"));
    let sent = match (method, body) {
        ("GET", _) => with_token(agent.get(&url), &bearer).call(),
        ("DELETE", _) => with_token(agent.delete(&url), &bearer).call(),
        ("PUT", Some(b)) => with_token(agent.put(&url), &bearer).send_json(b),
        ("POST", Some(b)) => with_token(agent.post(&url), &bearer).send_json(b),
        ("PUT", None) => with_token(agent.put(&url), &bearer).send_empty(),
        _ => with_token(agent.post(&url), &bearer).send_empty(),
    };
    let mut response = sent.map_err(|e| Failure(format!("cannot reach {base}: {e}"), 1))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| Failure(format!("cannot read the response from {base}: {e}"), 1))?;
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if (200..300).contains(&status) {
        return Ok(json);
    }
    Err(http_failure(status, &json))
}

/// A TLS configuration that trusts the CA certificates in the PEM file `path` (and no other).
fn trusting(path: &std::path::Path) -> Result<ureq::tls::TlsConfig, Failure> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let cannot = |e: &dyn std::fmt::Display| {
        Failure(
            format!("cannot read the CA certificate {}: {e}", path.display()),
            1,
        )
    };
    let pem = std::fs::read(path).map_err(|e| cannot(&e))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| cannot(&e))?;
    if certs.is_empty() {
        return Err(cannot(&"no certificate in it"));
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(std::sync::Arc::new(certs)))
        .build())
}

/// The request with an `Authorization` header, when there is a token.
fn with_token<B>(
    request: ureq::RequestBuilder<B>,
    bearer: &Option<String>,
) -> ureq::RequestBuilder<B> {
    match bearer {
        Some(value) => request.header("authorization", value),
        None => request,
    }
}

fn field(v: &Value, name: &str) -> String {
    match v.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn kv(cmd: KvCommand) -> Outcome {
    match cmd {
        KvCommand::Get {
            key,
            metadata,
            remote,
        } => {
            let path = format!(
                "/kv/{}{}",
                encode_path(&key),
                if metadata { "?metadata=true" } else { "" }
            );
            let v = call(&remote, "GET", &path, None)?;
            Ok(if metadata {
                pretty(&v)
            } else {
                field(&v, "value")
            })
        }
        KvCommand::Put {
            key,
            value,
            cas,
            flags,
            ttl,
            remote,
        } => {
            let mut body = json!({ "value": value });
            if let Some(c) = cas {
                body["cas"] = json!(c);
            }
            if let Some(f) = flags {
                body["flags"] = json!(f);
            }
            if let Some(t) = ttl {
                body["ttl"] = json!(t.to_string());
            }
            let v = call(
                &remote,
                "PUT",
                &format!("/kv/{}", encode_path(&key)),
                Some(body),
            )?;
            Ok(field(&v, "modify_index"))
        }
        KvCommand::Delete { key, cas, remote } => {
            let query = cas.map(|c| format!("?cas={c}")).unwrap_or_default();
            let v = call(
                &remote,
                "DELETE",
                &format!("/kv/{}{query}", encode_path(&key)),
                None,
            )?;
            Ok(field(&v, "modify_index"))
        }
        KvCommand::List { prefix, remote } => {
            let query = prefix
                .map(|p| format!("?prefix={}", encode_query(&p)))
                .unwrap_or_default();
            let v = call(&remote, "GET", &format!("/kv/{query}"), None)?;
            let keys: Vec<String> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Ok(keys.join("\n"))
        }
        KvCommand::Watch {
            key,
            prefix,
            after,
            remote,
        } => watch(&key, prefix, after, &remote),
    }
}

/// `caskv kv watch`: follows `GET /watch?prefix=KEY[&after=N]` (server-sent events) and prints
/// each KV change as one JSON line, flushed at once: every change under the prefix with
/// `prefix`, else only those of `key` (a batch's item for it with the batch's `index` added).
/// Service events are skipped; `event: lagged` reconnects from its `last_index`. Ends with
/// nothing more to print when the server ends the stream or stdout is closed.
fn watch(key: &str, prefix: bool, after: Option<u64>, remote: &Remote) -> Outcome {
    if key.is_empty() && !prefix {
        return Err(Failure(
            "the key is empty (to watch every key: caskv kv watch '' --prefix)".into(),
            2,
        ));
    }
    let base = base_url(remote);
    let agent = agent(remote, None)?;
    let bearer = remote.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut out = std::io::stdout().lock();
    let mut after = after;
    loop {
        let mut url = format!("{base}/watch?prefix={}", encode_query(key));
        if let Some(n) = after {
            url.push_str(&format!("&after={n}"));
        }
        let response = with_token(agent.get(&url), &bearer)
            .header("accept", "text/event-stream")
            .call()
            .map_err(|e| Failure(format!("cannot reach {base}: {e}"), 1))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response
                .into_body()
                .read_to_string()
                .map_err(|e| Failure(format!("cannot read the response from {base}: {e}"), 1))?;
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Err(http_failure(status, &json));
        }
        let streams = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !streams {
            return Err(Failure(
                format!("{base}/watch did not answer with an event stream"),
                1,
            ));
        }
        let broke =
            |e: &dyn std::fmt::Display| Failure(format!("the stream from {base} broke: {e}"), 1);
        let mut reader = std::io::BufReader::new(response.into_body().into_reader());
        let mut sse = Sse::default();
        let mut line = Vec::new();
        let resume = loop {
            line.clear();
            if std::io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(|e| broke(&e))?
                == 0
            {
                break None; // the server ended the stream
            }
            let text = std::str::from_utf8(&line).map_err(|e| broke(&e))?;
            let Some(event) = sse.line(text) else {
                continue;
            };
            match event.kind.as_str() {
                "" | "message" => {
                    for printed in printable(&event.data, key, prefix)? {
                        match emit(&mut out, &printed) {
                            Ok(()) => {}
                            // A reader that went away (`caskv kv watch … | head -1`): done.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                                return Ok(String::new())
                            }
                            Err(e) => {
                                return Err(Failure(format!("cannot write to stdout: {e}"), 1))
                            }
                        }
                    }
                }
                "lagged" => break Some(resume_index(&event)?),
                _ => {} // `service`, and whatever a later server adds
            }
        };
        match resume {
            None => return Ok(String::new()),
            Some(n) => after = Some(n),
        }
    }
}

/// Writes one line and flushes it (scripts read it as it comes).
fn emit(out: &mut impl std::io::Write, line: &str) -> std::io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

/// One server-sent event: its `event:` type (empty for none), `id:` and `data:`.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    kind: String,
    id: Option<String>,
    data: String,
}

/// Builds server-sent events from a stream's lines (the parts of the format caskv sends:
/// `event`, `id`, `data`, comments; other fields are ignored).
#[derive(Debug, Default)]
struct Sse {
    pending: SseEvent,
    has_data: bool,
}

impl Sse {
    /// Takes one line (with or without its line ending); a blank line ends the event, which is
    /// returned when it had data.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            let event = std::mem::take(&mut self.pending);
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line.starts_with(':') {
            return None; // a comment: the server's heartbeat
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.pending.kind = value.to_string(),
            "id" => self.pending.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// The index to resume from after `event: lagged`: its data's `last_index`, else its `id`.
fn resume_index(event: &SseEvent) -> Result<u64, Failure> {
    serde_json::from_str::<Value>(&event.data)
        .ok()
        .and_then(|v| v.get("last_index").and_then(Value::as_u64))
        .or_else(|| event.id.as_deref().and_then(|id| id.trim().parse().ok()))
        .ok_or_else(|| {
            Failure(
                format!(
                    "the server cut the stream without an index to resume from: {}",
                    event.data
                ),
                1,
            )
        })
}

/// The lines to print for a KV event's `data`: the object as is when watching a prefix, or
/// when it is a change of `key`; for a batch watched by key, each of `key`'s items with the
/// batch's `index` added; nothing for other keys.
fn printable(data: &str, key: &str, prefix: bool) -> Result<Vec<String>, Failure> {
    let value: Value = serde_json::from_str(data)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            Failure(
                format!("the server sent an event that is not a JSON object: {data}"),
                1,
            )
        })?;
    // One line each: the data as sent, unless it came on several `data:` lines.
    let as_is = || {
        if data.contains('\n') {
            value.to_string()
        } else {
            data.to_string()
        }
    };
    if prefix {
        return Ok(vec![as_is()]);
    }
    if let Some(items) = value.get("items").and_then(Value::as_array) {
        let index = value.get("index").cloned().unwrap_or(Value::Null);
        return Ok(items
            .iter()
            .filter(|item| item.get("key").and_then(Value::as_str) == Some(key))
            .filter_map(Value::as_object)
            .map(|item| {
                let mut line = serde_json::Map::new();
                line.insert("index".into(), index.clone());
                line.extend(item.iter().map(|(k, v)| (k.clone(), v.clone())));
                Value::Object(line).to_string()
            })
            .collect());
    }
    Ok(if value.get("key").and_then(Value::as_str) == Some(key) {
        vec![as_is()]
    } else {
        Vec::new()
    })
}

fn service(cmd: ServiceCommand) -> Outcome {
    match cmd {
        ServiceCommand::Register {
            name,
            address,
            port,
            tags,
            meta,
            cas,
            remote,
        } => {
            let mut body = json!({ "name": name, "address": address, "port": port });
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if !meta.is_empty() {
                body["meta"] = json!(meta
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>());
            }
            if let Some(c) = cas {
                body["cas"] = json!(c);
            }
            let v = call(&remote, "POST", "/services", Some(body))?;
            Ok(field(&v, "modify_index"))
        }
        ServiceCommand::Get {
            name,
            metadata,
            remote,
        } => {
            let path = format!(
                "/services/{}{}",
                encode_query(&name),
                if metadata { "?metadata=true" } else { "" }
            );
            Ok(pretty(&call(&remote, "GET", &path, None)?))
        }
        ServiceCommand::List { remote } => Ok(pretty(&call(&remote, "GET", "/services", None)?)),
        ServiceCommand::Deregister { name, cas, remote } => {
            let query = cas.map(|c| format!("?cas={c}")).unwrap_or_default();
            let v = call(
                &remote,
                "DELETE",
                &format!("/services/{}{query}", encode_query(&name)),
                None,
            )?;
            Ok(field(&v, "modify_index"))
        }
        ServiceCommand::Heartbeat { name, remote } => {
            let v = call(
                &remote,
                "PUT",
                &format!("/services/{}/heartbeat", encode_query(&name)),
                None,
            )?;
            Ok(field(&v, "expires_at"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default of `serve` is the library's own: `Limits::default`, `ConnLimits::default`
    /// and `caskv::defaults`, which the flags' defaults are made from; this checks that each
    /// flag parses back to the value the library uses.
    #[test]
    fn serve_defaults_are_the_librarys() {
        let command = <Cli as clap::CommandFactory>::command();
        let serve = command
            .find_subcommand("serve")
            .expect("a serve subcommand");
        let vars: Vec<_> = serve.get_arguments().filter_map(|a| a.get_env()).collect();
        assert!(
            vars.len() >= 8,
            "serve's flags name their variables: {vars:?}"
        );
        for var in vars {
            assert!(
                std::env::var_os(var).is_none(),
                "{var:?} is set: defaults not testable"
            );
        }
        let Cli {
            command: Command::Serve(args),
        } = Cli::try_parse_from(["caskv", "serve"]).unwrap()
        else {
            panic!("`caskv serve` did not parse as serve");
        };
        let (limits, conn) = (Limits::default(), ConnLimits::default());
        assert_eq!(args.max_key_bytes, limits.max_key_bytes);
        assert_eq!(args.max_value_bytes, limits.max_value_bytes);
        assert_eq!(args.max_body_bytes, limits.max_body_bytes);
        assert_eq!(args.max_batch, limits.max_batch);
        assert_eq!(args.max_connections, conn.max_connections);
        assert_eq!(Duration::from(args.header_timeout), conn.header_timeout);
        assert_eq!(Duration::from(args.body_timeout), conn.body_timeout);
        assert_eq!(Duration::from(args.service_ttl), defaults::SERVICE_TTL);
        assert_eq!(args.addr, defaults::ADDR);
        assert_eq!(FsyncPolicy::from(args.fsync), defaults::FSYNC);
    }

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_path("locks/my-resource"), "locks/my-resource");
        assert_eq!(encode_path("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(encode_path("é"), "%C3%A9");
        assert_eq!(encode_query("a/b"), "a%2Fb");
    }

    #[test]
    fn query_values_escape_everything_but_unreserved_characters() {
        assert_eq!(
            encode_query("a b&c=d/é+?#"),
            "a%20b%26c%3Dd%2F%C3%A9%2B%3F%23"
        );
        assert_eq!(encode_query("Az09-._~"), "Az09-._~");
    }

    /// Feeds `text` to an [`Sse`] line by line; returns the events it completed.
    fn events(text: &str) -> Vec<SseEvent> {
        let mut sse = Sse::default();
        text.split_inclusive('\n')
            .filter_map(|line| sse.line(line))
            .collect()
    }

    #[test]
    fn server_sent_events_parse_with_types_ids_comments_and_crlf() {
        let got = events(
            ": heartbeat\n\nid: 5\ndata: {\"a\":1}\n\nid: 6\nevent: service\r\ndata:{}\r\n\r\n\
             id: 7\nevent: lagged\ndata: x\ndata: y\n\nid: 8\ndata: cut off",
        );
        let event = |kind: &str, id: &str, data: &str| SseEvent {
            kind: kind.into(),
            id: Some(id.into()),
            data: data.into(),
        };
        assert_eq!(
            got,
            [
                event("", "5", "{\"a\":1}"),
                event("service", "6", "{}"),
                event("lagged", "7", "x\ny"),
            ]
        );
    }

    #[test]
    fn lagged_resumes_from_its_last_index_else_its_id() {
        let lagged = |id: Option<&str>, data: &str| SseEvent {
            kind: "lagged".into(),
            id: id.map(str::to_string),
            data: data.into(),
        };
        let at = |e: SseEvent| resume_index(&e).map_err(|Failure(line, _)| line);
        assert_eq!(
            at(lagged(Some("3"), r#"{"last_index":9,"message":"m"}"#)),
            Ok(9)
        );
        assert_eq!(at(lagged(Some("3"), "not json")), Ok(3));
        assert!(at(lagged(None, "{}")).is_err());
    }

    #[test]
    fn a_key_watch_prints_its_own_changes_and_its_batch_items() {
        let print = |data: &str, key: &str, prefix: bool| {
            printable(data, key, prefix).map_err(|Failure(line, _)| line)
        };
        let set = r#"{"index":5,"op":"set","key":"a","value":"1","flags":0}"#;
        let other = r#"{"index":6,"op":"delete","key":"ab"}"#;
        let batch = r#"{"index":7,"op":"batch","items":[{"op":"set","key":"ab","value":"x"},{"op":"delete","key":"a"}]}"#;
        assert_eq!(print(set, "a", false), Ok(vec![set.to_string()]));
        assert_eq!(print(other, "a", false), Ok(vec![]));
        assert_eq!(
            print(batch, "a", false),
            Ok(vec![r#"{"index":7,"key":"a","op":"delete"}"#.to_string()])
        );
        // A prefix watch prints every object as sent.
        for data in [set, other, batch] {
            assert_eq!(print(data, "a", true), Ok(vec![data.to_string()]));
        }
        // Data over two lines still prints as one.
        assert_eq!(
            print("{\"index\":1,\n\"key\":\"a\"}", "a", true),
            Ok(vec![r#"{"index":1,"key":"a"}"#.to_string()])
        );
        assert!(print("[1]", "a", true).is_err());
        assert!(print("not json", "a", false).is_err());
    }

    #[test]
    fn the_command_line_parses() {
        Cli::try_parse_from([
            "caskv",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--service-ttl",
            "2s",
        ])
        .unwrap();
        Cli::try_parse_from([
            "caskv", "kv", "put", "k", "v", "--cas", "0", "--addr", "x:1",
        ])
        .unwrap();
        Cli::try_parse_from([
            "caskv",
            "service",
            "register",
            "--name",
            "w",
            "--address",
            "a",
            "--port",
            "80",
            "--meta",
            "a=b",
        ])
        .unwrap();
        assert!(Cli::try_parse_from(["caskv", "kv", "put", "k", "v", "--cas", "abc"]).is_err());
        let Cli {
            command:
                Command::Kv(KvCommand::Watch {
                    key, prefix, after, ..
                }),
        } = Cli::try_parse_from([
            "caskv", "kv", "watch", "config/", "--prefix", "--after", "7",
        ])
        .unwrap()
        else {
            panic!("`caskv kv watch` did not parse as watch");
        };
        assert_eq!((key.as_str(), prefix, after), ("config/", true, Some(7)));
        assert!(Cli::try_parse_from(["caskv", "kv", "watch", "k", "--after", "-1"]).is_err());
    }
}
