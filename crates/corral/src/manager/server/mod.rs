//! The manager's server: one thread, one event loop, every client.
//!
//! No thread per client: each connection is a small state machine
//! ([`Phase`]) fed by epoll — the handshake (CPython's, byte for byte),
//! then requests. A call that must wait (a `get` on an empty queue, a held
//! lock) is parked with its deadline and run again when its object
//! changes; nothing ever blocks the loop. A peer that sends garbage, huge
//! lengths or nothing at all loses its own connection and nothing else.
//!
//! Objects live while anyone holds them: a corral client's connection (its
//! process; released when the process dies and its connection closes), a
//! pin left by a proxy that was sent somewhere (kept while its sender lives,
//! then for [`GRACE`]), a Python client's reference count, another object
//! holding a proxy to it, or a registered name.

mod objects;
mod table;

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use serde_pickle::Value;

use crate::Error;
use crate::connection::Socket;
use crate::connection::auth::{self, Challenge, Policy};
use crate::manager::frames::FrameBuf;
use crate::manager::protocol::{self, Exc, Kind, Reply, Request};
use crate::wire::encode_header;

use objects::{Args, Ctx, Owner, Step, Ticket};
use table::Table;

/// How long a peer may take over the handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How often a client whose call waits hears that the server lives.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a pin outlives the connection that left it.
pub(crate) const GRACE: Duration = Duration::from_secs(10);
/// How long the loop keeps polling (instead of sleeping) after its last
/// event: a client's next call usually follows within microseconds, and
/// a sleeping server costs a 35-60 µs wake-up on small VMs. An idle server
/// sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// Bytes a client may leave unread before it is dropped.
const MAX_UNREAD: usize = 256 << 20;
const LISTENER: u64 = u64::MAX;

/// What a server holds and whom it accepts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Config {
    pub(crate) authkey: Vec<u8>,
    pub(crate) legacy_md5: bool,
    /// Objects made at start, found by name (Python's `register`).
    pub(crate) registered: Vec<(String, Kind)>,
    /// The owner's secret: only it may shut the server down.
    pub(crate) owner_token: u64,
    /// The largest request accepted.
    pub(crate) max_frame: u64,
}

/// A connection's place in its life.
enum Phase {
    /// We challenged; waiting for the peer's digest.
    AwaitAnswer(Challenge),
    /// We welcomed it; waiting for its challenge.
    AwaitChallenge,
    /// We answered; waiting for its welcome.
    AwaitWelcome,
    Ready,
    /// Refused: close once the last bytes are out.
    Closing,
}

struct Conn {
    fd: OwnedFd,
    frames: FrameBuf,
    out: Vec<u8>,
    phase: Phase,
    opened: Instant,
    /// Registered for writability (output is waiting).
    writing: bool,
    /// Objects this connection's process holds, and pins it left.
    refs: HashSet<u64>,
    pins: HashSet<u64>,
    /// Objects in which it may own a lock or permits.
    owns: HashSet<u64>,
}

/// A call waiting for its object to change.
struct Parked {
    conn: u64,
    call: u64,
    corral: bool,
    owner: Owner,
    method: String,
    args: Vec<Value>,
    kwds: std::collections::BTreeMap<serde_pickle::HashableValue, Value>,
    ticket: Option<Ticket>,
    deadline: Option<Instant>,
    expired: bool,
}

struct Server {
    cfg: Config,
    policy: Policy,
    epoll: OwnedFd,
    listener: Socket,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    table: Table,
    parked: HashMap<u64, VecDeque<Parked>>,
    /// Pins whose connection closed, and when they lapse.
    grace: Vec<(Instant, u64)>,
    /// Tells this server from an earlier one at the same address.
    instance: u64,
    last_beat: Instant,
    /// When the loop last had something to do.
    last_active: Instant,
    /// Out of descriptors, the listener is not watched until then (a peer
    /// waiting in the backlog would wake the loop again at once, for ever).
    listener_paused: Option<Instant>,
    stop: bool,
}

/// Serves on `listener` until the owner asks it to stop.
pub(crate) fn run(listener: Socket, cfg: Config) -> Result<(), Error> {
    let mut server = Server::new(listener, cfg)?;
    while !server.stop {
        server.turn()?;
    }
    Ok(())
}

fn io_err(context: &'static str) -> impl Fn(rustix::io::Errno) -> Error {
    move |e| Error::io(context)(e.into())
}

impl Server {
    fn new(listener: Socket, cfg: Config) -> Result<Server, Error> {
        listener
            .set_nonblocking()
            .map_err(Error::io("making the listener non-blocking"))?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_err("epoll"))?;
        epoll::add(
            &epoll,
            listener.as_fd(),
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
        .map_err(io_err("watching the listener"))?;
        let mut table = Table::default();
        for (name, kind) in &cfg.registered {
            table.register(name, *kind);
        }
        let mut instance = [0u8; 8];
        auth::fill_random(&mut instance)?;
        Ok(Server {
            policy: Policy {
                legacy_md5: cfg.legacy_md5,
            },
            cfg,
            epoll,
            listener,
            conns: HashMap::new(),
            next_conn: 1,
            table,
            parked: HashMap::new(),
            grace: Vec::new(),
            instance: u64::from_ne_bytes(instance) >> 1,
            last_beat: Instant::now(),
            last_active: Instant::now(),
            listener_paused: None,
            stop: false,
        })
    }

    /// One turn of the loop: wait for events or the next deadline, handle
    /// them, expire what is due.
    fn turn(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let timeout = if now.duration_since(self.last_active) < SPIN {
            Some(Duration::ZERO)
        } else {
            self.next_deadline()
                .map(|d| d.saturating_duration_since(now))
        };
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut events = Vec::with_capacity(64);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            ts.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io_err("waiting for clients")(e)),
        }
        if events.is_empty() && timeout == Some(Duration::ZERO) {
            // Polling, but yielding the core: a client sharing this CPU
            // (the other one busy) gets to send its next call now instead
            // of after the whole spin.
            std::thread::yield_now();
        }
        if !events.is_empty() {
            self.last_active = Instant::now();
        }
        for ev in events {
            let key = ev.data.u64();
            if key == LISTENER {
                self.accept_all();
            } else {
                self.on_event(key, ev.flags);
            }
        }
        self.expire(Instant::now());
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let parked = self
            .parked
            .values()
            .flatten()
            .filter_map(|p| p.deadline)
            .min();
        let handshakes = self
            .conns
            .values()
            .filter(|c| !matches!(c.phase, Phase::Ready))
            .map(|c| c.opened + HANDSHAKE)
            .min();
        let grace = self.grace.iter().map(|g| g.0).min();
        let beat = self
            .parked
            .values()
            .flatten()
            .any(|p| p.corral)
            .then_some(self.last_beat + HEARTBEAT);
        [parked, handshakes, grace, beat]
            .into_iter()
            .flatten()
            .min()
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept_nonblocking() {
                Ok(Some(fd)) => self.admit(fd),
                Ok(None) => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: the others are served on; new
                    // peers wait in the backlog until one is free.
                    self.watch_listener(false);
                    self.listener_paused = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
                // A peer gone before accept: the listener stays watched.
                Err(_) => return,
            }
        }
    }

    fn watch_listener(&self, on: bool) {
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        let _ = epoll::modify(
            &self.epoll,
            self.listener.as_fd(),
            epoll::EventData::new_u64(LISTENER),
            flags,
        );
    }

    /// A new peer: challenge it first (as Python's server does).
    fn admit(&mut self, fd: OwnedFd) {
        let id = self.next_conn;
        self.next_conn += 1;
        let Ok(challenge) = Challenge::new() else {
            return;
        };
        if epoll::add(
            &self.epoll,
            fd.as_fd(),
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .is_err()
        {
            return;
        }
        let frame = challenge.frame.clone();
        self.conns.insert(
            id,
            Conn {
                fd,
                frames: FrameBuf::new(auth::MAX_HANDSHAKE_FRAME as u64),
                out: Vec::new(),
                phase: Phase::AwaitAnswer(challenge),
                opened: Instant::now(),
                writing: false,
                refs: HashSet::new(),
                pins: HashSet::new(),
                owns: HashSet::new(),
            },
        );
        self.send(id, &frame);
    }

    fn on_event(&mut self, id: u64, flags: epoll::EventFlags) {
        if flags.contains(epoll::EventFlags::OUT) {
            self.flush(id);
        }
        if flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::HUP
                | epoll::EventFlags::ERR
                | epoll::EventFlags::RDHUP,
        ) {
            self.read(id);
        }
    }

    /// Reads and handles every whole frame the peer sent.
    fn read(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let filled = conn.frames.fill(conn.fd.as_fd());
            let more = match filled {
                Ok(n) => conn.frames.was_full(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(id),
            };
            // Every whole frame, even when the peer has closed after it.
            loop {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                match conn.frames.next_frame() {
                    Ok(Some(frame)) => self.on_frame(id, frame),
                    Ok(None) => break,
                    // A hostile length: this peer only.
                    Err(_) => return self.close(id),
                }
            }
            if matches!(filled, Ok(0)) {
                return self.close(id);
            }
            if !more {
                return;
            }
        }
    }

    /// Queues a frame for `id` and writes what the socket takes now.
    fn send(&mut self, id: u64, body: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (header, n) = encode_header(body.len() as u64);
        conn.out.extend_from_slice(&header[..n]);
        conn.out.extend_from_slice(body);
        if conn.out.len() > MAX_UNREAD {
            return self.close(id);
        }
        self.flush(id);
    }

    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut sent = 0;
        let failed = loop {
            if sent == conn.out.len() {
                break false;
            }
            match rustix::io::write(&conn.fd, &conn.out[sent..]) {
                Ok(n) => sent += n,
                Err(rustix::io::Errno::AGAIN) => break false,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break true,
            }
        };
        conn.out.drain(..sent);
        let want_out = !conn.out.is_empty();
        if failed || (!want_out && matches!(conn.phase, Phase::Closing)) {
            return self.close(id);
        }
        if want_out != conn.writing {
            conn.writing = want_out;
            let mut flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            if want_out {
                flags |= epoll::EventFlags::OUT;
            }
            let _ = epoll::modify(
                &self.epoll,
                conn.fd.as_fd(),
                epoll::EventData::new_u64(id),
                flags,
            );
        }
    }

    fn on_frame(&mut self, id: u64, frame: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (key, policy) = (&self.cfg.authkey, self.policy);
        let (next, out) = match std::mem::replace(&mut conn.phase, Phase::Closing) {
            Phase::AwaitAnswer(challenge) => match challenge.check(key, &frame, policy) {
                Ok(()) => (Phase::AwaitChallenge, auth::WELCOME.to_vec()),
                Err(_) => (Phase::Closing, auth::FAILURE.to_vec()),
            },
            Phase::AwaitChallenge => match auth::answer(key, &frame, policy) {
                Ok(answer) => (Phase::AwaitWelcome, answer),
                Err(_) => return self.close(id),
            },
            Phase::AwaitWelcome if frame == auth::WELCOME => {
                conn.frames.set_max(self.cfg.max_frame);
                conn.phase = Phase::Ready;
                return;
            }
            Phase::AwaitWelcome | Phase::Closing => return self.close(id),
            Phase::Ready => {
                conn.phase = Phase::Ready;
                return self.on_request(id, &frame);
            }
        };
        conn.phase = next;
        self.send(id, &out);
    }

    fn close(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        // Dropping the descriptor takes it out of the epoll set.
        drop(conn.fd);
        let mut touched: Vec<u64> = Vec::new();
        for (obj, queue) in &mut self.parked {
            queue.retain(|p| {
                if p.conn != id {
                    return true;
                }
                if let (Some(t), Some(o)) = (p.ticket, self.table.object_mut(*obj)) {
                    o.abandon(t);
                    touched.push(*obj);
                }
                false
            });
        }
        for obj in conn.owns {
            if self.table.object_mut(obj).is_some_and(|o| o.forget(id)) {
                touched.push(obj);
            }
        }
        let until = Instant::now() + GRACE;
        self.grace.extend(conn.pins.iter().map(|&obj| (until, obj)));
        for obj in conn.refs {
            self.table.unhold(obj);
        }
        self.settle();
        touched.into_iter().for_each(|obj| self.wake(obj));
    }

    /// Frees what nobody holds any more; fails the calls that waited on it.
    fn settle(&mut self) {
        for obj in self.table.collect() {
            for p in self.parked.remove(&obj).unwrap_or_default() {
                let gone = Reply::Traceback(format!("object {obj:x} was freed"));
                self.reply(p.conn, p.call, p.corral, &gone);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .parked
            .iter_mut()
            .filter_map(|(obj, queue)| {
                let mut any = false;
                for p in queue
                    .iter_mut()
                    .filter(|p| p.deadline.is_some_and(|d| d <= now))
                {
                    p.deadline = None;
                    p.expired = true;
                    any = true;
                }
                any.then_some(*obj)
            })
            .collect();
        due.into_iter().for_each(|obj| self.wake(obj));
        let lapsed: Vec<u64> = self
            .grace
            .iter()
            .filter(|g| g.0 <= now)
            .map(|g| g.1)
            .collect();
        if !lapsed.is_empty() {
            self.grace.retain(|g| g.0 > now);
            lapsed.into_iter().for_each(|obj| self.table.unhold(obj));
            self.settle();
        }
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.phase, Phase::Ready) && c.opened + HANDSHAKE <= now)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter().for_each(|id| self.close(id));
        if self.listener_paused.is_some_and(|t| t <= now) {
            self.listener_paused = None;
            self.watch_listener(true);
            self.accept_all();
        }
        if now >= self.last_beat + HEARTBEAT {
            self.last_beat = now;
            self.heartbeat();
        }
    }

    /// Tells every corral client whose call waits that the server lives.
    fn heartbeat(&mut self) {
        let waiting: HashSet<u64> = self
            .parked
            .values()
            .flatten()
            .filter(|p| p.corral)
            .map(|p| p.conn)
            .collect();
        let beat = protocol::alive();
        waiting.into_iter().for_each(|c| self.send(c, &beat));
    }

    fn reply(&mut self, conn: u64, call: u64, corral: bool, reply: &Reply) {
        if corral {
            if call != 0 {
                if let Reply::Return(v) = reply {
                    self.hold_proxies(conn, v);
                }
                self.send(conn, &protocol::encode_corral_reply(reply, call));
            }
        } else {
            self.send(conn, &protocol::encode_python_reply(reply));
        }
    }

    /// A corral client receiving proxies holds their objects from now on.
    fn hold_proxies(&mut self, conn: u64, v: &Value) {
        let mut ids = Vec::new();
        protocol::proxy_ids(v, &mut ids);
        for obj in ids {
            if let Some(c) = self.conns.get_mut(&conn)
                && self.table.exists(obj)
                && c.refs.insert(obj)
            {
                self.table.hold(obj);
            }
        }
    }

    fn on_request(&mut self, id: u64, frame: &[u8]) {
        let req = match protocol::decode_request(frame) {
            Ok(r) => r,
            Err(why) => return self.reply(id, 0, false, &Reply::Traceback(why)),
        };
        let (call, thread) = req.corral.unwrap_or((0, 0));
        let corral = req.corral.is_some();
        let owner = Owner { conn: id, thread };
        match req.ident.as_deref().map(protocol::parse_ident) {
            None => {
                let reply = self.server_call(id, corral, req);
                self.reply(id, call, corral, &reply);
            }
            Some(None) => {
                let r = Reply::Traceback(format!("no object {:?}", req.ident));
                self.reply(id, call, corral, &r);
            }
            Some(Some(obj)) => {
                let Request {
                    method, args, kwds, ..
                } = req;
                let parked = Parked {
                    conn: id,
                    call,
                    corral,
                    owner,
                    method,
                    args,
                    kwds,
                    ticket: None,
                    deadline: None,
                    expired: false,
                };
                self.object_call(obj, parked);
            }
        }
    }

    /// Runs a call on `obj`; parks it if it must wait; wakes the waiters
    /// the call may have released — even a call that parks may have (a
    /// condition wait releases its lock).
    fn object_call(&mut self, obj: u64, p: Parked) {
        if let Some(p) = self.attempt(obj, p) {
            self.parked.entry(obj).or_default().push_back(p);
        }
        self.wake(obj);
    }

    /// One attempt; the request back if it must wait.
    fn attempt(&mut self, obj: u64, mut p: Parked) -> Option<Parked> {
        let Some(object) = self.table.object_mut(obj) else {
            let r = Reply::Traceback(format!(
                "no object {obj:x} on this manager (freed, or the manager restarted)"
            ));
            self.reply(p.conn, p.call, p.corral, &r);
            return None;
        };
        let mut cx = Ctx {
            owner: p.owner,
            corral: p.corral,
            ticket: &mut p.ticket,
            expired: p.expired,
            stored: Vec::new(),
            removed: Vec::new(),
        };
        let args = Args::new(p.args.clone(), p.kwds.clone());
        let step = object.call(&p.method, args, &mut cx);
        let (stored, removed) = (
            std::mem::take(&mut cx.stored),
            std::mem::take(&mut cx.removed),
        );
        if object.owned_by_callers()
            && let Some(c) = self.conns.get_mut(&p.conn)
        {
            c.owns.insert(obj);
        }
        self.table.nest(&stored, &removed);
        match step {
            Step::Done(reply) => {
                self.reply(p.conn, p.call, p.corral, &reply);
                self.settle();
                None
            }
            Step::Park(timeout) => {
                if p.deadline.is_none() && !p.expired {
                    p.deadline = timeout
                        .and_then(|t| crate::time::deadline(Duration::from_secs_f64(t.min(1e9))));
                }
                Some(p)
            }
        }
    }

    /// Runs the calls waiting on `obj` again, in order, until none of them
    /// can go on.
    fn wake(&mut self, obj: u64) {
        loop {
            let Some(queue) = self.parked.remove(&obj) else {
                return;
            };
            let before = queue.len();
            let mut left = VecDeque::with_capacity(before);
            for p in queue {
                if let Some(p) = self.attempt(obj, p) {
                    left.push_back(p);
                }
            }
            let progressed = left.len() < before;
            // Calls parked during the retries (none: attempts don't park
            // others) and those left wait on.
            if let Some(newer) = self.parked.remove(&obj) {
                left.extend(newer);
            }
            if !left.is_empty() {
                self.parked.insert(obj, left);
            }
            if !progressed {
                return;
            }
        }
    }

    /// The server's own functions (`ident` None).
    fn server_call(&mut self, id: u64, corral: bool, req: Request) -> Reply {
        let mut args = req.args.into_iter();
        let mut ident = || match args.next() {
            Some(Value::String(s)) => protocol::parse_ident(&s).ok_or(()),
            _ => Err(()),
        };
        match req.method.as_str() {
            "dummy" | "accept_connection" => Reply::Return(Value::None),
            "hello" => Reply::Return(Value::Tuple(vec![
                Value::I64(self.instance as i64),
                Value::I64(std::process::id() as i64),
            ])),
            "number_of_objects" => Reply::Return(Value::I64(self.table.len() as i64)),
            "create" => {
                let rest: Vec<Value> = args.collect();
                self.create(id, corral, rest)
            }
            "incref" | "decref" | "adopt" | "release" | "pin" => match ident() {
                Ok(obj) => self.reference(id, &req.method, obj),
                Err(()) => Reply::Traceback("expected an object id".into()),
            },
            "shutdown" => match args.next() {
                Some(Value::I64(t)) if corral && t as u64 == self.cfg.owner_token => {
                    self.stop = true;
                    Reply::Return(Value::None)
                }
                _ => Reply::Traceback("only the manager's owner may shut it down".into()),
            },
            other => Reply::Traceback(format!("unknown server function {other:?}")),
        }
    }

    /// `create(typeid, *args)`: a registered name's object, or a new one.
    fn create(&mut self, id: u64, corral: bool, mut args: Vec<Value>) -> Reply {
        if args.is_empty() {
            return Reply::Traceback("create() needs a typeid".into());
        }
        let Value::String(typeid) = args.remove(0) else {
            return Reply::Traceback("a typeid is a str".into());
        };
        let made = match self.table.named(&typeid) {
            Some(obj) => Ok(obj),
            None => match Kind::from_typeid(&typeid) {
                Some(kind) => self.table.create(kind, args),
                None => return Reply::Traceback(format!("unknown typeid {typeid:?}")),
            },
        };
        let obj = match made {
            Ok(obj) => obj,
            Err(e) => return Reply::Raise(e),
        };
        if corral {
            if let Some(c) = self.conns.get_mut(&id)
                && c.refs.insert(obj)
            {
                self.table.hold(obj);
            }
        } else {
            // Python's create hands the caller one reference.
            self.table.incref(obj);
        }
        let kind = self.table.kind(obj).unwrap_or(Kind::Dict);
        let exposed = kind
            .exposed()
            .iter()
            .map(|m| Value::String((*m).into()))
            .collect();
        // Python unpacks `(id, exposed)`; a corral client also learns the
        // kind (to check a registered name's type).
        let mut reply = vec![Value::String(protocol::ident(obj)), Value::Tuple(exposed)];
        if corral {
            reply.push(Value::String(kind.typeid().into()));
        }
        Reply::Return(Value::Tuple(reply))
    }

    fn reference(&mut self, id: u64, how: &str, obj: u64) -> Reply {
        if !self.table.exists(obj) {
            return Reply::Traceback(format!(
                "no object {obj:x} on this manager (freed, or the manager restarted)"
            ));
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return Reply::Return(Value::None);
        };
        match how {
            "incref" => self.table.incref(obj),
            "decref" => self.table.decref(obj),
            "adopt" if c.refs.insert(obj) => self.table.hold(obj),
            "pin" if c.pins.insert(obj) => self.table.hold(obj),
            "release" if c.refs.remove(&obj) => self.table.unhold(obj),
            _ => {}
        }
        self.settle();
        Reply::Return(Value::None)
    }
}

impl From<Exc> for Reply {
    fn from(e: Exc) -> Reply {
        Reply::Raise(e)
    }
}

/// Decodes `data` as a request and runs it against one object of each kind
/// (or as `create`), twice if it parks (the second time expired): the
/// manager fuzz target's body. Any input must end in a reply, never a
/// panic.
pub(crate) fn fuzz_request(data: &[u8]) {
    let Ok(req) = protocol::decode_request(data) else {
        return;
    };
    let mut table = Table::default();
    for kind in Kind::ALL {
        let _ = table.create(kind, Vec::new());
    }
    if req.ident.is_none() {
        if let Some(Value::String(typeid)) = req.args.first()
            && let Some(kind) = Kind::from_typeid(typeid)
        {
            let _ = table.create(kind, req.args[1..].to_vec());
        }
        return;
    }
    let id = req
        .ident
        .as_deref()
        .and_then(protocol::parse_ident)
        .unwrap_or(0)
        % Kind::ALL.len() as u64
        + 1;
    let Some(object) = table.object_mut(id) else {
        return;
    };
    let mut ticket = None;
    for expired in [false, true] {
        let mut cx = Ctx {
            owner: Owner { conn: 1, thread: 1 },
            corral: req.corral.is_some(),
            ticket: &mut ticket,
            expired,
            stored: Vec::new(),
            removed: Vec::new(),
        };
        let args = Args::new(req.args.clone(), req.kwds.clone());
        if let Step::Done(reply) = object.call(&req.method, args, &mut cx) {
            let _ = protocol::encode_python_reply(&reply);
            let _ = protocol::encode_corral_reply(&reply, 1);
            break;
        }
    }
    object.forget(1);
}
