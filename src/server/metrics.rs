//! Prometheus metrics with no shared counter cache line on the hot path.
//!
//! Every counter and histogram bucket is **striped**: each thread adds to the stripe its
//! thread-local slot picks (one of [`STRIPES`] cache-padded rows), so two worker threads counting
//! the same operation never write the same cache line. A scrape sums the stripes. All adds are
//! `Relaxed`: counters are independent monotonic sums, and a scrape needs no ordering with the
//! operations it counts.

use std::cell::Cell as ThreadCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Rows of counters; threads map onto them round-robin.
const STRIPES: usize = 16;

/// An operation the API counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /kv/{key}`.
    KvGet,
    /// `PUT /kv/{key}`.
    KvSet,
    /// `DELETE /kv/{key}`.
    KvDelete,
    /// `GET /kv/`.
    KvList,
    /// `POST /batch/kv/get`.
    BatchGet,
    /// `POST /batch/kv/set`.
    BatchSet,
    /// `POST /batch/kv/delete`.
    BatchDelete,
    /// `POST /batch/kv/set-cas`.
    BatchSetCas,
    /// `POST /batch/kv/delete-cas`.
    BatchDeleteCas,
    /// service registration.
    Register,
    /// service deregistration.
    Deregister,
    /// service heartbeat.
    Heartbeat,
    /// `GET /services/{name}`.
    ServiceGet,
    /// `GET /services`.
    ServiceList,
    /// `GET /watch` (the change feed; counted when the stream starts or is refused).
    Watch,
    /// `GET /v1/kv/{key}` (Consul).
    ConsulKvGet,
    /// `PUT /v1/kv/{key}` (Consul).
    ConsulKvPut,
    /// `DELETE /v1/kv/{key}` (Consul).
    ConsulKvDelete,
    /// `PUT /v1/txn` (Consul).
    ConsulTxn,
    /// `/v1/session/…` (Consul).
    ConsulSession,
    /// `/v1/agent/…`, `/v1/catalog/…`, `/v1/health/…` (Consul).
    ConsulService,
}

impl Op {
    const ALL: [Op; 21] = [
        Op::KvGet,
        Op::KvSet,
        Op::KvDelete,
        Op::KvList,
        Op::BatchGet,
        Op::BatchSet,
        Op::BatchDelete,
        Op::BatchSetCas,
        Op::BatchDeleteCas,
        Op::Register,
        Op::Deregister,
        Op::Heartbeat,
        Op::ServiceGet,
        Op::ServiceList,
        Op::Watch,
        Op::ConsulKvGet,
        Op::ConsulKvPut,
        Op::ConsulKvDelete,
        Op::ConsulTxn,
        Op::ConsulSession,
        Op::ConsulService,
    ];

    /// The metric family and the `operation` label.
    fn names(self) -> (&'static str, &'static str) {
        const KV: &str = "kv_operations_total";
        const SVC: &str = "service_operations_total";
        const CONSUL: &str = "consul_operations_total";
        match self {
            Op::KvGet => (KV, "get"),
            Op::KvSet => (KV, "set"),
            Op::KvDelete => (KV, "delete"),
            Op::KvList => (KV, "list"),
            Op::BatchGet => (KV, "batch_get"),
            Op::BatchSet => (KV, "batch_set"),
            Op::BatchDelete => (KV, "batch_delete"),
            Op::BatchSetCas => (KV, "batch_set_cas"),
            Op::BatchDeleteCas => (KV, "batch_delete_cas"),
            Op::Register => (SVC, "register"),
            Op::Deregister => (SVC, "deregister"),
            Op::Heartbeat => (SVC, "heartbeat"),
            Op::ServiceGet => (SVC, "get"),
            Op::ServiceList => (SVC, "list"),
            Op::Watch => (KV, "watch"),
            Op::ConsulKvGet => (CONSUL, "kv_get"),
            Op::ConsulKvPut => (CONSUL, "kv_put"),
            Op::ConsulKvDelete => (CONSUL, "kv_delete"),
            Op::ConsulTxn => (CONSUL, "txn"),
            Op::ConsulSession => (CONSUL, "session"),
            Op::ConsulService => (CONSUL, "service"),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It succeeded.
    Success,
    /// The key or service was absent.
    NotFound,
    /// A CAS condition failed.
    CasConflict,
    /// Bad input or any other failure.
    Error,
}

impl Status {
    const ALL: [Status; 4] = [
        Status::Success,
        Status::NotFound,
        Status::CasConflict,
        Status::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::NotFound => "not_found",
            Status::CasConflict => "cas_conflict",
            Status::Error => "error",
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds (then `+Inf`).
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
];
const OPS: usize = Op::ALL.len();
const STATUSES: usize = Status::ALL.len();
/// Per op: one slot per bucket, `+Inf`, the count, and the sum in nanoseconds.
const HIST: usize = BUCKETS.len() + 3;

/// One thread-stripe of every counter.
struct Row {
    counts: [AtomicU64; OPS * STATUSES],
    latency: [AtomicU64; OPS * HIST],
}

/// The API's counters and histograms.
pub struct Metrics {
    rows: Box<[CachePadded<Row>]>,
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: ThreadCell<usize> = const { ThreadCell::new(usize::MAX) };
}

fn stripe() -> usize {
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            // Relaxed: any distinct-enough spread of threads over stripes will do.
            s.set(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Zeroed metrics.
    pub fn new() -> Self {
        let rows = (0..STRIPES)
            .map(|_| {
                CachePadded::new(Row {
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                    latency: std::array::from_fn(|_| AtomicU64::new(0)),
                })
            })
            .collect();
        Metrics { rows }
    }

    /// Counts one operation and its latency.
    pub fn record(&self, op: Op, status: Status, elapsed: Duration) {
        let row = &self.rows[stripe()];
        let (o, s) = (op as usize, status as usize);
        // Relaxed (here and below): see the module docs.
        row.counts[o * STATUSES + s].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let base = o * HIST;
        row.latency[base + bucket].fetch_add(1, Ordering::Relaxed);
        row.latency[base + BUCKETS.len() + 1].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        row.latency[base + BUCKETS.len() + 2].fetch_add(nanos, Ordering::Relaxed);
    }

    fn sum(&self, pick: impl Fn(&Row) -> &AtomicU64) -> u64 {
        self.rows
            .iter()
            .map(|r| pick(r).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// The count of one (operation, status) pair, summed over stripes.
    pub fn count(&self, op: Op, status: Status) -> u64 {
        let i = op as usize * STATUSES + status as usize;
        self.sum(|r| &r.counts[i])
    }

    /// Renders the Prometheus text exposition format, with the given gauges appended.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        for family in [
            "kv_operations_total",
            "service_operations_total",
            "consul_operations_total",
        ] {
            let _ = writeln!(out, "# HELP {family} Operations by type and outcome.");
            let _ = writeln!(out, "# TYPE {family} counter");
            for op in Op::ALL.iter().filter(|op| op.names().0 == family) {
                for status in Status::ALL {
                    let _ = writeln!(
                        out,
                        "{family}{{operation=\"{}\",status=\"{}\"}} {}",
                        op.names().1,
                        status.label(),
                        self.count(*op, status)
                    );
                }
            }
        }
        let name = "caskv_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of API operations, handler entry to response."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for op in Op::ALL {
            let (family, label) = op.names();
            let kind = if family.starts_with("kv") {
                "kv"
            } else if family.starts_with("consul") {
                "consul"
            } else {
                "service"
            };
            let labels = format!("kind=\"{kind}\",operation=\"{label}\"");
            let base = op as usize * HIST;
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += self.sum(|r| &r.latency[base + i]);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            cumulative += self.sum(|r| &r.latency[base + BUCKETS.len()]);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let count = self.sum(|r| &r.latency[base + BUCKETS.len() + 1]);
            let nanos = self.sum(|r| &r.latency[base + BUCKETS.len() + 2]);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", nanos as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        for (gauge, help, value) in gauges {
            let _ = writeln!(out, "# HELP {gauge} {help}");
            let _ = writeln!(out, "# TYPE {gauge} gauge");
            let _ = writeln!(out, "{gauge} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_stripes_and_render() {
        let m = Metrics::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        m.record(Op::KvSet, Status::CasConflict, Duration::from_micros(300));
                    }
                });
            }
        });
        assert_eq!(m.count(Op::KvSet, Status::CasConflict), 400);
        let text = m.render(&[("kv_entries", "Keys present.", 7)]);
        assert!(text.contains("kv_operations_total{operation=\"set\",status=\"cas_conflict\"} 400"));
        assert!(
            text.contains("service_operations_total{operation=\"register\",status=\"success\"} 0")
        );
        assert!(text.contains(
            "caskv_request_duration_seconds_bucket{kind=\"kv\",operation=\"set\",le=\"0.0005\"} 400"
        ));
        assert!(text.contains("kv_entries 7"));
    }
}
