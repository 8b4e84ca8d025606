//! The typed proxies: a manager's dict, list, queues, value, locks,
//! events, barriers and namespaces.

use std::time::Duration;

use serde_pickle::Value as Plain;

use super::error::ManagerError;
use super::protocol::Kind;
use super::proxy::{Handle, Proxy, from_value, proxy, to_value};
use crate::Data;

type R<T> = Result<T, ManagerError>;

fn unit(v: R<Plain>) -> R<()> {
    v.map(|_| ())
}

fn count(v: Plain) -> R<usize> {
    match v {
        Plain::I64(n) => Ok(n.max(0) as usize),
        other => Err(ManagerError::Codec(format!(
            "expected a count, got {other}"
        ))),
    }
}

fn truth(v: Plain) -> bool {
    matches!(v, Plain::Bool(true)) || matches!(v, Plain::I64(n) if n != 0)
}

/// `(True, value)` / `(False,)`: an entry present or absent.
fn presence<T: Serialize>(v: Option<&T>) -> R<Plain> {
    Ok(match v {
        Some(v) => Plain::Tuple(vec![Plain::Bool(true), to_value(v)?]),
        None => Plain::Tuple(vec![Plain::Bool(false)]),
    })
}

use serde::Serialize;

/// The outcome of a `compare_exchange`: `Ok` if it swapped, else what the
/// entry holds now.
fn exchanged<T: Data>(v: Plain) -> R<Result<(), Option<T>>> {
    let Plain::Tuple(mut parts) = v else {
        return Err(ManagerError::Codec(
            "a malformed compare_exchange reply".into(),
        ));
    };
    if parts.first() == Some(&Plain::Bool(true)) && parts.len() == 2 && parts[1] == Plain::None {
        return Ok(Ok(()));
    }
    match parts.pop() {
        Some(Plain::Tuple(mut now)) if now.len() == 2 => Ok(Err(Some(from_value(now.remove(1))?))),
        Some(Plain::Tuple(_)) => Ok(Err(None)),
        Some(other) => Ok(Err(Some(from_value(other)?))),
        None => Ok(Err(None)),
    }
}

proxy! {
    /// A dict held by a manager (`manager.dict()`); keys and values are
    /// serde types, stored as plain data.
    ///
    /// Reads return copies: to change an entry, write it back
    /// ([`insert`](Dict::insert)), or change it atomically on the server
    /// ([`add`](Dict::add), [`modify`](Dict::modify)) — Python's
    /// `d[k] += 1` through a proxy races; these do not.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let hits = manager.dict::<String, u64>().unwrap();
    /// hits.insert("a".into(), 1).unwrap();
    /// hits.add("a".into(), 2).unwrap();                  // atomic d["a"] += 2
    /// assert_eq!(hits.get(&"a".into()).unwrap(), Some(3));
    /// ```
    Dict<K, V> = Kind::Dict
}

impl<K: Data, V: Data> Dict<K, V> {
    /// `d[k] = v`.
    pub fn insert(&self, k: K, v: V) -> R<()> {
        unit(
            self.h
                .call("__setitem__", vec![to_value(&k)?, to_value(&v)?]),
        )
    }

    /// A copy of `d[k]`, or `None`.
    pub fn get(&self, k: &K) -> R<Option<V>> {
        let v = self.h.call("get", vec![to_value(k)?, missing_marker()])?;
        if v == missing_marker() {
            return Ok(None);
        }
        from_value(v).map(Some)
    }

    /// Removes `k`; its value if it was there.
    pub fn remove(&self, k: &K) -> R<Option<V>> {
        let v = self.h.call("pop", vec![to_value(k)?, missing_marker()])?;
        if v == missing_marker() {
            return Ok(None);
        }
        from_value(v).map(Some)
    }

    /// `k in d`.
    pub fn contains_key(&self, k: &K) -> R<bool> {
        Ok(truth(self.h.call("__contains__", vec![to_value(k)?])?))
    }

    /// `len(d)`.
    pub fn len(&self) -> R<usize> {
        count(self.h.call("__len__", vec![])?)
    }

    /// `len(d) == 0`.
    pub fn is_empty(&self) -> R<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> R<Vec<K>> {
        from_value(self.h.call("keys", vec![])?)
    }

    /// The values, in insertion order.
    pub fn values(&self) -> R<Vec<V>> {
        from_value(self.h.call("values", vec![])?)
    }

    /// A copy of every entry, in insertion order (a snapshot: later changes
    /// are not in it).
    pub fn snapshot(&self) -> R<Vec<(K, V)>> {
        from_value(self.h.call("items", vec![])?)
    }

    /// Inserts every pair (Python's `d.update(pairs)`), in one call.
    pub fn extend(&self, pairs: impl IntoIterator<Item = (K, V)>) -> R<()> {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok(Plain::Tuple(vec![to_value(&k)?, to_value(&v)?])))
            .collect::<R<Vec<_>>>()?;
        unit(self.h.call("update", vec![Plain::List(pairs)]))
    }

    /// `d.setdefault(k, v)`: the value now at `k`.
    pub fn set_default(&self, k: K, v: V) -> R<V> {
        from_value(
            self.h
                .call("setdefault", vec![to_value(&k)?, to_value(&v)?])?,
        )
    }

    /// Empties it.
    pub fn clear(&self) -> R<()> {
        unit(self.h.call("clear", vec![]))
    }

    /// `d[k] += delta` on the server, atomically (a missing entry counts as
    /// zero): the new value. Numbers add; strings concatenate.
    pub fn add(&self, k: K, delta: V) -> R<V> {
        from_value(self.h.call("add", vec![to_value(&k)?, to_value(&delta)?])?)
    }

    /// Sets `k` to `new` only if it still holds `expected` (`None`: absent).
    /// `Err(now)` with what it holds otherwise.
    pub fn compare_exchange(
        &self,
        k: &K,
        expected: Option<&V>,
        new: V,
    ) -> R<Result<(), Option<V>>> {
        let reply = self.h.call(
            "compare_exchange",
            vec![to_value(k)?, presence(expected)?, to_value(&new)?],
        )?;
        exchanged(reply)
    }

    /// Replaces `d[k]` with `f(current)` atomically (retrying if another
    /// process changed it meanwhile): the value written.
    pub fn modify(&self, k: K, mut f: impl FnMut(Option<V>) -> V) -> R<V>
    where
        V: Clone,
    {
        let mut current = self.get(&k)?;
        loop {
            let new = f(current.clone());
            match self.compare_exchange(&k, current.as_ref(), new.clone())? {
                Ok(()) => return Ok(new),
                Err(now) => current = now,
            }
        }
    }
}

/// A default no stored value equals, to tell "absent" from a stored `None`.
fn missing_marker() -> Plain {
    Plain::Tuple(vec![Plain::String("__corral_missing__".into())])
}

proxy! {
    /// A list held by a manager (`manager.list()`).
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let results = manager.list::<u32>().unwrap();
    /// results.push(7).unwrap();
    /// assert_eq!(results.snapshot().unwrap(), vec![7]);
    /// ```
    List<T> = Kind::List
}

impl<T: Data> List<T> {
    /// `l.append(v)`.
    pub fn push(&self, v: T) -> R<()> {
        unit(self.h.call("append", vec![to_value(&v)?]))
    }

    /// `l.extend(vs)`, in one call.
    pub fn extend(&self, vs: impl IntoIterator<Item = T>) -> R<()> {
        let vs = vs
            .into_iter()
            .map(|v| to_value(&v))
            .collect::<R<Vec<_>>>()?;
        unit(self.h.call("extend", vec![Plain::List(vs)]))
    }

    /// A copy of `l[i]` (negative counts from the end); `Raised` with an
    /// `IndexError` out of range.
    pub fn get(&self, i: i64) -> R<T> {
        from_value(self.h.call("__getitem__", vec![Plain::I64(i)])?)
    }

    /// `l[i] = v`.
    pub fn set(&self, i: i64, v: T) -> R<()> {
        unit(
            self.h
                .call("__setitem__", vec![Plain::I64(i), to_value(&v)?]),
        )
    }

    /// `l.insert(i, v)`.
    pub fn insert(&self, i: i64, v: T) -> R<()> {
        unit(self.h.call("insert", vec![Plain::I64(i), to_value(&v)?]))
    }

    /// `l.pop(i)`.
    pub fn remove(&self, i: i64) -> R<T> {
        from_value(self.h.call("pop", vec![Plain::I64(i)])?)
    }

    /// `l.pop()`, or `None` when empty.
    pub fn pop(&self) -> R<Option<T>> {
        match self.h.call("pop", vec![Plain::I64(-1)]) {
            Ok(v) => from_value(v).map(Some),
            Err(ManagerError::Raised { class, .. }) if class == "IndexError" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `len(l)`.
    pub fn len(&self) -> R<usize> {
        count(self.h.call("__len__", vec![])?)
    }

    /// `len(l) == 0`.
    pub fn is_empty(&self) -> R<bool> {
        Ok(self.len()? == 0)
    }

    /// `v in l`.
    pub fn contains(&self, v: &T) -> R<bool> {
        Ok(truth(self.h.call("__contains__", vec![to_value(v)?])?))
    }

    /// A copy of every item (a snapshot).
    pub fn snapshot(&self) -> R<Vec<T>> {
        from_value(self.h.call("#GETVALUE", vec![])?)
    }

    /// Empties it.
    pub fn clear(&self) -> R<()> {
        unit(self.h.call("clear", vec![]))
    }
}

proxy! {
    /// A FIFO queue held by a manager (`manager.Queue()`): any process that
    /// can reach the manager, on any host, can put and get.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let jobs = manager.queue::<String>().unwrap();
    /// jobs.put("a".into()).unwrap();
    /// assert_eq!(jobs.get().unwrap(), "a");
    /// ```
    Queue<T> = Kind::Queue
}

proxy! {
    /// A queue whose consumers acknowledge each item
    /// (`manager.JoinableQueue()`): [`join`](JoinableQueue::join) waits
    /// until every item put was [`task_done`](JoinableQueue::task_done).
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let q = manager.joinable_queue::<u32>().unwrap();
    /// q.put(1).unwrap();
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// q.join().unwrap();
    /// ```
    JoinableQueue<T> = Kind::JoinableQueue
}

macro_rules! queue_methods {
    ($name:ident) => {
        impl<T: Data> $name<T> {
            /// Puts an item, waiting while a bounded queue is full.
            pub fn put(&self, item: T) -> R<()> {
                unit(
                    self.h
                        .call_waiting("put", vec![to_value(&item)?, Plain::Bool(true)], None),
                )
            }

            /// Puts an item, waiting at most `timeout` for room
            /// ([`ManagerError::Full`] then).
            pub fn put_timeout(&self, item: T, timeout: Duration) -> R<()> {
                let args = vec![to_value(&item)?, Plain::Bool(true)];
                unit(self.h.call_waiting("put", args, Some(timeout)))
            }

            /// Puts an item if there is room now ([`ManagerError::Full`]
            /// otherwise).
            pub fn try_put(&self, item: T) -> R<()> {
                unit(self.h.call("put_nowait", vec![to_value(&item)?]))
            }

            /// Takes the oldest item, waiting for one.
            pub fn get(&self) -> R<T> {
                from_value(self.h.call_waiting("get", vec![Plain::Bool(true)], None)?)
            }

            /// Takes the oldest item, waiting at most `timeout`
            /// ([`ManagerError::Empty`] then).
            pub fn get_timeout(&self, timeout: Duration) -> R<T> {
                from_value(
                    self.h
                        .call_waiting("get", vec![Plain::Bool(true)], Some(timeout))?,
                )
            }

            /// Takes the oldest item if there is one ([`ManagerError::Empty`]
            /// otherwise).
            pub fn try_get(&self) -> R<T> {
                from_value(self.h.call("get_nowait", vec![])?)
            }

            /// Items waiting.
            pub fn len(&self) -> R<usize> {
                count(self.h.call("qsize", vec![])?)
            }

            /// No item waits.
            pub fn is_empty(&self) -> R<bool> {
                Ok(truth(self.h.call("empty", vec![])?))
            }
        }
    };
}

queue_methods!(Queue);
queue_methods!(JoinableQueue);

impl<T: Data> JoinableQueue<T> {
    /// Acknowledges one item taken.
    pub fn task_done(&self) -> R<()> {
        unit(self.h.call("task_done", vec![]))
    }

    /// Waits until every item put was acknowledged.
    pub fn join(&self) -> R<()> {
        self.join_for(None)
    }

    /// Waits at most `timeout` ([`ManagerError::Timeout`] then).
    pub fn join_timeout(&self, timeout: Duration) -> R<()> {
        self.join_for(Some(timeout))
    }

    fn join_for(&self, timeout: Option<Duration>) -> R<()> {
        match self.h.call_waiting("join", vec![], timeout)? {
            Plain::Bool(false) => Err(ManagerError::Timeout(
                timeout.or(self.h.timeout()).unwrap_or_default(),
            )),
            _ => Ok(()),
        }
    }
}

proxy! {
    /// One value held by a manager (`manager.Value(typecode, v)`), of any
    /// serde type.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let total = manager.value(0u64).unwrap();
    /// total.add(5).unwrap();                    // atomic
    /// assert_eq!(total.get().unwrap(), 5);
    /// ```
    Value<T> = Kind::Value
}

impl<T: Data> Value<T> {
    /// A copy of the value.
    pub fn get(&self) -> R<T> {
        from_value(self.h.call("get", vec![])?)
    }

    /// Replaces the value.
    pub fn set(&self, v: T) -> R<()> {
        unit(self.h.call("set", vec![to_value(&v)?]))
    }

    /// `v += delta` on the server, atomically: the new value.
    pub fn add(&self, delta: T) -> R<T> {
        from_value(self.h.call("add", vec![to_value(&delta)?])?)
    }

    /// Sets `new` only if the value is still `expected`; `Err(now)`
    /// otherwise.
    pub fn compare_exchange(&self, expected: &T, new: T) -> R<Result<(), T>> {
        let reply = self.h.call(
            "compare_exchange",
            vec![to_value(expected)?, to_value(&new)?],
        )?;
        match exchanged::<T>(reply)? {
            Ok(()) => Ok(Ok(())),
            Err(now) => Ok(Err(
                now.ok_or_else(|| ManagerError::Codec("no value".into()))?
            )),
        }
    }

    /// Replaces the value with `f(current)` atomically (retrying if
    /// another process changed it meanwhile): the value written.
    pub fn modify(&self, mut f: impl FnMut(T) -> T) -> R<T>
    where
        T: Clone,
    {
        let mut current = self.get()?;
        loop {
            let new = f(current.clone());
            match self.compare_exchange(&current, new.clone())? {
                Ok(()) => return Ok(new),
                Err(now) => current = now,
            }
        }
    }
}

/// A held manager lock; released when dropped.
///
/// ```no_run
/// let manager = corral::manager::Manager::start().unwrap();
/// let lock = manager.lock().unwrap();
/// let guard = lock.acquire().unwrap();
/// if guard.owner_died() { /* the last holder's process died holding it */ }
/// guard.release().unwrap(); // or drop it
/// ```
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    h: &'a Handle,
    owner_died: bool,
    held: bool,
}

impl LockGuard<'_> {
    /// The previous holder's process died (or its connection closed)
    /// holding the lock: what it protected may be half-changed.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Releases now, saying whether the manager took it.
    pub fn release(mut self) -> R<()> {
        self.held = false;
        unit(self.h.call("release", vec![]))
    }

    /// Keeps the lock held past the guard (release it with the lock's
    /// `release`, from the same thread).
    pub fn keep(mut self) {
        self.held = false;
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.held {
            // Ordered before this thread's next call on the connection;
            // if the manager is gone, so is the lock.
            self.h.post("release", vec![]);
        }
    }
}

fn acquire<'a>(h: &'a Handle, blocking: bool, timeout: Option<Duration>) -> R<LockGuard<'a>> {
    let reply = if blocking {
        h.call_waiting("acquire", vec![Plain::Bool(true)], timeout)?
    } else {
        h.call("acquire", vec![Plain::Bool(false)])?
    };
    match reply {
        Plain::Bool(false) if blocking => Err(ManagerError::Timeout(
            timeout.or(h.timeout()).unwrap_or_default(),
        )),
        Plain::Bool(false) => Err(ManagerError::WouldBlock),
        v => Ok(LockGuard {
            h,
            owner_died: v == Plain::I64(2),
            held: true,
        }),
    }
}

macro_rules! lock_methods {
    ($name:ident) => {
        impl $name {
            /// Waits for the lock.
            pub fn acquire(&self) -> R<LockGuard<'_>> {
                acquire(&self.h, true, None)
            }

            /// Waits at most `timeout` ([`ManagerError::Timeout`] then).
            pub fn acquire_timeout(&self, timeout: Duration) -> R<LockGuard<'_>> {
                acquire(&self.h, true, Some(timeout))
            }

            /// Takes it if free ([`ManagerError::WouldBlock`] otherwise).
            pub fn try_acquire(&self) -> R<LockGuard<'_>> {
                acquire(&self.h, false, None)
            }

            /// Releases a lock kept with [`LockGuard::keep`].
            pub fn release(&self) -> R<()> {
                unit(self.h.call("release", vec![]))
            }
        }
    };
}

proxy! {
    /// A lock held by a manager (`manager.Lock()`). Its holder is the
    /// thread that took it; when the holder's process dies, the manager
    /// frees the lock and tells the next taker
    /// ([`LockGuard::owner_died`]) — Python's manager lock stays taken.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let lock = manager.lock().unwrap();
    /// let _guard = lock.acquire().unwrap();
    /// ```
    Lock<> = Kind::Lock
}
lock_methods!(Lock);

proxy! {
    /// A reentrant lock held by a manager (`manager.RLock()`): the thread
    /// holding it may take it again.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let lock = manager.rlock().unwrap();
    /// let outer = lock.acquire().unwrap();
    /// let inner = lock.acquire().unwrap(); // same thread: fine
    /// drop((inner, outer));
    /// ```
    RLock<> = Kind::RLock
}
lock_methods!(RLock);

proxy! {
    /// A counting semaphore held by a manager (`manager.Semaphore(n)`,
    /// `BoundedSemaphore(n)`); permits a dead process held come back.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let slots = manager.semaphore(2).unwrap();
    /// let _permit = slots.acquire().unwrap();
    /// ```
    Semaphore<> = Kind::Semaphore
}
lock_methods!(Semaphore);

impl Semaphore {
    /// Permits free now.
    pub fn value(&self) -> R<usize> {
        count(self.h.call("get_value", vec![])?)
    }
}

proxy! {
    /// A condition variable held by a manager (`manager.Condition()`),
    /// over its own reentrant lock.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let cond = manager.condition().unwrap();
    /// let guard = cond.acquire().unwrap();
    /// let notified = cond.wait_timeout(&guard, std::time::Duration::from_millis(10)).unwrap();
    /// assert!(!notified);
    /// ```
    Condition<> = Kind::Condition
}
lock_methods!(Condition);

impl Condition {
    /// Releases the lock held by `guard`, waits for a notification, takes
    /// the lock again.
    pub fn wait(&self, guard: &LockGuard<'_>) -> R<()> {
        let _ = guard;
        unit(self.h.call_waiting("wait", vec![], None))
    }

    /// Like [`wait`](Condition::wait), for at most `timeout`: whether it
    /// was notified (the lock is held again either way).
    pub fn wait_timeout(&self, guard: &LockGuard<'_>, timeout: Duration) -> R<bool> {
        let _ = guard;
        Ok(truth(self.h.call_waiting("wait", vec![], Some(timeout))?))
    }

    /// Wakes up to `n` waiters (the caller must hold the lock).
    pub fn notify(&self, n: usize) -> R<()> {
        unit(self.h.call("notify", vec![Plain::I64(n as i64)]))
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> R<()> {
        unit(self.h.call("notify_all", vec![]))
    }
}

proxy! {
    /// An event held by a manager (`manager.Event()`).
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let ready = manager.event().unwrap();
    /// ready.set().unwrap();
    /// assert!(ready.wait_timeout(std::time::Duration::from_secs(1)).unwrap());
    /// ```
    Event<> = Kind::Event
}

impl Event {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> R<()> {
        unit(self.h.call("set", vec![]))
    }

    /// Clears the flag.
    pub fn clear(&self) -> R<()> {
        unit(self.h.call("clear", vec![]))
    }

    /// The flag.
    pub fn is_set(&self) -> R<bool> {
        Ok(truth(self.h.call("is_set", vec![])?))
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> R<()> {
        unit(self.h.call_waiting("wait", vec![], None))
    }

    /// Waits at most `timeout`: whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> R<bool> {
        Ok(truth(self.h.call_waiting("wait", vec![], Some(timeout))?))
    }
}

proxy! {
    /// A barrier held by a manager (`manager.Barrier(n)`). A party whose
    /// process dies while waiting breaks it, so the others are told
    /// ([`ManagerError::BrokenBarrier`]) instead of waiting for ever.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let start = manager.barrier(1).unwrap();
    /// assert_eq!(start.wait().unwrap(), 0);
    /// ```
    Barrier<> = Kind::Barrier
}

impl Barrier {
    /// Waits for every party: this one's arrival index.
    pub fn wait(&self) -> R<usize> {
        count(self.h.call_waiting("wait", vec![], None)?)
    }

    /// Waits at most `timeout` (which breaks the barrier).
    pub fn wait_timeout(&self, timeout: Duration) -> R<usize> {
        count(self.h.call_waiting("wait", vec![], Some(timeout))?)
    }

    /// Breaks it: waiters and later arrivals get `BrokenBarrier`.
    pub fn abort(&self) -> R<()> {
        unit(self.h.call("abort", vec![]))
    }

    /// Makes it usable again (waiters get `BrokenBarrier`).
    pub fn reset(&self) -> R<()> {
        unit(self.h.call("reset", vec![]))
    }

    /// How many parties it waits for.
    pub fn parties(&self) -> R<usize> {
        count(
            self.h
                .call("__getattribute__", vec![Plain::String("parties".into())])?,
        )
    }

    /// How many wait now.
    pub fn n_waiting(&self) -> R<usize> {
        count(
            self.h
                .call("__getattribute__", vec![Plain::String("n_waiting".into())])?,
        )
    }

    /// Whether it is broken.
    pub fn broken(&self) -> R<bool> {
        Ok(truth(self.h.call(
            "__getattribute__",
            vec![Plain::String("broken".into())],
        )?))
    }
}

proxy! {
    /// Named attributes held by a manager (`manager.Namespace()`), each of
    /// its own serde type.
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::start().unwrap();
    /// let ns = manager.namespace().unwrap();
    /// ns.set("epoch", 3u32).unwrap();
    /// assert_eq!(ns.get::<u32>("epoch").unwrap(), Some(3));
    /// ```
    Namespace<> = Kind::Namespace
}

impl Namespace {
    /// A copy of attribute `name`, or `None`.
    pub fn get<T: Data>(&self, name: &str) -> R<Option<T>> {
        match self
            .h
            .call("__getattribute__", vec![Plain::String(name.into())])
        {
            Ok(v) => from_value(v).map(Some),
            Err(ManagerError::Raised { class, .. }) if class == "AttributeError" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets attribute `name`.
    pub fn set<T: Serialize>(&self, name: &str, v: T) -> R<()> {
        unit(self.h.call(
            "__setattr__",
            vec![Plain::String(name.into()), to_value(&v)?],
        ))
    }

    /// Removes attribute `name`; whether it was there.
    pub fn remove(&self, name: &str) -> R<bool> {
        match self.h.call("__delattr__", vec![Plain::String(name.into())]) {
            Ok(_) => Ok(true),
            Err(ManagerError::Raised { class, .. }) if class == "AttributeError" => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Proxies the manager module makes.
pub(crate) fn make<P: Proxy>(h: Handle) -> P {
    P::from_handle(h)
}
