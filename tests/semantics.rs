//! The operations of SPEC §2, one behaviour per test, through the public API.

use caskv::{Error, Expected, Op, Store};

fn store() -> Store<String, String> {
    Store::new()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn get_of_absent_key_is_none() {
    assert!(store().get("nope").is_none());
}

#[test]
fn set_creates_then_updates_keeping_create_index_and_flags() {
    let st = store();
    let a = st.set_with_flags(s("k"), s("v1"), 7);
    let b = st.set(s("k"), s("v2"));
    assert!(b > a);
    let e = st.get("k").unwrap();
    assert_eq!(
        (e.value.as_str(), e.flags, e.modify_index, e.create_index),
        ("v2", 7, b, a)
    );
}

#[test]
fn set_cas_zero_creates_only_if_absent() {
    let st = store();
    let a = st.set_cas(s("k"), s("v"), 0).unwrap();
    let err = st.set_cas(s("k"), s("w"), 0).unwrap_err();
    let c = err.conflict().expect("a conflict");
    assert_eq!(
        (c.key.as_str(), c.expected, c.current_index()),
        ("k", Expected::Index(0), Some(a))
    );
    assert_eq!(st.get("k").unwrap().value, "v");
}

#[test]
fn set_cas_with_index_updates_only_at_that_index() {
    let st = store();
    let a = st.set(s("k"), s("v1"));
    let b = st.set_cas(s("k"), s("v2"), a).unwrap();
    assert!(b > a);
    let err = st.set_cas(s("k"), s("v3"), a).unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(err.conflict().unwrap().current_index(), Some(b));
    assert_eq!(
        err.to_string(),
        format!("CAS conflict for key \"k\": expected ModifyIndex {a}, but current is {b}")
    );
    assert_eq!(st.get("k").unwrap().value, "v2");
}

#[test]
fn set_cas_with_index_on_absent_key_is_not_found() {
    let err = store().set_cas(s("k"), s("v"), 5).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[test]
fn set_cas_with_flags_sets_flags_and_plain_cas_keeps_them() {
    let st = store();
    let a = st.set_cas_with_flags(s("k"), s("v"), 0, 9).unwrap();
    let b = st.set_cas(s("k"), s("w"), a).unwrap();
    let e = st.get("k").unwrap();
    assert_eq!((e.flags, e.modify_index), (9, b));
}

#[test]
fn delete_and_delete_cas() {
    let st = store();
    assert!(st.delete(&s("k")).unwrap_err().is_not_found());
    let a = st.set(s("k"), s("v"));
    let err = st.delete_cas(&s("k"), a + 100).unwrap_err();
    assert_eq!(err.conflict().unwrap().current_index(), Some(a));
    let d = st.delete_cas(&s("k"), a).unwrap();
    assert!(d > a);
    assert!(st.get("k").is_none());
    assert!(st.delete_cas(&s("k"), a).unwrap_err().is_not_found());
    assert!(matches!(
        st.delete_cas(&s("k"), 0),
        Err(Error::CreateOnlyDelete(_))
    ));
    st.set(s("k"), s("v"));
    assert!(st.delete(&s("k")).is_ok());
}

#[test]
fn recreated_key_gets_fresh_indices_above_its_delete() {
    let st = store();
    let a = st.set(s("k"), s("v"));
    let d = st.delete(&s("k")).unwrap();
    let c = st.set(s("k"), s("v"));
    assert!(c > d && d > a);
    let e = st.get("k").unwrap();
    assert_eq!((e.create_index, e.modify_index, e.flags), (c, c, 0));
}

#[test]
fn compare_and_set_covers_all_four_shapes() {
    let st = store();
    // absent -> value
    let a = st
        .compare_and_set(s("k"), None, Some(s("a")))
        .unwrap()
        .unwrap();
    // absent expected, but present: reported with the current entry
    let err = st.compare_and_set(s("k"), None, Some(s("x"))).unwrap_err();
    let c = err.conflict().unwrap();
    assert_eq!(c.expected, Expected::Absent);
    assert_eq!(c.current.as_ref().unwrap().value, "a");
    // value -> value
    let b = st
        .compare_and_set(s("k"), Some(&s("a")), Some(s("b")))
        .unwrap()
        .unwrap();
    assert!(b > a);
    // wrong value
    let err = st.compare_and_set(s("k"), Some(&s("a")), None).unwrap_err();
    assert_eq!(err.conflict().unwrap().expected, Expected::Value);
    // value -> clear
    let d = st
        .compare_and_set(s("k"), Some(&s("b")), None)
        .unwrap()
        .unwrap();
    assert!(d > b);
    assert!(st.get("k").is_none());
    // absent -> absent: nothing to write
    assert_eq!(st.compare_and_set(s("k"), None, None).unwrap(), None);
    // value expected but absent
    let err = st
        .compare_and_set(s("k"), Some(&s("b")), Some(s("c")))
        .unwrap_err();
    assert!(err.conflict().unwrap().current.is_none());
}

#[test]
fn keys_are_sorted_and_filtered_by_prefix() {
    let st = store();
    for k in ["b/2", "a", "b/1", "c"] {
        st.set(s(k), s("v"));
    }
    st.delete(&s("c")).unwrap();
    assert_eq!(st.keys(), ["a", "b/1", "b/2"]);
    assert_eq!(st.keys_with_prefix("b/"), ["b/1", "b/2"]);
    assert_eq!(st.len(), 3);
    assert!(!st.is_empty());
    let entries = st.entries();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].0, "a");
}

#[test]
fn indices_are_unique_and_increasing_across_keys() {
    let st = store();
    let mut last = 0;
    for i in 0..100 {
        let idx = st.set(format!("k{}", i % 7), s("v"));
        assert!(idx > last);
        last = idx;
    }
    assert_eq!(st.global_index().high_water(), last);
}

#[test]
fn store_can_start_above_a_high_water_mark() {
    let st: Store<String, String> = Store::builder().start_after(1_000).build();
    assert_eq!(st.set(s("k"), s("v")), 1_001);
}

#[test]
fn batch_commits_every_op_at_one_index() {
    let st = store();
    let a = st.set_with_flags(s("a"), s("1"), 4);
    let b = st.set(s("b"), s("1"));
    st.set(s("d"), s("1"));
    let idx = st
        .batch(vec![
            Op::set_cas(s("a"), s("2"), a),
            Op::delete_cas(s("b"), b),
            Op::set_cas(s("c"), s("new"), 0).with_flags(3),
            Op::delete(s("d")),
            Op::check_index(s("zz"), 0),
            Op::compare_and_set(s("e"), None, Some(s("e1"))),
            Op::set(s("f"), s("f1")),
        ])
        .unwrap();
    let ea = st.get("a").unwrap();
    assert_eq!(
        (
            ea.value.as_str(),
            ea.modify_index,
            ea.create_index,
            ea.flags
        ),
        ("2", idx, a, 4)
    );
    assert!(st.get("b").is_none());
    assert!(st.get("d").is_none());
    let ec = st.get("c").unwrap();
    assert_eq!((ec.modify_index, ec.create_index, ec.flags), (idx, idx, 3));
    assert_eq!(st.get("e").unwrap().modify_index, idx);
    assert_eq!(st.get("f").unwrap().modify_index, idx);
    assert!(st.get("zz").is_none());
    assert_eq!(st.keys(), ["a", "c", "e", "f"]);
}

#[test]
fn failed_batch_lists_every_failure_and_changes_nothing() {
    let st = store();
    let a = st.set(s("a"), s("1"));
    let b = st.set(s("b"), s("1"));
    let before = st.entries();
    let high = st.global_index().high_water();
    let err = st
        .batch(vec![
            Op::set_cas(s("a"), s("2"), a),     // ok
            Op::set_cas(s("b"), s("2"), b + 1), // stale
            Op::delete(s("nope")),              // absent
            Op::set_cas(s("new"), s("x"), 0),   // ok
            Op::check_index(s("a"), 0),         // a is present: wait, "a" is already used above
        ])
        .unwrap_err();
    // "a" appears twice: the duplicate is rejected before anything else.
    assert!(
        matches!(err, Error::DuplicateKey(ref k) if k == "a"),
        "{err:?}"
    );

    let err = st
        .batch(vec![
            Op::set_cas(s("a"), s("2"), a),
            Op::set_cas(s("b"), s("2"), b + 1),
            Op::delete(s("nope")),
            Op::set_cas(s("new"), s("x"), 0),
            Op::check_index(s("c"), 77),
            Op::compare_and_set(s("a2"), Some(s("zz")), None),
        ])
        .unwrap_err();
    assert!(err.is_conflict());
    let keys: Vec<_> = err
        .conflicts()
        .iter()
        .map(|c| (c.key.as_str(), c.expected, c.current_index()))
        .collect();
    assert_eq!(
        keys,
        [
            ("a2", Expected::Value, None),
            ("b", Expected::Index(b + 1), Some(b)),
            ("c", Expected::Index(77), None),
            ("nope", Expected::Present, None),
        ]
    );
    assert_eq!(st.entries(), before);
    assert_eq!(st.keys(), ["a", "b"]);
    assert_eq!(
        st.global_index().high_water(),
        high,
        "a failed batch takes no index"
    );
}

#[test]
fn batch_rejects_empty_oversized_and_zero_delete_cas() {
    let st: Store<String, String> = Store::builder().max_batch(2).build();
    assert!(matches!(st.batch(vec![]), Err(Error::EmptyBatch)));
    let three = vec![
        Op::set(s("a"), s("1")),
        Op::set(s("b"), s("1")),
        Op::set(s("c"), s("1")),
    ];
    assert!(matches!(
        st.batch(three),
        Err(Error::BatchTooLarge { len: 3, max: 2 })
    ));
    let err = st.batch(vec![Op::delete_cas(s("a"), 0)]).unwrap_err();
    assert!(err.is_invalid_argument());
    assert!(st.is_empty());
}

#[test]
fn update_applies_the_function_and_creates_absent_keys() {
    let st: Store<&str, u64> = Store::new();
    st.update("n", |v| v.copied().unwrap_or(0) + 10).unwrap();
    st.update("n", |v| v.copied().unwrap_or(0) * 2).unwrap();
    assert_eq!(st.get("n").unwrap().value, 20);
}

#[test]
fn pinned_reads_see_the_same_as_get() {
    let st = store();
    let a = st.set_with_flags(s("k"), s("v"), 2);
    let pinned = st.pin();
    let e = pinned.get("k").unwrap();
    assert_eq!(
        (e.value.as_str(), e.flags, e.modify_index, e.create_index),
        ("v", 2, a, a)
    );
    assert_eq!(e.to_entry(), st.get("k").unwrap());
    assert!(pinned.get("nope").is_none());
}
