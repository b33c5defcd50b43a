//! Property test: the store against a sequential model (a `BTreeMap` plus a counter), over
//! random sequences of every operation, batches included. Run single-threaded, every index is
//! predictable: each successful write takes exactly the next one, and failures take none.
//!
//! The model and its checks are `tests/support/model.rs`, shared with the `store_model` fuzz
//! target; this file is only how proptest makes the actions.

#[path = "support/model.rs"]
mod model;

use caskv::Store;
use model::{Action, BatchAction, Model, Pick, Setup, V};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("d/1"), Just("d/2")].prop_map(String::from)
}

/// The expected index: the key's current one (likely to succeed), 0, or an arbitrary one
/// (usually stale or unknown).
fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => Just(Pick::Current),
        1 => Just(Pick::Zero),
        1 => (1u64..40).prop_map(Pick::Exact),
    ]
}

fn batch_action() -> impl Strategy<Value = BatchAction> {
    prop_oneof![
        (key(), any::<V>(), proptest::option::of(0u64..4))
            .prop_map(|(k, v, f)| BatchAction::Set(k, v, f)),
        (key(), any::<V>(), pick()).prop_map(|(k, v, p)| BatchAction::SetCas(k, v, p, None)),
        key().prop_map(BatchAction::Delete),
        (key(), pick()).prop_map(|(k, p)| BatchAction::DeleteCas(k, p)),
        (key(), pick()).prop_map(|(k, p)| BatchAction::Check(k, p)),
        (
            key(),
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(k, e, n)| BatchAction::CompareAndSet(k, e, n)),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        key().prop_map(Action::Get),
        (key(), 0u8..3, proptest::option::of(0u64..4)).prop_map(|(k, v, f)| Action::Set(k, v, f)),
        (key(), 0u8..3, pick(), proptest::option::of(0u64..4))
            .prop_map(|(k, v, p, f)| Action::SetCas(k, v, p, f)),
        key().prop_map(Action::Delete),
        (key(), pick()).prop_map(|(k, p)| Action::DeleteCas(k, p)),
        (
            key(),
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(k, e, n)| Action::CompareAndSet(k, e, n)),
        (key(), any::<V>()).prop_map(|(k, v)| Action::Update(k, v)),
        // Up to one over the store's bound of 5.
        proptest::collection::vec(batch_action(), 0..7).prop_map(Action::Batch),
        Just(Action::Keys("d/")),
    ]
}

/// Every action, and those of time: writes with a TTL, the clock moving, purges. TTLs and
/// steps of the clock are a few ms, so that versions expire between steps and writes meet
/// them.
fn timed_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => action(),
        2 => (key(), 0u8..3, 0u64..6).prop_map(|(k, v, ttl)| Action::SetTtl(k, v, ttl)),
        1 => (key(), 0u8..3, pick(), 0u64..6)
            .prop_map(|(k, v, p, ttl)| Action::SetCasTtl(k, v, p, ttl)),
        2 => (0u64..4).prop_map(Action::Advance),
        1 => Just(Action::Purge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After every step a full scan agrees, indices included, and so does the high-water mark.
    #[test]
    fn store_matches_sequential_model(actions in proptest::collection::vec(action(), 1..60)) {
        let mut model = Model::new(Setup::plain(0, 5));
        let store: Store<String, V> = model.store();
        for (step, action) in actions.into_iter().enumerate() {
            model.step(&store, step, action);
        }
    }

    /// The same with time and the cache side: TTLs under a test clock, a default TTL, and an
    /// entry bound below the number of keys. Each expiry and eviction is a delete at its own
    /// index, reported to the listener with the version it deleted; the bound and the weight
    /// are exact after every step.
    #[test]
    fn bounded_store_with_ttls_matches_sequential_model(
        bound in proptest::option::of(0u64..6),
        default_ttl in proptest::option::of(0u64..8),
        actions in proptest::collection::vec(timed_action(), 1..80),
    ) {
        let mut model = Model::new(Setup { start: 0, max_batch: 5, bound, default_ttl });
        let store: Store<String, V> = model.store();
        for (step, action) in actions.into_iter().enumerate() {
            model.step(&store, step, action);
        }
    }
}
