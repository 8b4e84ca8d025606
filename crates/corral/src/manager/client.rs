//! A process's connection to a manager, shared by its threads and proxies.
//!
//! One [`Link`] per (address, authkey) in a process; it holds at most one
//! live [`Session`] (an authenticated connection), made on first use and
//! made again after the manager died or restarted, or after a fork. Calls
//! from many threads share the session: each request carries a number, and
//! whichever waiting thread is reading when a reply comes files it for its
//! owner (no reader thread, so a reply costs one wake-up).
//!
//! The link also counts this process's live proxies per object: the first
//! one tells the server this process holds the object, the last one's drop
//! releases it, and a new session (after a fork) tells the server again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_pickle::Value;

use super::error::ManagerError;
use super::frames::FrameBuf;
use super::protocol::{self, Answer};
use crate::connection::{Address, Client};
use crate::poison::{self, lock};
use crate::sys;

/// How long a waiting call goes without hearing from the server before
/// the server is declared stopped (it sends a heartbeat every 0.5 s while a
/// call waits).
pub(crate) const LIVENESS: Duration = Duration::from_secs(3);
/// How long connecting may take.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a reader reads before looking at the others' deadlines.
const SLICE: Duration = Duration::from_millis(250);
/// How long a reader polls for a reply before sleeping: replies usually
/// come within microseconds, and a wake-up costs 35-60 µs on small VMs.
const SPIN: Duration = Duration::from_micros(100);
/// The largest reply read.
const MAX_REPLY: u64 = 1 << 32;

/// This process's pid, read once per process (corral's forks start a new
/// generation of process globals): compared on every call to tell a
/// session inherited across a fork.
fn current_pid() -> u32 {
    static PID: sys::ForkLocal<u32> = sys::ForkLocal::new(std::process::id);
    *PID.get()
}

/// A number for the calling thread: the owner of locks it takes.
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    TOKEN.with(|t| *t)
}

/// Links by (address, authkey).
type Links = Mutex<HashMap<(String, Vec<u8>), Arc<Link>>>;

/// The links of this process.
fn links() -> &'static Links {
    static LINKS: OnceLock<Links> = OnceLock::new();
    LINKS.get_or_init(Default::default)
}

/// Replies filed for the threads waiting on them.
struct Inbox {
    replies: HashMap<u64, Answer>,
    waiting: HashSet<u64>,
    /// A thread is reading the connection.
    reading: bool,
    /// Threads asleep on the bell.
    sleepers: usize,
    /// Why the session ended, once it has.
    dead: Option<String>,
    last_heard: Instant,
}

/// Why a read gave no frame.
enum ReadError {
    Timeout,
    Closed,
    Broken(String),
}

/// One authenticated connection to one server instance.
pub(crate) struct Session {
    /// The socket (non-blocking).
    fd: std::os::fd::OwnedFd,
    /// Replies read so far (only the reading thread touches it).
    rx: Mutex<FrameBuf>,
    tx: Mutex<()>,
    pid: u32,
    pub(crate) instance: u64,
    inbox: Mutex<Inbox>,
    bell: Condvar,
}

impl Session {
    /// Writes one frame whole (waiting for room if the socket is full).
    fn send_frame(&self, body: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        let _guard = lock(&self.tx);
        crate::wire::write_frame(self.fd.as_fd(), &[body], &[])
    }

    /// Reads one frame, waiting at most `limit`: polls a little first,
    /// then sleeps in `poll`.
    fn recv_frame(&self, limit: Duration) -> Result<Vec<u8>, ReadError> {
        use std::os::fd::AsFd;
        let start = Instant::now();
        let mut rx = lock(&self.rx);
        loop {
            match rx.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Broken(e.to_string())),
            }
            match rx.fill(self.fd.as_fd()) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ReadError::Broken(e.to_string())),
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Err(ReadError::Timeout);
            }
            if waited < SPIN {
                // Polling, but yielding the core: with more runnable
                // processes than cores (a server, a producer, a consumer on
                // two), a pure spin would keep the server from answering.
                std::thread::yield_now();
                continue;
            }
            sys::poll_readable(&[self.fd.as_fd()], Some(limit - waited))
                .map_err(|e| ReadError::Broken(e.to_string()))?;
        }
    }

    fn dead(&self) -> bool {
        lock(&self.inbox).dead.is_some()
    }

    /// Sends a request wanting no reply (ordered before later calls).
    pub(crate) fn post(&self, ident: Option<u64>, method: &str, args: Vec<Value>) {
        let frame = protocol::encode_request(ident, method, args, 0, thread_token());
        if self.send_frame(&frame).is_err() {
            self.kill("the connection broke".into());
        }
    }

    fn kill(&self, why: String) {
        let mut inbox = lock(&self.inbox);
        inbox.dead.get_or_insert(why);
        self.bell.notify_all();
    }

    /// Sends a request and waits for its reply until `deadline`.
    fn call(
        &self,
        call: u64,
        frame: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Answer, Result<Duration, String>> {
        let sent = Instant::now();
        lock(&self.inbox).waiting.insert(call);
        if self.send_frame(frame).is_err() {
            self.kill("the connection broke".into());
        }
        let answer = self.wait(call, sent, deadline);
        let mut inbox = lock(&self.inbox);
        inbox.waiting.remove(&call);
        inbox.replies.remove(&call);
        answer
    }

    /// Waits for reply `call`, reading for everyone while nobody else does.
    fn wait(
        &self,
        call: u64,
        sent: Instant,
        deadline: Option<Instant>,
    ) -> Result<Answer, Result<Duration, String>> {
        let mut inbox = lock(&self.inbox);
        loop {
            if let Some(a) = inbox.replies.remove(&call) {
                return Ok(a);
            }
            if let Some(why) = &inbox.dead {
                return Err(Err(why.clone()));
            }
            let now = Instant::now();
            if let Some(d) = deadline
                && now >= d
            {
                return Err(Ok(d - sent));
            }
            if now.duration_since(inbox.last_heard.max(sent)) > LIVENESS {
                let why = format!("no answer for {LIVENESS:?} (stopped, or the network is down)");
                inbox.dead = Some(why);
                self.bell.notify_all();
                continue;
            }
            let slice = deadline.map_or(SLICE, |d| d.saturating_duration_since(now).min(SLICE));
            if inbox.reading {
                inbox.sleepers += 1;
                inbox = poison::wait_timeout(&self.bell, inbox, slice);
                inbox.sleepers -= 1;
                continue;
            }
            inbox.reading = true;
            drop(inbox);
            let got = self.recv_frame(slice);
            inbox = lock(&self.inbox);
            inbox.reading = false;
            self.file(&mut inbox, got);
            // A futex call only when someone sleeps on the bell.
            if inbox.sleepers > 0 {
                self.bell.notify_all();
            }
        }
    }

    /// Files what a read brought.
    fn file(&self, inbox: &mut Inbox, got: Result<Vec<u8>, ReadError>) {
        match got {
            Ok(frame) => {
                inbox.last_heard = Instant::now();
                match protocol::decode_corral_reply(&frame) {
                    Ok((_, Answer::Alive)) => {}
                    Ok((c, a)) => {
                        if inbox.waiting.contains(&c) {
                            inbox.replies.insert(c, a);
                        }
                    }
                    Err(why) => {
                        inbox.dead.get_or_insert(why);
                    }
                }
            }
            Err(ReadError::Timeout) => {}
            Err(ReadError::Closed) => {
                inbox
                    .dead
                    .get_or_insert("the manager closed the connection (it died?)".into());
            }
            Err(ReadError::Broken(why)) => {
                inbox.dead.get_or_insert(why);
            }
        }
    }
}

/// This process's way to one manager.
pub(crate) struct Link {
    pub(crate) address: Address,
    pub(crate) authkey: Vec<u8>,
    session: Mutex<Option<Arc<Session>>>,
    next_call: AtomicU64,
    /// Live proxies in this process, by (server instance, object).
    local: Mutex<HashMap<(u64, u64), usize>>,
    /// Objects this process pinned (sent a proxy to somewhere).
    pinned: Mutex<HashSet<(u64, u64)>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// The process's link to `address` with `authkey`.
    pub(crate) fn get(address: &Address, authkey: &[u8]) -> Arc<Link> {
        let key = (address.to_string(), authkey.to_vec());
        lock(links())
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Link {
                    address: address.clone(),
                    authkey: authkey.to_vec(),
                    session: Mutex::new(None),
                    next_call: AtomicU64::new(1),
                    local: Mutex::new(HashMap::new()),
                    pinned: Mutex::new(HashSet::new()),
                })
            })
            .clone()
    }

    fn unreachable(&self, why: impl Into<String>) -> ManagerError {
        ManagerError::Unreachable {
            address: self.address.to_string(),
            why: why.into(),
        }
    }

    /// The live session, connecting (again) if there is none.
    pub(crate) fn session(&self) -> Result<Arc<Session>, ManagerError> {
        let mut slot = lock(&self.session);
        if let Some(s) = slot.as_ref()
            && s.pid == current_pid()
            && !s.dead()
        {
            return Ok(s.clone());
        }
        match slot.take() {
            // Inherited across a fork: the descriptor is the parent's (or
            // already closed by the child's start); never close it here.
            Some(s) if s.pid != current_pid() => std::mem::forget(s),
            _ => {}
        }
        let session = Arc::new(self.connect()?);
        // Proxies this process already holds (it forked, say) are held by
        // this connection from now on.
        let held: Vec<u64> = lock(&self.local)
            .keys()
            .filter(|(inst, _)| *inst == session.instance)
            .map(|(_, id)| *id)
            .collect();
        held.into_iter()
            .for_each(|id| session.post(None, "adopt", vec![Value::String(protocol::ident(id))]));
        *slot = Some(session.clone());
        Ok(session)
    }

    fn connect(&self) -> Result<Session, ManagerError> {
        let fd = Client::new(self.address.clone(), &self.authkey)
            .timeout(CONNECT)
            .connect_socket()
            .map_err(|e| match e {
                crate::Error::Authentication(_) => ManagerError::Corral(e),
                other => self.unreachable(other.to_string()),
            })?;
        {
            use std::os::fd::AsFd;
            sys::set_nonblocking(fd.as_fd(), true).map_err(|e| self.unreachable(e.to_string()))?;
        }
        let session = Session {
            fd,
            rx: Mutex::new(FrameBuf::new(MAX_REPLY)),
            tx: Mutex::new(()),
            pid: current_pid(),
            instance: 0,
            inbox: Mutex::new(Inbox {
                replies: HashMap::new(),
                waiting: HashSet::new(),
                reading: false,
                sleepers: 0,
                dead: None,
                last_heard: Instant::now(),
            }),
            bell: Condvar::new(),
        };
        let hello = self.exchange(&session, None, "hello", vec![], Some(CONNECT))?;
        let instance = match hello {
            Value::Tuple(v) => match v.first() {
                Some(Value::I64(i)) => *i as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok(Session {
            instance,
            ..session
        })
    }

    /// One call on `session`.
    pub(crate) fn exchange(
        &self,
        session: &Session,
        ident: Option<u64>,
        method: &str,
        args: Vec<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ManagerError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let frame = protocol::encode_request(ident, method, args, call, thread_token());
        let deadline = crate::time::deadline_opt(timeout);
        match session.call(call, &frame, deadline) {
            Ok(Answer::Return(v)) => Ok(v),
            Ok(Answer::Raise { class, message }) => Err(ManagerError::raised(class, message)),
            Ok(Answer::Traceback(t)) if t.starts_with("no object") => {
                Err(ManagerError::ObjectLost(t))
            }
            Ok(Answer::Traceback(t)) => Err(ManagerError::Refused(t)),
            Ok(Answer::Alive) => Err(ManagerError::Refused("a stray heartbeat".into())),
            Err(Ok(waited)) => Err(ManagerError::Timeout(waited)),
            Err(Err(why)) => Err(self.unreachable(why)),
        }
    }

    /// A server function (`create`, `resolve`, …) on the live session.
    pub(crate) fn server_call(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<(Arc<Session>, Value), ManagerError> {
        let session = self.session()?;
        let v = self.exchange(&session, None, method, args, None)?;
        Ok((session, v))
    }

    /// A proxy for (`instance`, `id`) now lives in this process; `adopt`:
    /// the server does not know yet that this process holds it.
    pub(crate) fn retain(&self, instance: u64, id: u64, adopt: bool) {
        let first = {
            let mut local = lock(&self.local);
            let n = local.entry((instance, id)).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first && adopt {
            self.post_if_live(instance, id, "adopt");
        }
    }

    /// A proxy for (`instance`, `id`) was dropped.
    pub(crate) fn release(&self, instance: u64, id: u64) {
        let last = {
            let mut local = lock(&self.local);
            match local.get_mut(&(instance, id)) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    local.remove(&(instance, id));
                    true
                }
                None => false,
            }
        };
        if last {
            self.post_if_live(instance, id, "release");
        }
    }

    /// A proxy for (`instance`, `id`) is being sent somewhere: the object
    /// stays while this process lives (and a grace period after), so the
    /// receiver finds it.
    pub(crate) fn pin(&self, instance: u64, id: u64) {
        if !lock(&self.pinned).insert((instance, id)) {
            return;
        }
        match self.session() {
            Ok(s) if s.instance == instance => {
                s.post(None, "pin", vec![Value::String(protocol::ident(id))]);
            }
            // Unreachable or restarted: nothing to keep alive; try again
            // next time.
            _ => {
                lock(&self.pinned).remove(&(instance, id));
            }
        }
    }

    /// The current session if it is this process's and alive (never
    /// connects: for posts from `Drop`, which must not wait).
    pub(crate) fn live_session(&self) -> Option<Arc<Session>> {
        lock(&self.session)
            .clone()
            .filter(|s| s.pid == current_pid() && !s.dead())
    }

    /// Posts to the live session if it is of `instance`; whether it did.
    fn post_if_live(&self, instance: u64, id: u64, method: &str) -> bool {
        match self.live_session() {
            Some(s) if s.instance == instance => {
                s.post(None, method, vec![Value::String(protocol::ident(id))]);
                true
            }
            _ => false,
        }
    }
}
