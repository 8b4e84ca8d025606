//! What each shared object does with a call: the behaviour of Python's
//! `dict`, `list`, `queue.Queue`, `threading.Lock` … inside the manager.
//!
//! A call either finishes ([`Step::Done`]) or must wait ([`Step::Park`]):
//! the server keeps the request and calls again whenever the object
//! changes, with the request's [`Ticket`] (what it did so far) and, once its
//! deadline passed, `expired`. Objects never block and never see sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_pickle::{HashableValue, Value};

use crate::manager::protocol::{Exc, Kind, Reply};

/// Who called: a connection and, for a corral client, its calling thread
/// (locks belong to an owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Owner {
    pub(super) conn: u64,
    pub(super) thread: u64,
}

/// What a waiting request did so far.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ticket {
    /// A condition wait: the waiter's number.
    CondWait(u64),
    /// A barrier wait: the generation and epoch it arrived in, its index.
    Barrier {
        generation: u64,
        epoch: u64,
        index: u64,
    },
}

/// One call's context.
pub(super) struct Ctx<'a> {
    pub(super) owner: Owner,
    /// The caller is a corral client (it reads a dead lock owner as 2).
    pub(super) corral: bool,
    pub(super) ticket: &'a mut Option<Ticket>,
    /// The request waited past its deadline.
    pub(super) expired: bool,
    /// Values that entered or left the object (for proxies inside them).
    pub(super) stored: Vec<Value>,
    pub(super) removed: Vec<Value>,
}

/// A call's outcome.
#[derive(Debug)]
pub(super) enum Step {
    Done(Reply),
    /// Wait; the timeout (seconds) counts from the first time it parks.
    Park(Option<f64>),
}

fn ok(v: Value) -> Result<Step, Exc> {
    Ok(Step::Done(Reply::Return(v)))
}

fn none() -> Result<Step, Exc> {
    ok(Value::None)
}

/// Positional and keyword arguments, taken by position or name.
pub(super) struct Args {
    pos: Vec<Option<Value>>,
    kw: BTreeMap<HashableValue, Value>,
}

impl Args {
    pub(super) fn new(pos: Vec<Value>, kw: BTreeMap<HashableValue, Value>) -> Args {
        Args {
            pos: pos.into_iter().map(Some).collect(),
            kw,
        }
    }

    fn opt(&mut self, i: usize, name: &str) -> Option<Value> {
        self.pos
            .get_mut(i)
            .and_then(Option::take)
            .or_else(|| self.kw.remove(&HashableValue::String(name.into())))
    }

    fn req(&mut self, i: usize, name: &str) -> Result<Value, Exc> {
        self.opt(i, name)
            .ok_or_else(|| Exc::new("TypeError", format!("missing required argument '{name}'")))
    }

    fn key(&mut self, i: usize) -> Result<HashableValue, Exc> {
        hashable(self.req(i, "key")?)
    }

    fn flag(&mut self, i: usize, name: &str, default: bool) -> bool {
        match self.opt(i, name) {
            Some(Value::Bool(b)) => b,
            Some(Value::I64(n)) => n != 0,
            Some(Value::None) => false,
            Some(_) => true,
            None => default,
        }
    }

    /// A timeout in seconds; `None` or a negative one means none.
    fn timeout(&mut self, i: usize) -> Result<Option<f64>, Exc> {
        match self.opt(i, "timeout") {
            None | Some(Value::None) => Ok(None),
            Some(v) => {
                let t = number(&v)?;
                Ok((t >= 0.0).then_some(t))
            }
        }
    }

    fn int(&mut self, i: usize, name: &str, default: i64) -> Result<i64, Exc> {
        match self.opt(i, name) {
            None => Ok(default),
            Some(Value::I64(n)) => Ok(n),
            Some(Value::Bool(b)) => Ok(b as i64),
            Some(v) => Err(Exc::new("TypeError", format!("{} is not an int", repr(&v)))),
        }
    }
}

fn hashable(v: Value) -> Result<HashableValue, Exc> {
    let shown = repr(&v);
    v.into_hashable()
        .map_err(|_| Exc::new("TypeError", format!("unhashable: {shown}")))
}

fn number(v: &Value) -> Result<f64, Exc> {
    match v {
        Value::I64(n) => Ok(*n as f64),
        Value::F64(f) => Ok(*f),
        Value::Bool(b) => Ok(*b as u8 as f64),
        _ => Err(Exc::new(
            "TypeError",
            format!("{} is not a number", repr(v)),
        )),
    }
}

/// Python's `repr` of plain data, for messages.
pub(super) fn repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => format!("{other}"),
    }
}

/// `a + b` for numbers (Python's `+=` on a stored value).
fn add(a: &Value, b: &Value) -> Result<Value, Exc> {
    match (a, b) {
        (Value::I64(x), Value::I64(y)) => x
            .checked_add(*y)
            .map(Value::I64)
            .ok_or_else(|| Exc::new("OverflowError", "integer overflow")),
        (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
        _ => Ok(Value::F64(number(a)? + number(b)?)),
    }
}

/// A dict that keeps insertion order and Python's key equality (`1`, `1.0`
/// and `True` are one key).
#[derive(Debug, Default)]
pub(super) struct Dict {
    map: BTreeMap<HashableValue, (u64, Value)>,
    next: u64,
}

impl Dict {
    fn get(&self, k: &HashableValue) -> Option<&Value> {
        self.map.get(k).map(|(_, v)| v)
    }

    /// Inserts; the replaced value if any.
    fn insert(&mut self, k: HashableValue, v: Value) -> Option<Value> {
        if let Some((_, slot)) = self.map.get_mut(&k) {
            return Some(std::mem::replace(slot, v));
        }
        self.next += 1;
        self.map.insert(k, (self.next, v));
        None
    }

    fn remove(&mut self, k: &HashableValue) -> Option<Value> {
        self.map.remove(k).map(|(_, v)| v)
    }

    fn ordered(&self) -> Vec<(&HashableValue, &Value)> {
        let mut all: Vec<_> = self.map.iter().map(|(k, (n, v))| (*n, k, v)).collect();
        all.sort_unstable_by_key(|(n, _, _)| *n);
        all.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    fn snapshot(&self) -> Value {
        // A pickled dict keeps the order it is written in; serde-pickle's
        // map is sorted, so Python sees sorted keys here.
        Value::Dict(
            self.map
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect(),
        )
    }

    fn drain(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.map)
            .into_values()
            .map(|(_, v)| v)
            .collect()
    }
}

/// A lock's state (`RLock` when `recursive`).
#[derive(Debug, Default)]
pub(super) struct LockState {
    holder: Option<Owner>,
    count: u32,
    recursive: bool,
    /// The last holder's connection closed while it held the lock; told to
    /// the next acquirer.
    owner_died: bool,
}

impl LockState {
    /// Takes the lock for `who` if it can; `Some(previous owner died)`.
    fn try_take(&mut self, who: Owner, count: u32) -> Option<bool> {
        match self.holder {
            None => {
                self.holder = Some(who);
                self.count = count;
                Some(std::mem::take(&mut self.owner_died))
            }
            Some(h) if h == who && self.recursive => {
                self.count += count;
                Some(false)
            }
            Some(_) => None,
        }
    }

    fn acquired(died: bool, corral: bool) -> Value {
        if died && corral {
            Value::I64(2)
        } else {
            Value::Bool(true)
        }
    }

    fn acquire(&mut self, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        let blocking = a.flag(0, "blocking", true);
        let timeout = a.timeout(1)?;
        if let Some(died) = self.try_take(cx.owner, 1) {
            return ok(LockState::acquired(died, cx.corral));
        }
        if !blocking || cx.expired {
            return ok(Value::Bool(false));
        }
        Ok(Step::Park(timeout))
    }

    fn release(&mut self, who: Owner) -> Result<Step, Exc> {
        match self.holder {
            None => Err(Exc::new("RuntimeError", "release unlocked lock")),
            Some(h) if self.recursive && h != who => {
                Err(Exc::new("RuntimeError", "cannot release un-acquired lock"))
            }
            Some(_) => {
                self.count = self.count.saturating_sub(1);
                if self.count == 0 || !self.recursive {
                    self.holder = None;
                    self.count = 0;
                }
                none()
            }
        }
    }

    fn call(&mut self, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        match method {
            "acquire" | "__enter__" => self.acquire(a, cx),
            "release" | "__exit__" => self.release(cx.owner),
            "locked" => ok(Value::Bool(self.holder.is_some())),
            _ => unknown(method),
        }
    }

    /// The connection closed: a lock it held is free, and the next taker
    /// told so.
    fn forget(&mut self, conn: u64) -> bool {
        if self.holder.is_some_and(|h| h.conn == conn) {
            self.holder = None;
            self.count = 0;
            self.owner_died = true;
            return true;
        }
        false
    }
}

/// A counting semaphore; `bound` for a `BoundedSemaphore`.
#[derive(Debug)]
pub(super) struct Sem {
    value: i64,
    bound: Option<i64>,
    /// Permits each connection holds, given back when it closes.
    held: HashMap<u64, i64>,
}

impl Sem {
    fn call(&mut self, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        match method {
            "acquire" | "__enter__" => self.acquire(a, cx),
            "release" | "__exit__" => self.release(a, cx.owner),
            "get_value" => ok(Value::I64(self.value)),
            _ => unknown(method),
        }
    }

    fn acquire(&mut self, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        let blocking = a.flag(0, "blocking", true);
        let timeout = a.timeout(1)?;
        if self.value > 0 {
            self.value -= 1;
            *self.held.entry(cx.owner.conn).or_default() += 1;
            return ok(Value::Bool(true));
        }
        if !blocking || cx.expired {
            return ok(Value::Bool(false));
        }
        Ok(Step::Park(timeout))
    }

    fn release(&mut self, a: &mut Args, who: Owner) -> Result<Step, Exc> {
        let n = a.int(0, "n", 1)?.max(1);
        if self.bound.is_some_and(|b| self.value + n > b) {
            return Err(Exc::new("ValueError", "Semaphore released too many times"));
        }
        self.value += n;
        if let Some(h) = self.held.get_mut(&who.conn) {
            *h -= n.min(*h);
        }
        none()
    }

    fn forget(&mut self, conn: u64) -> bool {
        let back = self.held.remove(&conn).unwrap_or(0);
        self.value += back;
        back > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitState {
    Waiting,
    Notified,
    TimedOut,
}

/// A condition variable over its own reentrant lock.
#[derive(Debug)]
pub(super) struct Cond {
    lock: LockState,
    waiters: VecDeque<(u64, WaitState, Owner, u32)>,
    next: u64,
}

impl Cond {
    fn call(&mut self, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        match method {
            "acquire" | "__enter__" => self.lock.acquire(a, cx),
            "release" | "__exit__" => self.lock.release(cx.owner),
            "wait" => self.wait(a, cx),
            "notify" => {
                let n = a.int(0, "n", 1)?.max(0) as usize;
                self.notify(n, cx.owner)
            }
            "notify_all" => self.notify(usize::MAX, cx.owner),
            _ => unknown(method),
        }
    }

    fn wait(&mut self, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        let timeout = a.timeout(0)?;
        let Some(Ticket::CondWait(me)) = *cx.ticket else {
            if self.lock.holder != Some(cx.owner) {
                return Err(Exc::new("RuntimeError", "cannot wait on un-acquired lock"));
            }
            let saved = std::mem::take(&mut self.lock.count);
            self.lock.holder = None;
            self.next += 1;
            self.waiters
                .push_back((self.next, WaitState::Waiting, cx.owner, saved));
            *cx.ticket = Some(Ticket::CondWait(self.next));
            return Ok(Step::Park(timeout));
        };
        let Some(pos) = self.waiters.iter().position(|w| w.0 == me) else {
            return Err(Exc::new("RuntimeError", "the wait was lost"));
        };
        if cx.expired && self.waiters[pos].1 == WaitState::Waiting {
            self.waiters[pos].1 = WaitState::TimedOut;
        }
        let (_, state, owner, saved) = self.waiters[pos];
        if state == WaitState::Waiting || self.lock.try_take(owner, saved).is_none() {
            return Ok(Step::Park(None));
        }
        self.waiters.remove(pos);
        ok(Value::Bool(state == WaitState::Notified))
    }

    fn notify(&mut self, n: usize, who: Owner) -> Result<Step, Exc> {
        if self.lock.holder != Some(who) {
            return Err(Exc::new(
                "RuntimeError",
                "cannot notify on un-acquired lock",
            ));
        }
        self.waiters
            .iter_mut()
            .filter(|w| w.1 == WaitState::Waiting)
            .take(n)
            .for_each(|w| w.1 = WaitState::Notified);
        none()
    }

    fn abandon(&mut self, me: u64) {
        self.waiters.retain(|w| w.0 != me);
    }
}

/// A barrier for `parties`.
#[derive(Debug)]
pub(super) struct Barrier {
    parties: u64,
    count: u64,
    generation: u64,
    /// Counts resets: a waiter from an older epoch is broken.
    epoch: u64,
    broken: bool,
}

impl Barrier {
    fn call(&mut self, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        match method {
            "wait" => self.wait(a, cx),
            "abort" => {
                self.break_it();
                none()
            }
            "reset" => {
                self.epoch += 1;
                self.count = 0;
                self.broken = false;
                none()
            }
            "__getattribute__" => match a.req(0, "name")? {
                Value::String(n) => self.attribute(&n),
                _ => Err(Exc::new("TypeError", "attribute name must be a str")),
            },
            _ => unknown(method),
        }
    }

    fn wait(&mut self, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        let timeout = a.timeout(0)?;
        let broken = || Exc::new("BrokenBarrierError", "the barrier is broken");
        let Some(Ticket::Barrier {
            generation,
            epoch,
            index,
        }) = *cx.ticket
        else {
            if self.broken {
                return Err(broken());
            }
            let index = self.count;
            self.count += 1;
            if self.count == self.parties {
                self.count = 0;
                self.generation += 1;
                return ok(Value::I64(index as i64));
            }
            *cx.ticket = Some(Ticket::Barrier {
                generation: self.generation,
                epoch: self.epoch,
                index,
            });
            return Ok(Step::Park(timeout));
        };
        if self.generation > generation && self.epoch == epoch {
            return ok(Value::I64(index as i64));
        }
        if self.broken || self.epoch != epoch {
            return Err(broken());
        }
        if cx.expired {
            self.break_it();
            return Err(broken());
        }
        Ok(Step::Park(None))
    }

    fn break_it(&mut self) {
        self.broken = true;
        self.count = 0;
    }

    fn attribute(&self, name: &str) -> Result<Step, Exc> {
        match name {
            "parties" => ok(Value::I64(self.parties as i64)),
            "n_waiting" => ok(Value::I64(self.count as i64)),
            "broken" => ok(Value::Bool(self.broken)),
            _ => Err(Exc::new(
                "AttributeError",
                format!("'Barrier' has no attribute '{name}'"),
            )),
        }
    }
}

/// A FIFO queue; `maxsize` 0 is unbounded.
#[derive(Debug, Default)]
pub(super) struct Fifo {
    items: VecDeque<Value>,
    maxsize: usize,
    unfinished: u64,
}

impl Fifo {
    fn put(&mut self, a: &mut Args, cx: &mut Ctx<'_>, block: bool) -> Result<Step, Exc> {
        let item = a.req(0, "item")?;
        let block = block && a.flag(1, "block", true);
        let timeout = a.timeout(2)?;
        if self.maxsize == 0 || self.items.len() < self.maxsize {
            cx.stored.push(item.clone());
            self.items.push_back(item);
            self.unfinished += 1;
            return none();
        }
        if !block || cx.expired {
            return Err(Exc::new("Full", ""));
        }
        Ok(Step::Park(timeout))
    }

    fn get(&mut self, a: &mut Args, cx: &mut Ctx<'_>, block: bool) -> Result<Step, Exc> {
        let block = block && a.flag(0, "block", true);
        let timeout = a.timeout(1)?;
        if let Some(item) = self.items.pop_front() {
            cx.removed.push(item.clone());
            return ok(item);
        }
        if !block || cx.expired {
            return Err(Exc::new("Empty", ""));
        }
        Ok(Step::Park(timeout))
    }
}

/// A shared object.
#[derive(Debug)]
pub(super) enum Object {
    Dict(Dict),
    List(Vec<Value>),
    Queue(Fifo, bool),
    Value(Value),
    Lock(LockState),
    Sem(Sem),
    Cond(Cond),
    Event(bool),
    Barrier(Barrier),
    Namespace(Dict),
}

/// `dict(map)`: its entries, each value also in `stored`.
fn new_dict(a: &mut Args, stored: &mut Vec<Value>) -> Dict {
    let mut d = Dict::default();
    if let Some(Value::Dict(init)) = a.opt(0, "map") {
        for (k, v) in init {
            stored.push(v.clone());
            d.insert(k, v);
        }
    }
    d
}

/// `Semaphore(value)` / `BoundedSemaphore(value)`.
fn new_semaphore(a: &mut Args, bounded: bool) -> Result<Sem, Exc> {
    let value = a.int(0, "value", 1)?;
    if value < 0 {
        return Err(Exc::new(
            "ValueError",
            "semaphore initial value must be >= 0",
        ));
    }
    Ok(Sem {
        value,
        bound: bounded.then_some(value),
        held: HashMap::new(),
    })
}

/// `Barrier(parties)`.
fn new_barrier(a: &mut Args) -> Result<Barrier, Exc> {
    let parties = a.int(0, "parties", 0)?;
    if parties < 1 {
        return Err(Exc::new("ValueError", "parties must be >= 1"));
    }
    Ok(Barrier {
        parties: parties as u64,
        count: 0,
        generation: 0,
        epoch: 0,
        broken: false,
    })
}

impl Object {
    /// A new object of `kind` from Python's constructor arguments, and the
    /// values it stores from them.
    pub(super) fn new(kind: Kind, args: Vec<Value>) -> Result<(Object, Vec<Value>), Exc> {
        let mut a = Args::new(args, BTreeMap::new());
        let mut stored = Vec::new();
        let object = match kind {
            Kind::Dict => Object::Dict(new_dict(&mut a, &mut stored)),
            Kind::List => match a.opt(0, "sequence") {
                Some(Value::List(v) | Value::Tuple(v)) => {
                    stored.extend(v.iter().cloned());
                    Object::List(v)
                }
                _ => Object::List(Vec::new()),
            },
            Kind::Queue | Kind::JoinableQueue => Object::Queue(
                Fifo {
                    maxsize: a.int(0, "maxsize", 0)?.max(0) as usize,
                    ..Fifo::default()
                },
                kind == Kind::JoinableQueue,
            ),
            Kind::Value => {
                // Python's `Value(typecode, value)`; corral's `Value(value)`.
                let v = match (a.opt(0, "typecode"), a.opt(1, "value")) {
                    (_, Some(v)) => v,
                    (Some(v), None) => v,
                    (None, None) => Value::None,
                };
                stored.push(v.clone());
                Object::Value(v)
            }
            Kind::Lock | Kind::RLock => Object::Lock(LockState {
                recursive: kind == Kind::RLock,
                ..LockState::default()
            }),
            Kind::Semaphore | Kind::BoundedSemaphore => {
                Object::Sem(new_semaphore(&mut a, kind == Kind::BoundedSemaphore)?)
            }
            Kind::Condition => Object::Cond(Cond {
                lock: LockState {
                    recursive: true,
                    ..LockState::default()
                },
                waiters: VecDeque::new(),
                next: 0,
            }),
            Kind::Event => Object::Event(false),
            Kind::Barrier => Object::Barrier(new_barrier(&mut a)?),
            Kind::Namespace => Object::Namespace(Dict::default()),
        };
        Ok((object, stored))
    }

    /// Runs `method`.
    pub(super) fn call(&mut self, method: &str, mut a: Args, cx: &mut Ctx<'_>) -> Step {
        let outcome = match method {
            "#GETVALUE" | "copy" | "_getvalue" => ok(self.snapshot()),
            "__repr__" | "__str__" => ok(Value::String(format!("<corral {}>", self.kind_name()))),
            _ => self.dispatch(method, &mut a, cx),
        };
        outcome.unwrap_or_else(|e| Step::Done(Reply::Raise(e)))
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Object::Dict(_) => "dict",
            Object::List(_) => "list",
            Object::Queue(..) => "Queue",
            Object::Value(_) => "Value",
            Object::Lock(l) if l.recursive => "RLock",
            Object::Lock(_) => "Lock",
            Object::Sem(_) => "Semaphore",
            Object::Cond(_) => "Condition",
            Object::Event(_) => "Event",
            Object::Barrier(_) => "Barrier",
            Object::Namespace(_) => "Namespace",
        }
    }

    fn snapshot(&self) -> Value {
        match self {
            Object::Dict(d) | Object::Namespace(d) => d.snapshot(),
            Object::List(l) => Value::List(l.clone()),
            Object::Queue(q, _) => Value::List(q.items.iter().cloned().collect()),
            Object::Value(v) => v.clone(),
            Object::Event(e) => Value::Bool(*e),
            Object::Lock(l) => Value::Bool(l.holder.is_some()),
            Object::Sem(s) => Value::I64(s.value),
            Object::Cond(_) | Object::Barrier(_) => Value::None,
        }
    }

    fn dispatch(&mut self, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
        match self {
            Object::Dict(d) => dict_call(d, method, a, cx),
            Object::List(l) => list_call(l, method, a, cx),
            Object::Queue(q, joinable) => queue_call(q, *joinable, method, a, cx),
            Object::Value(v) => value_call(v, method, a, cx),
            Object::Lock(l) => l.call(method, a, cx),
            Object::Sem(s) => s.call(method, a, cx),
            Object::Cond(c) => c.call(method, a, cx),
            Object::Event(flag) => event_call(flag, method, a, cx),
            Object::Barrier(b) => b.call(method, a, cx),
            Object::Namespace(d) => namespace_call(d, method, a, cx),
        }
    }

    /// A waiting request's connection closed: undo what it started.
    pub(super) fn abandon(&mut self, ticket: Ticket) {
        match (self, ticket) {
            (Object::Cond(c), Ticket::CondWait(me)) => c.abandon(me),
            // A party that will never arrive: the others must not wait
            // forever for it.
            (Object::Barrier(b), Ticket::Barrier { .. }) => b.break_it(),
            _ => {}
        }
    }

    /// `conn` closed: locks and permits it held are given back. Whether
    /// anything changed.
    pub(super) fn forget(&mut self, conn: u64) -> bool {
        match self {
            Object::Lock(l) => l.forget(conn),
            Object::Cond(c) => c.lock.forget(conn),
            Object::Sem(s) => s.forget(conn),
            _ => false,
        }
    }

    /// Whether calls from a connection leave state behind it owns.
    pub(super) fn owned_by_callers(&self) -> bool {
        matches!(self, Object::Lock(_) | Object::Cond(_) | Object::Sem(_))
    }

    /// Every value inside (the object is being freed).
    pub(super) fn into_values(self) -> Vec<Value> {
        match self {
            Object::Dict(mut d) | Object::Namespace(mut d) => d.drain(),
            Object::List(l) => l,
            Object::Queue(q, _) => q.items.into(),
            Object::Value(v) => vec![v],
            _ => Vec::new(),
        }
    }
}

fn unknown(method: &str) -> Result<Step, Exc> {
    Err(Exc::new(
        "AttributeError",
        format!("method '{method}' is not exposed"),
    ))
}

fn missing(k: &HashableValue) -> Exc {
    Exc::new("KeyError", repr(&k.clone().into_value()))
}

fn dict_call(d: &mut Dict, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match method {
        "__getitem__" | "get" | "__len__" | "__contains__" | "keys" | "__iter__" | "values"
        | "items" => dict_read(d, method, a),
        "update" => dict_update(d, a, cx),
        "add" | "compare_exchange" => dict_atomic(d, method, a, cx),
        _ => dict_write(d, method, a, cx),
    }
}

/// The calls that only read.
fn dict_read(d: &Dict, method: &str, a: &mut Args) -> Result<Step, Exc> {
    match method {
        "__getitem__" => {
            let k = a.key(0)?;
            d.get(&k).cloned().map_or_else(|| Err(missing(&k)), ok)
        }
        "get" => {
            let k = a.key(0)?;
            let default = a.opt(1, "default").unwrap_or(Value::None);
            ok(d.get(&k).cloned().unwrap_or(default))
        }
        "__len__" => ok(Value::I64(d.map.len() as i64)),
        "__contains__" => ok(Value::Bool(d.map.contains_key(&a.key(0)?))),
        "keys" | "__iter__" => ok(Value::List(
            d.ordered()
                .into_iter()
                .map(|(k, _)| k.clone().into_value())
                .collect(),
        )),
        "values" => ok(Value::List(
            d.ordered().into_iter().map(|(_, v)| v.clone()).collect(),
        )),
        "items" => ok(Value::List(
            d.ordered()
                .into_iter()
                .map(|(k, v)| Value::Tuple(vec![k.clone().into_value(), v.clone()]))
                .collect(),
        )),
        _ => unknown(method),
    }
}

/// The calls that change entries.
fn dict_write(d: &mut Dict, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match method {
        "__setitem__" => {
            let k = a.key(0)?;
            let v = a.req(1, "value")?;
            cx.stored.push(v.clone());
            cx.removed.extend(d.insert(k, v));
            none()
        }
        "__delitem__" | "pop" => {
            let k = a.key(0)?;
            let default = a.opt(1, "default");
            match (d.remove(&k), default) {
                (Some(v), _) => {
                    cx.removed.push(v.clone());
                    ok(if method == "pop" { v } else { Value::None })
                }
                (None, Some(dflt)) if method == "pop" => ok(dflt),
                (None, _) => Err(missing(&k)),
            }
        }
        "setdefault" => {
            let k = a.key(0)?;
            let default = a.opt(1, "default").unwrap_or(Value::None);
            if let Some(v) = d.get(&k) {
                return ok(v.clone());
            }
            cx.stored.push(default.clone());
            d.insert(k, default.clone());
            ok(default)
        }
        "popitem" => {
            let last = d.ordered().last().map(|(k, _)| (*k).clone());
            let k = last.ok_or_else(|| Exc::new("KeyError", "popitem(): dictionary is empty"))?;
            let v = d.remove(&k).unwrap_or(Value::None);
            cx.removed.push(v.clone());
            ok(Value::Tuple(vec![k.into_value(), v]))
        }
        "clear" => {
            cx.removed.extend(d.drain());
            none()
        }
        _ => unknown(method),
    }
}

/// `d.update(other)`: a dict, or a list of pairs.
fn dict_update(d: &mut Dict, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match a.opt(0, "other") {
        Some(Value::Dict(other)) => {
            for (k, v) in other {
                cx.stored.push(v.clone());
                cx.removed.extend(d.insert(k, v));
            }
        }
        Some(Value::List(pairs)) => {
            for pair in pairs {
                let (Value::Tuple(mut kv) | Value::List(mut kv)) = pair else {
                    return Err(Exc::new("TypeError", "update() takes pairs"));
                };
                let (Some(v), Some(k)) = (kv.pop(), kv.pop()) else {
                    return Err(Exc::new("TypeError", "update() takes pairs"));
                };
                cx.stored.push(v.clone());
                cx.removed.extend(d.insert(hashable(k)?, v));
            }
        }
        _ => {}
    }
    none()
}

/// corral's atomic read-modify-writes: `d[k] += delta` (the new value),
/// and set `k` to `new` if it holds `expected` (absent: `(False,)`).
fn dict_atomic(d: &mut Dict, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match method {
        "add" => {
            let k = a.key(0)?;
            let delta = a.req(1, "delta")?;
            let start = a.opt(2, "default").unwrap_or(Value::I64(0));
            let new = add(d.get(&k).unwrap_or(&start), &delta)?;
            d.insert(k, new.clone());
            ok(new)
        }
        "compare_exchange" => {
            let k = a.key(0)?;
            let expected = a.req(1, "expected")?;
            let new = a.req(2, "new")?;
            let current = d.get(&k).cloned();
            if matches_expected(current.as_ref(), &expected) {
                cx.stored.push(new.clone());
                cx.removed.extend(d.insert(k, new));
                ok(Value::Tuple(vec![Value::Bool(true), Value::None]))
            } else {
                ok(Value::Tuple(vec![Value::Bool(false), present(current)]))
            }
        }
        _ => unknown(method),
    }
}

/// `(True, value)` for a present value, `(False,)` for an absent one.
fn present(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Tuple(vec![Value::Bool(true), v]),
        None => Value::Tuple(vec![Value::Bool(false)]),
    }
}

fn matches_expected(current: Option<&Value>, expected: &Value) -> bool {
    match (current, expected) {
        (Some(c), Value::Tuple(e)) if e.len() == 2 && e[0] == Value::Bool(true) => *c == e[1],
        (None, Value::Tuple(e)) => e.first() == Some(&Value::Bool(false)),
        _ => false,
    }
}

/// A Python index (negative from the end) into `len` items.
fn index(a: &mut Args, i: usize, len: usize) -> Result<usize, Exc> {
    let raw = a.int(i, "index", -1)?;
    let at = if raw < 0 { raw + len as i64 } else { raw };
    usize::try_from(at)
        .ok()
        .filter(|&at| at < len)
        .ok_or_else(|| Exc::new("IndexError", "list index out of range"))
}

fn list_call(
    l: &mut Vec<Value>,
    method: &str,
    a: &mut Args,
    cx: &mut Ctx<'_>,
) -> Result<Step, Exc> {
    match method {
        "__getitem__" | "__len__" | "__contains__" | "count" | "index" | "__add__" => {
            list_read(l, method, a)
        }
        _ => list_write(l, method, a, cx),
    }
}

/// The calls that only read.
fn list_read(l: &[Value], method: &str, a: &mut Args) -> Result<Step, Exc> {
    match method {
        "__getitem__" => {
            let at = index(a, 0, l.len())?;
            ok(l[at].clone())
        }
        "__len__" => ok(Value::I64(l.len() as i64)),
        "__contains__" => {
            let v = a.req(0, "value")?;
            ok(Value::Bool(l.contains(&v)))
        }
        "count" => {
            let v = a.req(0, "value")?;
            ok(Value::I64(l.iter().filter(|x| **x == v).count() as i64))
        }
        "index" => {
            let v = a.req(0, "value")?;
            l.iter()
                .position(|x| *x == v)
                .map(|i| Value::I64(i as i64))
                .map_or_else(
                    || {
                        Err(Exc::new(
                            "ValueError",
                            format!("{} is not in list", repr(&v)),
                        ))
                    },
                    ok,
                )
        }
        "__add__" => match a.req(0, "other")? {
            Value::List(v) => ok(Value::List(l.iter().cloned().chain(v).collect())),
            _ => Err(Exc::new("TypeError", "can only concatenate list to list")),
        },
        _ => unknown(method),
    }
}

/// The calls that change items.
fn list_write(
    l: &mut Vec<Value>,
    method: &str,
    a: &mut Args,
    cx: &mut Ctx<'_>,
) -> Result<Step, Exc> {
    match method {
        "append" => {
            let v = a.req(0, "object")?;
            cx.stored.push(v.clone());
            l.push(v);
            none()
        }
        "extend" | "__iadd__" => match a.req(0, "iterable")? {
            Value::List(v) | Value::Tuple(v) => {
                cx.stored.extend(v.iter().cloned());
                l.extend(v);
                none()
            }
            _ => Err(Exc::new("TypeError", "extend() takes a list")),
        },
        "__setitem__" => {
            let at = index(a, 0, l.len())?;
            let v = a.req(1, "value")?;
            cx.stored.push(v.clone());
            cx.removed.push(std::mem::replace(&mut l[at], v));
            none()
        }
        "__delitem__" | "pop" => {
            let at = index(a, 0, l.len())?;
            let v = l.remove(at);
            cx.removed.push(v.clone());
            ok(if method == "pop" { v } else { Value::None })
        }
        "insert" => {
            let raw = a.int(0, "index", 0)?;
            let len = l.len() as i64;
            let at = if raw < 0 {
                (raw + len).max(0)
            } else {
                raw.min(len)
            } as usize;
            let v = a.req(1, "object")?;
            cx.stored.push(v.clone());
            l.insert(at, v);
            none()
        }
        "remove" => {
            let v = a.req(0, "value")?;
            let at = l
                .iter()
                .position(|x| *x == v)
                .ok_or_else(|| Exc::new("ValueError", "list.remove(x): x not in list"))?;
            cx.removed.push(l.remove(at));
            none()
        }
        "reverse" => {
            l.reverse();
            none()
        }
        "clear" => {
            cx.removed.append(l);
            none()
        }
        _ => unknown(method),
    }
}

fn event_call(flag: &mut bool, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match method {
        "is_set" => ok(Value::Bool(*flag)),
        "set" | "clear" => {
            *flag = method == "set";
            none()
        }
        "wait" => {
            let timeout = a.timeout(0)?;
            if *flag || cx.expired {
                ok(Value::Bool(*flag))
            } else {
                Ok(Step::Park(timeout))
            }
        }
        _ => unknown(method),
    }
}

fn queue_call(
    q: &mut Fifo,
    joinable: bool,
    method: &str,
    a: &mut Args,
    cx: &mut Ctx<'_>,
) -> Result<Step, Exc> {
    match method {
        "put" => q.put(a, cx, true),
        "put_nowait" => q.put(a, cx, false),
        "get" => q.get(a, cx, true),
        "get_nowait" => q.get(a, cx, false),
        "qsize" | "__len__" => ok(Value::I64(q.items.len() as i64)),
        "empty" => ok(Value::Bool(q.items.is_empty())),
        "full" => ok(Value::Bool(q.maxsize > 0 && q.items.len() >= q.maxsize)),
        "task_done" if joinable => {
            if q.unfinished == 0 {
                return Err(Exc::new("ValueError", "task_done() called too many times"));
            }
            q.unfinished -= 1;
            none()
        }
        // corral's join takes a timeout; `False` when it ran out.
        "join" if joinable => {
            if q.unfinished == 0 {
                ok(Value::Bool(true))
            } else if cx.expired {
                ok(Value::Bool(false))
            } else {
                Ok(Step::Park(a.timeout(0)?))
            }
        }
        _ => unknown(method),
    }
}

fn value_call(v: &mut Value, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    match method {
        "get" => ok(v.clone()),
        "set" => {
            let new = a.req(0, "value")?;
            cx.stored.push(new.clone());
            cx.removed.push(std::mem::replace(v, new));
            none()
        }
        "add" => {
            let new = add(v, &a.req(0, "delta")?)?;
            *v = new.clone();
            ok(new)
        }
        "compare_exchange" => {
            let expected = a.req(0, "expected")?;
            let new = a.req(1, "new")?;
            if *v == expected {
                cx.stored.push(new.clone());
                cx.removed.push(std::mem::replace(v, new));
                ok(Value::Tuple(vec![Value::Bool(true), Value::None]))
            } else {
                ok(Value::Tuple(vec![Value::Bool(false), v.clone()]))
            }
        }
        _ => unknown(method),
    }
}

fn namespace_call(d: &mut Dict, method: &str, a: &mut Args, cx: &mut Ctx<'_>) -> Result<Step, Exc> {
    let name = match a.req(0, "name")? {
        Value::String(n) => n,
        _ => return Err(Exc::new("TypeError", "attribute name must be a str")),
    };
    let k = HashableValue::String(name.clone());
    let no_such = || {
        Exc::new(
            "AttributeError",
            format!("'Namespace' object has no attribute '{name}'"),
        )
    };
    match method {
        "__getattribute__" | "__getattr__" => d.get(&k).cloned().map_or_else(|| Err(no_such()), ok),
        "__setattr__" => {
            let v = a.req(1, "value")?;
            cx.stored.push(v.clone());
            cx.removed.extend(d.insert(k, v));
            none()
        }
        "__delattr__" => {
            let v = d.remove(&k).ok_or_else(no_such)?;
            cx.removed.push(v);
            none()
        }
        _ => unknown(method),
    }
}
