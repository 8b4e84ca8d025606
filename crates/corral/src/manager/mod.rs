//! Managers: dicts, lists, queues, locks and more, held by a server process
//! and shared through proxies — on one machine or across the network, with
//! stock Python clients welcome (Python's `multiprocessing.managers`).
//!
//! ```no_run
//! use corral::manager::Manager;
//!
//! fn worker((jobs, results): (corral::manager::Queue<Option<u32>>, corral::manager::List<u32>)) {
//!     while let Some(n) = jobs.get().unwrap() {
//!         results.push(n * n).unwrap();
//!     }
//! }
//!
//! fn main() {
//!     corral::init();
//!     let manager = Manager::start().unwrap();          // a server process
//!     let jobs = manager.bounded_queue::<Option<u32>>(4).unwrap();
//!     let results = manager.list::<u32>().unwrap();
//!     let workers: Vec<_> = (0..4)
//!         .map(|_| corral::spawn(worker, (jobs.clone(), results.clone())).unwrap())
//!         .collect();
//!     for n in 0..12 {
//!         jobs.put(Some(n)).unwrap();
//!     }
//!     for _ in &workers {
//!         jobs.put(None).unwrap();                       // one sentinel each
//!     }
//!     workers.into_iter().for_each(|w| w.join().unwrap());
//!     assert_eq!(results.len().unwrap(), 12);
//! }
//! ```
//!
//! # What it promises
//!
//! - **Never a hang.** A manager that dies fails every pending and later
//!   call at once ([`ManagerError::Unreachable`]); one that stops
//!   answering (SIGSTOP, a partition) within 3 s, because the server
//!   sends a heartbeat every 0.5 s while a call waits. Every proxy has a
//!   timeout form ([`Dict::with_timeout`] and `_timeout` calls).
//! - **Reconnects.** After a failure the next call connects again; a
//!   proxy to a registered object finds it again by name on a restarted
//!   manager (an anonymous one reports [`ManagerError::ObjectLost`]).
//! - **No leaks.** Objects live while a process holds a proxy to them;
//!   when a process dies its connection closes and what only it held is
//!   freed, with the locks and permits it held (the next taker is told).
//!   A proxy sent to another process keeps its object while the sender
//!   lives, and 10 s after.
//! - **Atomic updates.** `d[k] += 1` through a Python proxy races;
//!   [`Dict::add`], [`Dict::modify`], [`Value::add`] do not. Reads are
//!   copies, and say so ([`Dict::snapshot`]).
//! - **One thread, no pickle execution.** The server is one event loop (no
//!   thread per client); a client that sends garbage, huge lengths or
//!   nothing loses only its own connection. Requests are decoded as plain
//!   data and never executed: a Python client sending an object is
//!   refused (Python's server runs any pickle a key holder sends,
//!   CVE-2020-10796).
//! - **Python clients.** A stock CPython `BaseManager(address,
//!   authkey).connect()` uses registered dicts, lists, queues, values,
//!   locks, events and namespaces holding plain data; its exceptions
//!   (`KeyError`, `queue.Empty` …) are raised on its side.
//!
//! Proxies are serde handles: pass them to [`spawn`](crate::spawn), pool
//! tasks, queues, or store them inside another manager object. A proxy
//! carries its manager's address and authkey, so whoever receives one can
//! use it: treat it as the key it contains.

mod client;
mod error;
mod frames;
mod guard;
pub(crate) mod protocol;
mod proxy;
pub(crate) mod server;
mod types;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_pickle::Value as Plain;

pub use error::ManagerError;
pub use protocol::Kind;
pub use proxy::Proxy;
pub use types::{
    Barrier, Condition, Dict, Event, JoinableQueue, List, Lock, LockGuard, Namespace, Queue, RLock,
    Semaphore, Value,
};

use crate::connection::{Address, Socket, ToAddress};
use crate::{Child, Data, Error};
use client::Link;
use proxy::{Handle, to_value};

/// The largest request a server accepts by default.
const MAX_FRAME: u64 = 64 << 20;

/// A manager: a server process holding shared objects, or a connection to
/// one another process started (Python's `SyncManager`).
///
/// ```no_run
/// let manager = corral::manager::Manager::start().unwrap();
/// let config = manager.dict::<String, String>().unwrap();
/// config.insert("mode".into(), "fast".into()).unwrap();
/// ```
pub struct Manager {
    link: Arc<Link>,
    /// The server process, if this handle started it.
    server: Option<Child<()>>,
    owner_token: u64,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.link.address)
            .field("pid", &self.pid())
            .finish()
    }
}

/// Sets up a manager: the objects it registers by name, then
/// [`start`](ManagerBuilder::start) or [`serve`](ManagerBuilder::serve).
///
/// ```no_run
/// use corral::manager::{Kind, Manager};
/// let mut manager = Manager::builder()
///     .register("get_config", Kind::Dict)
///     .serve("127.0.0.1:50000", b"secret")
///     .unwrap();
/// manager.wait(); // serve until killed
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManagerBuilder {
    registered: Vec<(String, Kind)>,
    legacy_md5: bool,
    max_frame: Option<u64>,
}

/// What the server process is given.
#[derive(Serialize, Deserialize)]
struct ServerArgs {
    address: String,
    config: server::Config,
    ready: crate::Sender,
}

fn random_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    crate::connection::auth::fill_random(&mut b)?;
    Ok(u64::from_ne_bytes(b) >> 1)
}

fn random_key() -> Result<Vec<u8>, Error> {
    let mut key = vec![0u8; 32];
    crate::connection::auth::fill_random(&mut key)?;
    Ok(key)
}

/// The server process: binds, says where, serves until told to stop.
fn serve_main(args: ServerArgs) {
    let bound = args.address.parse::<Address>().and_then(Socket::bind);
    let socket = match bound {
        Ok((socket, address)) => {
            let _ = args.ready.send(&Ok::<String, String>(address.to_string()));
            socket
        }
        Err(e) => {
            let _ = args.ready.send(&Err::<String, String>(e.to_string()));
            return;
        }
    };
    drop(args.ready);
    if let Err(e) = server::run(socket, args.config) {
        eprintln!("corral manager: {e}");
    }
}

impl ManagerBuilder {
    /// Registers an object of `kind` under `name`: made when the server
    /// starts, found by that name by every client (Python's
    /// `BaseManager.register(name)`; a Python client calls `m.<name>()`),
    /// and found again after the manager restarts.
    pub fn register(mut self, name: &str, kind: Kind) -> ManagerBuilder {
        self.registered.push((name.to_owned(), kind));
        self
    }

    /// Also accepts clients that speak only the legacy HMAC-MD5 handshake
    /// (Python 3.11 and older). Off by default.
    pub fn allow_legacy_md5(mut self, allow: bool) -> ManagerBuilder {
        self.legacy_md5 = allow;
        self
    }

    /// The largest request accepted (64 MiB by default); a client sending a
    /// larger one is disconnected.
    pub fn max_request(mut self, bytes: u64) -> ManagerBuilder {
        self.max_frame = Some(bytes);
        self
    }

    /// Starts a server process reachable from this machine only (a Unix
    /// socket in the abstract namespace), with a random 32-byte authkey.
    /// Proxies carry both, so children reach it too.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Corral`] if the process cannot start (forgot
    /// [`crate::init`], out of processes).
    pub fn start(self) -> Result<Manager, ManagerError> {
        let name = format!("@corral-manager-{}-{:x}", std::process::id(), random_u64()?);
        self.launch(name, random_key()?)
    }

    /// Starts a server process listening at `address` (`host:port` for
    /// other hosts, a Unix socket path) for clients holding `authkey`.
    ///
    /// # Errors
    ///
    /// [`ManagerError::Corral`] if the address cannot be bound or the
    /// process cannot start.
    pub fn serve(self, address: impl ToAddress, authkey: &[u8]) -> Result<Manager, ManagerError> {
        let address = address.to_address()?;
        self.launch(address.to_string(), authkey.to_vec())
    }

    fn launch(self, address: String, authkey: Vec<u8>) -> Result<Manager, ManagerError> {
        let owner_token = random_u64()?;
        let (rx, tx) = crate::Pipe::simplex()?;
        let config = server::Config {
            authkey: authkey.clone(),
            legacy_md5: self.legacy_md5,
            registered: self.registered,
            owner_token,
            max_frame: self.max_frame.unwrap_or(MAX_FRAME),
        };
        let child = crate::ProcessBuilder::new().name("corral-manager").spawn(
            serve_main,
            ServerArgs {
                address,
                config,
                ready: tx,
            },
        )?;
        let said: Result<String, String> =
            rx.recv_timeout(Duration::from_secs(10))
                .map_err(|e| Error::Io {
                    context: "starting the manager",
                    source: std::io::Error::other(e.to_string()),
                })?;
        let address: Address = said
            .map_err(|why| Error::Io {
                context: "starting the manager",
                source: std::io::Error::other(why),
            })?
            .parse()?;
        Ok(Manager {
            link: Link::get(&address, &authkey),
            server: Some(child),
            owner_token,
        })
    }
}

impl Manager {
    /// Starts a server process for this machine with a random authkey
    /// (Python's `multiprocessing.Manager()`).
    ///
    /// # Errors
    ///
    /// [`ManagerError::Corral`] if the process cannot start.
    pub fn start() -> Result<Manager, ManagerError> {
        ManagerBuilder::default().start()
    }

    /// Starts a server process listening at `address` for clients holding
    /// `authkey` (Python's `BaseManager(address, authkey).start()`).
    ///
    /// # Errors
    ///
    /// [`ManagerError::Corral`] if the address cannot be bound.
    pub fn serve(address: impl ToAddress, authkey: &[u8]) -> Result<Manager, ManagerError> {
        ManagerBuilder::default().serve(address, authkey)
    }

    /// Connects to a manager another process serves (Python's
    /// `BaseManager(address, authkey).connect()`).
    ///
    /// ```no_run
    /// let manager = corral::manager::Manager::connect("127.0.0.1:50000", b"secret").unwrap();
    /// let config = manager.registered::<corral::manager::Dict<String, String>>("get_config").unwrap();
    /// println!("{:?}", config.get(&"mode".into()).unwrap());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ManagerError::Unreachable`] if nobody answers there;
    /// [`ManagerError::Corral`] with [`Error::Authentication`] for another
    /// key.
    pub fn connect(address: impl ToAddress, authkey: &[u8]) -> Result<Manager, ManagerError> {
        let link = Link::get(&address.to_address()?, authkey);
        link.session()?;
        Ok(Manager {
            link,
            server: None,
            owner_token: 0,
        })
    }

    /// Sets up a manager with registered objects.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.link.address
    }

    /// The key clients must hold.
    pub fn authkey(&self) -> &[u8] {
        &self.link.authkey
    }

    /// The server process's pid, if this handle started it.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::pid)
    }

    fn make<P: Proxy>(&self, args: Vec<Plain>) -> Result<P, ManagerError> {
        Ok(types::make(Handle::create(&self.link, P::KIND, args)?))
    }

    /// The object registered as `name` (see [`ManagerBuilder::register`]).
    ///
    /// # Errors
    ///
    /// [`ManagerError::Refused`] if there is none, or it is of another
    /// kind.
    pub fn registered<P: Proxy>(&self, name: &str) -> Result<P, ManagerError> {
        Ok(types::make(Handle::named(&self.link, name, P::KIND)?))
    }

    /// A new shared dict.
    pub fn dict<K: Data, V: Data>(&self) -> Result<Dict<K, V>, ManagerError> {
        self.make(vec![])
    }

    /// A new shared list.
    pub fn list<T: Data>(&self) -> Result<List<T>, ManagerError> {
        self.make(vec![])
    }

    /// A new unbounded queue.
    pub fn queue<T: Data>(&self) -> Result<Queue<T>, ManagerError> {
        self.make(vec![])
    }

    /// A new queue holding at most `capacity` items (`put` waits).
    pub fn bounded_queue<T: Data>(&self, capacity: usize) -> Result<Queue<T>, ManagerError> {
        self.make(vec![Plain::I64(capacity as i64)])
    }

    /// A new joinable queue (`task_done`, `join`).
    pub fn joinable_queue<T: Data>(&self) -> Result<JoinableQueue<T>, ManagerError> {
        self.make(vec![])
    }

    /// A new shared value.
    pub fn value<T: Data>(&self, v: T) -> Result<Value<T>, ManagerError> {
        self.make(vec![Plain::None, to_value(&v)?])
    }

    /// A new lock.
    pub fn lock(&self) -> Result<Lock, ManagerError> {
        self.make(vec![])
    }

    /// A new reentrant lock.
    pub fn rlock(&self) -> Result<RLock, ManagerError> {
        self.make(vec![])
    }

    /// A new semaphore with `permits`.
    pub fn semaphore(&self, permits: usize) -> Result<Semaphore, ManagerError> {
        self.make(vec![Plain::I64(permits as i64)])
    }

    /// A new condition variable.
    pub fn condition(&self) -> Result<Condition, ManagerError> {
        self.make(vec![])
    }

    /// A new event.
    pub fn event(&self) -> Result<Event, ManagerError> {
        self.make(vec![])
    }

    /// A new barrier for `parties`.
    pub fn barrier(&self, parties: usize) -> Result<Barrier, ManagerError> {
        self.make(vec![Plain::I64(parties as i64)])
    }

    /// A new namespace.
    pub fn namespace(&self) -> Result<Namespace, ManagerError> {
        self.make(vec![])
    }

    /// How many objects the server holds.
    pub fn objects(&self) -> Result<usize, ManagerError> {
        let (_, v) = self.link.server_call("number_of_objects", vec![])?;
        match v {
            Plain::I64(n) => Ok(n as usize),
            _ => Ok(0),
        }
    }

    /// Waits until the server process ends (a server started with
    /// [`serve`](Manager::serve) runs until killed or shut down).
    pub fn wait(&mut self) {
        if let Some(child) = self.server.take() {
            let _ = child.join();
        }
    }

    /// Stops the server this handle started (Python's `shutdown()`); its
    /// objects are gone, proxies report [`ManagerError::Unreachable`].
    /// A handle from [`connect`](Manager::connect) just disconnects.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(child) = self.server.take() else {
            return;
        };
        if child.is_forked_copy() {
            // A forked child's copy of the handle: the server is its
            // parent's (Python's finalizers skip other processes too).
            return;
        }
        let token = Plain::I64(self.owner_token as i64);
        if let Ok(session) = self.link.session() {
            let _ = self.link.exchange(
                &session,
                None,
                "shutdown",
                vec![token],
                Some(Duration::from_secs(1)),
            );
        }
        if let Err(crate::JoinTimeout::Elapsed(child)) = child.join_timeout(Duration::from_secs(1))
        {
            let _ = child.kill();
            let _ = child.join();
        }
    }
}

impl Drop for Manager {
    /// The manager this handle started stops with it.
    fn drop(&mut self) {
        self.stop();
    }
}

/// A manager crosses to other processes as where it is and its key: the
/// receiver gets a connected handle (it does not own the server).
impl Serialize for Manager {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.link.address.to_string(), &self.link.authkey).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Manager {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Manager, D::Error> {
        use serde::de::Error as _;
        let (address, key): (String, Vec<u8>) = Deserialize::deserialize(d)?;
        let address: Address = address.parse().map_err(D::Error::custom)?;
        Ok(Manager {
            link: Link::get(&address, &key),
            server: None,
            owner_token: 0,
        })
    }
}
