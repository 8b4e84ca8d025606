//! The working side: a process that feeds a local supervised [`Pool`] from
//! the task stream and pushes each item's outcome back to its client.
//!
//! Two threads. The *reader* (the caller's) takes entries with
//! `XREADGROUP` (only as many as the local pool has room for: no
//! hoarding), reclaims entries of dead nodes with `XAUTOCLAIM`, checks each
//! entry (signature, build, client alive, cancelled jobs, delivery count)
//! and submits its jobs to the local pool. The *writer* gathers outcomes as
//! the local pool reports them and, in one `MULTI`, pushes them to their
//! clients' lists and acknowledges and deletes the entries that are done —
//! so an outcome is never published without its entry acknowledged, nor
//! the reverse. It also extends the entries it holds (`XCLAIM … JUSTID`)
//! so a long task is not claimed by another node while it runs.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Commands;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};

use super::ClusterError;
use super::broker::{Broker, redact};
use super::wire::{self, Keys, TaskEntry, WireJob, WireOutcome};
use crate::poison;
use crate::pool::{Job, Raw, Sink};
use crate::{Pool, PoolBuilder, TaskError};

/// How long the reader blocks in `XREADGROUP`.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// How long a client's liveness (and cancellations) are trusted.
const CLIENT_CHECK: Duration = Duration::from_secs(1);

/// A worker node of a cluster pool: runs a local supervised pool fed from
/// the broker, until the process is killed.
///
/// Start it in the same binary as the submitting program — either by
/// calling [`Node::run`], or by setting `CORRAL_NODE=redis://…` in the
/// environment, which [`crate::init`] recognises (then `main` never runs).
/// The local pool is a plain [`Pool`]: its timeouts, memory cap, crash
/// isolation and worker recycling hold for every task the node runs.
///
/// | environment | meaning | default |
/// |---|---|---|
/// | `CORRAL_NODE` | the broker's URL (`redis://:password@host:port/db`) | — |
/// | `CORRAL_NODE_PROCESSES` | worker processes | the cores |
/// | `CORRAL_NODE_MEMORY_LIMIT` | bytes of address space per worker | none |
/// | `CORRAL_NODE_VISIBILITY_MS` | how long a silent node's entries wait before another node claims them | 30000 |
/// | `CORRAL_NODE_MAX_DELIVERIES` | deliveries after which a task fails with [`TaskError::DeliveryLimit`] | 5 |
/// | `CORRAL_CLUSTER_NAMESPACE` | key prefix, for several clusters on one Redis | `corral` |
/// | `CORRAL_CLUSTER_KEY` | hex key entries are signed with | derived from the password |
/// | `CORRAL_CLUSTER_CA_FILE` | a PEM CA certificate to trust for `rediss://` (feature `cluster-tls`) | the system's store |
///
/// # Examples
///
/// ```no_run
/// use corral::cluster::Node;
/// corral::init();
/// // Runs until the process is killed; its tasks are then claimed by
/// // the other nodes after the visibility timeout.
/// Node::new("redis://:secret@10.0.0.5:6379/")
///     .pool(corral::Pool::builder().processes(8).memory_limit(2 << 30))
///     .run()
///     .unwrap();
/// ```
#[derive(Debug)]
pub struct Node {
    url: String,
    namespace: String,
    key: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    pool: PoolBuilder,
    visibility: Duration,
    max_deliveries: u32,
}

impl Node {
    /// A node for the broker at `url`, with a local pool of default size.
    pub fn new(url: &str) -> Node {
        Node {
            url: url.to_owned(),
            namespace: "corral".into(),
            key: None,
            ca: super::ca_from_env(),
            pool: PoolBuilder::default(),
            visibility: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }

    /// The node `CORRAL_NODE` and its companions describe (see the table
    /// above); `None` without `CORRAL_NODE`.
    pub fn from_env() -> Option<Node> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str| var(name).and_then(|v| v.parse::<u64>().ok());
        let mut node = Node::new(&var("CORRAL_NODE")?);
        let mut pool = Pool::builder();
        if let Some(n) = number("CORRAL_NODE_PROCESSES") {
            pool = pool.processes(n as usize);
        }
        if let Some(bytes) = number("CORRAL_NODE_MEMORY_LIMIT") {
            pool = pool.memory_limit(bytes);
        }
        node = node.pool(pool);
        if let Some(ms) = number("CORRAL_NODE_VISIBILITY_MS") {
            node = node.visibility_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = number("CORRAL_NODE_MAX_DELIVERIES") {
            node = node.max_deliveries(n as u32);
        }
        if let Some(ns) = var("CORRAL_CLUSTER_NAMESPACE") {
            node = node.namespace(&ns);
        }
        if let Some(key) = var("CORRAL_CLUSTER_KEY").and_then(|k| super::parse_hex(&k)) {
            node = node.key(&key);
        }
        Some(node)
    }

    /// The local pool's settings (processes, `task_timeout`,
    /// `memory_limit`, `max_tasks_per_child`, `recycle_memory`, ...). A
    /// task's own timeout, sent by its client, takes precedence.
    pub fn pool(mut self, builder: PoolBuilder) -> Node {
        self.pool = builder;
        self
    }

    /// How long an entry a node took may go without a heartbeat before
    /// another node claims it (default 30 s). The holder extends its
    /// entries every quarter of it, so a long task is not run twice; a node
    /// that died or lost the broker for longer has its entries run again
    /// elsewhere. Every node of a cluster should use the same value.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Node {
        self.visibility = timeout.max(Duration::from_millis(200));
        self
    }

    /// After how many deliveries an entry no node finished fails its tasks
    /// with [`TaskError::DeliveryLimit`] (default 5).
    pub fn max_deliveries(mut self, n: u32) -> Node {
        self.max_deliveries = n.max(1);
        self
    }

    /// The key prefix (default `corral`): clients and nodes of one cluster
    /// use the same.
    pub fn namespace(mut self, namespace: &str) -> Node {
        self.namespace = namespace.to_owned();
        self
    }

    /// The key entries are signed with (the same as the clients'; default:
    /// derived from the broker's password).
    pub fn key(mut self, key: &[u8]) -> Node {
        self.key = Some(key.to_vec());
        self
    }

    /// A CA certificate (PEM) to trust for a `rediss://` broker, instead
    /// of the system's store (feature `cluster-tls`).
    pub fn tls_ca(mut self, pem: &[u8]) -> Node {
        self.ca = Some(pem.to_vec());
        self
    }

    /// Runs the node until the process is killed.
    ///
    /// # Errors
    ///
    /// [`ClusterError`] if the URL is invalid, the broker cannot be reached
    /// at start, or the local pool cannot start. Later broker failures are
    /// retried for as long as the node lives.
    pub fn run(self) -> Result<(), ClusterError> {
        let mut broker = Broker::new(&self.url, self.ca.as_deref(), READ_BLOCK)?;
        broker.connect()?;
        let pool = self
            .pool
            .build()
            .map_err(|e| ClusterError::Pool(e.to_string()))?;
        let keys = Keys::new(&self.namespace);
        let shared = Arc::new(Shared {
            flight: Mutex::new(HashMap::new()),
            room: Condvar::new(),
            most: 2 * pool.processes(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            broker: Broker::new(&self.url, self.ca.as_deref(), Duration::ZERO)?,
            keys: keys.clone(),
            name: node_name(),
            processes: pool.processes(),
            shared: shared.clone(),
            visibility: self.visibility,
        };
        let name = writer.name.clone();
        std::thread::Builder::new()
            .name("corral-node-write".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| ClusterError::Pool(format!("starting the node's writer: {e}")))?;
        let mut reader = Reader {
            key: wire::cluster_key(self.key.as_deref(), &self.url),
            url: redact(&self.url),
            broker,
            keys,
            name,
            pool,
            shared,
            tx,
            build: crate::sys::code::identity_hash(),
            clients: HashMap::new(),
            visibility: self.visibility,
            max_deliveries: self.max_deliveries,
        };
        reader.run()
    }
}

/// Runs a node and exits if `CORRAL_NODE` is set (called by `init`).
pub(crate) fn run_if_asked() {
    let Some(node) = Node::from_env() else {
        return;
    };
    let url = redact(&node.url);
    match node.run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("corral node ({url}): {e}");
            std::process::exit(2);
        }
    }
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// A node's presence in the nodes hash: "processes expiry-ms".
fn presence(processes: usize, expires: u64) -> String {
    format!("{processes} {expires}")
}

/// Reads [`presence`] back.
pub(crate) fn parse_presence(value: &str) -> Option<(usize, u64)> {
    let (p, e) = value.split_once(' ')?;
    Some((p.parse().ok()?, e.parse().ok()?))
}

/// An entry the node holds.
#[derive(Debug)]
struct Held {
    /// Items without an outcome pushed yet.
    left: usize,
}

/// What reader and writer share: the entries held.
#[derive(Debug)]
struct Shared {
    flight: Mutex<HashMap<String, Held>>,
    /// Signalled when entries end (room to read more).
    room: Condvar,
    /// The most items held at once (in entries taken, without an outcome
    /// pushed): a node reads only what its workers will soon run.
    most: usize,
}

impl Shared {
    fn flight(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        poison::lock(&self.flight)
    }
}

/// One item's outcome, on its way to the writer.
#[derive(Debug)]
struct Done {
    entry: Arc<str>,
    client: Arc<str>,
    outcome: WireOutcome,
}

/// Where the local pool reports the items of one job.
struct NodeSink {
    entry: Arc<str>,
    client: Arc<str>,
    job: u64,
    tx: Sender<Done>,
}

impl Sink for NodeSink {
    fn deliver(&self, outcomes: &mut dyn Iterator<Item = (u32, Raw<'_>)>) {
        for (pos, raw) in outcomes {
            let outcome = WireOutcome {
                job: self.job,
                pos,
                result: raw.into_owned(),
            };
            let _ = self.tx.send(Done {
                entry: self.entry.clone(),
                client: self.client.clone(),
                outcome,
            });
        }
    }

    fn wanted(&self, _: u32) -> bool {
        true
    }
}

/// What the node last learnt of a client.
struct ClientView {
    alive: bool,
    /// Whether it has cancelled jobs (then entries are checked one by one).
    cancels: bool,
    checked: Instant,
}

struct Reader {
    key: Vec<u8>,
    url: String,
    broker: Broker,
    keys: Keys,
    name: String,
    pool: Pool,
    shared: Arc<Shared>,
    tx: Sender<Done>,
    build: u64,
    clients: HashMap<String, ClientView>,
    visibility: Duration,
    max_deliveries: u32,
}

impl Reader {
    fn run(&mut self) -> Result<(), ClusterError> {
        let mut reclaimed = Instant::now();
        let mut reported = false;
        loop {
            let step = if reclaimed.elapsed() >= self.visibility / 2 {
                reclaimed = Instant::now();
                self.reclaim()
            } else {
                let free = self.wait_for_room();
                self.read(free).map(|entries| {
                    for e in entries {
                        self.take(e, None);
                    }
                })
            };
            match step {
                Ok(()) => reported = false,
                // The broker lost the stream (restarted without its data,
                // or never had it): make it again, and go on.
                Err(e) if e.code() == Some("NOGROUP") => {
                    if let Err(e) = self.create_group() {
                        self.trouble(&e, &mut reported);
                    }
                }
                Err(e) => self.trouble(&e, &mut reported),
            }
        }
    }

    /// Reports a broker failure once per outage, then waits a little.
    fn trouble(&mut self, e: &redis::RedisError, reported: &mut bool) {
        if !*reported {
            eprintln!("corral node: Redis at {}: {e}; retrying", self.url);
            *reported = true;
        }
        self.broker.pause(None);
    }

    /// Waits until the node may hold more items; how many entries to read.
    fn wait_for_room(&self) -> usize {
        let held = |f: &HashMap<String, Held>| f.values().map(|h| h.left).sum::<usize>();
        let mut flight = self.shared.flight();
        while held(&flight) >= self.shared.most {
            flight = poison::wait_timeout(&self.shared.room, flight, READ_BLOCK);
        }
        self.shared.most - held(&flight)
    }

    fn create_group(&mut self) -> redis::RedisResult<()> {
        let tasks = self.keys.tasks();
        match self
            .broker
            .call(|c| c.xgroup_create_mkstream::<_, _, _, ()>(&tasks, wire::GROUP, "0"))
        {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn read(&mut self, count: usize) -> redis::RedisResult<Vec<StreamId>> {
        let (tasks, name, block) = (self.keys.tasks(), &self.name, self.broker.block_ms());
        let reply: Option<StreamReadReply> = self.broker.call(|c| {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(wire::GROUP)
                .arg(name)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&tasks)
                .arg(">")
                .query(c)
        })?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Claims entries other nodes have held silently for longer than the
    /// visibility timeout, and takes them (or fails them, past the
    /// delivery limit).
    fn reclaim(&mut self) -> redis::RedisResult<()> {
        let (tasks, name) = (self.keys.tasks(), self.name.clone());
        let idle = self.visibility.as_millis() as u64;
        let reply: StreamAutoClaimReply = self.broker.call(|c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&tasks)
                .arg(wire::GROUP)
                .arg(&name)
                .arg(idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(16)
                .query(c)
        })?;
        let held: Vec<String> = self.shared.flight().keys().cloned().collect();
        let claimed: Vec<StreamId> = reply
            .claimed
            .into_iter()
            .filter(|e| !held.contains(&e.id))
            .collect();
        if claimed.is_empty() {
            return Ok(());
        }
        let counts = self.delivery_counts(&claimed)?;
        for (entry, count) in claimed.into_iter().zip(counts) {
            self.take(entry, Some(count));
        }
        Ok(())
    }

    fn delivery_counts(&mut self, entries: &[StreamId]) -> redis::RedisResult<Vec<u32>> {
        let tasks = self.keys.tasks();
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XPENDING")
                .arg(&tasks)
                .arg(wire::GROUP)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = self.broker.call(|c| pipe.query(c))?;
        Ok(replies
            .iter()
            .map(|r| r.ids.first().map_or(1, |p| p.times_delivered as u32))
            .collect())
    }

    /// Checks one entry and hands its jobs to the local pool.
    fn take(&mut self, stream_entry: StreamId, deliveries: Option<u32>) {
        let id = stream_entry.id.clone();
        let entry = match self.open(&stream_entry) {
            Ok(entry) => entry,
            Err(why) => {
                eprintln!("corral node: dropped stream entry {id}: {why}");
                return self.discard(&id);
            }
        };
        let client: Arc<str> = entry.client.as_str().into();
        let (alive, has_cancels) = self.client(&client);
        let items: usize = entry.jobs.iter().map(|j| j.ends.len()).sum();
        if !alive || items == 0 {
            // Its client is gone (nobody will collect the outcomes), or
            // there is nothing to run.
            return self.discard(&id);
        }
        let cancelled = if has_cancels {
            self.cancelled(&client, &entry.jobs)
        } else {
            vec![false; entry.jobs.len()]
        };
        self.shared
            .flight()
            .insert(id.clone(), Held { left: items });
        let entry_id: Arc<str> = id.as_str().into();
        let refusal = self.refusal(&entry, deliveries);
        let mut jobs = Vec::new();
        for (job, cancelled) in entry.jobs.into_iter().zip(cancelled) {
            let why = match (&refusal, cancelled, job.well_formed()) {
                (Some(e), _, _) => Some(e.clone()),
                (None, true, _) => Some(TaskError::Cancelled),
                (None, false, false) => Some(TaskError::Refused(
                    "the job's item table does not match its arguments".into(),
                )),
                (None, false, true) => None,
            };
            let sink = Arc::new(NodeSink {
                entry: entry_id.clone(),
                client: client.clone(),
                job: job.id,
                tx: self.tx.clone(),
            });
            match why {
                Some(error) => fail_job(&sink, &job, &error),
                None => jobs.push(local_job(job, sink)),
            }
        }
        if !jobs.is_empty() {
            self.pool.submit_jobs(jobs);
        }
    }

    /// The entry's payload, its signature checked.
    fn open(&self, e: &StreamId) -> Result<TaskEntry, String> {
        let field = |name: &str| match e.map.get(name) {
            Some(redis::Value::BulkString(b)) => Ok(b.as_slice()),
            _ => Err(format!("it has no `{name}` field")),
        };
        let (payload, signature) = (field(wire::FIELD)?, field(wire::SIGNATURE)?);
        if !wire::verify(&self.key, payload, signature) {
            return Err(
                "its signature does not match this node's cluster key (a client with \
                        another key or password, or a forged entry)"
                    .into(),
            );
        }
        wire::decode(payload).map_err(|e| format!("it does not decode: {e}"))
    }

    /// Why every job of the entry must fail without running, if so.
    fn refusal(&self, entry: &TaskEntry, deliveries: Option<u32>) -> Option<TaskError> {
        if entry.build != self.build {
            return Some(TaskError::Refused(format!(
                "node {} runs a different build ({:016x}) than the submitter ({:016x}); \
                 start nodes from the very binary that submits",
                self.name, self.build, entry.build
            )));
        }
        match deliveries {
            Some(n) if n > self.max_deliveries => Some(TaskError::DeliveryLimit(n - 1)),
            _ => None,
        }
    }

    /// Acknowledges and deletes an entry without running it.
    fn discard(&mut self, id: &str) {
        let tasks = self.keys.tasks();
        let _ = self.broker.call(|c| {
            redis::pipe()
                .xack(&tasks, wire::GROUP, &[id])
                .ignore()
                .xdel(&tasks, &[id])
                .ignore()
                .query::<()>(c)
        });
    }

    /// Whether the client is alive, and whether it has cancelled jobs.
    fn client(&mut self, client: &str) -> (bool, bool) {
        if let Some(v) = self.clients.get(client)
            && v.checked.elapsed() < CLIENT_CHECK
        {
            return (v.alive, v.cancels);
        }
        let (alive, cancels) = (self.keys.alive(client), self.keys.cancelled(client));
        let seen: redis::RedisResult<(bool, u64)> = self
            .broker
            .call(|c| redis::pipe().exists(&alive).scard(&cancels).query(c));
        // Unknown (the broker is down): assume alive; the outcome waits.
        let (alive, cancels) = seen.map_or((true, true), |(a, n)| (a, n > 0));
        if self.clients.len() > 4096 {
            self.clients.clear();
        }
        let checked = Instant::now();
        self.clients.insert(
            client.to_owned(),
            ClientView {
                alive,
                cancels,
                checked,
            },
        );
        (alive, cancels)
    }

    /// Which of the jobs their client cancelled.
    fn cancelled(&mut self, client: &str, jobs: &[WireJob]) -> Vec<bool> {
        let key = self.keys.cancelled(client);
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        self.broker
            .call(|c| redis::cmd("SMISMEMBER").arg(&key).arg(&ids).query(c))
            .unwrap_or_else(|_| vec![false; jobs.len()])
    }
}

fn local_job(job: WireJob, sink: Arc<NodeSink>) -> Job {
    Job::encoded((job.entry, job.func), job.args, job.ends, sink, job.timeout)
}

fn fail_job(sink: &NodeSink, job: &WireJob, error: &TaskError) {
    let mut it = (0..job.ends.len() as u32).map(|i| (i, Raw::Failed(Box::new(error.clone()))));
    sink.deliver(&mut it);
}

struct Writer {
    broker: Broker,
    keys: Keys,
    name: String,
    processes: usize,
    shared: Arc<Shared>,
    visibility: Duration,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Done>) {
        let beat = self.visibility / 4;
        let mut last_beat = Instant::now() - beat;
        let mut buffer: Vec<Done> = Vec::new();
        loop {
            let wait = beat.saturating_sub(last_beat.elapsed());
            match rx.recv_timeout(if buffer.is_empty() {
                wait
            } else {
                Duration::ZERO
            }) {
                Ok(done) => buffer.push(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            buffer.extend(rx.try_iter());
            if last_beat.elapsed() >= beat {
                // A failed beat waits for the next one like a good one: a
                // node without its broker must not spin.
                let _ = self.heartbeat();
                last_beat = Instant::now();
            }
            if !buffer.is_empty() {
                match self.publish(&buffer) {
                    Ok(()) => buffer.clear(),
                    // Kept: pushed once the broker is back (a node that
                    // stays away has its entries run elsewhere; the
                    // duplicates are dropped by the clients).
                    Err(_) => self.broker.pause(None),
                }
            }
        }
    }

    /// Extends every entry held, and refreshes the node's presence.
    fn heartbeat(&mut self) -> redis::RedisResult<()> {
        let held: Vec<String> = self.shared.flight().keys().cloned().collect();
        let (tasks, nodes) = (self.keys.tasks(), self.keys.nodes());
        let expires = wire::unix_ms() + self.visibility.as_millis() as u64;
        let mut pipe = redis::pipe();
        if !held.is_empty() {
            pipe.cmd("XCLAIM")
                .arg(&tasks)
                .arg(wire::GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(&held)
                .arg("JUSTID")
                .ignore();
        }
        pipe.hset(&nodes, &self.name, presence(self.processes, expires))
            .ignore();
        self.broker.call(|c| pipe.query::<()>(c))?;
        self.forget_dead_nodes()
    }

    /// Removes nodes whose presence expired long ago from the nodes hash.
    fn forget_dead_nodes(&mut self) -> redis::RedisResult<()> {
        let nodes = self.keys.nodes();
        let all: HashMap<String, String> = self.broker.call(|c| c.hgetall(&nodes))?;
        let long_ago = wire::unix_ms().saturating_sub(10 * self.visibility.as_millis() as u64);
        let dead: Vec<&String> = all
            .iter()
            .filter(|(_, v)| parse_presence(v).is_none_or(|(_, e)| e < long_ago))
            .map(|(k, _)| k)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        self.broker.call(|c| c.hdel(&nodes, dead))
    }

    /// Pushes outcomes to their clients and retires the entries they end,
    /// atomically.
    fn publish(&mut self, buffer: &[Done]) -> redis::RedisResult<()> {
        // Encoded as an `OutcomeBatch` (a reference encodes as its value).
        let mut by_client: HashMap<&str, Vec<&WireOutcome>> = HashMap::new();
        let mut per_entry: HashMap<&str, usize> = HashMap::new();
        for d in buffer {
            by_client.entry(&d.client).or_default().push(&d.outcome);
            *per_entry.entry(&d.entry).or_default() += 1;
        }
        let ended: Vec<&str> = {
            let flight = self.shared.flight();
            per_entry
                .iter()
                .filter(|(id, n)| flight.get(**id).is_some_and(|h| h.left <= **n))
                .map(|(id, _)| *id)
                .collect()
        };
        let tasks = self.keys.tasks();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (client, batch) in &by_client {
            let key = self.keys.results(client);
            pipe.rpush(&key, wire::encode(batch)).ignore();
            pipe.expire(&key, wire::RESULTS_TTL_SECS).ignore();
        }
        if !ended.is_empty() {
            pipe.xack(&tasks, wire::GROUP, &ended).ignore();
            pipe.xdel(&tasks, &ended).ignore();
        }
        self.broker.call(|c| pipe.query::<()>(c))?;
        let mut flight = self.shared.flight();
        for (id, n) in per_entry {
            if let Some(h) = flight.get_mut(id) {
                h.left = h.left.saturating_sub(n);
                if h.left == 0 {
                    flight.remove(id);
                }
            }
        }
        drop(flight);
        self.shared.room.notify_all();
        Ok(())
    }
}
