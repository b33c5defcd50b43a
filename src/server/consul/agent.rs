//! The agent, catalog and health service endpoints, on the service [`Registry`](crate::Registry).
//!
//! caskv is a single node (named [`NODE`], in datacenter `dc1`), so its agent, its catalog and
//! its health view are one set of services: the registry's. A service registered through
//! `PUT /v1/agent/service/register` is a registry entry whose name is the Consul service **ID**;
//! what Consul has and the registry does not is kept in the entry's metadata, under reserved
//! keys (every key starting with `consul-`, the prefix Consul itself reserves: a client's own
//! `Meta` may not use it, and no `/v1/` answer shows these keys):
//!
//! | key                          | what it holds                                                  |
//! |------------------------------|----------------------------------------------------------------|
//! | `consul-service-name`        | the Consul service `Name`, shared by the instances of a service; its presence marks a registration made through the agent API |
//! | `consul-checks`              | the service's TTL checks and their state, as JSON (below)      |
//! | `consul-weights`             | `Weights`, as JSON, when not the default `{"Passing":1,"Warning":1}` |
//! | `consul-enable-tag-override` | `"true"` when `EnableTagOverride` is set                       |
//!
//! A registration made through the native API (`POST /services`) shows here as a service whose
//! ID and name are its registry name, with no checks.
//!
//! # Checks
//! Only TTL checks: the application reports its own health (`/v1/agent/check/pass/…`, `warn`,
//! `fail`, `update`). A check starts `critical` unless its definition gives a `Status`; every
//! update sets its status and output and restarts its TTL; when the TTL runs out it reads
//! `critical` with the output `TTL expired` (Consul's). Its state lives in `consul-checks`, so
//! an update is one registry write, and the state persists and recovers with the registry. A
//! check past its TTL reads `critical` at once; a background task (the *keeper*, below) also
//! writes the change within a quarter second, so that blocking health and catalog reads wake on
//! it, as they do in Consul. `DeregisterCriticalServiceAfter` (at least one minute, as in
//! Consul) deregisters a service once a check of it has been critical that long.
//!
//! # Keeping agent services registered
//! The registry expires an entry after `--service-ttl` without a heartbeat; Consul's agent keeps
//! a service until it is deregistered. The keeper renews every registration made through the
//! agent API before it would expire. It is one task per server state, started with the server
//! ([`crate::server::spawn`] calls [`keep`]; a router driven without it starts one at the first
//! request to an endpoint of this module), and it ends when the state is dropped or the server
//! shuts down. After a restart, recovered registrations get a fresh `--service-ttl` and the
//! keeper renews them from then on.
//!
//! # Indices
//! Reads answer with `X-Consul-Index` = the registry's index (every registration,
//! deregistration, expiry and check update takes one from the store's sequence). Blocking reads
//! (`?index=&wait=`) on the catalog and health endpoints wake on any change to the registry, not
//! only to the service asked for (Consul allows such early answers). A check update changes
//! the service's `ModifyIndex` too (the check is stored in the registration).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{at_index, json, metered, settle, Failure, NODE};
use crate::server::acl::{Need, Who};
use crate::server::extract::Params;
use crate::server::kv::listing;
use crate::server::metrics::Op as Metric;
use crate::server::watch::{hold, parse_wait, Blocking};
use crate::server::{ApiError, AppState, Shared};
use crate::{defaults, Service, ServiceEntry};

/// The reserved metadata key holding the Consul service name.
const NAME_KEY: &str = "consul-service-name";
/// The reserved metadata key holding the checks (JSON).
const CHECKS_KEY: &str = "consul-checks";
/// The reserved metadata key holding non-default weights (JSON).
const WEIGHTS_KEY: &str = "consul-weights";
/// The reserved metadata key set to `"true"` for `EnableTagOverride`.
const TAG_OVERRIDE_KEY: &str = "consul-enable-tag-override";
/// The prefix of every reserved metadata key (Consul's own reserved prefix).
const RESERVED: &str = "consul-";

/// The datacenter this node answers for.
const DATACENTER: &str = "dc1";
/// The node's address in catalog and health answers.
const NODE_ADDRESS: &str = "127.0.0.1";
/// The node's ID (a fixed UUID: there is one node).
const NODE_ID: &str = "7b9c3a52-6f0e-4c1d-9a8e-ca5c0de00001";

/// How many times a write that lost a race to another write of the same registration reads it
/// again before answering 500.
const ATTEMPTS: usize = 64;
/// Consul's bound on a check's output (`OutputMaxSize`'s default).
const OUTPUT_MAX: usize = 4096;
/// Consul's floor on `DeregisterCriticalServiceAfter` (`check_deregister_interval_min`).
const DEREGISTER_MIN: Duration = Duration::from_secs(60);
/// How often the keeper looks at the registry.
const TICK: Duration = Duration::from_millis(250);
/// Consul's limits on service metadata.
const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;

const CONTENT_HASH: HeaderName = HeaderName::from_static("x-consul-contenthash");

/// The agent, catalog and health routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{*id}", put(deregister))
        .route(
            "/v1/agent/service/{*id}",
            get(agent_service).fallback(super::unsupported),
        )
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/check/pass/{*id}", put(check_pass))
        .route("/v1/agent/check/warn/{*id}", put(check_warn))
        .route("/v1/agent/check/fail/{*id}", put(check_fail))
        .route("/v1/agent/check/update/{*id}", put(check_update))
        .route("/v1/catalog/datacenters", get(datacenters))
        .route("/v1/catalog/nodes", get(nodes))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Checks

/// A check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    fn parse(text: &str) -> Option<Health> {
        match text {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// A TTL check and its state, as stored under [`CHECKS_KEY`]. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Check {
    id: String,
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    notes: String,
    ttl_ms: u64,
    /// The status last set (by the definition, an update, or the noted expiry).
    status: Health,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    output: String,
    /// When the TTL runs out unless the check is updated.
    deadline_ms: u64,
    /// Whether the expiry at `deadline_ms` was written (status and output already say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    expired: bool,
    /// Since when the stored status is critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    critical_since_ms: Option<u64>,
    /// `DeregisterCriticalServiceAfter` (at least [`DEREGISTER_MIN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deregister_after_ms: Option<u64>,
}

/// Consul's output of a check whose TTL ran out.
fn expired_output(last: &str) -> String {
    if last.is_empty() {
        "TTL expired".to_string()
    } else {
        format!("TTL expired (last output before timeout follows): {last}")
    }
}

/// `output` cut to Consul's bound, as Consul cuts it.
fn truncated(output: String) -> String {
    let total = output.len();
    if total <= OUTPUT_MAX {
        return output;
    }
    let mut end = OUTPUT_MAX;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} ... (captured {OUTPUT_MAX} of {total} bytes)",
        &output[..end]
    )
}

impl Check {
    /// A check as its definition makes it at `now`.
    fn new(def: &CheckDef, id: String, service_name: &str, now: u64) -> Check {
        let status = def.status.unwrap_or(Health::Critical);
        let ttl_ms = millis(def.ttl).max(1);
        Check {
            id,
            name: def
                .name
                .clone()
                .unwrap_or_else(|| format!("Service '{service_name}' check")),
            notes: def.notes.clone(),
            ttl_ms,
            status,
            output: String::new(),
            deadline_ms: now.saturating_add(ttl_ms),
            expired: false,
            critical_since_ms: (status == Health::Critical).then_some(now),
            deregister_after_ms: def.deregister_after.map(|d| millis(d.max(DEREGISTER_MIN))),
        }
    }

    /// Whether the TTL ran out and the expiry was not written yet.
    fn lapsed(&self, now: u64) -> bool {
        !self.expired && now >= self.deadline_ms
    }

    /// The status and output the check has at `now`.
    fn view(&self, now: u64) -> (Health, Cow<'_, str>) {
        if self.lapsed(now) {
            (Health::Critical, Cow::Owned(expired_output(&self.output)))
        } else {
            (self.status, Cow::Borrowed(&self.output))
        }
    }

    /// Since when the check is critical at `now`, if it is.
    fn critical_since(&self, now: u64) -> Option<u64> {
        if self.status == Health::Critical {
            Some(self.critical_since_ms.unwrap_or(self.deadline_ms.min(now)))
        } else if self.lapsed(now) {
            Some(self.deadline_ms)
        } else {
            None
        }
    }

    /// An update at `now`: the status and output, and a fresh TTL.
    fn set(&mut self, status: Health, output: String, now: u64) {
        self.critical_since_ms = match status {
            Health::Critical => Some(self.critical_since(now).unwrap_or(now)),
            _ => None,
        };
        self.status = status;
        self.output = output;
        self.deadline_ms = now.saturating_add(self.ttl_ms);
        self.expired = false;
    }

    /// Writes down a lapsed TTL; whether there was one.
    fn expire(&mut self, now: u64) -> bool {
        if !self.lapsed(now) {
            return false;
        }
        self.critical_since_ms = self.critical_since(now);
        self.output = expired_output(&self.output);
        self.status = Health::Critical;
        self.expired = true;
        true
    }

    /// Whether `DeregisterCriticalServiceAfter` has come for this check at `now`.
    fn reap_due(&self, now: u64) -> bool {
        match (self.deregister_after_ms, self.critical_since(now)) {
            (Some(after), Some(since)) => now >= since.saturating_add(after),
            _ => false,
        }
    }
}

/// The checks stored in `service` (none for a native registration, or unreadable ones).
fn checks_of(service: &Service) -> Vec<Check> {
    service
        .meta
        .get(CHECKS_KEY)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// Stores `checks` in `service`.
fn set_checks(service: &mut Service, checks: &[Check]) {
    if checks.is_empty() {
        service.meta.remove(CHECKS_KEY);
    } else if let Ok(text) = serde_json::to_string(checks) {
        service.meta.insert(CHECKS_KEY.to_string(), text);
    }
}

// ---------------------------------------------------------------------------------------------
// Services as Consul sees them

/// `Weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: i64,
    warning: i64,
}

const DEFAULT_WEIGHTS: Weights = Weights {
    passing: 1,
    warning: 1,
};

/// A registry entry as a Consul service instance.
struct Instance {
    entry: ServiceEntry,
    /// The Consul service name.
    name: String,
    /// The client's metadata (the reserved keys left out).
    meta: BTreeMap<String, String>,
    weights: Weights,
    tag_override: bool,
    checks: Vec<Check>,
}

impl Instance {
    fn of(entry: ServiceEntry) -> Instance {
        let s = &entry.service;
        Instance {
            name: consul_name(s).to_string(),
            meta: s
                .meta
                .iter()
                .filter(|(k, _)| !k.starts_with(RESERVED))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            weights: s
                .meta
                .get(WEIGHTS_KEY)
                .and_then(|w| serde_json::from_str(w).ok())
                .unwrap_or(DEFAULT_WEIGHTS),
            tag_override: s.meta.get(TAG_OVERRIDE_KEY).is_some_and(|v| v == "true"),
            checks: checks_of(s),
            entry,
        }
    }

    /// The service ID (the registry's name).
    fn id(&self) -> &str {
        &self.entry.service.name
    }

    fn tags(&self) -> &[String] {
        &self.entry.service.tags
    }

    fn address(&self) -> &str {
        &self.entry.service.address
    }

    fn port(&self) -> u16 {
        self.entry.service.port
    }

    /// Whether `who` may read it: the ID (the registry name the native rules name) and the
    /// Consul name (what Consul's rules name).
    fn visible_to(&self, who: &Who) -> bool {
        who.may_read_service(self.id()) && who.may_read_service(&self.name)
    }

    /// Whether it has every tag of `tags` (case-insensitive, as Consul compares them).
    fn tagged(&self, tags: &[String]) -> bool {
        tags.iter().all(|want| {
            self.tags()
                .iter()
                .any(|t| t.to_lowercase() == want.to_lowercase())
        })
    }

    /// Consul's tagged addresses of a service whose address is an IP.
    fn tagged_addresses(&self) -> BTreeMap<&'static str, TaggedAddress<'_>> {
        let at = TaggedAddress {
            address: self.address(),
            port: self.port(),
        };
        match self.address().parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => BTreeMap::from([("lan_ipv4", at), ("wan_ipv4", at)]),
            Ok(IpAddr::V6(_)) => BTreeMap::from([("lan_ipv6", at), ("wan_ipv6", at)]),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Its checks as Consul shows them at `now` (with the registration's indices when
    /// `indexed`).
    fn health_checks(&self, now: u64, indexed: bool) -> Vec<HealthCheck<'_>> {
        self.checks
            .iter()
            .map(|c| {
                let (status, output) = c.view(now);
                HealthCheck {
                    node: NODE,
                    check_id: &c.id,
                    name: &c.name,
                    status: status.as_str(),
                    notes: &c.notes,
                    output,
                    service_id: self.id(),
                    service_name: &self.name,
                    service_tags: self.tags(),
                    kind: "ttl",
                    interval: "",
                    timeout: "",
                    exposed_port: 0,
                    definition: Empty {},
                    create_index: indexed.then_some(self.entry.create_index),
                    modify_index: indexed.then_some(self.entry.modify_index),
                }
            })
            .collect()
    }

    fn agent_service(&self, content_hash: Option<String>) -> AgentService<'_> {
        AgentService {
            id: self.id(),
            service: &self.name,
            tags: self.tags(),
            meta: &self.meta,
            port: self.port(),
            address: self.address(),
            tagged_addresses: self.tagged_addresses(),
            weights: self.weights,
            enable_tag_override: self.tag_override,
            content_hash,
            datacenter: DATACENTER,
        }
    }

    fn node_service(&self) -> NodeService<'_> {
        NodeService {
            id: self.id(),
            service: &self.name,
            tags: self.tags(),
            address: self.address(),
            tagged_addresses: self.tagged_addresses(),
            meta: &self.meta,
            port: self.port(),
            weights: self.weights,
            enable_tag_override: self.tag_override,
            proxy: Proxy::empty(),
            connect: Empty {},
            create_index: self.entry.create_index,
            modify_index: self.entry.modify_index,
        }
    }

    fn catalog_service(&self) -> CatalogService<'_> {
        CatalogService {
            id: NODE_ID,
            node: NODE,
            address: NODE_ADDRESS,
            datacenter: DATACENTER,
            tagged_addresses: node_addresses(),
            node_meta: node_meta(),
            service_kind: "",
            service_id: self.id(),
            service_name: &self.name,
            service_tags: self.tags(),
            service_address: self.address(),
            service_tagged_addresses: self.tagged_addresses(),
            service_weights: self.weights,
            service_meta: &self.meta,
            service_port: self.port(),
            service_enable_tag_override: self.tag_override,
            service_proxy: Proxy::empty(),
            service_connect: Empty {},
            create_index: self.entry.create_index,
            modify_index: self.entry.modify_index,
        }
    }
}

/// The Consul name of a registered service: its `consul-service-name`, else its registry name.
fn consul_name(service: &Service) -> &str {
    service
        .meta
        .get(NAME_KEY)
        .map_or(service.name.as_str(), String::as_str)
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "PascalCase")]
struct TaggedAddress<'a> {
    address: &'a str,
    port: u16,
}

/// A service's `Proxy` (no Connect here: always empty).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Proxy {
    mode: &'static str,
    mesh_gateway: Option<Empty>,
    expose: Option<Empty>,
}

impl Proxy {
    fn empty() -> Proxy {
        Proxy {
            mode: "",
            mesh_gateway: Some(Empty {}),
            expose: Some(Empty {}),
        }
    }
}

fn node_addresses() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("lan", NODE_ADDRESS),
        ("lan_ipv4", NODE_ADDRESS),
        ("wan", NODE_ADDRESS),
        ("wan_ipv4", NODE_ADDRESS),
    ])
}

fn node_meta() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([("consul-network-segment", "")])
}

/// `api.AgentService`: what `/v1/agent/services` and `/v1/agent/service/{id}` show.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    meta: &'a BTreeMap<String, String>,
    port: u16,
    address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<&'static str, TaggedAddress<'a>>,
    weights: Weights,
    enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_hash: Option<String>,
    datacenter: &'static str,
}

/// `structs.NodeService`: the `Service` of a `/v1/health/service` entry.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeService<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<&'static str, TaggedAddress<'a>>,
    meta: &'a BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    proxy: Proxy,
    connect: Empty,
    create_index: u64,
    modify_index: u64,
}

/// `structs.ServiceNode`: an entry of `/v1/catalog/service/{name}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogService<'a> {
    #[serde(rename = "ID")]
    id: &'static str,
    node: &'static str,
    address: &'static str,
    datacenter: &'static str,
    tagged_addresses: BTreeMap<&'static str, &'static str>,
    node_meta: BTreeMap<&'static str, &'static str>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service_tagged_addresses: BTreeMap<&'static str, TaggedAddress<'a>>,
    service_weights: Weights,
    service_meta: &'a BTreeMap<String, String>,
    service_port: u16,
    service_enable_tag_override: bool,
    service_proxy: Proxy,
    service_connect: Empty,
    create_index: u64,
    modify_index: u64,
}

/// `structs.HealthCheck`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck<'a> {
    node: &'static str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    notes: &'a str,
    output: Cow<'a, str>,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'static str,
    interval: &'static str,
    timeout: &'static str,
    exposed_port: u16,
    definition: Empty,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    modify_index: Option<u64>,
}

/// The node's own check, always passing (Consul lists it with every node).
fn serf_check() -> HealthCheck<'static> {
    HealthCheck {
        node: NODE,
        check_id: "serfHealth",
        name: "Serf Health Status",
        status: "passing",
        notes: "",
        output: Cow::Borrowed("Agent alive and reachable"),
        service_id: "",
        service_name: "",
        service_tags: &[],
        kind: "",
        interval: "",
        timeout: "",
        exposed_port: 0,
        definition: Empty {},
        create_index: Some(1),
        modify_index: Some(1),
    }
}

/// `structs.Node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(rename = "ID")]
    id: &'static str,
    node: &'static str,
    address: &'static str,
    datacenter: &'static str,
    tagged_addresses: BTreeMap<&'static str, &'static str>,
    meta: BTreeMap<&'static str, &'static str>,
    create_index: u64,
    modify_index: u64,
}

fn node() -> Node {
    Node {
        id: NODE_ID,
        node: NODE,
        address: NODE_ADDRESS,
        datacenter: DATACENTER,
        tagged_addresses: node_addresses(),
        meta: node_meta(),
        create_index: 1,
        modify_index: 1,
    }
}

/// One entry of `/v1/health/service/{name}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceHealth<'a> {
    node: Node,
    service: NodeService<'a>,
    checks: Vec<HealthCheck<'a>>,
}

// ---------------------------------------------------------------------------------------------
// Decoding a registration

/// The most checks one registration may carry (`Checks`, plus one `Check`): each is kept in the
/// registration and re-checked on every update, so a client must not send thousands.
const MAX_CHECKS: usize = 64;

/// A `PUT /v1/agent/service/register` body.
#[derive(Debug)]
struct Definition {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weights: Weights,
    tag_override: bool,
    checks: Vec<CheckDef>,
}

/// A check of a registration.
#[derive(Debug)]
struct CheckDef {
    id: Option<String>,
    name: Option<String>,
    notes: String,
    status: Option<Health>,
    ttl: Duration,
    deregister_after: Option<Duration>,
}

fn decode_failed(text: impl std::fmt::Display) -> Failure {
    Failure::bad_request(format!("Request decode failed: {text}"))
}

/// Whether JSON key `key` names field `name`: Go's decoding ignores case; Consul also takes the
/// snake_case spelling (`enable_tag_override`).
fn names(key: &str, name: &str) -> bool {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .eq(name.chars().map(|c| c.to_ascii_lowercase()))
}

/// Field `name` of `obj`; `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name)
        .or_else(|| obj.iter().find(|(k, _)| names(k, name)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

fn text(obj: &Map<String, Value>, name: &str) -> Result<String, Failure> {
    match field(obj, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(decode_failed(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, Failure> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(decode_failed(format!(
            "{name} must be an object, not {other}"
        ))),
    }
}

fn integer(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, Failure> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
        Some(other) => Err(decode_failed(format!(
            "{name} must be an integer, not {other}"
        ))),
    }
}

/// Whether a JSON value is Go's zero value of its type (an empty check is no check).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A Go duration ("10s", "1m30s", "1.5h", "300ms", "0"), as Consul reads `TTL` and the like.
fn go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..end];
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[end..];
        let end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[end..];
        nanos += value * scale;
    }
    // A negative duration is no duration (Consul then says it must be > 0).
    Some(if negative {
        Duration::ZERO
    } else {
        Duration::from_nanos(nanos as u64)
    })
}

/// A duration field: a Go duration string, or a number of nanoseconds.
fn duration(obj: &Map<String, Value>, name: &str) -> Result<Option<Duration>, Failure> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => go_duration(s)
            .map(Some)
            .ok_or_else(|| decode_failed(format!("time: invalid duration {s:?}"))),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(n.as_u64().unwrap_or(0)))),
        Some(other) => Err(decode_failed(format!(
            "{name} must be a duration, not {other}"
        ))),
    }
}

/// The check types caskv cannot run (it has no prober): only TTL checks are served.
const PROBED: [&str; 12] = [
    "HTTP",
    "TCP",
    "UDP",
    "GRPC",
    "H2PING",
    "Args",
    "ScriptArgs",
    "Script",
    "DockerContainerID",
    "OSService",
    "AliasService",
    "AliasNode",
];

impl CheckDef {
    /// A check definition; `None` for an empty one (Consul ignores `"Check": {}`).
    fn parse(obj: &Map<String, Value>) -> Result<Option<CheckDef>, Failure> {
        if obj.values().all(is_zero) {
            return Ok(None);
        }
        let invalid = |why: &str| Failure::bad_request(format!("Invalid check: {why}"));
        let ttl = duration(obj, "TTL")?.unwrap_or_default();
        let interval = duration(obj, "Interval")?.unwrap_or_default();
        if !ttl.is_zero() && !interval.is_zero() {
            return Err(invalid("Interval and TTL cannot be set simultaneously"));
        }
        if let Some(kind) = PROBED
            .iter()
            .find(|k| field(obj, k).is_some_and(|v| !is_zero(v)))
        {
            return Err(invalid(&format!(
                "caskv runs TTL checks only, not {kind} checks; report the service's health with \
                 PUT /v1/agent/check/pass/<check id> within a TTL"
            )));
        }
        if ttl.is_zero() {
            return Err(invalid("TTL must be > 0 for TTL checks"));
        }
        let status = match text(obj, "Status")?.as_str() {
            "" => None,
            s => Some(Health::parse(s).ok_or_else(|| {
                Failure::bad_request("Status for checks must 'passing', 'warning', 'critical'")
            })?),
        };
        let id = match text(obj, "CheckID")? {
            id if id.is_empty() => text(obj, "ID")?,
            id => id,
        };
        let name = text(obj, "Name")?;
        Ok(Some(CheckDef {
            id: (!id.is_empty()).then_some(id),
            name: (!name.is_empty()).then_some(name),
            notes: text(obj, "Notes")?,
            status,
            ttl,
            deregister_after: duration(obj, "DeregisterCriticalServiceAfter")?
                .filter(|d| !d.is_zero()),
        }))
    }
}

/// Consul's check of service metadata (with the `consul-` prefix reserved).
fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > META_MAX_PAIRS {
        return Err(format!(
            "Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
        ));
    }
    for (key, value) in meta {
        let why = if key.is_empty() {
            Some("Key cannot be blank".to_string())
        } else if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Some("Key contains invalid characters".to_string())
        } else if key.len() > META_KEY_MAX {
            Some(format!(
                "Key is too long (limit: {META_KEY_MAX} characters)"
            ))
        } else if key.starts_with(RESERVED) {
            Some(format!(
                "Key prefix '{RESERVED}' is reserved for internal use"
            ))
        } else if value.len() > META_VALUE_MAX {
            Some(format!(
                "Value is too long (limit: {META_VALUE_MAX} characters)"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!(
                "Couldn't load metadata pair ('{key}', '{value}'): {why}"
            ));
        }
    }
    Ok(())
}

impl Definition {
    fn parse(body: &[u8]) -> Result<Definition, Failure> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(decode_failed("EOF"));
        }
        let value: Value = serde_json::from_slice(body).map_err(decode_failed)?;
        let Value::Object(obj) = value else {
            return Err(decode_failed("the body must be a JSON object"));
        };
        let name = text(&obj, "Name")?;
        if name.is_empty() {
            return Err(Failure::bad_request("Missing service name"));
        }
        if let Some(kind) = Some(text(&obj, "Kind")?).filter(|k| !k.is_empty()) {
            return Err(Failure::bad_request(format!(
                "caskv does not serve Connect: a service of Kind {kind:?} cannot be registered"
            )));
        }
        let id = Some(text(&obj, "ID")?)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone());
        let address = text(&obj, "Address")?;
        if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err(Failure::bad_request("Invalid service address"));
        }
        let port = match integer(&obj, "Port")? {
            None => 0,
            Some(p) => u16::try_from(p).map_err(|_| {
                decode_failed(format!("Port {p} is not a port number (0 to 65535)"))
            })?,
        };
        let tags = match field(&obj, "Tags") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(decode_failed(format!(
                        "a tag must be a string, not {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(decode_failed(format!("Tags must be an array, not {other}")))
            }
        };
        let meta = match object(&obj, "Meta")? {
            None => BTreeMap::new(),
            Some(m) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(decode_failed(format!(
                        "Meta[{k:?}] must be a string, not {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
        };
        let weights = match object(&obj, "Weights")? {
            None => DEFAULT_WEIGHTS,
            Some(w) => {
                let weights = Weights {
                    passing: integer(w, "Passing")?.unwrap_or(0),
                    warning: integer(w, "Warning")?.unwrap_or(0),
                };
                let invalid = |why: &str| Failure::bad_request(format!("Invalid Weights: {why}"));
                if weights.passing < 1 {
                    return Err(invalid("Passing must be greater than 0"));
                }
                if weights.warning < 0 {
                    return Err(invalid("Warning must be greater or equal than 0"));
                }
                if weights.passing > 65535 || weights.warning > 65535 {
                    return Err(invalid("DNS Weight must be between 0 and 65535"));
                }
                weights
            }
        };
        let tag_override = match field(&obj, "EnableTagOverride") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(decode_failed(format!(
                    "EnableTagOverride must be true or false, not {other}"
                )))
            }
        };
        check_meta(&meta)
            .map_err(|e| Failure::bad_request(format!("Invalid Service Meta: {e}")))?;
        let mut checks = Vec::new();
        if let Some(check) = object(&obj, "Check")? {
            checks.extend(CheckDef::parse(check)?);
        }
        match field(&obj, "Checks") {
            None => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_CHECKS {
                    return Err(Failure::bad_request(format!(
                        "Invalid check: a service may have at most {MAX_CHECKS} checks, not {}",
                        items.len()
                    )));
                }
                for item in items {
                    match item {
                        Value::Null => {}
                        Value::Object(check) => checks.extend(CheckDef::parse(check)?),
                        other => {
                            return Err(decode_failed(format!(
                                "a check must be an object, not {other}"
                            )))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(decode_failed(format!(
                    "Checks must be an array, not {other}"
                )))
            }
        }
        Ok(Definition {
            id,
            name,
            address,
            port,
            tags,
            meta,
            weights,
            tag_override,
            checks,
        })
    }

    /// Its checks at `now` (at most [`MAX_CHECKS`] and one more), carrying over the status and output of a check `prev` already had
    /// under the same ID (Consul's snapshot on re-registration), and keeping `prev`'s other
    /// checks unless `replace` (`?replace-existing-checks`).
    fn checks(&self, prev: &[Check], replace: bool, now: u64) -> Vec<Check> {
        let many = self.checks.len() > 1;
        let mut out: Vec<Check> = Vec::with_capacity(self.checks.len());
        for (i, def) in self.checks.iter().enumerate() {
            let id = def.id.clone().unwrap_or_else(|| {
                if many {
                    format!("service:{}:{}", self.id, i + 1)
                } else {
                    format!("service:{}", self.id)
                }
            });
            let mut check = Check::new(def, id, &self.name, now);
            if let Some(p) = prev.iter().find(|p| p.id == check.id) {
                let (status, output) = p.view(now);
                check.critical_since_ms = p.critical_since(now);
                check.status = status;
                check.output = output.into_owned();
            }
            out.retain(|c| c.id != check.id);
            out.push(check);
        }
        if !replace {
            for p in prev {
                if !out.iter().any(|c| c.id == p.id) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// The registry entry it makes, with `checks`.
    fn service(&self, checks: &[Check]) -> Service {
        let mut meta = self.meta.clone();
        meta.insert(NAME_KEY.to_string(), self.name.clone());
        if self.weights != DEFAULT_WEIGHTS {
            if let Ok(w) = serde_json::to_string(&self.weights) {
                meta.insert(WEIGHTS_KEY.to_string(), w);
            }
        }
        if self.tag_override {
            meta.insert(TAG_OVERRIDE_KEY.to_string(), "true".to_string());
        }
        let mut service = Service {
            name: self.id.clone(),
            address: self.address.clone(),
            port: self.port,
            tags: self.tags.clone(),
            meta,
        };
        set_checks(&mut service, checks);
        service
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `service` if its registration is still at index `cas` (0: absent); `Ok(false)` when
/// another write got there first.
async fn write(state: &AppState, service: Service, cas: u64) -> Result<bool, Failure> {
    state.limits.check_service(&service)?;
    Ok(settle(state.db().register(service, Some(cas)), "service")
        .await?
        .is_some())
}

fn lost_race(what: &str) -> Failure {
    Failure::internal(format!(
        "{what} lost the race to other writers {ATTEMPTS} times; try again"
    ))
}

/// May `who` write the service with this ID and Consul name?
fn may_write(who: &Who, id: &str, name: &str) -> Result<(), Failure> {
    who.service(id, Need::Write)?;
    if name != id {
        who.service(name, Need::Write)?;
    }
    Ok(())
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

/// `PUT /v1/agent/service/register` (`?replace-existing-checks`): 200 with an empty body.
async fn register(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
    body: Bytes,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        let def = Definition::parse(&body)?;
        state.limits.check_key(&def.id)?;
        may_write(&who, &def.id, &def.name)?;
        let replace = matches!(
            params.0.get("replace-existing-checks").map(String::as_str),
            Some("" | "true")
        );
        for _ in 0..ATTEMPTS {
            let current = state.registry.get(&def.id);
            if let Some(e) = &current {
                // Replacing another service's instance needs write access to that one too.
                let old = consul_name(&e.service);
                if old != def.name {
                    who.service(old, Need::Write)?;
                }
            }
            let prev = current
                .as_ref()
                .map(|e| checks_of(&e.service))
                .unwrap_or_default();
            let checks = def.checks(&prev, replace, now_ms());
            let cas = current.as_ref().map_or(0, |e| e.modify_index);
            if write(&state, def.service(&checks), cas).await? {
                return Ok(ok());
            }
            tokio::task::yield_now().await;
        }
        Err(lost_race(&format!("registering {:?}", def.id)))
    })
    .await
}

fn unknown_service(id: &str) -> Failure {
    Failure::not_found(format!(
        "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
    ))
}

/// `PUT /v1/agent/service/deregister/{id}`: 200, or 404 for an unknown ID.
async fn deregister(State(state): State<AppState>, who: Who, Path(id): Path<String>) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let Some(entry) = state.registry.get(&id) else {
            return Err(unknown_service(&id));
        };
        may_write(&who, &id, consul_name(&entry.service))?;
        match settle(state.db().deregister(&id, None), "service").await? {
            Some(_) => Ok(ok()),
            None => Err(unknown_service(&id)),
        }
    })
    .await
}

/// The registration holding check `check_id`: `service:<id>` and `service:<id>:<n>` are looked
/// up directly, any other ID by a scan.
fn find_check(state: &AppState, check_id: &str) -> Option<ServiceEntry> {
    let holds = |e: &ServiceEntry| checks_of(&e.service).iter().any(|c| c.id == check_id);
    if let Some(rest) = check_id.strip_prefix("service:") {
        let mut candidates = vec![rest];
        if let Some((head, n)) = rest.rsplit_once(':') {
            if n.parse::<u32>().is_ok() {
                candidates.push(head);
            }
        }
        for candidate in candidates {
            if let Some(e) = state.registry.get(candidate).filter(holds) {
                return Some(e);
            }
        }
    }
    state.registry.list().into_iter().find(holds)
}

/// Sets check `check_id` to `status` with `output`, restarting its TTL.
async fn update(
    state: &AppState,
    who: &Who,
    check_id: &str,
    status: Health,
    output: String,
) -> Result<Response, Failure> {
    let output = truncated(output);
    for _ in 0..ATTEMPTS {
        let Some(entry) = find_check(state, check_id) else {
            return Err(Failure::not_found(format!(
                "Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."
            )));
        };
        may_write(who, &entry.service.name, consul_name(&entry.service))?;
        let mut checks = checks_of(&entry.service);
        let Some(check) = checks.iter_mut().find(|c| c.id == check_id) else {
            continue;
        };
        check.set(status, output.clone(), now_ms());
        let mut service = entry.service.clone();
        set_checks(&mut service, &checks);
        if write(state, service, entry.modify_index).await? {
            return Ok(ok());
        }
        tokio::task::yield_now().await;
    }
    Err(lost_race(&format!("updating check {check_id:?}")))
}

/// `PUT /v1/agent/check/pass/{check_id}` (`?note=` is the output).
async fn check_pass(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    by_note(state, who, id, params, Health::Passing).await
}

/// `PUT /v1/agent/check/warn/{check_id}` (`?note=` is the output).
async fn check_warn(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    by_note(state, who, id, params, Health::Warning).await
}

/// `PUT /v1/agent/check/fail/{check_id}` (`?note=` is the output).
async fn check_fail(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    by_note(state, who, id, params, Health::Critical).await
}

async fn by_note(
    state: AppState,
    who: Who,
    id: String,
    params: Result<Params, ApiError>,
    status: Health,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let note = params?.0.remove("note").unwrap_or_default();
        update(&state, &who, &id, status, note).await
    })
    .await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status": …, "Output": …}`.
async fn check_update(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(decode_failed("EOF"));
        }
        let value: Value = serde_json::from_slice(&body).map_err(decode_failed)?;
        let Value::Object(obj) = value else {
            return Err(decode_failed("the body must be a JSON object"));
        };
        let status = text(&obj, "Status")?;
        let Some(status) = Health::parse(&status) else {
            return Err(Failure::bad_request(format!(
                "Invalid check status: '{status}'"
            )));
        };
        update(&state, &who, &id, status, text(&obj, "Output")?).await
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Reading

/// `?dc=`: only this datacenter is reachable.
fn datacenter(params: &Params) -> Result<(), Failure> {
    match params.0.get("dc").map(String::as_str) {
        None | Some("") | Some(DATACENTER) => Ok(()),
        Some(_) => Err(Failure::internal("No path to datacenter")),
    }
}

/// `?filter=` expressions are not evaluated: refused rather than ignored.
fn no_filter(params: &Params) -> Result<(), Failure> {
    match params.0.get("filter") {
        Some(f) if !f.is_empty() => Err(Failure::bad_request(
            "caskv does not evaluate ?filter expressions",
        )),
        _ => Ok(()),
    }
}

/// `?passing`: bare, or a Go boolean (`1`, `true`, `0`, `false`, …), as Consul reads it.
fn passing(params: &Params) -> Result<bool, Failure> {
    match params.0.get("passing").map(String::as_str) {
        None => Ok(false),
        Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(Failure::bad_request("Invalid value for ?passing")),
    }
}

/// The `?tag=` values (repeatable: an instance must have them all).
fn tags_asked(uri: &Uri) -> Vec<String> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| {
            pairs
                .into_iter()
                .filter(|(k, _)| k == "tag")
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}

/// Every live instance `who` may read, and the registry's index, after holding a blocking read
/// (`?index=&wait=`) until the registry changes.
async fn instances(
    state: &AppState,
    who: &Who,
    params: &Params,
) -> Result<(u64, Vec<Instance>), Failure> {
    let blocking = params.blocking()?;
    let index = listing(state, state.registry.store(), "", blocking)
        .await
        .index;
    let found = state
        .registry
        .list()
        .into_iter()
        .map(Instance::of)
        .filter(|i| i.visible_to(who))
        .collect();
    Ok((index, found))
}

/// `GET /v1/agent/services`: `{id: service}`.
async fn agent_services(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        no_filter(&params)?;
        let (index, found) = instances(&state, &who, &Params(Default::default())).await?;
        let services: BTreeMap<&str, AgentService<'_>> = found
            .iter()
            .map(|i| (i.id(), i.agent_service(None)))
            .collect();
        Ok(at_index(json(&services), index))
    })
    .await
}

/// `GET /v1/agent/service/{id}`: the service with its `ContentHash`; `?hash=` (with `?wait=`)
/// holds the answer while the service's hash is that one.
async fn agent_service(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        let wait = match params.0.get("wait") {
            Some(text) => parse_wait(text)?,
            None => defaults::BLOCKING_WAIT,
        };
        let wanted = params.0.get("hash").filter(|h| !h.is_empty());
        let store = state.registry.store();
        let mut held = false;
        loop {
            let seen = store.state(id.as_str()).index;
            let Some(entry) = state.registry.get(&id) else {
                return Err(Failure::not_found(format!("unknown service ID: {id}")));
            };
            let instance = Instance::of(entry);
            who.service(&id, Need::Read)?;
            who.service(&instance.name, Need::Read)?;
            let bare = serde_json::to_vec(&instance.agent_service(None))
                .map_err(|e| Failure::internal(e.to_string()))?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bare.hash(&mut hasher);
            let hash = format!("{:x}", hasher.finish());
            if !held && wanted == Some(&hash) {
                held = true;
                let mut watch = store.watch(id.as_str(), seen);
                hold(&state, &Blocking { index: seen, wait }, watch.changed()).await;
                continue;
            }
            let mut response = at_index(
                json(&instance.agent_service(Some(hash.clone()))),
                instance.entry.modify_index,
            );
            if let Ok(value) = HeaderValue::from_str(&hash) {
                response.headers_mut().insert(CONTENT_HASH, value);
            }
            return Ok(response);
        }
    })
    .await
}

/// `GET /v1/agent/checks`: `{check_id: check}`.
async fn agent_checks(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        no_filter(&params?)?;
        let (index, found) = instances(&state, &who, &Params(Default::default())).await?;
        let now = now_ms();
        let checks: BTreeMap<&str, HealthCheck<'_>> = found
            .iter()
            .flat_map(|i| i.health_checks(now, false))
            .map(|c| (c.check_id, c))
            .collect();
        Ok(at_index(json(&checks), index))
    })
    .await
}

/// `GET /v1/catalog/datacenters`.
async fn datacenters(State(state): State<AppState>) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        Ok(json(&[DATACENTER]))
    })
    .await
}

/// `GET /v1/catalog/nodes`: this node.
async fn nodes(State(state): State<AppState>, params: Result<Params, ApiError>) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        datacenter(&params?)?;
        Ok(json(&[node()]))
    })
    .await
}

/// `GET /v1/catalog/services`: `{name: [tags]}`. Blocking with `?index=&wait=`.
async fn catalog_services(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        datacenter(&params)?;
        no_filter(&params)?;
        let (index, found) = instances(&state, &who, &params).await?;
        let mut services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for i in &found {
            services
                .entry(&i.name)
                .or_default()
                .extend(i.tags().iter().map(String::as_str));
        }
        Ok(at_index(json(&services), index))
    })
    .await
}

/// `GET /v1/catalog/service/{name}` (`?tag=`): its instances. Blocking with `?index=&wait=`.
async fn catalog_service(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    params: Result<Params, ApiError>,
    uri: Uri,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        datacenter(&params)?;
        no_filter(&params)?;
        let tags = tags_asked(&uri);
        let (index, found) = instances(&state, &who, &params).await?;
        let entries: Vec<CatalogService<'_>> = found
            .iter()
            .filter(|i| i.name == name && i.tagged(&tags))
            .map(Instance::catalog_service)
            .collect();
        Ok(at_index(json(&entries), index))
    })
    .await
}

/// `GET /v1/health/service/{name}` (`?passing`, `?tag=`): its instances with their checks.
/// Blocking with `?index=&wait=`.
async fn health_service(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    params: Result<Params, ApiError>,
    uri: Uri,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        datacenter(&params)?;
        no_filter(&params)?;
        let tags = tags_asked(&uri);
        let passing = passing(&params)?;
        let (index, found) = instances(&state, &who, &params).await?;
        let now = now_ms();
        let entries: Vec<ServiceHealth<'_>> = found
            .iter()
            .filter(|i| i.name == name && i.tagged(&tags))
            .map(|i| {
                let mut checks = vec![serf_check()];
                checks.extend(i.health_checks(now, true));
                ServiceHealth {
                    node: node(),
                    service: i.node_service(),
                    checks,
                }
            })
            .filter(|e| !passing || e.checks.iter().all(|c| c.status == "passing"))
            .collect();
        Ok(at_index(json(&entries), index))
    })
    .await
}

/// `GET /v1/health/checks/{name}`: the checks of its instances. Blocking with `?index=&wait=`.
async fn health_checks(
    State(state): State<AppState>,
    who: Who,
    Path(name): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    keep(&state);
    metered(&state, Metric::ConsulService, async {
        let params = params?;
        datacenter(&params)?;
        no_filter(&params)?;
        let (index, found) = instances(&state, &who, &params).await?;
        let now = now_ms();
        let checks: Vec<HealthCheck<'_>> = found
            .iter()
            .filter(|i| i.name == name)
            .flat_map(|i| i.health_checks(now, true))
            .collect();
        Ok(at_index(json(&checks), index))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The keeper

/// The server states whose keeper runs, by their shared state.
static KEEPERS: Mutex<Vec<(Weak<Shared>, tokio::task::JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Starts `state`'s keeper unless it runs (see the module docs): it renews agent registrations
/// before the registry would expire them, writes lapsed TTL checks down as critical, and
/// deregisters services critical past their `DeregisterCriticalServiceAfter`. Outside a tokio
/// runtime it does nothing.
pub(crate) fn keep(state: &AppState) {
    let mut keepers = KEEPERS.lock().unwrap_or_else(|p| p.into_inner());
    keepers.retain(|(shared, task)| shared.strong_count() > 0 && !task.is_finished());
    let this = Arc::as_ptr(&state.0);
    if keepers.iter().any(|(shared, _)| shared.as_ptr() == this) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shared = Arc::downgrade(&state.0);
    let task = runtime.spawn(keeper(shared.clone()));
    keepers.push((shared, task));
}

/// The keeper's loop: a pass every [`TICK`] while the state lives and the server runs.
async fn keeper(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let state = AppState(shared);
        if *state.closing.borrow() {
            return;
        }
        tend(&state).await;
    }
}

/// What a registration's checks call for.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    /// A TTL ran out: write it down.
    Expiry,
    /// A check has been critical past its `DeregisterCriticalServiceAfter`.
    Deregister,
}

fn due(checks: &[Check], now: u64) -> Due {
    if checks.iter().any(|c| c.reap_due(now)) {
        Due::Deregister
    } else if checks.iter().any(|c| c.lapsed(now)) {
        Due::Expiry
    } else {
        Due::Nothing
    }
}

/// One pass of the keeper over the registry.
async fn tend(state: &AppState) {
    let now = now_ms();
    let renew_below = millis(state.registry.ttl()) / 2;
    for (name, entry) in state.registry.store().entries() {
        let service = entry.value.service();
        if !service.meta.contains_key(NAME_KEY) {
            continue;
        }
        let expires = entry.value.expires_at_ms();
        if expires <= now {
            continue;
        }
        if expires - now < renew_below {
            let _ = state.registry.heartbeat(&name);
        }
        if !service.meta.contains_key(CHECKS_KEY) {
            continue;
        }
        match due(&checks_of(service), now) {
            Due::Nothing => {}
            Due::Expiry => note_expiry(state, &name).await,
            Due::Deregister => {
                let write = state.db().deregister(&name, Some(entry.modify_index));
                match write {
                    Ok(pending) => {
                        if pending.await.is_ok() {
                            tracing::info!(service = %name, "critical past DeregisterCriticalServiceAfter: deregistered");
                        }
                    }
                    // Changed since (an update may have made it healthy): looked at next pass.
                    Err(e) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "deregistering a critical service failed; retried next pass")
                    }
                }
            }
        }
    }
}

/// Writes down the lapsed TTL checks of registration `name` (critical, `TTL expired`).
async fn note_expiry(state: &AppState, name: &str) {
    for _ in 0..ATTEMPTS {
        let Some(entry) = state.registry.get(name) else {
            return;
        };
        let mut checks = checks_of(&entry.service);
        let now = now_ms();
        let mut lapsed = Vec::new();
        for check in &mut checks {
            if check.expire(now) {
                lapsed.push(check.id.clone());
            }
        }
        if lapsed.is_empty() {
            return;
        }
        let mut service = entry.service.clone();
        set_checks(&mut service, &checks);
        match write(state, service, entry.modify_index).await {
            Ok(true) => {
                tracing::info!(service = %name, checks = ?lapsed, "check missed its TTL, is now critical");
                return;
            }
            Ok(false) => tokio::task::yield_now().await,
            Err(e) => {
                tracing::warn!(service = %name, error = ?e, "writing a lapsed check failed; retried next pass");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{router, Limits};
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use http_body_util::BodyExt;
    use std::time::Instant;
    use tower::ServiceExt;

    fn app(service_ttl: Duration) -> Router {
        router(
            AppState::new(Limits::default(), service_ttl),
            Duration::from_secs(5),
        )
    }

    async fn send(
        app: &Router,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    async fn get_json(app: &Router, path: &str) -> (Value, u64) {
        let (status, headers, body) = send(app, "GET", path, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let index = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        (serde_json::from_str(&body).unwrap(), index)
    }

    const WEB_1: &str = r#"{"Name":"web","ID":"web-1","Address":"10.0.0.1","Port":8080,
        "Tags":["v1","primary"],"Meta":{"version":"1.2"},"Check":{"TTL":"10s"}}"#;

    #[tokio::test]
    async fn register_list_pass_health_catalog_deregister() {
        let app = app(Duration::from_secs(30));
        let (status, _, body) = send(&app, "PUT", "/v1/agent/service/register", WEB_1).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        // A second instance of the same service, without a check.
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"web","ID":"web-2","Port":8081}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        let (services, _) = get_json(&app, "/v1/agent/services").await;
        assert_eq!(
            services["web-1"],
            serde_json::json!({
                "ID": "web-1", "Service": "web", "Tags": ["v1", "primary"],
                "Meta": {"version": "1.2"}, "Port": 8080, "Address": "10.0.0.1",
                "TaggedAddresses": {
                    "lan_ipv4": {"Address": "10.0.0.1", "Port": 8080},
                    "wan_ipv4": {"Address": "10.0.0.1", "Port": 8080}
                },
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                "Datacenter": "dc1"
            })
        );
        assert_eq!(services["web-2"]["Tags"], serde_json::json!([]));
        assert_eq!(services["web-2"]["Meta"], serde_json::json!({}));

        // A TTL check starts critical: only web-2 (no check) is passing.
        let (healthy, _) = get_json(&app, "/v1/health/service/web?passing").await;
        let ids: Vec<&str> = healthy
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["web-2"]);
        let (all, _) = get_json(&app, "/v1/health/service/web").await;
        assert_eq!(all.as_array().unwrap().len(), 2);
        assert_eq!(all[0]["Checks"][1]["Status"], "critical");

        let (status, _, body) = send(
            &app,
            "PUT",
            "/v1/agent/check/pass/service:web-1?note=all%20good",
            "",
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        let (healthy, index) = get_json(&app, "/v1/health/service/web?passing=1").await;
        assert_eq!(healthy.as_array().unwrap().len(), 2);
        let web1 = &healthy[0];
        assert_eq!(web1["Node"]["Node"], "caskv");
        assert_eq!(web1["Node"]["Address"], "127.0.0.1");
        assert_eq!(web1["Node"]["Datacenter"], "dc1");
        assert_eq!(web1["Service"]["ID"], "web-1");
        assert_eq!(web1["Service"]["Service"], "web");
        assert_eq!(web1["Service"]["ModifyIndex"], index);
        assert_eq!(web1["Checks"][0]["CheckID"], "serfHealth");
        let check = &web1["Checks"][1];
        for (field, want) in [
            ("Node", "caskv"),
            ("CheckID", "service:web-1"),
            ("Name", "Service 'web' check"),
            ("Status", "passing"),
            ("Notes", ""),
            ("Output", "all good"),
            ("ServiceID", "web-1"),
            ("ServiceName", "web"),
            ("Type", "ttl"),
        ] {
            assert_eq!(check[field], want, "{field}: {check}");
        }
        assert_eq!(check["ServiceTags"], serde_json::json!(["v1", "primary"]));

        // ?tag= filters, case-insensitively.
        let (tagged, _) = get_json(&app, "/v1/health/service/web?tag=PRIMARY").await;
        assert_eq!(tagged.as_array().unwrap().len(), 1);

        let (catalog, _) = get_json(&app, "/v1/catalog/services").await;
        assert_eq!(catalog, serde_json::json!({"web": ["primary", "v1"]}));
        let (instances, _) = get_json(&app, "/v1/catalog/service/web?tag=v1").await;
        let entry = &instances[0];
        assert_eq!(instances.as_array().unwrap().len(), 1);
        for (field, want) in [
            ("Node", serde_json::json!("caskv")),
            ("Address", serde_json::json!("127.0.0.1")),
            ("Datacenter", serde_json::json!("dc1")),
            ("ServiceID", serde_json::json!("web-1")),
            ("ServiceName", serde_json::json!("web")),
            ("ServiceTags", serde_json::json!(["v1", "primary"])),
            ("ServiceAddress", serde_json::json!("10.0.0.1")),
            ("ServicePort", serde_json::json!(8080)),
            ("ServiceMeta", serde_json::json!({"version": "1.2"})),
            (
                "ServiceWeights",
                serde_json::json!({"Passing": 1, "Warning": 1}),
            ),
            ("ServiceEnableTagOverride", serde_json::json!(false)),
        ] {
            assert_eq!(entry[field], want, "{field}: {entry}");
        }
        assert!(entry["CreateIndex"].as_u64().unwrap() >= 1);

        let (checks, _) = get_json(&app, "/v1/agent/checks").await;
        assert_eq!(checks["service:web-1"]["Status"], "passing");
        let (checks, _) = get_json(&app, "/v1/health/checks/web").await;
        assert_eq!(checks.as_array().unwrap().len(), 1);

        let (one, _) = get_json(&app, "/v1/agent/service/web-1").await;
        assert_eq!(one["Service"], "web");
        assert!(one["ContentHash"].as_str().is_some_and(|h| !h.is_empty()));

        // The registry underneath holds the Consul name and check under reserved keys.
        let (status, _, body) = send(&app, "GET", "/services/web-1", "").await;
        assert_eq!(status, StatusCode::OK);
        let native: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(native["meta"][NAME_KEY], "web");
        assert!(native["meta"][CHECKS_KEY].is_string());

        let (status, _, _) = send(&app, "PUT", "/v1/agent/service/deregister/web-1", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = send(&app, "PUT", "/v1/agent/service/deregister/web-1", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            "Unknown service ID \"web-1\". Ensure that the service ID is passed, not the service name."
        );
        let (services, _) = get_json(&app, "/v1/agent/services").await;
        assert_eq!(services.as_object().unwrap().len(), 1);
        let (status, _, body) = send(&app, "GET", "/v1/agent/service/web-1", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "unknown service ID: web-1")
        );
        let (status, _, body) = send(&app, "PUT", "/v1/agent/check/pass/service:web-1", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.starts_with("Unknown check ID \"service:web-1\""),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_ttl_check_goes_critical_and_wakes_a_blocking_health_read() {
        let app = app(Duration::from_secs(30));
        let body = r#"{"Name":"api","Check":{"TTL":"1s","Status":"passing"}}"#;
        let (status, _, _) = send(&app, "PUT", "/v1/agent/service/register", body).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/check/update/service:api",
            r#"{"Status":"warning","Output":"slow"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (healthy, index) = get_json(&app, "/v1/health/service/api?passing").await;
        assert_eq!(healthy, serde_json::json!([]), "a warning is not passing");
        let (status, _, _) = send(&app, "PUT", "/v1/agent/check/pass/service:api", "").await;
        assert_eq!(status, StatusCode::OK);
        let (healthy, index2) = get_json(&app, "/v1/health/service/api?passing").await;
        assert_eq!(healthy.as_array().unwrap().len(), 1);
        assert!(index2 > index);

        // Blocks until the keeper writes the lapsed TTL down, about a second later.
        let start = Instant::now();
        let (all, index3) = get_json(
            &app,
            &format!("/v1/health/service/api?index={index2}&wait=10s"),
        )
        .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(index3 > index2);
        let check = &all[0]["Checks"][1];
        assert_eq!(check["Status"], "critical");
        assert_eq!(check["Output"], "TTL expired");
        let (healthy, _) = get_json(&app, "/v1/health/service/api?passing").await;
        assert_eq!(healthy, serde_json::json!([]));
        // The service stays registered.
        let (services, _) = get_json(&app, "/v1/agent/services").await;
        assert_eq!(services["api"]["Service"], "api");

        // An update brings it back; the last output is kept for the next expiry.
        let (status, _, _) =
            send(&app, "PUT", "/v1/agent/check/pass/service:api?note=ok", "").await;
        assert_eq!(status, StatusCode::OK);
        let (healthy, _) = get_json(&app, "/v1/health/service/api?passing").await;
        assert_eq!(healthy.as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn agent_services_outlive_the_registry_ttl() {
        let app = app(Duration::from_millis(800));
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"db","Port":5432}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // A native registration beside it expires as the native API says.
        let (status, _, _) = send(
            &app,
            "POST",
            "/services",
            r#"{"name":"native","address":"10.0.0.9","port":1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let (services, _) = get_json(&app, "/v1/agent/services").await;
        let ids: Vec<&String> = services.as_object().unwrap().keys().collect();
        assert_eq!(ids, ["db"]);
    }

    #[tokio::test]
    async fn reregistering_keeps_check_state_and_multiple_checks_get_numbered_ids() {
        let app = app(Duration::from_secs(30));
        let two =
            r#"{"Name":"q","Checks":[{"TTL":"30s"},{"TTL":"30s","Name":"deep","Notes":"n"}]}"#;
        let (status, _, _) = send(&app, "PUT", "/v1/agent/service/register", two).await;
        assert_eq!(status, StatusCode::OK);
        let (checks, _) = get_json(&app, "/v1/agent/checks").await;
        assert_eq!(checks["service:q:1"]["Name"], "Service 'q' check");
        assert_eq!(checks["service:q:2"]["Name"], "deep");
        assert_eq!(checks["service:q:2"]["Notes"], "n");
        let (status, _, _) =
            send(&app, "PUT", "/v1/agent/check/warn/service:q:2?note=hm", "").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(&app, "PUT", "/v1/agent/service/register", two).await;
        assert_eq!(status, StatusCode::OK);
        let (checks, _) = get_json(&app, "/v1/agent/checks").await;
        assert_eq!(checks["service:q:2"]["Status"], "warning");
        assert_eq!(checks["service:q:2"]["Output"], "hm");
        assert_eq!(checks["service:q:1"]["Status"], "critical");
        // Without ?replace-existing-checks, checks left out of a new definition stay.
        let one = r#"{"Name":"q","Check":{"CheckID":"own","TTL":"5s"}}"#;
        let (status, _, _) = send(&app, "PUT", "/v1/agent/service/register", one).await;
        assert_eq!(status, StatusCode::OK);
        let (checks, _) = get_json(&app, "/v1/agent/checks").await;
        assert_eq!(checks.as_object().unwrap().len(), 3);
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/service/register?replace-existing-checks",
            one,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (checks, _) = get_json(&app, "/v1/agent/checks").await;
        let ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
        assert_eq!(ids, ["own"]);
        let (status, _, _) = send(&app, "PUT", "/v1/agent/check/fail/own?note=down", "").await;
        assert_eq!(status, StatusCode::OK);
        let (checks, _) = get_json(&app, "/v1/health/checks/q").await;
        assert_eq!(checks[0]["Status"], "critical");
        assert_eq!(checks[0]["Output"], "down");
    }

    #[tokio::test]
    async fn bad_registrations_and_updates_are_refused_in_consuls_words() {
        let app = app(Duration::from_secs(30));
        for (body, want) in [
            (r#"{"ID":"x"}"#, "Missing service name"),
            ("", "Request decode failed: EOF"),
            ("{nope", "Request decode failed: "),
            (
                r#"{"Name":"x","Meta":{"consul-secret":"1"}}"#,
                "Invalid Service Meta: Couldn't load metadata pair ('consul-secret', '1'): Key prefix 'consul-' is reserved for internal use",
            ),
            (
                r#"{"Name":"x","Check":{"HTTP":"http://x/health","Interval":"10s"}}"#,
                "Invalid check: caskv runs TTL checks only",
            ),
            (
                r#"{"Name":"x","Check":{"Name":"no ttl"}}"#,
                "Invalid check: TTL must be > 0 for TTL checks",
            ),
            (
                r#"{"Name":"x","Check":{"TTL":"10s","Status":"fine"}}"#,
                "Status for checks must 'passing', 'warning', 'critical'",
            ),
            (
                r#"{"Name":"x","Weights":{"Passing":0,"Warning":1}}"#,
                "Invalid Weights: Passing must be greater than 0",
            ),
            (r#"{"Name":"x","Address":"0.0.0.0"}"#, "Invalid service address"),
            (r#"{"Name":"x","Port":70000}"#, "Request decode failed: "),
        ] {
            let (status, _, text) = send(&app, "PUT", "/v1/agent/service/register", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            assert!(text.starts_with(want), "{body}: {text}");
        }
        let (services, _) = get_json(&app, "/v1/agent/services").await;
        assert_eq!(services, serde_json::json!({}));

        // Field names are matched as Go matches them: any case.
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/service/register",
            r#"{"name":"x","port":1,"check":{"ttl":"1m"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, text) = send(
            &app,
            "PUT",
            "/v1/agent/check/update/service:x",
            r#"{"Status":"ok"}"#,
        )
        .await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, "Invalid check status: 'ok'")
        );
        let (status, _, text) = send(&app, "GET", "/v1/health/service/x?passing=maybe", "").await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, "Invalid value for ?passing")
        );
        let (all, _) = get_json(&app, "/v1/health/service/x?passing=false").await;
        assert_eq!(
            all.as_array().unwrap().len(),
            1,
            "passing=false does not filter"
        );
        let (status, _, _) = send(&app, "GET", "/v1/catalog/services?dc=dc2", "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn a_blocking_catalog_read_wakes_on_a_registration() {
        let app = app(Duration::from_secs(30));
        // A KV write first: on a fresh store the first registration takes index 1, the index an
        // empty registry already answers with.
        let (status, _, _) = send(&app, "PUT", "/v1/kv/x", "1").await;
        assert_eq!(status, StatusCode::OK);
        let (_, index) = get_json(&app, "/v1/catalog/service/late").await;
        let waiter = {
            let app = app.clone();
            tokio::spawn(async move {
                get_json(
                    &app,
                    &format!("/v1/catalog/service/late?index={index}&wait=10s"),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) = send(
            &app,
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"late","Port":1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (found, after) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(after > index);
        assert_eq!(found[0]["ServiceID"], "late");
    }

    #[tokio::test]
    async fn acl_rules_name_both_the_id_and_the_service_name() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            serde_json::json!({
                "anonymous": {"services": {"web": "read"}},
                "tokens": [
                    {"name": "app", "secret": "app-token", "services": {"web": "write"}},
                    {"name": "ops", "secret": "ops-token", "services": {"": "write"}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let state = AppState::new(Limits::default(), Duration::from_secs(30))
            .with_acl_file(file.path())
            .unwrap();
        let app = router(state, Duration::from_secs(5));
        let as_token = |token: &'static str, method: &str, path: &str, body: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .header("x-consul-token", token)
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let status = |req: Request<Body>| {
            let app = app.clone();
            async move { app.oneshot(req).await.unwrap().status() }
        };
        let register = "/v1/agent/service/register";
        let web = r#"{"Name":"web","ID":"web-1","Check":{"TTL":"30s"}}"#;
        assert_eq!(
            status(as_token("app-token", "PUT", register, web)).await,
            StatusCode::OK
        );
        // The name is the app's, the ID is not.
        let sneaky = r#"{"Name":"web","ID":"db-1"}"#;
        assert_eq!(
            status(as_token("app-token", "PUT", register, sneaky)).await,
            StatusCode::FORBIDDEN
        );
        let db = r#"{"Name":"db","ID":"db-1"}"#;
        assert_eq!(
            status(as_token("ops-token", "PUT", register, db)).await,
            StatusCode::OK
        );
        let pass = "/v1/agent/check/pass/service:web-1";
        let anonymous = Request::builder()
            .method("PUT")
            .uri(pass)
            .body(Body::empty())
            .unwrap();
        // No token where one is needed: 401 (the native ACL's answer).
        assert_eq!(status(anonymous).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(as_token("app-token", "PUT", pass, "")).await,
            StatusCode::OK
        );
        // Anonymous reads see what they may read.
        let (catalog, _) = get_json(&app, "/v1/catalog/services").await;
        assert_eq!(catalog, serde_json::json!({"web": []}));
        let (health, _) = get_json(&app, "/v1/health/service/db").await;
        assert_eq!(health, serde_json::json!([]));
        let deregister = "/v1/agent/service/deregister/db-1";
        assert_eq!(
            status(as_token("app-token", "PUT", deregister, "")).await,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn go_durations() {
        for (text, ms) in [
            ("10s", 10_000),
            ("1m30s", 90_000),
            ("1.5h", 5_400_000),
            ("300ms", 300),
            ("0", 0),
            ("2h45m", 9_900_000),
        ] {
            assert_eq!(go_duration(text), Some(Duration::from_millis(ms)), "{text}");
        }
        assert_eq!(go_duration("-5s"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "5x", "1..s", "."] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn check_states_follow_consul() {
        let def = CheckDef {
            id: None,
            name: None,
            notes: String::new(),
            status: None,
            ttl: Duration::from_secs(10),
            deregister_after: Some(Duration::from_secs(5)),
        };
        let mut c = Check::new(&def, "service:a".into(), "a", 1_000);
        assert_eq!(c.view(1_000).0, Health::Critical);
        assert_eq!(c.deregister_after_ms, Some(60_000), "at least a minute");
        c.set(Health::Passing, "fine".into(), 2_000);
        assert_eq!(c.view(11_999), (Health::Passing, Cow::Borrowed("fine")));
        let (status, output) = c.view(12_000);
        let output = output.into_owned();
        assert_eq!(status, Health::Critical);
        assert_eq!(
            output,
            "TTL expired (last output before timeout follows): fine"
        );
        assert_eq!(due(std::slice::from_ref(&c), 12_000), Due::Expiry);
        assert!(c.expire(12_000));
        assert!(!c.expire(13_000), "written down once");
        assert_eq!(c.view(13_000).1, output);
        assert_eq!(c.critical_since(13_000), Some(12_000));
        assert_eq!(due(std::slice::from_ref(&c), 71_999), Due::Nothing);
        assert_eq!(due(std::slice::from_ref(&c), 72_000), Due::Deregister);
        // A fail keeps the time it went critical; a pass clears it.
        c.set(Health::Critical, "down".into(), 20_000);
        assert_eq!(c.critical_since(20_000), Some(12_000));
        c.set(Health::Passing, String::new(), 21_000);
        assert_eq!(c.critical_since(21_000), None);
        let long = "é".repeat(OUTPUT_MAX);
        let cut = truncated(long.clone());
        assert!(cut.ends_with(&format!(
            " ... (captured {OUTPUT_MAX} of {} bytes)",
            long.len()
        )));
    }
}
