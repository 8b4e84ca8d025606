//! Authenticated connections over TCP and Unix sockets, byte-compatible
//! with CPython's `multiprocessing.connection` (`Listener`, `Client`).
//!
//! A [`Listener`] accepts peers that prove they hold its authkey; a
//! [`Client`] connects to one. Both sides then hold an ordinary
//! [`Connection`]: `send`/`recv` for serde values between corral programs,
//! `send_bytes`/`recv_bytes` for bytes any peer understands, and the
//! `_timeout` forms. A Python program talks to either side with the stock
//! `multiprocessing.connection.Client` / `Listener` and the same key.
//!
//! ```no_run
//! use corral::connection::{Client, Listener};
//! let listener = Listener::bind("127.0.0.1:0", b"secret").unwrap();
//! let address = listener.address().clone();
//! let server = std::thread::spawn(move || {
//!     let conn = listener.accept().unwrap();
//!     let msg = conn.recv_bytes().unwrap();
//!     conn.send_bytes(&msg).unwrap(); // echo
//! });
//! let conn = Client::new(address, b"secret").connect().unwrap();
//! conn.send_bytes(b"ping").unwrap();
//! assert_eq!(conn.recv_bytes().unwrap(), b"ping");
//! server.join().unwrap();
//! ```
//!
//! # What the handshake guarantees
//!
//! Both sides challenge each other (HMAC-SHA256 over 40 random bytes, as
//! CPython 3.12+ does) and compare digests in constant time; nothing but the
//! handshake's own small frames (at most 256 bytes) is read from a peer
//! before it has proved it holds the key, and a peer that stalls is dropped
//! after the handshake timeout (10 s by default) instead of blocking
//! `accept` forever. Python 3.11 and older only speak HMAC-MD5: allow it
//! explicitly with `allow_legacy_md5(true)` on either side. `TCP_NODELAY`
//! is on (CPython leaves it off: 40 ms stalls on small messages).
//!
//! Over TCP, values holding corral handles (queues, locks, pipe ends)
//! cannot cross: descriptors travel only over Unix sockets.

pub(crate) mod auth;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use auth::{Policy, answer_challenge, deliver_challenge};

use crate::{Connection, Error};

/// How long a peer may take over the handshake by default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a [`Listener`] listens: a TCP address or a Unix socket path
/// (Python's `('host', port)` tuples and path strings).
///
/// # Examples
///
/// ```
/// use corral::connection::Address;
/// let tcp: Address = "127.0.0.1:6000".parse().unwrap();
/// let unix: Address = "/tmp/corral.sock".parse().unwrap();
/// assert!(matches!(tcp, Address::Tcp(_)) && matches!(unix, Address::Unix(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = Error;

    /// A string with a `/` is a Unix socket path, one starting with `@` a
    /// name in Linux's abstract socket namespace (no file; `\0name` in
    /// Python); anything else is `host:port` (resolved; the first address
    /// wins).
    fn from_str(s: &str) -> Result<Address, Error> {
        if let Some(name) = s.strip_prefix('@') {
            return Ok(Address::Unix(PathBuf::from(format!("\0{name}"))));
        }
        if s.contains('/') || s.starts_with('\0') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Address::Tcp)
            .ok_or(Error::InvalidArgument(
                "an address is `host:port` or a Unix socket path (with a `/`)",
            ))
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Unix(path)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) if is_abstract(p) => {
                write!(f, "@{}", p.display().to_string().trim_start_matches('\0'))
            }
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Anything that names an [`Address`]: an `Address`, a `SocketAddr`, or a
/// string (`"127.0.0.1:6000"`, `"/run/app.sock"`).
pub trait ToAddress {
    /// The address.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a string that names none.
    fn to_address(self) -> Result<Address, Error>;
}

impl ToAddress for Address {
    fn to_address(self) -> Result<Address, Error> {
        Ok(self)
    }
}

impl ToAddress for &Address {
    fn to_address(self) -> Result<Address, Error> {
        Ok(self.clone())
    }
}

impl ToAddress for SocketAddr {
    fn to_address(self) -> Result<Address, Error> {
        Ok(Address::Tcp(self))
    }
}

impl ToAddress for &str {
    fn to_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl ToAddress for String {
    fn to_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

/// A connected socket during the handshake.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        }
    }

    /// Runs `shake` under the handshake timeout, then hands the socket over.
    fn authenticate(
        mut self,
        timeout: Duration,
        shake: impl FnOnce(&mut Stream) -> Result<(), Error>,
    ) -> Result<OwnedFd, Error> {
        self.set_timeout(Some(timeout).filter(|t| !t.is_zero()))
            .map_err(Error::io("setting the handshake timeout"))?;
        shake(&mut self)?;
        self.set_timeout(None)
            .map_err(Error::io("clearing the handshake timeout"))?;
        Ok(match self {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        })
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A Unix socket address: a path, or (a leading NUL byte, as Python
/// writes it) a name in Linux's abstract namespace, which needs no file and
/// vanishes with its last socket.
fn unix_address(path: &Path) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match path.as_os_str().as_bytes() {
        [0, name @ ..] => std::os::unix::net::SocketAddr::from_abstract_name(name),
        _ => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

/// Whether `path` names an abstract socket (nothing to remove).
fn is_abstract(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().first() == Some(&0)
}

impl Socket {
    /// Listens at `address`; the address bound (with the port chosen).
    pub(crate) fn bind(address: Address) -> Result<(Socket, Address), Error> {
        Ok(match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(Error::io("binding a TCP listener"))?;
                let bound = l
                    .local_addr()
                    .map_err(Error::io("reading a bound address"))?;
                (Socket::Tcp(l), Address::Tcp(bound))
            }
            Address::Unix(p) => {
                let l = unix_address(&p)
                    .and_then(|a| UnixListener::bind_addr(&a))
                    .map_err(Error::io("binding a Unix listener"))?;
                (Socket::Unix(l), Address::Unix(p))
            }
        })
    }

    /// Accepts a waiting peer without blocking (`None`: nobody waits), as a
    /// non-blocking socket with `TCP_NODELAY` on.
    pub(crate) fn accept_nonblocking(&self) -> io::Result<Option<OwnedFd>> {
        let accepted = match self {
            Socket::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(OwnedFd::from(s))
            }),
            Socket::Unix(l) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(true)?;
                Ok(OwnedFd::from(s))
            }),
        };
        match accepted {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes `accept` non-blocking (for an event loop).
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(l) => l.set_nonblocking(true),
            Socket::Unix(l) => l.set_nonblocking(true),
        }
    }
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

/// Connects to `address` (within `limit`), `TCP_NODELAY` on.
pub(crate) fn connect_stream(address: Address, limit: Option<Duration>) -> Result<OwnedFd, Error> {
    Ok(match address {
        Address::Tcp(a) => {
            let s = match limit {
                Some(t) => TcpStream::connect_timeout(&a, t),
                None => TcpStream::connect(a),
            }
            .map_err(Error::io("connecting"))?;
            s.set_nodelay(true)
                .map_err(Error::io("setting TCP_NODELAY"))?;
            s.into()
        }
        Address::Unix(p) => unix_address(&p)
            .and_then(|a| UnixStream::connect_addr(&a))
            .map_err(Error::io("connecting"))?
            .into(),
    })
}

/// Accepts authenticated connections (Python's
/// `multiprocessing.connection.Listener(address, authkey=...)`).
///
/// # Examples
///
/// ```no_run
/// let listener = corral::connection::Listener::bind("127.0.0.1:6000", b"key").unwrap();
/// loop {
///     match listener.accept() {
///         Ok(conn) => { let _ = conn.send_bytes(b"hello"); }
///         Err(e) => eprintln!("refused a peer: {e}"), // wrong key, garbage, too slow
///     }
/// }
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Vec<u8>,
    policy: Policy,
    timeout: Duration,
    /// `sys::watch_forks()` where it was bound: a forked child's copy
    /// leaves the socket file to the process that bound it.
    forks: u64,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens at `address` (port 0 picks a free port: see
    /// [`address`](Listener::address)); peers must hold `authkey`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be bound (in use, say);
    /// [`Error::InvalidArgument`] for an address that names nothing.
    pub fn bind(address: impl ToAddress, authkey: &[u8]) -> Result<Listener, Error> {
        let (socket, address) = Socket::bind(address.to_address()?)?;
        Ok(Listener {
            socket,
            address,
            authkey: authkey.to_vec(),
            policy: Policy { legacy_md5: false },
            timeout: HANDSHAKE_TIMEOUT,
            forks: crate::sys::watch_forks(),
        })
    }

    /// Also accepts peers that speak only the legacy HMAC-MD5 handshake
    /// (Python 3.11 and older). Off by default.
    pub fn allow_legacy_md5(mut self, allow: bool) -> Listener {
        self.policy.legacy_md5 = allow;
        self
    }

    /// How long a peer may take over the handshake (default 10 s; zero:
    /// no limit, as in Python).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Listener {
        self.timeout = timeout;
        self
    }

    /// The address it listens at (with the port chosen for port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a peer and authenticates it (this side challenges first,
    /// as Python's `Listener` does).
    ///
    /// # Errors
    ///
    /// [`Error::Authentication`] for a peer with another key, one that
    /// sends garbage, or one too slow (the listener is unharmed: accept
    /// again); [`Error::Io`] if accepting fails.
    pub fn accept(&self) -> Result<Connection, Error> {
        let stream = match &self.socket {
            Socket::Tcp(l) => {
                let (s, _) = l.accept().map_err(Error::io("accepting a connection"))?;
                s.set_nodelay(true)
                    .map_err(Error::io("setting TCP_NODELAY"))?;
                Stream::Tcp(s)
            }
            Socket::Unix(l) => {
                let (s, _) = l.accept().map_err(Error::io("accepting a connection"))?;
                Stream::Unix(s)
            }
        };
        let (key, policy) = (&self.authkey, self.policy);
        stream
            .authenticate(self.timeout, |s| {
                deliver_challenge(s, key, policy)?;
                answer_challenge(s, key, policy)
            })
            .map(Connection::from)
    }
}

impl Drop for Listener {
    /// A Unix listener removes its socket file (as Python's does), in the
    /// process that bound it only (as Python's finalizers do): a forked
    /// child's copy, dropped there, would take it from under the parent.
    fn drop(&mut self) {
        if let Address::Unix(p) = &self.address
            && !is_abstract(p)
            && crate::sys::forks() == self.forks
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Connects to a [`Listener`] (or a Python `Listener`): Python's
/// `multiprocessing.connection.Client(address, authkey=...)`.
///
/// # Examples
///
/// ```no_run
/// use corral::connection::Client;
/// let conn = Client::new("127.0.0.1:6000", b"key").connect().unwrap();
/// conn.send(&("job", 42u32)).unwrap();
/// ```
#[derive(Debug)]
pub struct Client<A> {
    address: A,
    authkey: Vec<u8>,
    policy: Policy,
    timeout: Duration,
}

impl<A: ToAddress> Client<A> {
    /// A client for `address` with `authkey`.
    pub fn new(address: A, authkey: &[u8]) -> Client<A> {
        Client {
            address,
            authkey: authkey.to_vec(),
            policy: Policy { legacy_md5: false },
            timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Also speaks the legacy HMAC-MD5 handshake (to reach Python 3.11 and
    /// older). Off by default.
    pub fn allow_legacy_md5(mut self, allow: bool) -> Client<A> {
        self.policy.legacy_md5 = allow;
        self
    }

    /// How long the connection and handshake may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Client<A> {
        self.timeout = timeout;
        self
    }

    /// Connects and authenticates (the listener challenges first).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection fails (nobody listening, say);
    /// [`Error::Authentication`] if the keys differ or the peer speaks no
    /// digest this side accepts.
    pub fn connect(self) -> Result<Connection, Error> {
        self.connect_socket().map(Connection::from)
    }

    /// Connects and authenticates; the bare socket (blocking).
    pub(crate) fn connect_socket(self) -> Result<OwnedFd, Error> {
        let limit = Some(self.timeout).filter(|t| !t.is_zero());
        let address = self.address.to_address()?;
        let is_tcp = matches!(address, Address::Tcp(_));
        let fd = connect_stream(address, limit)?;
        let stream = if is_tcp {
            Stream::Tcp(TcpStream::from(fd))
        } else {
            Stream::Unix(UnixStream::from(fd))
        };
        let (key, policy) = (&self.authkey, self.policy);
        stream.authenticate(self.timeout, |s| {
            answer_challenge(s, key, policy)?;
            deliver_challenge(s, key, policy)
        })
    }
}
