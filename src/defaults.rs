//! Every default of caskv in one place: the library's ([`Store`](crate::Store),
//! [`Db`](crate::Db), the [`Registry`](crate::Registry)), the server's and the CLI's, whose
//! flags show these values. Change one here and every place that uses it follows.
//!
//! # Example
//! ```
//! use caskv::{defaults, Store};
//! let store: Store<u64, u64> = Store::builder().max_batch(defaults::MAX_BATCH / 2).build();
//! assert_eq!(defaults::ADDR.to_string(), "127.0.0.1:8500");
//! # drop(store);
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::persist::FsyncPolicy;

/// Where `caskv serve` listens, and where the CLI client looks for it: loopback only.
pub const ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8500);

/// Most operations (keys) in one batch, and keys in one `get_many`.
pub const MAX_BATCH: usize = 1000;

/// Changes a feed's history keeps ([`HistoryLimits`](crate::HistoryLimits)).
pub const HISTORY_CHANGES: usize = 100_000;
/// Bytes of changes a feed's history keeps, as its events weigh them.
pub const HISTORY_BYTES: usize = 64 << 20;

/// How long a blocking read waits when it names no `wait` (Consul's default).
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// The longest `wait` a blocking read may ask for (a longer one is cut to it).
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(600);
/// How often an idle change-feed stream (`GET /watch`) sends a comment to keep proxies from
/// closing it.
pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);
/// Events a change-feed stream may have queued for a slow client before it is cut with an
/// `event: lagged` (the client resumes from the last index it got).
pub const WATCH_BUFFER: usize = 1024;
/// Bytes a change-feed stream may have queued for a slow client (whichever bound comes first).
pub const WATCH_BUFFER_BYTES: usize = 1 << 20;
/// How long a change-feed stream waits for its client to make room in a full buffer before
/// it ends the stream with `event: lagged` (a client that falls behind the history is cut at
/// once).
pub const WATCH_LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Most operations in one Consul transaction (`PUT /v1/txn`): Consul's own limit since 1.14.
pub const MAX_TXN_OPS: usize = 128;

/// The shortest TTL a Consul session may ask for: Consul's own minimum.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);

/// Attempts [`Store::update`](crate::Store::update) makes before it gives up.
pub const UPDATE_ATTEMPTS: u32 = 10;
/// The first and the largest pause between `update` attempts (each pause doubles, jittered).
pub const UPDATE_BACKOFF: (Duration, Duration) =
    (Duration::from_micros(50), Duration::from_millis(10));

/// How long a service registration lives without a heartbeat.
pub const SERVICE_TTL: Duration = Duration::from_secs(30);

/// When a write on disk is acknowledged: after its fsync.
pub const FSYNC: FsyncPolicy = FsyncPolicy::Always;
/// Log bytes written since the last snapshot that trigger the next one (64 MiB).
pub const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

/// Longest key (and service name) the server accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest value (and a service's address, tags and meta together) the server accepts (512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Longest time to live a `PUT /kv/{key}` may give (a year: deadlines stay well inside what
/// RFC 3339 can print).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest request body the server reads (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most connections the server serves at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a whole request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a whole request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish when the server shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
