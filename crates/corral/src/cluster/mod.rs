//! The same [`Pool`] on many machines, through Redis Streams (feature
//! `cluster`).
//!
//! A program that used a local pool uses a cluster pool with the same
//! calls — `submit`, `apply`, `map`, `imap`, `imap_unordered`,
//! [`as_completed`](crate::as_completed), `wait_*`, `close`, `join`,
//! `terminate`, `stats` — and gets the same [`Task<R>`](crate::Task) and
//! [`TaskError`]: [`Pool::cluster`] builds a [`Pool`], not another type.
//! The work runs on *nodes*: the same binary, started with `CORRAL_NODE`
//! set (or calling [`Node::run`]), each feeding its own local supervised
//! pool from the stream. Per-task timeouts, memory caps, crash isolation
//! and worker recycling hold on every node exactly as locally.
//!
//! ```no_run
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() {
//!     corral::init(); // with CORRAL_NODE=redis://… set, this runs a node
//!     let pool = corral::Pool::cluster("redis://:secret@127.0.0.1:6379/")
//!         .task_timeout(std::time::Duration::from_secs(60))
//!         .build()
//!         .unwrap();
//!     assert_eq!(pool.map(square, 0..1000u64).unwrap()[999], 998_001);
//! }
//! ```
//!
//! Start nodes anywhere the binary and the broker are reachable:
//! `CORRAL_NODE=redis://:secret@10.0.0.5:6379/ ./myprogram` (see [`Node`]
//! for its settings).
//!
//! # Why the same `Pool`, and why Redis Streams
//!
//! Python users who outgrow one machine move to Celery, RQ or Ray and pay
//! with a new API. Here the pool's front end (tasks, callbacks, `map`'s
//! chunking, `imap`'s bounded window) is shared code, and only the engine
//! that runs jobs differs. Redis Streams give what a reliable task queue
//! needs without a hand-written reaper: an entry read by a consumer group
//! stays pending until acknowledged, and `XAUTOCLAIM` hands a silent
//! node's pending entries to another (`research/distributed.md` measured
//! 20,000/20,000 tasks, no duplicate, after a SIGKILLed worker).
//!
//! # Delivery: at least once, outcomes exactly once
//!
//! - A node pushes an item's outcome and acknowledges (and deletes) its
//!   entry in one `MULTI`: a crash cannot publish without acknowledging,
//!   nor acknowledge without publishing.
//! - A node that dies (or loses the broker) stops extending its entries;
//!   after the *visibility timeout* another node claims and runs them. A
//!   long task is not run twice: its node extends its entries every
//!   quarter of the timeout while it runs.
//! - An outcome leaves Redis only once its client has it: the client reads
//!   its results list without popping and trims what it delivered on its
//!   next read, so a reply lost with its connection (Redis killed after
//!   the read) is read again, and the copy dropped.
//! - An item may therefore run twice (a node partitioned, not dead); the
//!   client keeps the first outcome of each `(job, item)` and drops the
//!   rest, so every task ends exactly once. Make tasks idempotent, as
//!   Celery's `acks_late`, dramatiq and arq advise.
//! - A task that crashes its worker process ends with
//!   [`TaskError::WorkerLost`] (the node's pool replaces the worker); it is
//!   not redelivered. An entry delivered more than `max_deliveries` times
//!   (its nodes died each time) fails with [`TaskError::DeliveryLimit`].
//! - A node running a different build refuses the task with
//!   [`TaskError::Refused`] (functions cross as code offsets, meaningful
//!   only in the same binary).
//!
//! # Failures of the broker and of the client
//!
//! - Redis unreachable: the client keeps its tasks and retries for
//!   `broker_timeout` (default 10 s); past it every unfinished task fails
//!   with [`TaskError::Broker`], and so do later submits. Nothing waits
//!   longer. Nodes retry forever, holding their outcomes until the broker
//!   is back.
//! - Redis restarted *with* persistence (`appendonly yes`): submitted
//!   tasks survive and complete. With `appendfsync everysec` rather than
//!   `always`, a write of the last second before the crash may be lost
//!   (an entry, or an outcome), and the client cannot tell: wait for such
//!   tasks with a bound ([`Task::join_timeout`](crate::Task::join_timeout),
//!   [`Pool::join_timeout`]). *Without* persistence the stream is gone: the client
//!   sees the broker's epoch change and fails every unfinished task with
//!   [`TaskError::Broker`] at once.
//! - A client that dies: its liveness key expires within 15 s; nodes then
//!   drop its entries without running them (tasks that were running
//!   finish; their outcomes expire with its results list after 60 s).
//!   Nothing of a dead client accumulates: entries are deleted when done,
//!   results lists expire, the nodes hash forgets silent nodes.
//!
//! # Security
//!
//! The URL's password (or ACL user) authenticates both sides to Redis.
//! Entries are signed with HMAC-SHA256 under a key derived from that
//! password (or given with [`ClusterBuilder::key`] / [`Node::key`]): a node
//! runs code offsets only from entries whose signature matches, so write
//! access to the stream alone does not let anyone run functions on the
//! nodes. Payloads are postcard, decoded into plain data, never executed;
//! a malformed entry fails that entry, not the node.
//!
//! # What differs from a local pool
//!
//! - Arguments holding corral handles (queues, locks, shared memory) fail
//!   with [`TaskError::Codec`]: they do not cross machines.
//! - [`Pool::map_pod`] fails ([`TaskError::InvalidArgument`]): it shares
//!   memory; use `map`. [`Pool::resize`] is `Unsupported`: start or stop
//!   nodes instead. [`Pool::workers`] is empty; [`Pool::processes`] is the
//!   sum over the live nodes.
//! - [`Task::cancel`](crate::Task::cancel) ends the task at once; a node
//!   skips it unless it took it in the last second; one already running
//!   runs to its end and its outcome is dropped.
//! - Worker settings (processes, memory limit, `max_tasks_per_child`) are
//!   the nodes'; the client sets the task timeout.

mod broker;
mod client;
pub(crate) mod node;
mod wire;

use std::time::Duration;

pub use self::node::Node;
use crate::Pool;
#[cfg(doc)]
use crate::TaskError;

/// Why a cluster pool or node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL does not parse (`redis://[user:password@]host:port[/db]`).
    #[error("invalid broker URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The broker cannot be reached, or refused the credentials.
    #[error(
        "cannot use the broker at {url}: {reason}; is redis-server running there, and the password right?"
    )]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The broker answered with an error.
    #[error("the broker failed: {0}")]
    Broker(String),
    /// A node's local pool could not start.
    #[error("the node's local pool cannot start: {0}")]
    Pool(String),
    /// A setting is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl ClusterError {
    fn from_redis(client: &redis::Client, e: redis::RedisError) -> ClusterError {
        ClusterError::Unreachable {
            url: client.get_connection_info().addr().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Settings of a cluster pool's client, from [`Pool::cluster`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// corral::init();
/// let pool = corral::Pool::cluster("redis://:secret@127.0.0.1:6379/")
///     .namespace("thumbnails")
///     .task_timeout(Duration::from_secs(30))
///     .max_pending(10_000)
///     .broker_timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// # drop(pool);
/// ```
#[derive(Debug)]
pub struct ClusterBuilder {
    url: String,
    namespace: String,
    key: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    task_timeout: Option<Duration>,
    max_pending: Option<usize>,
    broker_timeout: Duration,
}

impl ClusterBuilder {
    /// The key prefix (default `corral`), shared with the nodes.
    pub fn namespace(mut self, namespace: &str) -> ClusterBuilder {
        self.namespace = namespace.to_owned();
        self
    }

    /// The key entries are signed with (default: derived from the URL's
    /// password); the nodes must use the same.
    pub fn key(mut self, key: &[u8]) -> ClusterBuilder {
        self.key = Some(key.to_vec());
        self
    }

    /// A CA certificate (PEM) to trust for a `rediss://` broker, instead
    /// of the system's store (feature `cluster-tls`; also
    /// `CORRAL_CLUSTER_CA_FILE`).
    pub fn tls_ca(mut self, pem: &[u8]) -> ClusterBuilder {
        self.ca = Some(pem.to_vec());
        self
    }

    /// Limits each task's running time on its node (the node's worker is
    /// killed and replaced; the task ends with [`TaskError::TimedOut`]).
    pub fn task_timeout(mut self, timeout: Duration) -> ClusterBuilder {
        self.task_timeout = Some(timeout);
        self
    }

    /// Makes `submit` (and `map`) block while `n` items are unfinished.
    pub fn max_pending(mut self, n: usize) -> ClusterBuilder {
        self.max_pending = Some(n);
        self
    }

    /// How long the broker may be unreachable before unfinished tasks fail
    /// with [`TaskError::Broker`] (default 10 s).
    pub fn broker_timeout(mut self, timeout: Duration) -> ClusterBuilder {
        self.broker_timeout = timeout;
        self
    }

    /// Connects to the broker and returns the pool.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidUrl`], [`ClusterError::Unreachable`] (at
    /// once, not after a timeout, if nothing listens there).
    pub fn build(self) -> Result<Pool, ClusterError> {
        if self.max_pending == Some(0) {
            return Err(ClusterError::InvalidArgument(
                "max_pending must be at least 1 (leave it unset for no limit)",
            ));
        }
        let client = client::Client::start(client::Settings {
            key: wire::cluster_key(self.key.as_deref(), &self.url),
            url: self.url,
            ca: self.ca,
            keys: wire::Keys::new(&self.namespace),
            task_timeout: self.task_timeout,
            max_pending: self.max_pending.unwrap_or(usize::MAX),
            broker_timeout: self.broker_timeout,
        })?;
        Ok(Pool::from_engine(client))
    }
}

impl Pool {
    /// A pool whose tasks run on cluster nodes behind the Redis broker at
    /// `url` (see the [`cluster`](crate::cluster) module).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// corral::init();
    /// let pool = corral::Pool::cluster("redis://127.0.0.1:6379/").build().unwrap();
    /// assert_eq!(pool.apply(square, 7).unwrap(), 49);
    /// ```
    pub fn cluster(url: &str) -> ClusterBuilder {
        ClusterBuilder {
            url: url.to_owned(),
            namespace: std::env::var("CORRAL_CLUSTER_NAMESPACE")
                .unwrap_or_else(|_| "corral".into()),
            key: std::env::var("CORRAL_CLUSTER_KEY")
                .ok()
                .and_then(|k| parse_hex(&k)),
            ca: ca_from_env(),
            task_timeout: None,
            max_pending: None,
            broker_timeout: Duration::from_secs(10),
        }
    }
}

/// The CA certificate `CORRAL_CLUSTER_CA_FILE` names, if any.
fn ca_from_env() -> Option<Vec<u8>> {
    let path = std::env::var_os("CORRAL_CLUSTER_CA_FILE")?;
    match std::fs::read(&path) {
        Ok(pem) => Some(pem),
        Err(e) => {
            eprintln!(
                "corral cluster: CORRAL_CLUSTER_CA_FILE={}: {e}",
                path.to_string_lossy()
            );
            None
        }
    }
}

/// Bytes from hex (a key in the environment).
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
