//! The linearizability checker: the search, the sequential models of the store, and the
//! recorded operations. Shared by `tests/linearizability.rs` (through `tests/support/mod.rs`)
//! and the `store_concurrent` fuzz target (through `#[path]`), so both check histories against
//! the very same models.
//!
//! A history is **linearizable** if some total order of its operations (1) respects real
//! time, so an operation that returned before another was invoked comes first, and (2) is a
//! legal run of a sequential model of the store.
//!
//! # The models
//! Two models are used:
//! - **Per key** ([`KeyModel`]): histories of single-key operations are split by key and each
//!   key is checked alone. This is sound and complete because linearizability is local
//!   (Herlihy & Wing): a history is linearizable iff every per-object subhistory is. It is what
//!   Porcupine calls P-compositionality, and it keeps each search small.
//! - **Full map** ([`MapModel`]): histories that include batches over 2–4 keys are checked whole
//!   against a model of every key at once. A batch succeeds iff all its conditions hold in the
//!   model state, every key it writes takes the one index it returned, and a failed batch must
//!   report exactly the failing keys with their current entries.
//!
//! Beyond what `tests/linearizability.rs` generates, the models also cover what the fuzz target
//! sends: set-CAS with flags, a set with flags inside a batch, [`Store::update`] (a write of
//! `f(current)`, or [`Outcome::GaveUp`] changing nothing), [`Store::get_many`] (one atomic
//! snapshot of its keys, so only the map model takes it), and requests the store refuses before
//! looking at any key ([`Outcome::Invalid`]: an empty, oversized or duplicate-key batch, a
//! delete-CAS at 0), which must change nothing and be refused exactly when the model says so.
//!
//! # Time
//! The map model also runs histories with time in them: versions written with a TTL
//! ([`Call::SetTtl`]) carry a deadline on the store's test clock, which only the harness moves,
//! between phases in which no operation runs ([`Call::Advance`]; its effect on the model: every
//! version whose deadline came is gone, as a reader must see it at once). An expired version is
//! deleted at an index of its own by whichever writer (or [`Call::Purge`]) meets it first; the
//! harness learns these deletes from the store's journal and adds each as a [`Call::Expire`],
//! which must find the key gone (expired) and take an index above every index the key carried,
//! and below every later write's: an expiry is a delete at its index, in the key's order.
//!
//! The global index cannot be predicted by a model (indices are drawn from one counter, and
//! races consume some), so the models check what the store returned instead: a successful write
//! must return an index above every index this key ever carried (including the index of its
//! last delete), and that returned index becomes the key's `modify_index` (and `create_index`
//! on creation). A read must return the model state exactly: value, flags, both indices.
//!
//! # The search
//! [`check`] is the algorithm of Wing & Gong with Lowe's memoization, as Porcupine implements
//! it. Every operation contributes two entries to one doubly linked list, its call and its
//! return, in timestamp order. Walking the list from its head:
//! - At a **call** entry, try to linearize that operation now: it is pending and, being before
//!   the first return left in the list, it was invoked before any pending operation returned,
//!   so placing it next respects real time. If the model accepts it and the pair (set of
//!   linearized operations, new model state) was never reached before, push (operation, old
//!   state) on a stack, lift both its entries out of the list, and restart from the head.
//!   Otherwise move on to the next entry.
//! - At a **return** entry, the operation it belongs to must already have been linearized but
//!   was not: the current prefix is a dead end. Pop the last linearized operation, put its
//!   entries back, restore the old state, and continue with the entry after its call.
//! - An empty list means every operation was linearized: the history is linearizable. An
//!   empty stack at a return entry means every order was tried: it is not.
//!
//! The memo set (a bitset of linearized operations with the model state) is what makes the
//! search practical: two prefixes that linearized the same operations and reached the same
//! state have the same futures, so the second is cut off.

// Each crate that includes this file uses a different part of it (the fuzz target needs no
// per-key checker, the integration test no `get_many`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use caskv::{Entry, EntryRef, Error, Expected, Op, Store};

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// A sequential specification: the states an object can be in and the legal steps between
/// them. An operation carries its recorded output, so `step` both checks and advances.
pub trait Model {
    /// The state of the object; hashed and compared for memoization.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// One operation with its recorded result.
    type Op: fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `op`, or `None` if `op` with its recorded result is not a legal step
    /// from `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One completed operation: what was called and returned, and when on the logical clock.
#[derive(Debug, Clone)]
pub struct Event<O> {
    pub op: O,
    /// Clock value taken right before the call.
    pub call: u64,
    /// Clock value taken right after the return.
    pub ret: u64,
    /// The thread that ran it (for reports only).
    pub thread: usize,
}

/// A set of operation ids, one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bitset(Vec<u64>);

impl Bitset {
    pub fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)])
    }

    pub fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Why a history was rejected.
#[derive(Debug)]
pub enum Rejection {
    /// No linearization exists. `longest` is the longest legal prefix the search found (ids
    /// into the history, in order), to show where it got stuck.
    NotLinearizable { longest: Vec<usize> },
    /// The search explored more states than allowed: neither verdict. Treated as a failure.
    BudgetExceeded { explored: usize },
}

/// The most memoized states one search may create before giving up.
pub const SEARCH_BUDGET: usize = 2_000_000;

/// Searches for a linearization of `history` under `model` (see the module docs).
///
/// Every operation must have returned (`call < ret`), and timestamps must be distinct.
pub fn check<M: Model>(model: &M, history: &[Event<M::Op>]) -> Result<(), Rejection> {
    const NIL: usize = usize::MAX;
    let n = history.len();
    // Node ids: the call of operation i is i, its return is n + i, and 2n is the list head.
    let head = 2 * n;
    let mut times: Vec<(u64, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in history.iter().enumerate() {
        assert!(
            e.call < e.ret,
            "operation {i} returned before it was called"
        );
        times.push((e.call, i));
        times.push((e.ret, n + i));
    }
    times.sort_unstable();
    assert!(
        times.windows(2).all(|w| w[0].0 != w[1].0),
        "timestamps must be distinct"
    );
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &(_, id) in &times {
        next[last] = id;
        prev[id] = last;
        last = id;
    }

    // Removes the call entry of `i` and its return entry from the list. Their own links are
    // kept, so `unlift` can put them back as long as lifts are undone in reverse order.
    let lift = |next: &mut [usize], prev: &mut [usize], i: usize| {
        for node in [i, n + i] {
            next[prev[node]] = next[node];
            if next[node] != NIL {
                prev[next[node]] = prev[node];
            }
        }
    };
    let unlift = |next: &mut [usize], prev: &mut [usize], i: usize| {
        for node in [n + i, i] {
            next[prev[node]] = node;
            if next[node] != NIL {
                prev[next[node]] = node;
            }
        }
    };

    let mut state = model.init();
    let mut linearized = Bitset::new(n);
    let mut memo: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = next[head];
    while next[head] != NIL {
        // The list's last entry is always a return, so a walk from the head meets a return
        // before running off the end.
        if entry < n {
            if let Some(new_state) = model.step(&state, &history[entry].op) {
                let mut with = linearized.clone();
                with.set(entry);
                if memo.insert((with.clone(), new_state.clone())) {
                    if memo.len() > SEARCH_BUDGET {
                        return Err(Rejection::BudgetExceeded {
                            explored: memo.len(),
                        });
                    }
                    stack.push((entry, std::mem::replace(&mut state, new_state)));
                    linearized = with;
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|(i, _)| *i).collect();
                    }
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // The operation of this return is still pending: backtrack.
            let Some((call, old_state)) = stack.pop() else {
                return Err(Rejection::NotLinearizable { longest });
            };
            state = old_state;
            linearized.clear(call);
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Ok(())
}

/// Renders a rejected history for a failure message: every operation in call order, and the
/// longest legal prefix the search found.
pub fn explain<O: fmt::Debug>(history: &[Event<O>], why: &Rejection) -> String {
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].call);
    let mut out = String::new();
    for i in order {
        let e = &history[i];
        out += &format!(
            "  #{i:<3} t{} [{:>5}, {:>5}] {:?}\n",
            e.thread, e.call, e.ret, e.op
        );
    }
    match why {
        Rejection::NotLinearizable { longest } => {
            out += &format!("  longest legal prefix: {longest:?}\n");
        }
        Rejection::BudgetExceeded { explored } => {
            out += &format!("  search budget exceeded after {explored} states\n");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Operations, as recorded
// ---------------------------------------------------------------------------------------------

/// A key of the tested store.
pub type Key = u8;

/// A version as a reader sees it. Printed as `value/flags@modify_index^create_index`, then
/// `~deadline` if it has one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ver {
    pub value: u32,
    pub flags: u64,
    pub modify: u64,
    pub create: u64,
    /// When it expires, in ms of the store's clock (0: never).
    pub deadline: u64,
}

impl fmt::Debug for Ver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}^{}",
            self.value, self.flags, self.modify, self.create
        )?;
        if self.deadline != 0 {
            write!(f, "~{}", self.deadline)?;
        }
        Ok(())
    }
}

/// A deadline as ms since the epoch (0: none).
fn deadline_ms(at: Option<std::time::SystemTime>) -> u64 {
    at.map_or(0, |t| {
        let since = t
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a deadline after the epoch");
        u64::try_from(since.as_millis()).expect("a deadline in range")
    })
}

impl Ver {
    pub fn of(e: &Entry<u32>) -> Self {
        Ver {
            value: e.value,
            flags: e.flags,
            modify: e.modify_index,
            create: e.create_index,
            deadline: deadline_ms(e.expires_at()),
        }
    }

    pub fn of_ref(e: &EntryRef<'_, u32>) -> Self {
        Ver {
            value: *e.value,
            flags: e.flags,
            modify: e.modify_index,
            create: e.create_index,
            deadline: deadline_ms(e.expires_at()),
        }
    }
}

/// An operation as called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get(Key),
    /// A read through [`Store::pin`].
    PinnedGet(Key),
    Set(Key, u32),
    SetFlags(Key, u32, u64),
    SetCas(Key, u32, u64),
    /// Set-CAS with flags: key, value, expected index, flags.
    SetCasFlags(Key, u32, u64, u64),
    Delete(Key),
    DeleteCas(Key, u64),
    /// Value compare-and-set: expected (`None`: absent), new (`None`: delete).
    Cas(Key, Option<u32>, Option<u32>),
    /// [`Store::update`] with `|v| v.unwrap_or(0).wrapping_add(n)`.
    Update(Key, u32),
    Batch(Vec<BatchOp>),
    /// [`Store::get_many`]: one snapshot of these keys (a key may be listed twice).
    GetMany(Vec<Key>),
    /// [`Store::set_with_ttl`] with a TTL of this many ms (0: none).
    SetTtl(Key, u32, u64),
    /// [`Store::purge_expired`] (its count is not checked: writers race it to each delete).
    Purge,
    /// The harness moved the store's clock this many ms, with no operation running.
    Advance(u64),
    /// The store deleted the key's expired version at this index (learnt from its journal).
    Expire(Key, u64),
}

/// One operation of a batch. Keys within one batch should be distinct; a batch naming a key
/// twice must be refused as [`Invalid::DuplicateKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Set(Key, u32),
    /// A set with flags: key, value, flags.
    SetFlags(Key, u32, u64),
    SetCas(Key, u32, u64),
    Delete(Key),
    DeleteCas(Key, u64),
    CheckIndex(Key, u64),
    Cas(Key, Option<u32>, Option<u32>),
}

impl BatchOp {
    pub fn key(&self) -> Key {
        match self {
            BatchOp::Set(k, _)
            | BatchOp::SetFlags(k, _, _)
            | BatchOp::SetCas(k, _, _)
            | BatchOp::Delete(k)
            | BatchOp::DeleteCas(k, _)
            | BatchOp::CheckIndex(k, _)
            | BatchOp::Cas(k, _, _) => *k,
        }
    }

    /// The condition a failure of this operation must name.
    pub fn expected(&self) -> Option<Expected> {
        match self {
            BatchOp::Set(..) | BatchOp::SetFlags(..) => None,
            BatchOp::SetCas(_, _, e) | BatchOp::DeleteCas(_, e) | BatchOp::CheckIndex(_, e) => {
                Some(Expected::Index(*e))
            }
            BatchOp::Delete(_) => Some(Expected::Present),
            BatchOp::Cas(_, Some(_), _) => Some(Expected::Value),
            BatchOp::Cas(_, None, _) => Some(Expected::Absent),
        }
    }

    pub fn to_op(&self) -> Op<Key, u32> {
        match self {
            BatchOp::Set(k, v) => Op::set(*k, *v),
            BatchOp::SetFlags(k, v, f) => Op::set(*k, *v).with_flags(*f),
            BatchOp::SetCas(k, v, e) => Op::set_cas(*k, *v, *e),
            BatchOp::Delete(k) => Op::delete(*k),
            BatchOp::DeleteCas(k, e) => Op::delete_cas(*k, *e),
            BatchOp::CheckIndex(k, e) => Op::check_index(*k, *e),
            BatchOp::Cas(k, e, v) => Op::compare_and_set(*k, *e, *v),
        }
    }
}

impl Call {
    /// The key of a single-key operation.
    pub fn key(&self) -> Option<Key> {
        match self {
            Call::Get(k)
            | Call::PinnedGet(k)
            | Call::Set(k, _)
            | Call::SetFlags(k, _, _)
            | Call::SetCas(k, _, _)
            | Call::SetCasFlags(k, _, _, _)
            | Call::Delete(k)
            | Call::DeleteCas(k, _)
            | Call::Cas(k, _, _)
            | Call::Update(k, _)
            | Call::SetTtl(k, _, _)
            | Call::Expire(k, _) => Some(*k),
            Call::Batch(_) | Call::GetMany(_) | Call::Purge | Call::Advance(_) => None,
        }
    }

    /// The condition a single-key conflict of this operation must name.
    pub fn expected(&self) -> Option<Expected> {
        match self {
            Call::SetCas(_, _, e) | Call::SetCasFlags(_, _, e, _) | Call::DeleteCas(_, e) => {
                Some(Expected::Index(*e))
            }
            Call::Cas(_, Some(_), _) => Some(Expected::Value),
            Call::Cas(_, None, _) => Some(Expected::Absent),
            _ => None,
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read.
    Read(Option<Ver>),
    /// A successful write (set, CAS, delete, value CAS, batch) at this index.
    Wrote(u64),
    /// A value CAS of absent to absent: success, nothing written.
    Nothing,
    NotFound,
    /// A single-key conflict with the current entry.
    Conflict(Option<Ver>),
    /// A failed batch: every failing key with its current entry, in key order.
    BatchConflict(Vec<(Key, Option<Ver>)>),
    /// A `get_many`: each listed key's entry, in the order listed.
    ReadMany(Vec<Option<Ver>>),
    /// An update that lost every attempt to other writers.
    GaveUp,
    /// A request refused before any key was looked at.
    Invalid(Invalid),
    /// An error no model allows here, or one that names the wrong key or condition.
    Unexpected(String),
}

/// Why a request was refused as malformed ([`Error::is_invalid_argument`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    EmptyBatch,
    /// More operations (or `get_many` keys) than the store's `max_batch`.
    TooLarge,
    /// The smallest key named twice.
    DuplicateKey(Key),
    /// A delete-CAS at index 0 (in a batch: the smallest such key).
    CreateOnlyDelete(Key),
}

/// One recorded operation.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub call: Call,
    pub outcome: Outcome,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} -> {:?}", self.call, self.outcome)
    }
}

/// Turns a store error into an outcome, checking that it names the right key and condition.
pub fn failure(call: &Call, err: Error<Key, u32>) -> Outcome {
    let unexpected = |err: &Error<Key, u32>| Outcome::Unexpected(format!("{err:?}"));
    match (&err, call) {
        (Error::NotFound(k), _) if Some(*k) == call.key() => Outcome::NotFound,
        (Error::Conflict(c), _)
            if Some(c.key) == call.key() && Some(c.expected) == call.expected() =>
        {
            Outcome::Conflict(c.current.as_ref().map(Ver::of))
        }
        (Error::RetriesExhausted { key, .. }, Call::Update(k, _)) if key == k => Outcome::GaveUp,
        (Error::EmptyBatch, Call::Batch(_)) => Outcome::Invalid(Invalid::EmptyBatch),
        (Error::BatchTooLarge { len, .. }, Call::Batch(ops)) if *len == ops.len() => {
            Outcome::Invalid(Invalid::TooLarge)
        }
        (Error::BatchTooLarge { len, .. }, Call::GetMany(keys)) if *len == keys.len() => {
            Outcome::Invalid(Invalid::TooLarge)
        }
        (Error::DuplicateKey(k), Call::Batch(_)) => Outcome::Invalid(Invalid::DuplicateKey(*k)),
        (Error::CreateOnlyDelete(k), Call::Batch(_)) => {
            Outcome::Invalid(Invalid::CreateOnlyDelete(*k))
        }
        (Error::CreateOnlyDelete(k), Call::DeleteCas(..)) if Some(*k) == call.key() => {
            Outcome::Invalid(Invalid::CreateOnlyDelete(*k))
        }
        (Error::BatchConflict(cs), Call::Batch(ops)) => {
            let mut failing = Vec::new();
            for c in cs {
                match ops.iter().find(|op| op.key() == c.key) {
                    Some(op) if op.expected() == Some(c.expected) => {
                        failing.push((c.key, c.current.as_ref().map(Ver::of)));
                    }
                    _ => return unexpected(&err),
                }
            }
            Outcome::BatchConflict(failing)
        }
        _ => unexpected(&err),
    }
}

// ---------------------------------------------------------------------------------------------
// The sequential models
// ---------------------------------------------------------------------------------------------

/// One key in a model: its current version, the highest index it ever carried (a delete's
/// index included), which every later write must exceed, and the model's clock (ms; the same
/// in every key of a map state), which a TTL's deadline counts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyState {
    pub current: Option<Ver>,
    pub floor: u64,
    pub now: u64,
}

impl KeyState {
    /// Whether an index condition holds (0: absent; N: present at `modify_index` N).
    pub fn index_holds(&self, expected: u64) -> bool {
        match (expected, &self.current) {
            (0, None) => true,
            (n, Some(v)) => n != 0 && v.modify == n,
            _ => false,
        }
    }

    /// Whether a value condition holds (`None`: absent).
    pub fn value_holds(&self, expected: Option<u32>) -> bool {
        match (expected, &self.current) {
            (None, None) => true,
            (Some(e), Some(v)) => v.value == e,
            _ => false,
        }
    }

    /// The state after writing `value` at `index`, if `index` is legal for this key. Flags
    /// `None` keep the current ones (0 for a new key); the create index is kept on an update and
    /// is the write's own index on a creation.
    pub fn written(&self, value: u32, flags: Option<u64>, index: u64) -> Option<KeyState> {
        self.written_until(value, flags, index, 0)
    }

    /// [`written`](KeyState::written), the version expiring at `deadline` (0: never).
    pub fn written_until(
        &self,
        value: u32,
        flags: Option<u64>,
        index: u64,
        deadline: u64,
    ) -> Option<KeyState> {
        if index <= self.floor {
            return None;
        }
        let (flags, create) = match &self.current {
            Some(v) => (flags.unwrap_or(v.flags), v.create),
            None => (flags.unwrap_or(0), index),
        };
        Some(KeyState {
            current: Some(Ver {
                value,
                flags,
                modify: index,
                create,
                deadline,
            }),
            floor: index,
            now: self.now,
        })
    }

    /// The state after a delete at `index`, if `index` is legal for this key.
    pub fn removed(&self, index: u64) -> Option<KeyState> {
        (index > self.floor).then_some(KeyState {
            current: None,
            floor: index,
            now: self.now,
        })
    }

    /// The state once the clock moved `ms` on: a version whose deadline came is gone (its
    /// delete, at an index of its own, comes as a [`Call::Expire`]).
    pub fn advanced(&self, ms: u64) -> KeyState {
        let now = self.now + ms;
        let expired = self
            .current
            .as_ref()
            .is_some_and(|v| v.deadline != 0 && now >= v.deadline);
        KeyState {
            current: if expired { None } else { self.current.clone() },
            floor: self.floor,
            now,
        }
    }

    /// One single-key operation with its outcome, or `None` if it is illegal here.
    pub fn step(&self, call: &Call, outcome: &Outcome) -> Option<KeyState> {
        use Outcome::*;
        let unchanged = || Some(self.clone());
        // What an index-conditioned single-key op must report when its condition fails.
        let index_failure = || match &self.current {
            None => NotFound,
            Some(v) => Conflict(Some(v.clone())),
        };
        match (call, outcome) {
            (Call::Get(_) | Call::PinnedGet(_), Read(seen)) => {
                (*seen == self.current).then(unchanged)?
            }
            (Call::Set(_, v), Wrote(i)) => self.written(*v, None, *i),
            (Call::SetFlags(_, v, f), Wrote(i)) => self.written(*v, Some(*f), *i),
            (Call::SetCas(_, v, e), out) => match (self.index_holds(*e), out) {
                (true, Wrote(i)) => self.written(*v, None, *i),
                (false, out) if *out == index_failure() => unchanged(),
                _ => None,
            },
            (Call::SetCasFlags(_, v, e, f), out) => match (self.index_holds(*e), out) {
                (true, Wrote(i)) => self.written(*v, Some(*f), *i),
                (false, out) if *out == index_failure() => unchanged(),
                _ => None,
            },
            (Call::Delete(_), out) => match (&self.current, out) {
                (Some(_), Wrote(i)) => self.removed(*i),
                (None, NotFound) => unchanged(),
                _ => None,
            },
            // Create-only has no meaning for a delete: refused whatever the key's state.
            (Call::DeleteCas(k, 0), out) => {
                (*out == Invalid(self::Invalid::CreateOnlyDelete(*k))).then(unchanged)?
            }
            (Call::DeleteCas(_, e), out) => match (self.index_holds(*e), out) {
                (true, Wrote(i)) => self.removed(*i),
                (false, out) if *out == index_failure() => unchanged(),
                _ => None,
            },
            (Call::Cas(_, expected, new), out) => match (self.value_holds(*expected), new, out) {
                (false, _, Conflict(seen)) if *seen == self.current => unchanged(),
                (true, Some(v), Wrote(i)) => self.written(*v, None, *i),
                (true, None, Wrote(i)) if self.current.is_some() => self.removed(*i),
                (true, None, Nothing) if self.current.is_none() => unchanged(),
                _ => None,
            },
            (Call::Update(_, n), Wrote(i)) => {
                let old = self.current.as_ref().map_or(0, |v| v.value);
                self.written(old.wrapping_add(*n), None, *i)
            }
            (Call::Update(..), GaveUp) => unchanged(),
            (Call::SetTtl(_, v, ttl), Wrote(i)) => {
                let deadline = if *ttl == 0 { 0 } else { self.now + ttl };
                self.written_until(*v, None, *i, deadline)
            }
            // The key's version expired (it is gone already), and its delete takes an index
            // in the key's order.
            (Call::Expire(_, i), Nothing) if self.current.is_none() => self.removed(*i),
            _ => None,
        }
    }
}

/// The sequential model of one key, for per-key (P-compositional) checking.
pub struct KeyModel;

impl Model for KeyModel {
    type State = KeyState;
    type Op = Record;

    fn init(&self) -> KeyState {
        KeyState::default()
    }

    fn step(&self, state: &KeyState, op: &Record) -> Option<KeyState> {
        state.step(&op.call, &op.outcome)
    }
}

/// The sequential model of the whole store over keys `0..keys`, for histories with batches.
pub struct MapModel {
    pub keys: usize,
    /// The store's bound on operations in one batch (and keys in one `get_many`).
    pub max_batch: usize,
    /// Where the store's clock starts, in ms (only TTLs read it).
    pub start_ms: u64,
}

impl MapModel {
    /// A model of a store with the default `max_batch`.
    pub fn new(keys: usize) -> Self {
        MapModel {
            keys,
            max_batch: caskv::defaults::MAX_BATCH,
            start_ms: 0,
        }
    }
}

impl Model for MapModel {
    type State = Vec<KeyState>;
    type Op = Record;

    fn init(&self) -> Vec<KeyState> {
        let key = KeyState {
            now: self.start_ms,
            ..KeyState::default()
        };
        vec![key; self.keys]
    }

    fn step(&self, state: &Vec<KeyState>, op: &Record) -> Option<Vec<KeyState>> {
        match &op.call {
            Call::Batch(ops) => batch_step(state, ops, &op.outcome, self.max_batch),
            Call::Advance(ms) => Some(state.iter().map(|k| k.advanced(*ms)).collect()),
            Call::Purge => (op.outcome == Outcome::Nothing).then(|| state.clone()),
            Call::GetMany(keys) => {
                let want = if keys.len() > self.max_batch {
                    Outcome::Invalid(Invalid::TooLarge)
                } else {
                    Outcome::ReadMany(
                        keys.iter()
                            .map(|k| state[usize::from(*k)].current.clone())
                            .collect(),
                    )
                };
                (op.outcome == want).then(|| state.clone())
            }
            call => {
                let k = usize::from(call.key()?);
                let mut next = state.clone();
                next[k] = state[k].step(call, &op.outcome)?;
                Some(next)
            }
        }
    }
}

/// A batch in the map model: a malformed batch is refused as the store checks its shape (empty,
/// too large, a key twice, a delete-CAS at 0, in that order); otherwise all conditions hold and
/// every written key takes the returned index, or nothing changes and exactly the failing keys
/// are reported.
pub fn batch_step(
    state: &[KeyState],
    ops: &[BatchOp],
    outcome: &Outcome,
    max_batch: usize,
) -> Option<Vec<KeyState>> {
    let refused = |why: Invalid| (*outcome == Outcome::Invalid(why)).then(|| state.to_vec());
    let mut keys: Vec<Key> = ops.iter().map(BatchOp::key).collect();
    keys.sort_unstable();
    if ops.is_empty() {
        return refused(Invalid::EmptyBatch);
    }
    if ops.len() > max_batch {
        return refused(Invalid::TooLarge);
    }
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return refused(Invalid::DuplicateKey(w[0]));
    }
    let create_only = ops
        .iter()
        .filter(|op| matches!(op, BatchOp::DeleteCas(_, 0)))
        .map(BatchOp::key)
        .min();
    if let Some(k) = create_only {
        return refused(Invalid::CreateOnlyDelete(k));
    }
    let mut failing: Vec<(Key, Option<Ver>)> = Vec::new();
    for op in ops {
        let ks = &state[usize::from(op.key())];
        let holds = match op {
            BatchOp::Set(..) | BatchOp::SetFlags(..) => true,
            BatchOp::SetCas(_, _, e) | BatchOp::DeleteCas(_, e) | BatchOp::CheckIndex(_, e) => {
                ks.index_holds(*e)
            }
            BatchOp::Delete(_) => ks.current.is_some(),
            BatchOp::Cas(_, e, _) => ks.value_holds(*e),
        };
        if !holds {
            failing.push((op.key(), ks.current.clone()));
        }
    }
    if !failing.is_empty() {
        failing.sort_by_key(|f| f.0);
        return match outcome {
            Outcome::BatchConflict(reported) if *reported == failing => Some(state.to_vec()),
            _ => None,
        };
    }
    let Outcome::Wrote(index) = *outcome else {
        return None;
    };
    let mut next = state.to_vec();
    for op in ops {
        let k = usize::from(op.key());
        let ks = &state[k];
        next[k] = match op {
            BatchOp::Set(_, v) | BatchOp::SetCas(_, v, _) | BatchOp::Cas(_, _, Some(v)) => {
                ks.written(*v, None, index)?
            }
            BatchOp::SetFlags(_, v, f) => ks.written(*v, Some(*f), index)?,
            BatchOp::Delete(_) | BatchOp::DeleteCas(..) => ks.removed(index)?,
            BatchOp::Cas(_, _, None) if ks.current.is_some() => ks.removed(index)?,
            BatchOp::Cas(_, _, None) | BatchOp::CheckIndex(..) => ks.clone(),
        };
    }
    Some(next)
}

/// Checks a history of single-key operations key by key.
pub fn check_per_key(history: &[Event<Record>]) -> Result<(), String> {
    let mut by_key: BTreeMap<Key, Vec<Event<Record>>> = BTreeMap::new();
    for e in history {
        let key =
            e.op.call
                .key()
                .expect("per-key histories hold single-key operations");
        by_key.entry(key).or_default().push(e.clone());
    }
    for (key, sub) in &by_key {
        if let Err(why) = check(&KeyModel, sub) {
            return Err(format!(
                "key {key}: not linearizable\n{}",
                explain(sub, &why)
            ));
        }
    }
    Ok(())
}

/// Checks a history (batches allowed) against the map model over keys `0..keys`.
pub fn check_map(history: &[Event<Record>], keys: usize) -> Result<(), String> {
    check_map_model(&MapModel::new(keys), history)
}

/// Checks a history (batches allowed) against `model`.
pub fn check_map_model(model: &MapModel, history: &[Event<Record>]) -> Result<(), String> {
    check(model, history).map_err(|why| format!("not linearizable\n{}", explain(history, &why)))
}

/// Indices come from one global counter: no two successful writes (a batch counts once) may
/// return the same index, whatever their keys.
pub fn check_unique_indices(history: &[Event<Record>]) -> Result<(), String> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        if let Outcome::Wrote(index) = e.op.outcome {
            if let Some(j) = seen.insert(index, i) {
                return Err(format!(
                    "index {index} returned twice: {:?} and {:?}",
                    history[j].op, e.op
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stores under test
// ---------------------------------------------------------------------------------------------

/// Something operations can be run against.
pub trait Target: Sync {
    fn apply(&self, call: &Call) -> Outcome;
}

impl Target for Store<Key, u32> {
    fn apply(&self, call: &Call) -> Outcome {
        let wrote = |r: Result<u64, Error<Key, u32>>| match r {
            Ok(i) => Outcome::Wrote(i),
            Err(e) => failure(call, e),
        };
        match call {
            Call::Get(k) => Outcome::Read(self.get(k).as_ref().map(Ver::of)),
            Call::PinnedGet(k) => Outcome::Read(self.pin().get(k).as_ref().map(Ver::of_ref)),
            Call::Set(k, v) => Outcome::Wrote(self.set(*k, *v)),
            Call::SetFlags(k, v, f) => Outcome::Wrote(self.set_with_flags(*k, *v, *f)),
            Call::SetCas(k, v, e) => wrote(self.set_cas(*k, *v, *e)),
            Call::SetCasFlags(k, v, e, f) => wrote(self.set_cas_with_flags(*k, *v, *e, *f)),
            Call::Delete(k) => wrote(self.delete(k)),
            Call::DeleteCas(k, e) => wrote(self.delete_cas(k, *e)),
            Call::Cas(k, e, v) => match self.compare_and_set(*k, e.as_ref(), *v) {
                Ok(Some(i)) => Outcome::Wrote(i),
                Ok(None) => Outcome::Nothing,
                Err(err) => failure(call, err),
            },
            Call::Update(k, n) => {
                wrote(self.update(*k, |v| v.copied().unwrap_or(0).wrapping_add(*n)))
            }
            Call::Batch(ops) => wrote(self.batch(ops.iter().map(BatchOp::to_op).collect())),
            Call::GetMany(keys) => match self.get_many(keys) {
                Ok(read) => {
                    Outcome::ReadMany(read.iter().map(|e| e.as_ref().map(Ver::of)).collect())
                }
                Err(err) => failure(call, err),
            },
            Call::SetTtl(k, v, ttl) => {
                Outcome::Wrote(self.set_with_ttl(*k, *v, std::time::Duration::from_millis(*ttl)))
            }
            Call::Purge => {
                self.purge_expired();
                Outcome::Nothing
            }
            Call::Advance(_) | Call::Expire(..) => {
                Outcome::Unexpected("made by the harness, not called".into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests of what the models took on for the fuzz target (the rest is tested by
// tests/linearizability.rs). They run in every test crate that includes this file.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(value: u32, modify: u64, create: u64) -> Option<Ver> {
        Some(Ver {
            value,
            flags: 0,
            modify,
            create,
            deadline: 0,
        })
    }

    fn ev(thread: usize, call: Call, outcome: Outcome, at: (u64, u64)) -> Event<Record> {
        Event {
            op: Record { call, outcome },
            call: at.0,
            ret: at.1,
            thread,
        }
    }

    fn accepted(h: &[Event<Record>], keys: usize, max_batch: usize) -> bool {
        let model = MapModel {
            keys,
            max_batch,
            start_ms: 0,
        };
        match check(&model, h) {
            Ok(()) => true,
            Err(Rejection::NotLinearizable { .. }) => false,
            Err(why) => panic!("{why:?}"),
        }
    }

    /// Two keys at 1 and 2, then a batch writing both at 3 while thread 1 takes a snapshot.
    fn batch_and_snapshot(snapshot: Vec<Option<Ver>>) -> Vec<Event<Record>> {
        vec![
            ev(0, Call::Set(0, 1), Outcome::Wrote(1), (0, 1)),
            ev(0, Call::Set(1, 1), Outcome::Wrote(2), (2, 3)),
            ev(
                0,
                Call::Batch(vec![BatchOp::Set(0, 2), BatchOp::Set(1, 2)]),
                Outcome::Wrote(3),
                (4, 7),
            ),
            ev(
                1,
                Call::GetMany(vec![0, 1]),
                Outcome::ReadMany(snapshot),
                (5, 6),
            ),
        ]
    }

    #[test]
    fn a_get_many_sees_a_batch_whole_or_not_at_all() {
        assert!(accepted(
            &batch_and_snapshot(vec![ver(1, 1, 1), ver(1, 2, 2)]),
            2,
            4
        ));
        assert!(accepted(
            &batch_and_snapshot(vec![ver(2, 3, 1), ver(2, 3, 2)]),
            2,
            4
        ));
        assert!(!accepted(
            &batch_and_snapshot(vec![ver(2, 3, 1), ver(1, 2, 2)]),
            2,
            4
        ));
        // Over the bound it must be refused, and only then.
        let many = |outcome| vec![ev(0, Call::GetMany(vec![0, 1, 0]), outcome, (0, 1))];
        assert!(accepted(&many(Outcome::Invalid(Invalid::TooLarge)), 2, 2));
        assert!(!accepted(&many(Outcome::ReadMany(vec![None; 3])), 2, 2));
        assert!(accepted(&many(Outcome::ReadMany(vec![None; 3])), 2, 3));
    }

    #[test]
    fn an_update_writes_f_of_the_current_value() {
        let h = |seen| {
            vec![
                ev(0, Call::Set(0, 1), Outcome::Wrote(1), (0, 1)),
                ev(0, Call::Update(0, 2), Outcome::Wrote(2), (2, 3)),
                ev(0, Call::Get(0), Outcome::Read(seen), (4, 5)),
            ]
        };
        assert!(accepted(&h(ver(3, 2, 1)), 1, 4));
        assert!(!accepted(&h(ver(2, 2, 1)), 1, 4));
        // Giving up changes nothing.
        let gave_up = vec![
            ev(0, Call::Update(0, 2), Outcome::GaveUp, (0, 1)),
            ev(0, Call::Get(0), Outcome::Read(None), (2, 3)),
        ];
        assert!(accepted(&gave_up, 1, 4));
    }

    #[test]
    fn malformed_requests_are_refused_exactly_when_the_store_must_refuse_them() {
        let one = |call, outcome| vec![ev(0, call, outcome, (0, 1))];
        let dup = Call::Batch(vec![
            BatchOp::Set(1, 1),
            BatchOp::Set(0, 1),
            BatchOp::Delete(1),
        ]);
        assert!(accepted(
            &one(dup.clone(), Outcome::Invalid(Invalid::DuplicateKey(1))),
            2,
            4
        ));
        assert!(!accepted(&one(dup, Outcome::Wrote(1)), 2, 4));
        let zero = Call::Batch(vec![BatchOp::DeleteCas(1, 0), BatchOp::DeleteCas(0, 0)]);
        assert!(accepted(
            &one(zero.clone(), Outcome::Invalid(Invalid::CreateOnlyDelete(0))),
            2,
            4
        ));
        assert!(!accepted(
            &one(zero, Outcome::Invalid(Invalid::CreateOnlyDelete(1))),
            2,
            4
        ));
        assert!(accepted(
            &one(Call::Batch(vec![]), Outcome::Invalid(Invalid::EmptyBatch)),
            1,
            4
        ));
        assert!(accepted(
            &one(
                Call::DeleteCas(0, 0),
                Outcome::Invalid(Invalid::CreateOnlyDelete(0))
            ),
            1,
            4
        ));
        assert!(!accepted(
            &one(Call::DeleteCas(0, 0), Outcome::NotFound),
            1,
            4
        ));
    }
}
