//! Linearizability of caskv, checked on real concurrent histories.
//!
//! # What is checked
//! Threads run random operations against one store and record, for each operation, what was
//! called, what came back, and two instants on a shared logical clock: one taken right before
//! the call and one right after the return. A history is **linearizable** if some total order
//! of its operations (1) respects real time, so an operation that returned before another was
//! invoked comes first, and (2) is a legal run of a sequential model of the store.
//!
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
//!
//! # Running
//! `cargo test --test linearizability -- --nocapture` prints how many operations were checked.
//! For a long hunt: `CASKV_LIN_ROUNDS=20000 cargo test --release --test linearizability --
//! --nocapture`; `CASKV_LIN_SEED` fixes the operation choices (not the interleavings). A
//! rejected history is printed whole, in call order, with the longest legal prefix found;
//! versions print as `value/flags@modify_index^create_index`.
//!
//! # Proof that it can fail
//! The self-tests check hand-written histories (one linearizable, several not), and run the
//! very same recorder against a `Mutex<BTreeMap>` store: correct (it must pass, which shows the
//! models are not stricter than the contract) and with one planted bug at a time (a CAS that
//! accepts a stale index, a read that returns a stale version, a batch applied key by key with a
//! visible gap, indices reused after a delete), each of which the checker must report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use caskv::{Entry, EntryRef, Error, Expected, Op, Store};

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// A sequential specification: the states an object can be in and the legal steps between
/// them. An operation carries its recorded output, so `step` both checks and advances.
trait Model {
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
struct Event<O> {
    op: O,
    /// Clock value taken right before the call.
    call: u64,
    /// Clock value taken right after the return.
    ret: u64,
    /// The thread that ran it (for reports only).
    thread: usize,
}

/// A set of operation ids, one bit each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Why a history was rejected.
#[derive(Debug)]
enum Rejection {
    /// No linearization exists. `longest` is the longest legal prefix the search found (ids
    /// into the history, in order), to show where it got stuck.
    NotLinearizable { longest: Vec<usize> },
    /// The search explored more states than allowed: neither verdict. Treated as a failure.
    BudgetExceeded { explored: usize },
}

/// The most memoized states one search may create before giving up.
const SEARCH_BUDGET: usize = 2_000_000;

/// Searches for a linearization of `history` under `model` (see the module docs).
///
/// Every operation must have returned (`call < ret`), and timestamps must be distinct.
fn check<M: Model>(model: &M, history: &[Event<M::Op>]) -> Result<(), Rejection> {
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
fn explain<O: fmt::Debug>(history: &[Event<O>], why: &Rejection) -> String {
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
type Key = u8;

/// A version as a reader sees it. Printed as `value/flags@modify_index^create_index`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Ver {
    value: u32,
    flags: u64,
    modify: u64,
    create: u64,
}

impl fmt::Debug for Ver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}^{}",
            self.value, self.flags, self.modify, self.create
        )
    }
}

impl Ver {
    fn of(e: &Entry<u32>) -> Self {
        Ver {
            value: *e.value,
            flags: e.flags,
            modify: e.modify_index,
            create: e.create_index,
        }
    }

    fn of_ref(e: &EntryRef<'_, u32>) -> Self {
        Ver {
            value: *e.value,
            flags: e.flags,
            modify: e.modify_index,
            create: e.create_index,
        }
    }
}

/// An operation as called.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Get(Key),
    /// A read through [`Store::pin`].
    PinnedGet(Key),
    Set(Key, u32),
    SetFlags(Key, u32, u64),
    SetCas(Key, u32, u64),
    Delete(Key),
    DeleteCas(Key, u64),
    /// Value compare-and-set: expected (`None`: absent), new (`None`: delete).
    Cas(Key, Option<u32>, Option<u32>),
    Batch(Vec<BatchOp>),
}

/// One operation of a batch; keys within one batch are distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BatchOp {
    Set(Key, u32),
    SetCas(Key, u32, u64),
    Delete(Key),
    DeleteCas(Key, u64),
    CheckIndex(Key, u64),
    Cas(Key, Option<u32>, Option<u32>),
}

impl BatchOp {
    fn key(&self) -> Key {
        match self {
            BatchOp::Set(k, _)
            | BatchOp::SetCas(k, _, _)
            | BatchOp::Delete(k)
            | BatchOp::DeleteCas(k, _)
            | BatchOp::CheckIndex(k, _)
            | BatchOp::Cas(k, _, _) => *k,
        }
    }

    /// The condition a failure of this operation must name.
    fn expected(&self) -> Option<Expected> {
        match self {
            BatchOp::Set(..) => None,
            BatchOp::SetCas(_, _, e) | BatchOp::DeleteCas(_, e) | BatchOp::CheckIndex(_, e) => {
                Some(Expected::Index(*e))
            }
            BatchOp::Delete(_) => Some(Expected::Present),
            BatchOp::Cas(_, Some(_), _) => Some(Expected::Value),
            BatchOp::Cas(_, None, _) => Some(Expected::Absent),
        }
    }

    fn to_op(&self) -> Op<Key, u32> {
        match self {
            BatchOp::Set(k, v) => Op::set(*k, *v),
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
    fn key(&self) -> Option<Key> {
        match self {
            Call::Get(k)
            | Call::PinnedGet(k)
            | Call::Set(k, _)
            | Call::SetFlags(k, _, _)
            | Call::SetCas(k, _, _)
            | Call::Delete(k)
            | Call::DeleteCas(k, _)
            | Call::Cas(k, _, _) => Some(*k),
            Call::Batch(_) => None,
        }
    }

    /// The condition a single-key conflict of this operation must name.
    fn expected(&self) -> Option<Expected> {
        match self {
            Call::SetCas(_, _, e) | Call::DeleteCas(_, e) => Some(Expected::Index(*e)),
            Call::Cas(_, Some(_), _) => Some(Expected::Value),
            Call::Cas(_, None, _) => Some(Expected::Absent),
            _ => None,
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
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
    /// An error no model allows here, or one that names the wrong key or condition.
    Unexpected(String),
}

/// One recorded operation.
#[derive(Clone, PartialEq, Eq)]
struct Record {
    call: Call,
    outcome: Outcome,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} -> {:?}", self.call, self.outcome)
    }
}

/// Turns a store error into an outcome, checking that it names the right key and condition.
fn failure(call: &Call, err: Error<Key, u32>) -> Outcome {
    let unexpected = |err: &Error<Key, u32>| Outcome::Unexpected(format!("{err:?}"));
    match (&err, call) {
        (Error::NotFound(k), _) if Some(*k) == call.key() => Outcome::NotFound,
        (Error::Conflict(c), _)
            if Some(c.key) == call.key() && Some(c.expected) == call.expected() =>
        {
            Outcome::Conflict(c.current.as_ref().map(Ver::of))
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

/// One key in a model: its current version, and the highest index it ever carried (a
/// delete's index included), which every later write must exceed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct KeyState {
    current: Option<Ver>,
    floor: u64,
}

impl KeyState {
    /// Whether an index condition holds (0: absent; N: present at `modify_index` N).
    fn index_holds(&self, expected: u64) -> bool {
        match (expected, &self.current) {
            (0, None) => true,
            (n, Some(v)) => n != 0 && v.modify == n,
            _ => false,
        }
    }

    /// Whether a value condition holds (`None`: absent).
    fn value_holds(&self, expected: Option<u32>) -> bool {
        match (expected, &self.current) {
            (None, None) => true,
            (Some(e), Some(v)) => v.value == e,
            _ => false,
        }
    }

    /// The state after writing `value` at `index`, if `index` is legal for this key. Flags
    /// `None` keep the current ones (0 for a new key); the create index is kept on an update and
    /// is the write's own index on a creation.
    fn written(&self, value: u32, flags: Option<u64>, index: u64) -> Option<KeyState> {
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
            }),
            floor: index,
        })
    }

    /// The state after a delete at `index`, if `index` is legal for this key.
    fn removed(&self, index: u64) -> Option<KeyState> {
        (index > self.floor).then_some(KeyState {
            current: None,
            floor: index,
        })
    }

    /// One single-key operation with its outcome, or `None` if it is illegal here.
    fn step(&self, call: &Call, outcome: &Outcome) -> Option<KeyState> {
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
            (Call::Delete(_), out) => match (&self.current, out) {
                (Some(_), Wrote(i)) => self.removed(*i),
                (None, NotFound) => unchanged(),
                _ => None,
            },
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
            _ => None,
        }
    }
}

/// The sequential model of one key, for per-key (P-compositional) checking.
struct KeyModel;

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
struct MapModel {
    keys: usize,
}

impl Model for MapModel {
    type State = Vec<KeyState>;
    type Op = Record;

    fn init(&self) -> Vec<KeyState> {
        vec![KeyState::default(); self.keys]
    }

    fn step(&self, state: &Vec<KeyState>, op: &Record) -> Option<Vec<KeyState>> {
        match &op.call {
            Call::Batch(ops) => batch_step(state, ops, &op.outcome),
            call => {
                let k = usize::from(call.key()?);
                let mut next = state.clone();
                next[k] = state[k].step(call, &op.outcome)?;
                Some(next)
            }
        }
    }
}

/// A batch in the map model: all conditions hold and every written key takes the returned
/// index, or nothing changes and exactly the failing keys are reported.
fn batch_step(state: &[KeyState], ops: &[BatchOp], outcome: &Outcome) -> Option<Vec<KeyState>> {
    let mut failing: Vec<(Key, Option<Ver>)> = Vec::new();
    for op in ops {
        let ks = &state[usize::from(op.key())];
        let holds = match op {
            BatchOp::Set(..) => true,
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
            BatchOp::Delete(_) | BatchOp::DeleteCas(..) => ks.removed(index)?,
            BatchOp::Cas(_, _, None) if ks.current.is_some() => ks.removed(index)?,
            BatchOp::Cas(_, _, None) | BatchOp::CheckIndex(..) => ks.clone(),
        };
    }
    Some(next)
}

/// Checks a history of single-key operations key by key.
fn check_per_key(history: &[Event<Record>]) -> Result<(), String> {
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
fn check_map(history: &[Event<Record>], keys: usize) -> Result<(), String> {
    check(&MapModel { keys }, history)
        .map_err(|why| format!("not linearizable\n{}", explain(history, &why)))
}

/// Indices come from one global counter: no two successful writes (a batch counts once) may
/// return the same index, whatever their keys.
fn check_unique_indices(history: &[Event<Record>]) -> Result<(), String> {
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
trait Target: Sync {
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
            Call::Delete(k) => wrote(self.delete(k)),
            Call::DeleteCas(k, e) => wrote(self.delete_cas(k, *e)),
            Call::Cas(k, e, v) => match self.compare_and_set(*k, e.as_ref(), *v) {
                Ok(Some(i)) => Outcome::Wrote(i),
                Ok(None) => Outcome::Nothing,
                Err(err) => failure(call, err),
            },
            Call::Batch(ops) => wrote(self.batch(ops.iter().map(BatchOp::to_op).collect())),
        }
    }
}

/// A planted bug of [`MutexStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// None: a correct reference store.
    None,
    /// An index CAS also succeeds against the version before the current one.
    StaleCas,
    /// Every third read returns the version before the current one.
    StaleRead,
    /// A batch is validated under the lock, then applied one key per lock acquisition.
    TornBatch,
    /// A write's index is one above the highest surviving `modify_index` (Konsul's rule),
    /// which reuses indices after a delete.
    ReusedIndex,
}

/// A store behind one mutex, correct unless a [`Bug`] is planted.
struct MutexStore {
    bug: Bug,
    inner: Mutex<MutexState>,
}

#[derive(Default)]
struct MutexState {
    map: BTreeMap<Key, Ver>,
    /// Each key's version before its last write or delete.
    prev: BTreeMap<Key, Ver>,
    last_index: u64,
    reads: u64,
}

/// What a batch does to one key once validated.
enum Effect {
    Write(u32),
    Remove,
    Keep,
}

impl MutexStore {
    fn new(bug: Bug) -> Self {
        MutexStore {
            bug,
            inner: Mutex::new(MutexState::default()),
        }
    }
}

impl MutexState {
    fn next_index(&mut self, bug: Bug) -> u64 {
        if bug == Bug::ReusedIndex {
            self.map.values().map(|v| v.modify).max().unwrap_or(0) + 1
        } else {
            self.last_index += 1;
            self.last_index
        }
    }

    fn index_holds(&self, bug: Bug, key: Key, expected: u64) -> bool {
        match (expected, self.map.get(&key)) {
            (0, None) => true,
            (0, Some(_)) | (_, None) => false,
            (n, Some(v)) => {
                v.modify == n
                    || (bug == Bug::StaleCas && self.prev.get(&key).is_some_and(|p| p.modify == n))
            }
        }
    }

    fn value_holds(&self, key: Key, expected: Option<u32>) -> bool {
        match (expected, self.map.get(&key)) {
            (None, None) => true,
            (Some(e), Some(v)) => v.value == e,
            _ => false,
        }
    }

    fn write(&mut self, key: Key, value: u32, flags: Option<u64>, index: u64) -> u64 {
        let old = self.map.get(&key).cloned();
        let ver = Ver {
            value,
            flags: flags.unwrap_or_else(|| old.as_ref().map_or(0, |v| v.flags)),
            modify: index,
            create: old.as_ref().map_or(index, |v| v.create),
        };
        if let Some(old) = old {
            self.prev.insert(key, old);
        }
        self.map.insert(key, ver);
        index
    }

    fn remove(&mut self, key: Key, index: u64) -> u64 {
        if let Some(old) = self.map.remove(&key) {
            self.prev.insert(key, old);
        }
        index
    }

    fn current(&self, key: Key) -> Option<Ver> {
        self.map.get(&key).cloned()
    }

    /// The failure of a single-key index condition.
    fn index_failure(&self, key: Key) -> Outcome {
        match self.current(key) {
            None => Outcome::NotFound,
            Some(v) => Outcome::Conflict(Some(v)),
        }
    }
}

impl Target for MutexStore {
    fn apply(&self, call: &Call) -> Outcome {
        let bug = self.bug;
        let mut s = self.inner.lock().unwrap();
        match call {
            Call::Get(k) | Call::PinnedGet(k) => {
                s.reads += 1;
                if bug == Bug::StaleRead && s.reads % 3 == 0 && s.prev.contains_key(k) {
                    return Outcome::Read(s.prev.get(k).cloned());
                }
                Outcome::Read(s.current(*k))
            }
            Call::Set(k, v) => {
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, None, i))
            }
            Call::SetFlags(k, v, f) => {
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, Some(*f), i))
            }
            Call::SetCas(k, v, e) => {
                if !s.index_holds(bug, *k, *e) {
                    return s.index_failure(*k);
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.write(*k, *v, None, i))
            }
            Call::Delete(k) => {
                if s.current(*k).is_none() {
                    return Outcome::NotFound;
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.remove(*k, i))
            }
            Call::DeleteCas(k, e) => {
                if !s.index_holds(bug, *k, *e) {
                    return s.index_failure(*k);
                }
                let i = s.next_index(bug);
                Outcome::Wrote(s.remove(*k, i))
            }
            Call::Cas(k, e, new) => {
                if !s.value_holds(*k, *e) {
                    return Outcome::Conflict(s.current(*k));
                }
                match (new, s.current(*k)) {
                    (Some(v), _) => {
                        let i = s.next_index(bug);
                        Outcome::Wrote(s.write(*k, *v, None, i))
                    }
                    (None, Some(_)) => {
                        let i = s.next_index(bug);
                        Outcome::Wrote(s.remove(*k, i))
                    }
                    (None, None) => Outcome::Nothing,
                }
            }
            Call::Batch(ops) => {
                let mut failing = Vec::new();
                let mut effects = Vec::new();
                for op in ops {
                    let k = op.key();
                    let (holds, effect) = match op {
                        BatchOp::Set(_, v) => (true, Effect::Write(*v)),
                        BatchOp::SetCas(_, v, e) => (s.index_holds(bug, k, *e), Effect::Write(*v)),
                        BatchOp::Delete(_) => (s.current(k).is_some(), Effect::Remove),
                        BatchOp::DeleteCas(_, e) => (s.index_holds(bug, k, *e), Effect::Remove),
                        BatchOp::CheckIndex(_, e) => (s.index_holds(bug, k, *e), Effect::Keep),
                        BatchOp::Cas(_, e, Some(v)) => (s.value_holds(k, *e), Effect::Write(*v)),
                        BatchOp::Cas(_, e, None) => (
                            s.value_holds(k, *e),
                            if s.current(k).is_some() {
                                Effect::Remove
                            } else {
                                Effect::Keep
                            },
                        ),
                    };
                    if holds {
                        effects.push((k, effect));
                    } else {
                        failing.push((k, s.current(k)));
                    }
                }
                if !failing.is_empty() {
                    failing.sort_by_key(|f| f.0);
                    return Outcome::BatchConflict(failing);
                }
                let i = s.next_index(bug);
                for (k, effect) in effects {
                    if bug == Bug::TornBatch {
                        // The planted bug: other threads run between the keys of the batch.
                        drop(s);
                        std::thread::yield_now();
                        s = self.inner.lock().unwrap();
                    }
                    match effect {
                        Effect::Write(v) => {
                            s.write(k, v, None, i);
                        }
                        Effect::Remove => {
                            s.remove(k, i);
                        }
                        Effect::Keep => {}
                    }
                }
                Outcome::Wrote(i)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording histories
// ---------------------------------------------------------------------------------------------

/// The shape of one round of random operations.
#[derive(Debug, Clone, Copy)]
struct Workload {
    threads: usize,
    ops_per_thread: usize,
    keys: u8,
    /// Percentage of operations that are batches (0 for per-key histories).
    batch_percent: u8,
    /// How many operations a thread may run ahead of the slowest one. With more threads than
    /// cores, a round would otherwise be over before the scheduler ever ran the threads it did
    /// not start first, and those would never overlap the others.
    window: usize,
}

/// What one thread knows of each key's indices, to pick plausible and stale CAS indices.
struct View {
    seen: Vec<Vec<u64>>,
}

impl View {
    fn new(keys: u8) -> Self {
        View {
            seen: vec![Vec::new(); usize::from(keys)],
        }
    }

    fn note(&mut self, key: Key, index: u64) {
        let seen = &mut self.seen[usize::from(key)];
        if seen.last() != Some(&index) {
            seen.push(index);
        }
    }

    /// Learns the indices an outcome reveals.
    fn learn(&mut self, call: &Call, outcome: &Outcome) {
        match (call, outcome) {
            (Call::Batch(ops), Outcome::Wrote(i)) => {
                for op in ops {
                    self.note(op.key(), *i);
                }
            }
            (_, Outcome::BatchConflict(failing)) => {
                for (k, v) in failing {
                    if let Some(v) = v {
                        self.note(*k, v.modify);
                    }
                }
            }
            (call, Outcome::Wrote(i)) => self.note(call.key().unwrap(), *i),
            (call, Outcome::Read(Some(v)) | Outcome::Conflict(Some(v))) => {
                self.note(call.key().unwrap(), v.modify);
            }
            _ => {}
        }
    }

    /// An index condition: mostly the latest index this thread saw, sometimes 0 (absent), an
    /// older one (stale), or an arbitrary one.
    fn pick_index(&self, rng: &mut fastrand::Rng, key: Key) -> u64 {
        let seen = &self.seen[usize::from(key)];
        match rng.u8(0..10) {
            0..=2 => 0,
            3..=6 => seen.last().copied().unwrap_or(0),
            7..=8 if !seen.is_empty() => seen[rng.usize(..seen.len())],
            _ => rng.u64(1..64),
        }
    }

    /// An index condition for a delete, never 0 (that is an invalid argument).
    fn pick_delete_index(&self, rng: &mut fastrand::Rng, key: Key) -> u64 {
        match self.pick_index(rng, key) {
            0 => rng.u64(1..64),
            n => n,
        }
    }
}

fn maybe_value(rng: &mut fastrand::Rng, percent_some: u8) -> Option<u32> {
    (rng.u8(0..100) < percent_some).then(|| rng.u32(0..4))
}

fn random_call(rng: &mut fastrand::Rng, view: &View, w: &Workload) -> Call {
    if rng.u8(0..100) < w.batch_percent {
        let mut keys: Vec<Key> = (0..w.keys).collect();
        rng.shuffle(&mut keys);
        keys.truncate(rng.usize(2..=usize::from(w.keys)));
        let ops = keys
            .into_iter()
            .map(|k| {
                let v = rng.u32(0..4);
                match rng.u8(0..100) {
                    0..=44 => BatchOp::Set(k, v),
                    45..=69 => BatchOp::SetCas(k, v, view.pick_index(rng, k)),
                    70..=75 => BatchOp::Delete(k),
                    76..=81 => BatchOp::DeleteCas(k, view.pick_delete_index(rng, k)),
                    82..=90 => BatchOp::CheckIndex(k, view.pick_index(rng, k)),
                    _ => BatchOp::Cas(k, maybe_value(rng, 70), maybe_value(rng, 85)),
                }
            })
            .collect();
        return Call::Batch(ops);
    }
    let k = rng.u8(0..w.keys);
    let v = rng.u32(0..4);
    match rng.u8(0..100) {
        0..=21 => Call::Get(k),
        22..=29 => Call::PinnedGet(k),
        30..=41 => Call::Set(k, v),
        42..=45 => Call::SetFlags(k, v, rng.u64(0..3)),
        46..=65 => Call::SetCas(k, v, view.pick_index(rng, k)),
        66..=73 => Call::Delete(k),
        74..=83 => Call::DeleteCas(k, view.pick_delete_index(rng, k)),
        _ => Call::Cas(k, maybe_value(rng, 70), maybe_value(rng, 80)),
    }
}

/// Runs one round of `w` against `target` and returns its history.
///
/// Each thread stamps the shared logical clock right before each call and right after each
/// return. The stamps are SeqCst read-modify-writes of one atomic, so an operation whose return
/// stamp is below another's call stamp happens-before it: real-time order as the checker needs
/// it, without wall time.
fn record<T: Target>(target: &T, w: &Workload, seed: u64) -> Vec<Event<Record>> {
    let clock = AtomicU64::new(0);
    let start = Barrier::new(w.threads);
    // Operations completed by each thread, for the lockstep.
    let done: Vec<AtomicUsize> = (0..w.threads).map(|_| AtomicUsize::new(0)).collect();
    let per_thread: Vec<Vec<Event<Record>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..w.threads)
            .map(|t| {
                let (clock, start, done) = (&clock, &start, &done);
                s.spawn(move || {
                    let mut rng =
                        fastrand::Rng::with_seed(seed ^ (t as u64).wrapping_mul(0x9e37_79b9));
                    let mut view = View::new(w.keys);
                    let mut events = Vec::with_capacity(w.ops_per_thread);
                    start.wait();
                    for i in 0..w.ops_per_thread {
                        let call = random_call(&mut rng, &view, w);
                        // Wait for the slowest thread to come within the window. SeqCst (and
                        // below) only for simplicity; the counters order nothing the checker
                        // relies on.
                        let mut spins = 0u32;
                        while done.iter().any(|d| d.load(Ordering::SeqCst) + w.window < i) {
                            // Spin while the laggard may be running on another core; yield
                            // when it probably is not.
                            spins += 1;
                            if spins % 256 == 0 {
                                std::thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                        // A short random pause, so threads drift against each other and
                        // their operations overlap in many different ways.
                        for _ in 0..rng.u32(0..32) {
                            std::hint::spin_loop();
                        }
                        let t0 = clock.fetch_add(1, Ordering::SeqCst);
                        let outcome = target.apply(&call);
                        let t1 = clock.fetch_add(1, Ordering::SeqCst);
                        done[t].store(i + 1, Ordering::SeqCst);
                        view.learn(&call, &outcome);
                        events.push(Event {
                            op: Record { call, outcome },
                            call: t0,
                            ret: t1,
                            thread: t,
                        });
                    }
                    events
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    per_thread.into_iter().flatten().collect()
}

/// Which checker a round goes through.
#[derive(Debug, Clone, Copy)]
enum Mode {
    PerKey,
    Map,
}

fn check_round(history: &[Event<Record>], mode: Mode, keys: u8) -> Result<(), String> {
    check_unique_indices(history)?;
    models_only(history, mode, keys)
}

/// The base seed: `CASKV_LIN_SEED` if set, else random (printed, to replay the op choices).
fn base_seed() -> u64 {
    std::env::var("CASKV_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// A workload for round `round` of `mode`: 2–4 keys, 3–4 threads, 36–56 operations, and a
/// lockstep window of 1, 2 or 4 operations; the combinations cycle over the rounds.
fn workload(mode: Mode, round: usize) -> Workload {
    let (ops_per_thread, batch_percent) = match mode {
        Mode::PerKey => (14, 0),
        Mode::Map => (12, 25),
    };
    Workload {
        threads: 3 + round % 2,
        ops_per_thread,
        keys: 2 + (round % 3) as u8,
        batch_percent,
        window: [1, 2, 4][(round / 6) % 3],
    }
}

/// Runs `rounds` fresh stores through `mode`, asserting each history linearizable. Returns the
/// number of operations checked.
fn run_rounds(mode: Mode, rounds: usize) -> usize {
    let seed = base_seed();
    let started = Instant::now();
    let mut ops = 0;
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut overlapping = 0;
    for round in 0..rounds {
        let w = workload(mode, round);
        let store: Store<Key, u32> = Store::new();
        let round_seed = seed.wrapping_add(round as u64);
        let history = record(&store, &w, round_seed);
        for e in &history {
            *outcomes.entry(outcome_kind(&e.op)).or_default() += 1;
        }
        overlapping += overlapping_ops(&history);
        if let Err(report) = check_round(&history, mode, w.keys) {
            panic!("{mode:?} round {round} (seed {round_seed}, {w:?}): {report}");
        }
        ops += history.len();
    }
    eprintln!(
        "linearizability {mode:?}: {ops} operations in {rounds} histories checked in {:.2?} \
         (seed {seed}); {overlapping} overlapped another thread's; outcomes {outcomes:?}",
        started.elapsed()
    );
    ops
}

/// How many operations of `history` overlap in time with an operation of another thread: the
/// ones whose order the checker had to search for.
fn overlapping_ops(history: &[Event<Record>]) -> usize {
    history
        .iter()
        .filter(|a| {
            history
                .iter()
                .any(|b| b.thread != a.thread && b.call < a.ret && a.call < b.ret)
        })
        .count()
}

/// A coarse label of an operation's outcome, to show the workload exercises every path.
fn outcome_kind(r: &Record) -> &'static str {
    match (&r.call, &r.outcome) {
        (Call::Batch(_), Outcome::Wrote(_)) => "batch ok",
        (Call::Batch(_), _) => "batch failed",
        (_, Outcome::Read(Some(_))) => "read present",
        (_, Outcome::Read(None)) => "read absent",
        (_, Outcome::Wrote(_)) => "write ok",
        (_, Outcome::Nothing) => "cas nothing",
        (_, Outcome::NotFound) => "not found",
        (_, Outcome::Conflict(_)) => "conflict",
        (_, Outcome::BatchConflict(_)) => "batch conflict on single op",
        (_, Outcome::Unexpected(_)) => "unexpected",
    }
}

// ---------------------------------------------------------------------------------------------
// The tests against caskv
// ---------------------------------------------------------------------------------------------

/// Rounds per mode: `CASKV_LIN_ROUNDS` if set (for long hunts, best with `--release`), else a
/// number that checks thousands of operations in well under a second in debug builds.
fn rounds() -> usize {
    std::env::var("CASKV_LIN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn single_key_operations_are_linearizable_per_key() {
    let ops = run_rounds(Mode::PerKey, rounds());
    assert!(ops >= rounds() * 36, "too few operations checked: {ops}");
}

#[test]
fn histories_with_batches_are_linearizable_as_a_whole_map() {
    let ops = run_rounds(Mode::Map, rounds());
    assert!(ops >= rounds() * 36, "too few operations checked: {ops}");
}

// ---------------------------------------------------------------------------------------------
// Self-tests: the checker accepts what it must and rejects what it must
// ---------------------------------------------------------------------------------------------

fn ver(value: u32, modify: u64, create: u64) -> Option<Ver> {
    Some(Ver {
        value,
        flags: 0,
        modify,
        create,
    })
}

/// A hand-written event on thread `thread`.
fn ev(thread: usize, call: Call, outcome: Outcome, at: (u64, u64)) -> Event<Record> {
    Event {
        op: Record { call, outcome },
        call: at.0,
        ret: at.1,
        thread,
    }
}

#[test]
fn hand_written_linearizable_histories_pass() {
    use Outcome::*;
    // Two overlapping sets: the one at index 1 must come first (indices increase per key), and
    // a read overlapping both may see the first; a read after both sees the second, with the
    // create index of the first.
    let h = vec![
        ev(0, Call::Set(0, 1), Wrote(1), (0, 5)),
        ev(1, Call::Set(0, 2), Wrote(2), (1, 6)),
        ev(2, Call::Get(0), Read(ver(1, 1, 1)), (2, 3)),
        ev(2, Call::Get(0), Read(ver(2, 2, 1)), (7, 8)),
        // A CAS at the current index, concurrent with a stale one that fails.
        ev(0, Call::SetCas(0, 3, 2), Wrote(4), (9, 12)),
        ev(1, Call::SetCas(0, 4, 1), Conflict(ver(2, 2, 1)), (10, 11)),
        ev(2, Call::Cas(0, Some(3), None), Wrote(5), (13, 14)),
        ev(2, Call::Cas(0, None, None), Nothing, (15, 16)),
        ev(2, Call::SetCas(0, 0, 0), Wrote(6), (17, 18)),
    ];
    check(&KeyModel, &h).unwrap_or_else(|why| panic!("{}", explain(&h, &why)));
    check_per_key(&h).unwrap();
    check_map(&h, 1).unwrap();

    // A batch concurrent with reads that see all of it or none of it.
    let h = vec![
        ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
        ev(0, Call::Set(1, 1), Wrote(2), (2, 3)),
        ev(
            0,
            Call::Batch(vec![BatchOp::Set(0, 2), BatchOp::SetCas(1, 2, 2)]),
            Wrote(3),
            (4, 11),
        ),
        ev(1, Call::Get(1), Read(ver(1, 2, 2)), (5, 6)),
        ev(1, Call::Get(0), Read(ver(2, 3, 1)), (7, 8)),
        ev(1, Call::Get(1), Read(ver(2, 3, 2)), (9, 10)),
    ];
    check_map(&h, 2).unwrap();
}

#[test]
fn hand_written_non_linearizable_histories_fail() {
    use Outcome::*;
    let not = |h: &[Event<Record>], keys: usize| {
        assert!(
            matches!(
                check(&MapModel { keys }, h),
                Err(Rejection::NotLinearizable { .. })
            ),
            "accepted a non-linearizable history:\n{h:#?}"
        );
    };
    // A read that starts after a set returned misses it.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(1, Call::Get(0), Read(None), (2, 3)),
        ],
        1,
    );
    // A read sees a concurrent set, then a later read does not.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 9)),
            ev(1, Call::Get(0), Read(ver(1, 1, 1)), (1, 2)),
            ev(2, Call::Get(0), Read(None), (3, 4)),
        ],
        1,
    );
    // A CAS succeeds against a stale index.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(0, 2), Wrote(2), (2, 3)),
            ev(1, Call::SetCas(0, 3, 1), Wrote(3), (4, 5)),
        ],
        1,
    );
    // A re-create reuses an index not above the delete's.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Delete(0), Wrote(2), (2, 3)),
            ev(0, Call::SetCas(0, 1, 0), Wrote(2), (4, 5)),
        ],
        1,
    );
    // An update changes the create index.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(0, 2), Wrote(2), (2, 3)),
            ev(0, Call::Get(0), Read(ver(2, 2, 2)), (4, 5)),
        ],
        1,
    );
    // A failed CAS reports a current index that was never current.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(1, Call::SetCas(0, 1, 7), Conflict(ver(1, 5, 1)), (2, 3)),
        ],
        1,
    );
    // A batch seen in part: key 0 new, then key 1 old, by one reader in sequence.
    not(
        &[
            ev(0, Call::Set(0, 1), Wrote(1), (0, 1)),
            ev(0, Call::Set(1, 1), Wrote(2), (2, 3)),
            ev(
                0,
                Call::Batch(vec![BatchOp::Set(0, 2), BatchOp::Set(1, 2)]),
                Wrote(3),
                (4, 11),
            ),
            ev(1, Call::Get(0), Read(ver(2, 3, 1)), (5, 6)),
            ev(1, Call::Get(1), Read(ver(1, 2, 2)), (7, 8)),
        ],
        2,
    );
    // A failed batch that reports only one of its two failing keys.
    not(
        &[ev(
            0,
            Call::Batch(vec![BatchOp::Delete(0), BatchOp::SetCas(1, 1, 5)]),
            BatchConflict(vec![(0, None)]),
            (0, 1),
        )],
        2,
    );
}

/// Checks one history; the self-tests swap in a narrower checker to show what catches a bug.
type Checker = fn(&[Event<Record>], Mode, u8) -> Result<(), String>;

/// Runs up to `rounds` rounds against a [`MutexStore`] with `bug`, returning the first
/// rejection report (or `None` if every round passed) and the number of operations checked.
fn hunt(bug: Bug, mode: Mode, rounds: usize, checker: Checker) -> (Option<String>, usize) {
    let seed = base_seed();
    let mut ops = 0;
    for round in 0..rounds {
        let w = workload(mode, round);
        let store = MutexStore::new(bug);
        let history = record(&store, &w, seed.wrapping_add(round as u64));
        ops += history.len();
        if let Err(report) = checker(&history, mode, w.keys) {
            return (Some(report), ops);
        }
    }
    (None, ops)
}

#[test]
fn a_correct_reference_store_passes() {
    for mode in [Mode::PerKey, Mode::Map] {
        let (rejected, ops) = hunt(Bug::None, mode, 60, check_round);
        if let Some(report) = rejected {
            panic!("the reference store was rejected ({mode:?}): {report}");
        }
        assert!(ops > 2000);
    }
}

/// Asserts that `checker` rejects some history of a store with `bug` within 300 rounds.
fn assert_caught(bug: Bug, mode: Mode, checker: Checker) {
    let (rejected, ops) = hunt(bug, mode, 300, checker);
    let report = rejected.unwrap_or_else(|| panic!("{bug:?} ({mode:?}) not caught in {ops} ops"));
    assert!(report.contains("not linearizable"), "{report}");
    eprintln!(
        "{bug:?} ({mode:?}) caught after {ops} ops: {}",
        report.lines().next().unwrap()
    );
}

/// The models alone, without the global uniqueness check of indices.
fn models_only(history: &[Event<Record>], mode: Mode, keys: u8) -> Result<(), String> {
    match mode {
        Mode::PerKey => check_per_key(history),
        Mode::Map => check_map(history, usize::from(keys)),
    }
}

#[test]
fn a_cas_against_a_stale_index_is_caught() {
    assert_caught(Bug::StaleCas, Mode::PerKey, models_only);
}

#[test]
fn a_stale_read_is_caught() {
    assert_caught(Bug::StaleRead, Mode::PerKey, models_only);
}

#[test]
fn a_torn_batch_is_caught() {
    assert_caught(Bug::TornBatch, Mode::Map, models_only);
}

#[test]
fn reused_indices_are_caught() {
    assert_caught(Bug::ReusedIndex, Mode::PerKey, models_only);
}

#[test]
fn reused_indices_are_also_caught_by_the_uniqueness_check() {
    let uniqueness_only: Checker = |h, _, _| check_unique_indices(h);
    let (rejected, ops) = hunt(Bug::ReusedIndex, Mode::PerKey, 300, uniqueness_only);
    let report = rejected.unwrap_or_else(|| panic!("not caught in {ops} ops"));
    assert!(report.contains("returned twice"), "{report}");
}
