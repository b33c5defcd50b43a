//! `store_model`: the store against a sequential model, driven by `arbitrary`.
//!
//! A sequence of operations (every single-key operation, value compare-and-set, `update`,
//! batches mixing every kind of operation, with keys absent, present or named twice, and
//! `get_many`) runs against a [`Store`] and against a model: a `BTreeMap` plus a counter.
//! Single-threaded, every index is exactly predictable: each successful write takes the next
//! one, a failure takes none, a committed batch takes one. After every step the results, the
//! errors (kind, key, condition and the current entry they hand back), a full scan with
//! `entries()` and the global index's high-water mark must all agree with the model.
//!
//! Time and the cache side: the store reads a test clock that only `Advance` moves; writes may
//! carry a TTL, the store may have a default TTL and an entry bound (up to 7, below the number
//! of keys), and `Purge` deletes what expired. Every expiry and eviction is a delete at its own
//! index, reported to the eviction listener with the version it deleted, which the model checks
//! (see `tests/support/model.rs`); a bounded store's weight and bound are checked after every
//! step.
//!
//! The store may start above a high-water mark, up to the highest one allowed
//! (`GlobalIndex::LIMIT - 1`): indices must go on increasing past it without wrapping. A mark at
//! or above the limit must be refused by `GlobalIndex::try_starting_after`.
//!
//! The model and its checks are `tests/support/model.rs`, shared with `tests/model.rs` (the
//! proptest version); this file is only how `arbitrary` makes its actions, so that coverage
//! guides the search.

use arbitrary::{Arbitrary, Unstructured};
use caskv::{GlobalIndex, Store};

#[path = "../../tests/support/model.rs"]
mod model;

use model::{Model, Setup, V};

/// The keys operations pick from: few, so that operations meet on the same keys, and with a
/// shared prefix and the empty key (valid for the library).
const KEYS: [&str; 7] = ["a", "b", "c", "d", "d/1", "d/2", ""];

/// The prefixes `keys_with_prefix` is asked for.
const PREFIXES: [&str; 5] = ["", "d", "d/", "a", "x"];

/// The most actions one input runs.
const MAX_ACTIONS: usize = 64;

/// TTLs and steps of the clock are below this many ms: a few steps make versions expire.
const TIME_SPAN: u8 = 8;

/// A key, by position in [`KEYS`].
#[derive(Arbitrary, Debug, Clone, Copy)]
struct K(u8);

impl K {
    fn name(self) -> String {
        KEYS[usize::from(self.0) % KEYS.len()].to_string()
    }
}

// The input format: `model::Pick`, `model::Action` and `model::BatchAction` with keys by
// position, as `arbitrary` reads them. Their variants and fields keep this order and these
// types, or the committed corpus and regressions would decode into other runs.

/// How the expected index of a CAS is chosen: [`model::Pick`].
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    Current,
    Zero,
    Offset(i8),
    Exact(u64),
}

/// Where the store's global index starts.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Start {
    Fresh,
    After(u16),
    /// `GlobalIndex::LIMIT + n` (saturating): refused, and the store starts fresh.
    Refused(u64),
    /// `GlobalIndex::LIMIT - 1 - n`: writes run past the limit (they must not wrap).
    NearLimit(u8),
}

/// [`model::Action`]; `Keys(p)` asks for the prefix `PREFIXES[p % 5]`.
#[derive(Arbitrary, Debug)]
enum Action {
    Get(K),
    Set(K, V, Option<u64>),
    SetCas(K, V, Pick, Option<u64>),
    Delete(K),
    DeleteCas(K, Pick),
    CompareAndSet(K, Option<V>, Option<V>),
    Update(K, V),
    Batch(Vec<BatchAction>),
    GetMany(Vec<K>),
    Keys(u8),
    /// A TTL of `n % TIME_SPAN` ms.
    SetTtl(K, V, u8),
    SetCasTtl(K, V, Pick, u8),
    /// `n % TIME_SPAN` ms.
    Advance(u8),
    Purge,
}

/// [`model::BatchAction`].
#[derive(Arbitrary, Debug)]
enum BatchAction {
    Set(K, V, Option<u64>),
    SetCas(K, V, Pick, Option<u64>),
    Delete(K),
    DeleteCas(K, Pick),
    Check(K, Pick),
    CompareAndSet(K, Option<V>, Option<V>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: Start,
    /// `max_batch` is `1 + max_batch % 6`.
    max_batch: u8,
    /// An entry bound of `n % 8`.
    bound: Option<u8>,
    /// A default TTL of `n % TIME_SPAN` ms.
    default_ttl: Option<u8>,
    actions: Vec<Action>,
}

impl From<Pick> for model::Pick {
    fn from(pick: Pick) -> model::Pick {
        match pick {
            Pick::Current => model::Pick::Current,
            Pick::Zero => model::Pick::Zero,
            Pick::Offset(d) => model::Pick::Offset(d),
            Pick::Exact(n) => model::Pick::Exact(n),
        }
    }
}

impl Action {
    /// The model's action: keys named, a batch or `get_many` cut to one over `max_batch` (enough
    /// to exceed it, no more).
    fn resolve(self, max_batch: usize) -> model::Action {
        use model::Action as A;
        match self {
            Action::Get(k) => A::Get(k.name()),
            Action::Set(k, v, flags) => A::Set(k.name(), v, flags),
            Action::SetCas(k, v, pick, flags) => A::SetCas(k.name(), v, pick.into(), flags),
            Action::Delete(k) => A::Delete(k.name()),
            Action::DeleteCas(k, pick) => A::DeleteCas(k.name(), pick.into()),
            Action::CompareAndSet(k, expected, new) => A::CompareAndSet(k.name(), expected, new),
            Action::Update(k, add) => A::Update(k.name(), add),
            Action::Batch(actions) => A::Batch(
                actions
                    .into_iter()
                    .take(max_batch + 1)
                    .map(BatchAction::resolve)
                    .collect(),
            ),
            Action::GetMany(keys) => {
                A::GetMany(keys.into_iter().take(max_batch + 1).map(K::name).collect())
            }
            Action::Keys(p) => A::Keys(PREFIXES[usize::from(p) % PREFIXES.len()]),
            Action::SetTtl(k, v, ttl) => A::SetTtl(k.name(), v, span(ttl)),
            Action::SetCasTtl(k, v, pick, ttl) => A::SetCasTtl(k.name(), v, pick.into(), span(ttl)),
            Action::Advance(ms) => A::Advance(span(ms)),
            Action::Purge => A::Purge,
        }
    }
}

/// A span of time in ms below [`TIME_SPAN`].
fn span(n: u8) -> u64 {
    u64::from(n % TIME_SPAN)
}

impl BatchAction {
    fn resolve(self) -> model::BatchAction {
        use model::BatchAction as B;
        match self {
            BatchAction::Set(k, v, flags) => B::Set(k.name(), v, flags),
            BatchAction::SetCas(k, v, pick, flags) => B::SetCas(k.name(), v, pick.into(), flags),
            BatchAction::Delete(k) => B::Delete(k.name()),
            BatchAction::DeleteCas(k, pick) => B::DeleteCas(k.name(), pick.into()),
            BatchAction::Check(k, pick) => B::Check(k.name(), pick.into()),
            BatchAction::CompareAndSet(k, expected, new) => {
                B::CompareAndSet(k.name(), expected, new)
            }
        }
    }
}

/// Replays one input: see the module docs. Panics on any disagreement.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.actions.truncate(MAX_ACTIONS);
    let start = match input.start {
        Start::Fresh => 0,
        Start::After(n) => u64::from(n),
        Start::Refused(n) => {
            let high = GlobalIndex::LIMIT.saturating_add(n);
            assert!(
                GlobalIndex::try_starting_after(high).is_none(),
                "a high-water mark of {high} was accepted"
            );
            0
        }
        Start::NearLimit(n) => GlobalIndex::LIMIT - 1 - u64::from(n),
    };
    let max_batch = 1 + usize::from(input.max_batch % 6);
    let mut model = Model::new(Setup {
        start,
        max_batch,
        bound: input.bound.map(|n| u64::from(n % 8)),
        default_ttl: input.default_ttl.map(span),
    });
    let store: Store<String, V> = model.store();
    for (step, action) in input.actions.into_iter().enumerate() {
        model.step(&store, step, action.resolve(max_batch));
    }
}
