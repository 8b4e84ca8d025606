//! The submitting side: an [`Engine`] whose jobs go to a Redis stream and
//! whose outcomes come back on the client's own list.
//!
//! Two threads: the *sender* moves queued jobs into stream entries (many
//! jobs to an entry, many entries to a round trip), the *receiver* takes
//! outcome batches off the results list, drops the duplicates a
//! redelivery may cause, and delivers the rest to the jobs' sinks. Both
//! keep working through broker failures for up to `broker_timeout`; past
//! it every unfinished task fails with [`TaskError::Broker`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Commands;

use super::broker::Broker;
use super::wire::{self, Keys, OutcomeBatch, TaskEntry, WireJob};
use crate::poison::{self, lock};
use crate::pool::callback::Callbacks;
use crate::pool::engine::Engine;
use crate::pool::{
    Cancel, Job, PoolStats, Raw, Sink, WorkerStats, count_failure, fail_jobs, refusal,
};
use crate::{Error, TaskError};

/// How long a client's liveness key lives without a refresh: after that,
/// nodes drop its entries not started (its tasks have no one to report to).
pub(crate) const CLIENT_TTL: Duration = Duration::from_secs(15);
/// How often the receiver refreshes liveness and the node count.
const REFRESH: Duration = Duration::from_millis(500);
/// How long the receiver blocks on the results list.
const RECEIVE_BLOCK: Duration = Duration::from_millis(200);
/// The most outcome batches the receiver reads in one round trip.
const RECEIVE_BATCHES: isize = 1024;

/// The client's settings (see `ClusterBuilder`).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) keys: Keys,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_pending: usize,
    pub(crate) broker_timeout: Duration,
    /// The key entries are signed with.
    pub(crate) key: Vec<u8>,
    /// A CA certificate (PEM) to trust for `rediss://`.
    pub(crate) ca: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Closed,
    /// Stopped: no thread runs, nothing is outstanding.
    Stopped,
}

/// An outcome on its way to its sink: the sink, the item's index in it.
type Delivery = (Arc<dyn Sink>, u32, Result<Vec<u8>, TaskError>);

/// A job sent and not ended.
struct Pending {
    sink: Arc<dyn Sink>,
    indices: Vec<u32>,
    /// Which positions have an outcome (a redelivered job's second outcome
    /// for a position is dropped).
    done: Vec<bool>,
    left: usize,
}

struct State {
    phase: Phase,
    /// Why the client failed for good (every later task fails with it).
    broken: Option<TaskError>,
    pending: HashMap<u64, Pending>,
    /// Jobs waiting for the sender.
    outgoing: Vec<WireJob>,
    /// Ids of cancelled jobs the sender must publish.
    cancelled: Vec<u64>,
    outstanding: usize,
    next_id: u64,
    stats: PoolStats,
    /// Processes across the live nodes, as last read.
    processes: usize,
    /// The threads stop.
    stop: bool,
}

pub(crate) struct Client {
    id: String,
    build: u64,
    settings: Settings,
    state: Mutex<State>,
    changed: Condvar,
    callbacks: Callbacks,
    chunk_hints: Mutex<HashMap<i64, usize>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The epoch the broker had when this client started.
    epoch: Mutex<String>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish()
    }
}

impl Client {
    /// Connects (failing at once if the broker cannot be reached) and
    /// starts the two threads.
    pub(crate) fn start(settings: Settings) -> Result<Arc<Client>, super::ClusterError> {
        let mut broker = Broker::new(&settings.url, settings.ca.as_deref(), RECEIVE_BLOCK)?;
        broker.connect()?;
        let mut random = [0u8; 8];
        crate::connection::auth::fill_random(&mut random)
            .map_err(|e| super::ClusterError::Broker(e.to_string()))?;
        let id = format!("{:016x}", u64::from_le_bytes(random));
        let epoch = read_epoch(&mut broker, &settings.keys)
            .map_err(|e| super::ClusterError::Broker(e.to_string()))?;
        let client = Arc::new(Client {
            id,
            build: crate::sys::code::identity_hash(),
            settings,
            state: Mutex::new(State {
                phase: Phase::Open,
                broken: None,
                pending: HashMap::new(),
                outgoing: Vec::new(),
                cancelled: Vec::new(),
                outstanding: 0,
                next_id: 1,
                stats: PoolStats::default(),
                processes: 0,
                stop: false,
            }),
            changed: Condvar::new(),
            callbacks: Callbacks::default(),
            chunk_hints: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            epoch: Mutex::new(epoch),
            stopping: AtomicBool::new(false),
        });
        client.refresh(&mut broker);
        let sender = client.clone();
        let receiver = client.clone();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f)
        };
        let io = |e| super::ClusterError::Broker(format!("starting a client thread: {e}"));
        let a = spawn("corral-cluster-send", Box::new(move || sender.run_sender())).map_err(io)?;
        let b = spawn(
            "corral-cluster-receive",
            Box::new(move || receiver.run_receiver(broker)),
        )
        .map_err(io)?;
        lock(&client.threads).extend([a, b]);
        Ok(client)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        poison::wait_timeout(&self.changed, st, timeout)
    }

    /// Waits until `done` holds or `deadline` passes.
    fn wait_until<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while !done(&st) {
            let left = deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                break;
            }
            st = self.wait(st, left.min(Duration::from_secs(1)));
        }
        st
    }

    // The sender.

    fn run_sender(self: Arc<Client>) {
        let mut broker = match Broker::new(
            &self.settings.url,
            self.settings.ca.as_deref(),
            Duration::ZERO,
        ) {
            Ok(b) => b,
            Err(e) => return self.fail_all(TaskError::Broker(e.to_string())),
        };
        let mut jobs: Vec<WireJob> = Vec::new();
        let mut cancelled: Vec<u64> = Vec::new();
        loop {
            if jobs.is_empty() && cancelled.is_empty() {
                let mut st = self.lock();
                while st.outgoing.is_empty() && st.cancelled.is_empty() && !st.stop {
                    st = self.wait(st, Duration::from_secs(1));
                }
                if st.stop {
                    return;
                }
                jobs = std::mem::take(&mut st.outgoing);
                cancelled = std::mem::take(&mut st.cancelled);
            }
            match self.send(&mut broker, &jobs, &cancelled) {
                Ok(()) => {
                    jobs.clear();
                    cancelled.clear();
                }
                Err(e) => {
                    if self.give_up(&broker, &e) {
                        jobs.clear();
                        cancelled.clear();
                    } else {
                        broker.pause(None);
                    }
                }
            }
        }
    }

    /// Whether the broker has been unreachable for longer than allowed (then
    /// every unfinished task has been failed).
    fn give_up(&self, broker: &Broker, e: &redis::RedisError) -> bool {
        if self.lock().stop {
            return true;
        }
        match broker.down_for() {
            Some(d) if d >= self.settings.broker_timeout => {
                self.fail_all(TaskError::Broker(format!(
                    "Redis at {} unreachable for {:?}: {e}",
                    super::broker::redact(&self.settings.url),
                    self.settings.broker_timeout
                )));
                true
            }
            Some(_) => false,
            // A reply that is an error on a working connection: not worth
            // retrying.
            None => {
                self.fail_all(TaskError::Broker(format!("Redis refused a command: {e}")));
                true
            }
        }
    }

    /// One round trip: every entry added, every cancellation published.
    fn send(
        &self,
        broker: &mut Broker,
        jobs: &[WireJob],
        cancelled: &[u64],
    ) -> redis::RedisResult<()> {
        let keys = &self.settings.keys;
        let mut pipe = redis::pipe();
        for entry in self.entries(jobs) {
            pipe.cmd("XADD")
                .arg(keys.tasks())
                .arg("*")
                .arg(wire::FIELD)
                .arg(&entry)
                .arg(wire::SIGNATURE)
                .arg(wire::sign(&self.settings.key, &entry))
                .ignore();
        }
        if !cancelled.is_empty() {
            let key = keys.cancelled(&self.id);
            pipe.cmd("SADD").arg(&key).arg(cancelled).ignore();
            pipe.cmd("EXPIRE")
                .arg(&key)
                .arg(CLIENT_TTL.as_secs() * 4)
                .ignore();
        }
        broker.call(|c| pipe.query::<()>(c))
    }

    /// Jobs packed into encoded stream entries.
    ///
    /// Entries are a node's unit of work, so a burst is cut into at least
    /// four entries a process: every node gets a share (no node hoards a
    /// burst of long tasks), while a burst of trivial tasks still travels
    /// hundreds to an entry.
    fn entries(&self, jobs: &[WireJob]) -> Vec<Vec<u8>> {
        let total: usize = jobs.iter().map(|j| j.ends.len()).sum();
        let per_entry = total
            .div_ceil(4 * self.lock().processes.max(1))
            .clamp(1, wire::ENTRY_ITEMS);
        let mut out = Vec::new();
        let mut start = 0;
        while start < jobs.len() {
            let (mut items, mut bytes, mut end) = (0, 0, start);
            while end < jobs.len()
                && (end == start
                    || (items + jobs[end].ends.len() <= per_entry
                        && bytes + jobs[end].args.len() <= wire::ENTRY_BYTES))
            {
                items += jobs[end].ends.len();
                bytes += jobs[end].args.len();
                end += 1;
            }
            out.push(encode_entry(self.build, &self.id, &jobs[start..end]));
            start = end;
        }
        out
    }

    // The receiver.

    fn run_receiver(self: Arc<Client>, mut broker: Broker) {
        let results = self.settings.keys.results(&self.id);
        let mut refreshed = Instant::now();
        let mut was_down = false;
        // Batches at the list's head delivered and not yet trimmed off it.
        let mut delivered = 0;
        loop {
            if self.lock().stop {
                return;
            }
            if was_down || refreshed.elapsed() >= REFRESH {
                refreshed = Instant::now();
                if self.refresh(&mut broker) && was_down {
                    was_down = false;
                    // Tasks lost with the broker's data fail first; then new
                    // ones go out again.
                    self.check_epoch(&mut broker);
                    self.recover();
                }
            }
            let got = broker.call(|c| read_results(c, &results, delivered));
            match got {
                Ok(batches) => {
                    for batch in &batches {
                        self.receive(batch);
                    }
                    delivered = batches.len();
                }
                Err(e) => {
                    // Whether the trim ran is unknown: read the head again
                    // (what was delivered already is dropped as duplicate).
                    delivered = 0;
                    was_down = true;
                    if self.give_up(&broker, &e) {
                        // Failed for good; keep serving `stop`.
                        std::thread::sleep(RECEIVE_BLOCK);
                    } else {
                        broker.pause(None);
                    }
                }
            }
        }
    }

    /// Refreshes this client's liveness (and its results list's, so the
    /// list cannot expire between a read and its trim) and reads the
    /// nodes' sizes; whether the broker answered.
    fn refresh(&self, broker: &mut Broker) -> bool {
        let keys = &self.settings.keys;
        let now = wire::unix_ms();
        let nodes = broker.call(|c| {
            let ((), (), all): ((), (), HashMap<String, String>) = redis::pipe()
                .set_ex(keys.alive(&self.id), 1, CLIENT_TTL.as_secs())
                .expire(keys.results(&self.id), wire::RESULTS_TTL_SECS)
                .hgetall(keys.nodes())
                .query(c)?;
            Ok(all)
        });
        if let Ok(nodes) = nodes {
            let processes = nodes
                .values()
                .filter_map(|v| super::node::parse_presence(v))
                .filter(|&(_, expires)| expires > now)
                .map(|(p, _)| p)
                .sum();
            self.lock().processes = processes;
            return true;
        }
        false
    }

    /// The broker is back: a client failed by an outage takes work again
    /// (the tasks it failed stay failed).
    fn recover(&self) {
        let mut st = self.lock();
        if matches!(st.broken, Some(TaskError::Broker(_))) {
            st.broken = None;
        }
    }

    /// After an outage: if the broker came back without its data, the tasks
    /// waiting in it are gone; fail them rather than wait forever.
    fn check_epoch(&self, broker: &mut Broker) {
        let Ok(now) = read_epoch(broker, &self.settings.keys) else {
            return;
        };
        let mut epoch = lock(&self.epoch);
        if *epoch != now {
            *epoch = now;
            drop(epoch);
            self.fail_outstanding(TaskError::Broker(
                "Redis restarted without its data (persistence off): the task was lost".into(),
            ));
        }
    }

    /// Delivers one batch of outcomes, dropping duplicates and strays.
    fn receive(&self, batch: &[u8]) {
        let Ok(outcomes) = wire::decode::<OutcomeBatch>(batch) else {
            eprintln!("corral cluster: dropped a malformed outcome batch");
            return;
        };
        let mut deliveries: Vec<Delivery> = Vec::new();
        {
            let mut st = self.lock();
            for o in outcomes {
                let Some(p) = st.pending.get_mut(&o.job) else {
                    // Ended already (a duplicate, or cancelled).
                    st.stats.duplicates += 1;
                    continue;
                };
                let pos = o.pos as usize;
                if pos >= p.done.len() || p.done[pos] {
                    st.stats.duplicates += 1;
                    continue;
                }
                p.done[pos] = true;
                p.left -= 1;
                deliveries.push((p.sink.clone(), p.indices[pos], o.result));
                if p.left == 0 {
                    st.pending.remove(&o.job);
                }
                st.outstanding -= 1;
                match &deliveries.last().expect("just pushed").2 {
                    Ok(_) => st.stats.completed += 1,
                    Err(e) => count_failure(&mut st.stats, e, 1),
                }
            }
            self.changed.notify_all();
        }
        for (sink, index, result) in deliveries {
            let raw = match &result {
                Ok(bytes) => Raw::Value(bytes),
                Err(e) => Raw::Failed(Box::new(e.clone())),
            };
            let mut one = std::iter::once((index, raw));
            crate::pool::deliver_guarded(&*sink, &mut one, |_| Some(index));
        }
    }

    // Failing.

    /// Fails every unfinished item with `error`.
    fn fail_outstanding(&self, error: TaskError) {
        let pending: Vec<Pending> = {
            let mut st = self.lock();
            st.outgoing.clear();
            let all: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
            for p in &all {
                count_failure(&mut st.stats, &error, p.left);
            }
            st.outstanding = 0;
            self.changed.notify_all();
            all
        };
        for p in pending {
            fail_pending(&p, &error);
        }
    }

    /// Fails every unfinished item, and every later one, with `error`.
    fn fail_all(&self, error: TaskError) {
        self.lock().broken.get_or_insert(error.clone());
        self.fail_outstanding(error);
    }

    /// Stops the threads and removes this client's keys.
    fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut st = self.lock();
            st.stop = true;
            self.changed.notify_all();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        // Best effort: a broker that is down lets the keys expire.
        if let Ok(mut broker) = Broker::new(
            &self.settings.url,
            self.settings.ca.as_deref(),
            Duration::ZERO,
        ) {
            let keys = &self.settings.keys;
            let _ = broker.call(|c| {
                c.del::<_, ()>(&[
                    keys.alive(&self.id),
                    keys.results(&self.id),
                    keys.cancelled(&self.id),
                ])
            });
        }
        let mut st = self.lock();
        st.phase = Phase::Stopped;
        self.changed.notify_all();
    }
}

fn encode_entry(build: u64, client: &str, jobs: &[WireJob]) -> Vec<u8> {
    // `TaskEntry` owns its jobs; encode the same shape from borrowed ones.
    #[derive(serde::Serialize)]
    struct Borrowed<'a> {
        build: u64,
        client: &'a str,
        jobs: &'a [WireJob],
    }
    let bytes = wire::encode(&Borrowed {
        build,
        client,
        jobs,
    });
    debug_assert!(wire::decode::<TaskEntry>(&bytes).is_ok());
    bytes
}

/// The outcome batches at the head of the results list `key`, oldest
/// first, after trimming off the `delivered` ones read last time; waits up
/// to [`RECEIVE_BLOCK`] for one.
///
/// Nothing leaves the list before the client has it: a reply lost with
/// its connection (Redis killed after a pop, before the reply reached the
/// client) would lose the outcome, and its task would never end. Only
/// nodes push, at the tail, and only this client removes, at the head, so
/// trimming the first `delivered` removes exactly what was delivered.
fn read_results(
    c: &mut redis::Connection,
    key: &str,
    delivered: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut pipe = redis::pipe();
    if delivered > 0 {
        pipe.ltrim(key, delivered as isize, -1).ignore();
    }
    let (ready,): (Vec<Vec<u8>>,) = pipe.lrange(key, 0, RECEIVE_BATCHES - 1).query(c)?;
    if !ready.is_empty() {
        return Ok(ready);
    }
    // Waits for the first without taking it: the head moves onto itself.
    let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
        .arg(key)
        .arg(key)
        .arg("LEFT")
        .arg("LEFT")
        .arg(RECEIVE_BLOCK.as_secs_f64())
        .query(c)?;
    Ok(first.into_iter().collect())
}

fn read_epoch(broker: &mut Broker, keys: &Keys) -> redis::RedisResult<String> {
    let mut random = [0u8; 8];
    // Without the kernel's randomness, the time serves: an epoch only
    // needs to differ from the last one.
    if crate::connection::auth::fill_random(&mut random).is_err() {
        random = wire::unix_ms().to_le_bytes();
    }
    let fresh = format!("{:016x}", u64::from_le_bytes(random));
    broker.call(|c| {
        let _: Option<String> = redis::cmd("SET")
            .arg(keys.epoch())
            .arg(&fresh)
            .arg("NX")
            .query(c)?;
        c.get(keys.epoch())
    })
}

/// The positions of `p` that `what` covers.
fn covered(what: Cancel<'_>, p: &Pending) -> Vec<usize> {
    match what {
        Cancel::Item(sink, index) if Arc::ptr_eq(&p.sink, sink) => p
            .indices
            .iter()
            .position(|&i| i == index)
            .into_iter()
            .collect(),
        Cancel::Sink(sink) if Arc::ptr_eq(&p.sink, sink) => (0..p.done.len()).collect(),
        Cancel::All => (0..p.done.len()).collect(),
        _ => Vec::new(),
    }
}

fn fail_pending(p: &Pending, error: &TaskError) {
    let mut it = p
        .done
        .iter()
        .zip(&p.indices)
        .filter(|(done, _)| !**done)
        .map(|(_, &i)| (i, Raw::Failed(Box::new(error.clone()))));
    p.sink.deliver(&mut it);
}

impl Engine for Client {
    fn submit(&self, jobs: Vec<Job>) {
        let items: usize = jobs.iter().map(Job::len).sum();
        let max = self.settings.max_pending;
        let mut st = self.lock();
        if st.outstanding + items > max && st.outstanding > 0 {
            st = self.wait_until(st, None, |s| {
                s.outstanding == 0 || s.outstanding + items <= max || s.phase != Phase::Open
            });
        }
        if let Some(error) = refusal(st.broken.as_ref(), st.phase == Phase::Open) {
            drop(st);
            fail_jobs(&jobs, &error);
            return;
        }
        let mut refused = Vec::new();
        for mut job in jobs {
            if !job.fds().is_empty() {
                refused.push(job);
                continue;
            }
            let id = st.next_id;
            st.next_id += 1;
            let n = job.len();
            let indices = job.take_indices();
            let timeout = job.timeout().or(self.settings.task_timeout);
            let (args, ends) = job.take_args();
            st.stats.submitted += n as u64;
            st.outstanding += n;
            st.outgoing.push(WireJob {
                id,
                entry: job.entry,
                func: job.func,
                args,
                ends,
                timeout,
            });
            st.pending.insert(
                id,
                Pending {
                    sink: job.sink,
                    indices,
                    done: vec![false; n],
                    left: n,
                },
            );
        }
        self.changed.notify_all();
        drop(st);
        let error = TaskError::Codec(
            "corral handles (queues, locks, shared memory) cannot cross to another machine".into(),
        );
        for job in refused {
            job.fail_all(&error);
        }
    }

    fn cancel(&self, what: Cancel<'_>, _kill_running: bool) {
        // `All` (a shutdown that cancels) tells the sinks; for the others
        // the task or iterator that cancelled has ended its items itself.
        let mut told: Vec<(Arc<dyn Sink>, u32)> = Vec::new();
        {
            let mut st = self.lock();
            let State {
                pending,
                outstanding,
                stats,
                cancelled,
                ..
            } = &mut *st;
            pending.retain(|&id, p| {
                for pos in covered(what, p) {
                    if p.done[pos] {
                        continue;
                    }
                    p.done[pos] = true;
                    p.left -= 1;
                    *outstanding -= 1;
                    count_failure(stats, &TaskError::Cancelled, 1);
                    if let Cancel::All = what {
                        told.push((p.sink.clone(), p.indices[pos]));
                    }
                }
                let whole = p.left == 0;
                if whole {
                    cancelled.push(id);
                }
                !whole
            });
            // Jobs not sent yet and now wholly cancelled are not sent.
            let State {
                pending, outgoing, ..
            } = &mut *st;
            outgoing.retain(|j| pending.contains_key(&j.id));
            self.changed.notify_all();
        }
        for (sink, index) in told {
            let raw = Raw::Failed(Box::new(TaskError::Cancelled));
            sink.deliver(&mut std::iter::once((index, raw)));
        }
    }

    fn help_until(&self, _deadline: Option<Instant>, ready: &mut dyn FnMut() -> bool) -> bool {
        ready()
    }

    fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    fn processes(&self) -> usize {
        self.lock().processes.max(1)
    }

    fn max_tasks(&self) -> Option<u64> {
        None
    }

    fn task_timeout(&self) -> Option<Duration> {
        self.settings.task_timeout
    }

    fn chunk_hint(&self, func: i64) -> usize {
        lock(&self.chunk_hints).get(&func).copied().unwrap_or(1)
    }

    fn set_chunk_hint(&self, func: i64, size: usize) {
        let mut hints = lock(&self.chunk_hints);
        if hints.len() < 1024 || hints.contains_key(&func) {
            hints.insert(func, size);
        }
    }

    fn shares_memory(&self) -> bool {
        false
    }

    fn scratch(&self, _bytes: usize) -> Result<crate::RawArray<u8>, Error> {
        Err(Error::Unsupported(
            "a cluster pool shares no memory with its workers",
        ))
    }

    fn return_scratch(&self, _array: crate::RawArray<u8>) {}

    fn resize(&self, _processes: usize) -> Result<(), Error> {
        Err(Error::Unsupported(
            "a cluster pool has as many processes as its nodes: start or stop nodes",
        ))
    }

    fn close(&self) {
        let mut st = self.lock();
        if st.phase == Phase::Open {
            st.phase = Phase::Closed;
        }
        self.changed.notify_all();
    }

    fn join(&self, deadline: Option<Instant>) -> bool {
        self.close();
        let st = self.wait_until(self.lock(), deadline, |s| s.outstanding == 0);
        if st.outstanding > 0 {
            return false;
        }
        drop(st);
        self.stop();
        true
    }

    fn terminate(&self) {
        self.close();
        self.fail_outstanding(TaskError::PoolClosed);
        self.stop();
    }

    fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            workers: st.processes,
            queued: st.outgoing.iter().map(|j| j.ends.len()).sum(),
            ..st.stats
        }
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        Vec::new()
    }
}
