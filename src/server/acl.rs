//! Access control: tokens with rules per key prefix, per service-name prefix and for the
//! metrics, read from an ACL file (`caskv serve --acl-file PATH`), swapped whole on reload.
//!
//! # The file (JSON)
//! ```json
//! {
//!   "default": "deny",
//!   "anonymous": { "kv": { "public/": "read" }, "services": { "": "read" } },
//!   "tokens": [
//!     { "name": "deployer", "secret": "s3cret-deploy-token",
//!       "kv": { "": "read", "app/": "write", "app/secrets/": "deny" },
//!       "services": { "": "write" }, "metrics": "read" },
//!     { "name": "ops", "secret_sha256": "<64 hex digits: SHA-256 of the token>",
//!       "kv": { "": "write" }, "services": { "": "write" }, "metrics": "read",
//!       "management": true }
//!   ]
//! }
//! ```
//! - A rule is `"read"`, `"write"` (which implies read) or `"deny"`. For a key (or a service
//!   name), the rule of the **longest matching prefix** wins (`""` matches everything); where
//!   none matches, `default` applies (itself `"deny"` unless given). `metrics` is one rule
//!   (default `"deny"`): reading `/metrics` needs `"read"`.
//! - `anonymous` is the rules of requests that carry no token (absent: they may do nothing but
//!   `/health`); its unmatched keys are denied whatever `default` says.
//! - A token is given as its `secret`, or as `secret_sha256` (the hex SHA-256 of the secret,
//!   so the file need not hold it). Either way the server keeps only the digest. A presented
//!   token is hashed, its digest's first 8 bytes pick the candidates, and each candidate's whole
//!   digest is compared in constant time: how long a lookup takes says nothing about a secret.
//! - `management: true` may `POST /admin/reload`.
//!
//! A token comes in `Authorization: Bearer <token>`, `X-Caskv-Token: <token>` or (for Consul
//! clients) `X-Consul-Token: <token>`. No token where
//! one is needed, or an unknown one: 401. A token whose rules deny: 403. Neither response names
//! the token or says whether the key exists.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a rule lets a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Nothing (the default).
    #[default]
    Deny,
    /// Read.
    Read,
    /// Read and write.
    Write,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To read.
    Read,
    /// To write (or delete).
    Write,
}

impl Rule {
    fn allows(self, need: Need) -> bool {
        match need {
            Need::Read => self >= Rule::Read,
            Need::Write => self == Rule::Write,
        }
    }
}

/// A map hashed with foldhash: a rule lookup hashes a prefix of the key at each rule length,
/// so the hash of a short string is most of its cost (SipHash's would be several times it).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The rules over one namespace (keys, or service names): by prefix, longest first.
#[derive(Debug)]
struct Prefixes {
    by_prefix: FastMap<String, Rule>,
    /// The distinct prefix lengths (in bytes), longest first.
    lengths: Vec<usize>,
    /// Where no prefix matches.
    otherwise: Rule,
}

impl Prefixes {
    fn new(rules: BTreeMap<String, Rule>, otherwise: Rule) -> Self {
        let mut lengths: Vec<usize> = rules.keys().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        Prefixes {
            by_prefix: rules.into_iter().collect(),
            lengths,
            otherwise,
        }
    }

    /// The rule for `name`, and the prefix it came from (`None`: the fallback).
    fn rule<'a>(&'a self, name: &str) -> (Rule, Option<&'a str>) {
        for &len in &self.lengths {
            if let Some(prefix) = name.get(..len) {
                if let Some((p, &rule)) = self.by_prefix.get_key_value(prefix) {
                    return (rule, Some(p.as_str()));
                }
            }
        }
        (self.otherwise, None)
    }
}

/// Who a request is, and what it may do.
#[derive(Debug)]
pub struct Caller {
    /// The token's name (`None`: anonymous).
    pub name: Option<String>,
    kv: Prefixes,
    services: Prefixes,
    metrics: Rule,
    management: bool,
}

/// A refusal: to the client a 401 or 403 with no detail; to the audit log, which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Whether the caller came without a token (then a 401: a token is needed).
    pub anonymous: bool,
    /// The rule that denied, for the log: `kv "app/secrets/"`, `kv default`, `metrics`, ….
    pub rule: String,
}

impl Caller {
    /// Everything allowed: the caller of a server without an ACL file.
    pub fn unrestricted() -> Self {
        Caller {
            name: None,
            kv: Prefixes::new(BTreeMap::new(), Rule::Write),
            services: Prefixes::new(BTreeMap::new(), Rule::Write),
            metrics: Rule::Read,
            management: true,
        }
    }

    /// This caller's refusal by `rule` (a 401 if it came without a token, else a 403).
    fn refuse(&self, rule: String) -> Denied {
        Denied {
            anonymous: self.name.is_none(),
            rule,
        }
    }

    fn check(
        &self,
        namespace: &str,
        rules: &Prefixes,
        name: &str,
        need: Need,
    ) -> Result<(), Denied> {
        let (rule, prefix) = rules.rule(name);
        if rule.allows(need) {
            return Ok(());
        }
        Err(self.refuse(match prefix {
            Some(p) => format!("{namespace} {p:?}"),
            None => format!("{namespace} default"),
        }))
    }

    /// May this caller do `need` to the key `key`?
    pub fn kv(&self, key: &str, need: Need) -> Result<(), Denied> {
        self.check("kv", &self.kv, key, need)
    }

    /// May this caller do `need` to every one of `keys` (a batch: refused whole)?
    pub fn kv_all<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a String>,
        need: Need,
    ) -> Result<(), Denied> {
        keys.into_iter().try_for_each(|k| self.kv(k, need))
    }

    /// May this caller read `key` (for filtering listings; no refusal is built)?
    pub fn may_read_key(&self, key: &str) -> bool {
        self.kv.rule(key).0.allows(Need::Read)
    }

    /// May this caller do `need` to the service `name`?
    pub fn service(&self, name: &str, need: Need) -> Result<(), Denied> {
        self.check("services", &self.services, name, need)
    }

    /// May this caller read the service `name` (for filtering listings; no refusal is built)?
    pub fn may_read_service(&self, name: &str) -> bool {
        self.services.rule(name).0.allows(Need::Read)
    }

    /// May this caller read `/metrics`?
    pub fn metrics(&self) -> Result<(), Denied> {
        if self.metrics.allows(Need::Read) {
            Ok(())
        } else {
            Err(self.refuse("metrics".into()))
        }
    }

    /// May this caller create, renew, destroy and read Consul sessions? Any caller with a token
    /// may (what a session can lock is checked key by key on the acquire); an anonymous one
    /// only where its default KV rule allows writing.
    pub fn session(&self) -> Result<(), Denied> {
        if self.name.is_some() || self.kv.otherwise.allows(Need::Write) {
            Ok(())
        } else {
            Err(self.refuse("session".into()))
        }
    }

    /// May this caller reload the ACL file?
    pub fn management(&self) -> Result<(), Denied> {
        if self.management {
            Ok(())
        } else {
            Err(self.refuse("management".into()))
        }
    }
}

/// The file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default: Rule,
    #[serde(default)]
    anonymous: Option<Rules>,
    #[serde(default)]
    tokens: Vec<TokenFile>,
}

/// The rules of a token, or of anonymous requests.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    kv: BTreeMap<String, Rule>,
    #[serde(default)]
    services: BTreeMap<String, Rule>,
    #[serde(default)]
    metrics: Rule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    name: String,
    secret: Option<String>,
    secret_sha256: Option<String>,
    #[serde(flatten)]
    rules: Rules,
    #[serde(default)]
    management: bool,
}

/// The callers whose token digests share their first 8 bytes, with their whole digests.
type Candidates = Vec<([u8; 32], Arc<Caller>)>;

/// A loaded ACL file: the callers by their token's digest, and the anonymous caller.
#[derive(Debug)]
pub struct Acl {
    /// The callers by the first 8 bytes of their token's digest, each with its whole digest.
    tokens: FastMap<u64, Candidates>,
    /// How many tokens.
    count: usize,
    anonymous: Arc<Caller>,
}

/// The SHA-256 of a token.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The first 8 bytes of a digest: where its candidates are filed.
fn bucket(digest: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head)
}

/// Whether two digests are equal, in a time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box: keeps the compiler from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// 64 hex digits as 32 bytes.
fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Acl {
    /// Reads and checks the ACL file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Acl, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the ACL file {}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| format!("the ACL file {} is invalid: {e}", path.display()))
    }

    /// Parses and checks an ACL file's text.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens: FastMap<u64, Candidates> = FastMap::default();
        let mut count = 0;
        let mut names = std::collections::HashSet::new();
        for t in file.tokens {
            if t.name.is_empty() {
                return Err("a token has an empty name".into());
            }
            if !names.insert(t.name.clone()) {
                return Err(format!("the token name {:?} is used twice", t.name));
            }
            let key = match (&t.secret, &t.secret_sha256) {
                (Some(s), None) if !s.is_empty() => digest(s),
                (None, Some(h)) => from_hex(h).ok_or_else(|| {
                    format!("token {:?}: secret_sha256 must be 64 hex digits", t.name)
                })?,
                (Some(_), None) => return Err(format!("token {:?}: the secret is empty", t.name)),
                _ => {
                    return Err(format!(
                        "token {:?}: give exactly one of secret and secret_sha256",
                        t.name
                    ))
                }
            };
            let caller = Caller {
                name: Some(t.name.clone()),
                kv: Prefixes::new(t.rules.kv, file.default),
                services: Prefixes::new(t.rules.services, file.default),
                metrics: t.rules.metrics,
                management: t.management,
            };
            let candidates = tokens.entry(bucket(&key)).or_default();
            if candidates.iter().any(|(d, _)| d == &key) {
                return Err(format!("token {:?} has the same secret as another", t.name));
            }
            candidates.push((key, Arc::new(caller)));
            count += 1;
        }
        let anon = file.anonymous.unwrap_or_default();
        let anonymous = Arc::new(Caller {
            name: None,
            kv: Prefixes::new(anon.kv, Rule::Deny),
            services: Prefixes::new(anon.services, Rule::Deny),
            metrics: anon.metrics,
            management: false,
        });
        Ok(Acl {
            tokens,
            count,
            anonymous,
        })
    }

    /// The caller a request with `token` (or none) is: `None` for an unknown token.
    pub fn caller(&self, token: Option<&str>) -> Option<Arc<Caller>> {
        match token {
            None => Some(self.anonymous.clone()),
            Some(t) => {
                let presented = digest(t);
                let candidates = self.tokens.get(&bucket(&presented))?;
                candidates
                    .iter()
                    .find(|(d, _)| same_digest(d, &presented))
                    .map(|(_, caller)| caller.clone())
            }
        }
    }

    /// How many tokens the file names.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the file names no token.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

// ---------------------------------------------------------------------------------------------
// The server's side: who a request is, and what a refusal looks like
// ---------------------------------------------------------------------------------------------

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// The caller of a request, as [`identify`] found it (a handler's extractor; its checks are
/// [`Caller`]'s, whose refusals `?` turns into a 401 or 403). On a server without an ACL file,
/// every request is [`Caller::unrestricted`].
#[derive(Clone, Debug)]
pub struct Who(Arc<Caller>);

impl std::ops::Deref for Who {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// The caller of every request of a server without an ACL file.
fn unrestricted() -> Arc<Caller> {
    static OPEN: std::sync::OnceLock<Arc<Caller>> = std::sync::OnceLock::new();
    OPEN.get_or_init(|| Arc::new(Caller::unrestricted()))
        .clone()
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Who>()
            .cloned()
            .unwrap_or_else(|| Who(unrestricted())))
    }
}

/// The token a request carries: `Authorization: Bearer <token>`, else `X-Caskv-Token`, else
/// `X-Consul-Token`.
/// `Err` for a header that is there but unusable (not text, not a bearer token, empty).
fn token(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().map_err(|_| ())?;
        let (scheme, token) = text.split_once(' ').ok_or(())?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(());
        }
        return Ok(Some(token.trim()));
    }
    match headers
        .get("x-caskv-token")
        .or_else(|| headers.get("x-consul-token"))
    {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim())),
            _ => Err(()),
        },
    }
}

/// A response's note of the rule that refused it, for [`identify`]'s audit line.
#[derive(Clone, Debug)]
pub(crate) struct DeniedBy(pub(crate) String);

/// Finds who a request is (on a server with an ACL file) and hands it to the handlers as a
/// [`Who`]; an unknown or malformed token is a 401 here. `/health` needs nothing. Every refusal
/// is logged (method, path, token name, rule; never the token), at most
/// [`AUDIT_LINES_PER_SECOND`] lines a second.
pub(crate) async fn identify(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(source) = &state.acl else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    // For the audit line; a `Uri` clone shares its bytes (no copy of the path).
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let caller = match token(req.headers()) {
        Ok(presented) => source.table.load().caller(presented),
        Err(()) => None,
    };
    let Some(caller) = caller else {
        audit(&method, path, None, "an unknown or malformed token");
        return ApiError::from(Denied {
            anonymous: true,
            rule: String::new(),
        })
        .into_response();
    };
    req.extensions_mut().insert(Who(caller.clone()));
    let response = next.run(req).await;
    if let Some(DeniedBy(rule)) = response.extensions().get::<DeniedBy>() {
        audit(&method, path, caller.name.as_deref(), rule);
    }
    response
}

/// The most audit lines logged in one second; the rest of that second's are dropped.
pub const AUDIT_LINES_PER_SECOND: u64 = 20;

/// Logs a refusal, rate-limited.
fn audit(method: &Method, path: &str, token: Option<&str>, rule: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Relaxed: a rate limit, approximate under races by design.
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) < AUDIT_LINES_PER_SECOND {
        tracing::warn!(%method, path, token = token.unwrap_or("(anonymous)"), rule, "request denied");
    }
}
