//! The service registry: services with a TTL, on a [`Store`] that shares the KV store's
//! [`GlobalIndex`], so registrations, deregistrations and expiries take indices from the same
//! sequence as KV writes.
//!
//! A heartbeat renews a service's TTL **without** a new version: the deadline lives in an atomic
//! inside the registration, and renewing it is a CAS on that atomic, not a write to the store.
//! An expiry is a delete at the registration's `modify_index`, so it takes an index.
//!
//! # Heartbeat versus expiry
//! The reaper claims an expired registration by CASing its deadline from the value it saw to
//! [`Registration::REAPING`] before deleting it; a heartbeat renews by CASing the deadline from
//! the value it saw to a later one. Only one of the two CASes can win, so a heartbeat that was
//! accepted is never undone by a reaper that read the deadline before it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::journal::Written;
use crate::sync::{AtomicU64, Ordering, StdArc as Arc};
use crate::{Entry, Error, GlobalIndex, Store};

/// A service as clients register it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Service {
    /// Unique name: the registry's key.
    pub name: String,
    /// Host or IP address.
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Free-form tags.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Vec::is_empty")
    )]
    pub tags: Vec<String>,
    /// Free-form metadata.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeMap::is_empty")
    )]
    pub meta: BTreeMap<String, String>,
}

/// A stored registration: the service and its renewable deadline.
#[derive(Debug)]
pub struct Registration {
    pub(crate) service: Service,
    /// Milliseconds since the Unix epoch; [`Registration::REAPING`] once a reaper claimed it.
    expires_at_ms: AtomicU64,
}

impl Registration {
    /// The deadline value of a registration a reaper has claimed.
    const REAPING: u64 = 0;

    /// A registration recovered from disk, expiring at `expires_at_ms` (ms since the epoch).
    pub(crate) fn restored(service: Service, expires_at_ms: u64) -> Self {
        Registration {
            service,
            expires_at_ms: AtomicU64::new(expires_at_ms.max(1)),
        }
    }

    /// The deadline in milliseconds since the Unix epoch.
    pub(crate) fn expires_at_ms(&self) -> u64 {
        self.deadline()
    }

    /// The registered service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// When the registration expires unless renewed.
    pub fn expires_at(&self) -> SystemTime {
        // Relaxed: a deadline is a plain value; the CASes that change it are its only writers.
        UNIX_EPOCH + Duration::from_millis(self.expires_at_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn deadline(&self) -> u64 {
        // Relaxed: as in `expires_at`.
        self.expires_at_ms.load(Ordering::Relaxed)
    }

    fn is_live(&self, now: u64) -> bool {
        self.deadline() > now
    }
}

/// One registry entry as read: the service, its indices and its deadline.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// The registered service.
    pub service: Service,
    /// The index of the registration's last version.
    pub modify_index: u64,
    /// The index at which the service was first registered.
    pub create_index: u64,
    /// When it expires unless renewed.
    pub expires_at: SystemTime,
}

/// Errors of the registry: the store's, keyed by service name.
pub type RegistryError = Error<String, Arc<Registration>>;

/// The service registry.
///
/// # Example
/// ```
/// use caskv::{GlobalIndex, Registry, Service};
/// use std::{sync::Arc, time::Duration};
///
/// let index = Arc::new(GlobalIndex::new());
/// let registry = Registry::new(index.clone(), Duration::from_secs(30));
/// let web = Service { name: "web".into(), address: "10.0.0.1".into(), port: 80, ..Default::default() };
/// let at = registry.register(web.clone(), Some(0)).unwrap(); // create-only
/// assert!(registry.register(web, Some(0)).unwrap_err().is_conflict());
/// let before = registry.get("web").unwrap();
/// let renewed = registry.heartbeat("web").unwrap();
/// assert_eq!(renewed.modify_index, at); // a heartbeat is not a new version
/// assert!(renewed.expires_at >= before.expires_at);
/// ```
pub struct Registry {
    store: Store<String, Arc<Registration>>,
    ttl: Duration,
    /// Refuses a registration before it is applied (a persistent registry's bound on what one
    /// log record holds; `persist/registration.rs`). `None` in memory.
    admit: Option<Admit>,
}

/// A registry's check of a registration before it is applied.
pub(crate) type Admit = fn(&str, &Registration) -> Result<(), RegistryError>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Registry {
    /// A registry drawing indices from `index` (share the KV store's), with registrations
    /// living `ttl` unless renewed.
    pub fn new(index: Arc<GlobalIndex>, ttl: Duration) -> Self {
        Registry::with_store(Store::builder().global_index(index).build(), ttl, None)
    }

    /// A registry over a store built elsewhere (a persistent one, with a journal, and its
    /// `admit` check).
    pub(crate) fn with_store(
        store: Store<String, Arc<Registration>>,
        ttl: Duration,
        admit: Option<Admit>,
    ) -> Self {
        Registry { store, ttl, admit }
    }

    /// The store of registrations.
    pub(crate) fn store(&self) -> &Store<String, Arc<Registration>> {
        &self.store
    }

    /// The TTL of new registrations and heartbeats.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn deadline_from(&self, now: u64) -> u64 {
        now.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads a live registration, reaping it if it expired.
    fn live(&self, name: &str, now: u64) -> Option<Entry<Arc<Registration>>> {
        let entry = self.store.get(name)?;
        if entry.value.is_live(now) {
            Some(entry)
        } else {
            self.reap(name, &entry, now);
            None
        }
    }

    /// Deletes an expired registration at its index, unless a heartbeat renewed it first.
    /// Returns whether this call removed it.
    fn reap(&self, name: &str, entry: &Entry<Arc<Registration>>, now: u64) -> bool {
        let seen = entry.value.deadline();
        if seen > now {
            return false;
        }
        // AcqRel/Acquire: this CAS and the heartbeat's are the two writers of the deadline; the
        // single modification order of the atomic decides which one wins.
        let claimed = seen == Registration::REAPING
            || entry
                .value
                .expires_at_ms
                .compare_exchange(
                    seen,
                    Registration::REAPING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        claimed && self.store.delete_cas(name, entry.modify_index).is_ok()
    }

    /// Registers or replaces a service. `cas: None` always writes; `Some(0)` only if absent;
    /// `Some(n)` only if the current registration's `modify_index` is n. Returns the new index.
    /// The TTL starts afresh.
    pub fn register(&self, service: Service, cas: Option<u64>) -> Result<u64, RegistryError> {
        Ok(self.register_written(service, cas)?.index)
    }

    /// `register` with the journal ticket.
    pub(crate) fn register_written(
        &self,
        service: Service,
        cas: Option<u64>,
    ) -> Result<Written, RegistryError> {
        let now = now_ms();
        let name = service.name.clone();
        let _ = self.live(&name, now); // an expired registration counts as absent
        let registration = Arc::new(Registration {
            service,
            expires_at_ms: AtomicU64::new(self.deadline_from(now)),
        });
        if let Some(admit) = self.admit {
            admit(&name, &registration)?;
        }
        match cas {
            None => Ok(self.store.write_set(name, registration, None, None)),
            Some(expected) => self
                .store
                .write_set_cas(name, registration, expected, None, None),
        }
    }

    /// The live registration of `name`; `None` if absent or expired.
    pub fn get(&self, name: &str) -> Option<ServiceEntry> {
        self.live(name, now_ms()).map(|e| entry_of(&e))
    }

    /// Every live registration, sorted by name.
    pub fn list(&self) -> Vec<ServiceEntry> {
        let now = now_ms();
        self.store
            .entries()
            .into_iter()
            .filter(|(name, e)| {
                let live = e.value.is_live(now);
                if !live {
                    self.reap(name, e, now);
                }
                live
            })
            .map(|(_, e)| entry_of(&e))
            .collect()
    }

    /// Removes a service. `cas: Some(n)` only if its `modify_index` is n (n ≥ 1).
    /// Returns the index the removal took.
    pub fn deregister(&self, name: &str, cas: Option<u64>) -> Result<u64, RegistryError> {
        Ok(self.deregister_written(name, cas)?.index)
    }

    /// `deregister` with the journal ticket.
    pub(crate) fn deregister_written(
        &self,
        name: &str,
        cas: Option<u64>,
    ) -> Result<Written, RegistryError> {
        let now = now_ms();
        let key = name.to_string();
        if self.live(name, now).is_none() {
            return Err(Error::NotFound(key));
        }
        self.store.write_delete(&key, cas)
    }

    /// Renews the TTL of a live registration without changing its `modify_index`.
    pub fn heartbeat(&self, name: &str) -> Result<ServiceEntry, RegistryError> {
        let now = now_ms();
        let renewed = self.deadline_from(now);
        let Some(entry) = self.live(name, now) else {
            return Err(Error::NotFound(name.to_string()));
        };
        let mut seen = entry.value.deadline();
        loop {
            if seen <= now {
                // Expired (or claimed by a reaper) since we looked.
                return Err(Error::NotFound(name.to_string()));
            }
            // AcqRel/Acquire: pairs with the reaper's CAS (see the module docs).
            match entry.value.expires_at_ms.compare_exchange(
                seen,
                renewed.max(seen),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(entry_of(&entry)),
                Err(actual) => seen = actual,
            }
        }
    }

    /// Removes every expired registration (each removal takes an index). Returns how many.
    pub fn reap_expired(&self) -> usize {
        let now = now_ms();
        self.store
            .entries()
            .into_iter()
            .filter(|(name, e)| self.reap(name, e, now))
            .count()
    }

    /// The number of live registrations.
    pub fn len(&self) -> usize {
        let now = now_ms();
        self.store
            .entries()
            .iter()
            .filter(|(_, e)| e.value.is_live(now))
            .count()
    }

    /// Whether no registration is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry_of(e: &Entry<Arc<Registration>>) -> ServiceEntry {
    ServiceEntry {
        service: e.value.service.clone(),
        modify_index: e.modify_index,
        create_index: e.create_index,
        expires_at: e.value.expires_at(),
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u16) -> Service {
        Service {
            name: name.into(),
            address: "127.0.0.1".into(),
            port,
            ..Default::default()
        }
    }

    #[test]
    fn register_cas_and_deregister_share_the_kv_index() {
        let index = Arc::new(GlobalIndex::new());
        let kv: Store<String, String> = Store::builder().global_index(index.clone()).build();
        let reg = Registry::new(index.clone(), Duration::from_secs(30));
        let a = kv.set("k".into(), "v".to_string());
        let b = reg.register(svc("web", 80), None).unwrap();
        assert_eq!(b, a + 1);
        assert!(reg
            .register(svc("web", 81), Some(a))
            .unwrap_err()
            .is_conflict());
        let c = reg.register(svc("web", 81), Some(b)).unwrap();
        assert_eq!(reg.get("web").unwrap().service.port, 81);
        assert!(reg.deregister("web", Some(b)).unwrap_err().is_conflict());
        let d = reg.deregister("web", Some(c)).unwrap();
        assert!(d > c);
        assert!(reg.get("web").is_none());
        assert!(reg.deregister("web", None).unwrap_err().is_not_found());
        assert!(reg
            .register(svc("x", 1), Some(5))
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn expiry_is_a_delete_that_takes_an_index() {
        let index = Arc::new(GlobalIndex::new());
        let reg = Registry::new(index.clone(), Duration::ZERO);
        let at = reg.register(svc("db", 5432), None).unwrap();
        assert!(reg.get("db").is_none(), "a zero TTL expires at once");
        assert!(index.high_water() > at, "the expiry took an index");
        assert!(reg.heartbeat("db").unwrap_err().is_not_found());
        assert!(reg.list().is_empty());
        // Expired counts as absent for create-only.
        reg.register(svc("db", 5432), Some(0)).unwrap();
    }

    #[test]
    fn heartbeat_renews_without_a_new_version_and_list_is_sorted() {
        let reg = Registry::new(Arc::new(GlobalIndex::new()), Duration::from_secs(60));
        reg.register(svc("b", 2), None).unwrap();
        let a = reg.register(svc("a", 1), None).unwrap();
        let hb = reg.heartbeat("a").unwrap();
        assert_eq!(hb.modify_index, a);
        let names: Vec<_> = reg.list().into_iter().map(|e| e.service.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.reap_expired(), 0);
    }
}
