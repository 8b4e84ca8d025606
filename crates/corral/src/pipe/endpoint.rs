//! The pipe end types and their framing on a Unix stream socket.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::{self, parse_header, read_exact_growing};
use crate::{Error, RecvError, SendError, WireError, sys};

/// Socket buffer size requested for pipes (the kernel caps it at `wmem_max`):
/// large buffers let a 1 MiB message cross in few system calls.
const SOCKET_BUFFER: usize = 4 << 20;

/// How long a receiver watches for a message before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// Makes pipes. See the [module docs](crate::pipe).
///
/// # Examples
///
/// ```
/// let (a, b) = corral::Pipe::duplex().unwrap();
/// a.send(&(1, "one")).unwrap();
/// let (n, s): (i32, String) = b.recv().unwrap();
/// assert_eq!((n, s.as_str()), (1, "one"));
/// ```
#[derive(Debug)]
pub struct Pipe(());

impl Pipe {
    /// Two connected ends that both send and receive (Python's `Pipe()`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the system is out of descriptors.
    pub fn duplex() -> Result<(Connection, Connection), Error> {
        let (a, b) = sys::socketpair().map_err(Error::io("creating a pipe"))?;
        Ok((Connection(Endpoint::new(a)), Connection(Endpoint::new(b))))
    }

    /// A receiving end and a sending end (Python's `Pipe(duplex=False)`).
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, tx) = corral::Pipe::simplex().unwrap();
    /// tx.send_bytes(b"ping").unwrap();
    /// assert_eq!(rx.recv_bytes().unwrap(), b"ping");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the system is out of descriptors.
    pub fn simplex() -> Result<(Receiver, Sender), Error> {
        let (r, s) = sys::socketpair().map_err(Error::io("creating a pipe"))?;
        let _ = rustix::net::shutdown(&r, rustix::net::Shutdown::Write);
        let _ = rustix::net::shutdown(&s, rustix::net::Shutdown::Read);
        Ok((Receiver(Endpoint::new(r)), Sender(Endpoint::new(s))))
    }
}

#[derive(Default)]
struct RecvState {
    /// A header already read whose payload is still in the socket (kept when
    /// `recv_bytes_into` got too small a buffer).
    pending: Option<(usize, Vec<OwnedFd>)>,
}

struct Endpoint {
    fd: OwnedFd,
    send_lock: Mutex<()>,
    recv: Mutex<RecvState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send_error(e: io::Error) -> SendError {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
            SendError::Disconnected
        }
        _ => SendError::Io(e),
    }
}

fn recv_error(e: io::Error) -> RecvError {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => RecvError::Disconnected,
        _ => RecvError::Io(e),
    }
}

impl Endpoint {
    fn new(fd: OwnedFd) -> Endpoint {
        sys::set_socket_buffers(fd.as_fd(), SOCKET_BUFFER);
        Endpoint {
            fd,
            send_lock: Mutex::new(()),
            recv: Mutex::new(RecvState::default()),
        }
    }

    fn try_clone(&self) -> Result<Endpoint, Error> {
        let fd = self
            .fd
            .try_clone()
            .map_err(Error::io("duplicating a pipe end"))?;
        Ok(Endpoint {
            fd,
            send_lock: Mutex::new(()),
            recv: Mutex::new(RecvState::default()),
        })
    }

    fn send_frame(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        let _guard = lock(&self.send_lock);
        wire::write_frame(self.fd.as_fd(), &[payload], fds).map_err(send_error)
    }

    fn send_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let encoded = wire::encode(value)?;
        if encoded.fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(SendError::Codec(crate::CodecError::new(
                "more than 250 corral handles in one message",
            )));
        }
        let fds: Vec<BorrowedFd<'_>> = encoded.fds.iter().map(|fd| fd.as_fd()).collect();
        self.send_frame(&encoded.bytes, &fds)
    }

    /// Reads the next header into `st.pending` unless one is waiting.
    fn next_header(&self, st: &mut RecvState) -> Result<(), RecvError> {
        if st.pending.is_some() {
            return Ok(());
        }
        let mut header = [0u8; 12];
        let mut fds = Vec::new();
        let mut got = 0;
        let mut need = 4;
        // A reply usually comes within a few tens of microseconds; watching
        // for it that long is far cheaper than sleeping and being woken
        // (35-60 µs across CPUs on small VMs). Then block.
        let spin_until = Instant::now() + SPIN;
        loop {
            while got < need {
                let block = got > 0 || Instant::now() >= spin_until;
                let n = match sys::recv_with_fds_flags(
                    self.fd.as_fd(),
                    &mut header[got..need],
                    &mut fds,
                    block,
                ) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && !block => {
                        std::hint::spin_loop();
                        continue;
                    }
                    other => other,
                }
                .map_err(recv_error)?;
                if n == 0 {
                    return Err(if got == 0 {
                        RecvError::Disconnected
                    } else {
                        WireError::Truncated {
                            expected: need as u64,
                            received: got as u64,
                        }
                        .into()
                    });
                }
                got += n;
            }
            match parse_header(&header[..got], wire::MAX_FRAME)? {
                Some((len, _)) => {
                    st.pending = Some((len as usize, fds));
                    return Ok(());
                }
                None => need = 12,
            }
        }
    }

    /// Reads the pending message's payload.
    fn take_payload(&self, st: &mut RecvState) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        let (len, mut fds) = st.pending.take().expect("a pending header");
        let bytes = read_exact_growing(self.fd.as_fd(), len, &mut fds).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                RecvError::Wire(WireError::Truncated {
                    expected: len as u64,
                    received: 0,
                })
            } else {
                recv_error(e)
            }
        })?;
        Ok((bytes, fds))
    }

    fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        let mut st = lock(&self.recv);
        self.next_header(&mut st)?;
        Ok(self.take_payload(&mut st)?.0)
    }

    fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let mut st = lock(&self.recv);
        self.next_header(&mut st)?;
        let (len, _) = st.pending.as_ref().expect("a pending header");
        let len = *len;
        if len > buf.len() {
            return Err(RecvError::BufferTooSmall { needed: len });
        }
        let (_, mut fds) = st.pending.take().expect("a pending header");
        let mut filled = 0;
        while filled < len {
            let n = sys::recv_with_fds(self.fd.as_fd(), &mut buf[filled..len], &mut fds)
                .map_err(recv_error)?;
            if n == 0 {
                return Err(WireError::Truncated {
                    expected: len as u64,
                    received: filled as u64,
                }
                .into());
            }
            filled += n;
        }
        Ok(len)
    }

    fn recv_frame(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        let mut st = lock(&self.recv);
        self.next_header(&mut st)?;
        self.take_payload(&mut st)
    }

    fn recv_value<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let mut st = lock(&self.recv);
        self.next_header(&mut st)?;
        let (bytes, fds) = self.take_payload(&mut st)?;
        drop(st);
        Ok(wire::decode(&bytes, fds)?)
    }

    fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
        if lock(&self.recv).pending.is_some() {
            return Ok(true);
        }
        Ok(sys::poll_readable(&[self.fd.as_fd()], timeout).map_err(RecvError::Io)?[0])
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeEnd").field("fd", &self.fd).finish()
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.fd.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        // Handles arrive in whatever mode the sender left them.
        let _ = sys::set_nonblocking(fd.as_fd(), false);
        Ok(Endpoint {
            fd,
            send_lock: Mutex::new(()),
            recv: Mutex::new(RecvState::default()),
        })
    }
}

/// One end of a duplex pipe: sends and receives.
///
/// # Examples
///
/// ```no_run
/// use corral::{Connection, Pipe};
/// fn echo(conn: Connection) {
///     while let Ok(bytes) = conn.recv_bytes() {
///         conn.send_bytes(&bytes).unwrap();
///     }
/// }
/// corral::init();
/// let (ours, theirs) = Pipe::duplex().unwrap();
/// let child = corral::spawn(echo, theirs).unwrap();
/// ours.send_bytes(b"hi").unwrap();
/// assert_eq!(ours.recv_bytes().unwrap(), b"hi");
/// drop(ours);
/// child.join().unwrap();
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Connection(Endpoint);

/// The sending end of a simplex pipe.
///
/// # Examples
///
/// ```
/// let (rx, tx) = corral::Pipe::simplex().unwrap();
/// tx.send(&vec![1u8, 2, 3]).unwrap();
/// assert_eq!(rx.recv::<Vec<u8>>().unwrap(), [1, 2, 3]);
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sender(Endpoint);

/// The receiving end of a simplex pipe.
///
/// # Examples
///
/// ```
/// let (rx, tx) = corral::Pipe::simplex().unwrap();
/// drop(tx);
/// assert!(matches!(rx.recv::<u8>(), Err(corral::RecvError::Disconnected)));
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Receiver(Endpoint);

macro_rules! sending {
    ($ty:ident) => {
        impl $ty {
            /// Sends a value (Python's `send`). Handles inside it (pipe ends,
            /// ...) travel with it.
            ///
            /// # Errors
            ///
            /// [`SendError::Disconnected`] if the other end is closed;
            /// [`SendError::Codec`] if the value cannot be serialized (nothing
            /// was sent).
            pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
                self.0.send_value(value)
            }

            /// Sends raw bytes, framed like Python's `send_bytes`.
            ///
            /// # Errors
            ///
            /// [`SendError::Disconnected`] if the other end is closed.
            pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
                self.0.send_frame(bytes, &[])
            }
        }
    };
}

macro_rules! receiving {
    ($ty:ident) => {
        impl $ty {
            /// Receives a value sent with `send`, blocking until one arrives.
            ///
            /// # Errors
            ///
            /// [`RecvError::Disconnected`] at end of file;
            /// [`RecvError::Codec`] if the bytes are not a `T`;
            /// [`RecvError::Wire`] for a malformed frame.
            pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
                self.0.recv_value()
            }

            /// Like [`recv`](Self::recv), but fails with
            /// [`RecvError::Timeout`] if nothing starts arriving within
            /// `timeout`.
            pub fn recv_timeout<T: DeserializeOwned>(
                &self,
                timeout: Duration,
            ) -> Result<T, RecvError> {
                if !self.0.poll(Some(timeout))? {
                    return Err(RecvError::Timeout);
                }
                self.0.recv_value()
            }

            /// Receives one bytes message.
            ///
            /// # Errors
            ///
            /// As [`recv`](Self::recv), less the codec.
            pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
                self.0.recv_bytes()
            }

            /// Receives one bytes message into `buf` and returns its length.
            ///
            /// # Errors
            ///
            /// [`RecvError::BufferTooSmall`] with the size needed if the
            /// message does not fit; the message then stays queued for the
            /// next call.
            pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
                self.0.recv_bytes_into(buf)
            }

            /// Whether a message (or end of file) is waiting, waiting up to
            /// `timeout` (`None`: no limit; zero: just look).
            ///
            /// # Errors
            ///
            /// [`RecvError::Io`] if polling fails.
            pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
                self.0.poll(timeout)
            }

            pub(crate) fn fd(&self) -> BorrowedFd<'_> {
                self.0.fd.as_fd()
            }

            /// Receives one frame and the descriptors that came with it.
            #[allow(dead_code, reason = "not every end type uses it")]
            pub(crate) fn recv_frame(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
                self.0.recv_frame()
            }
        }
    };
}

macro_rules! cloning {
    ($ty:ident) => {
        impl $ty {
            /// A second handle on the same end (a duplicated descriptor).
            ///
            /// # Errors
            ///
            /// [`Error::Io`] if the system is out of descriptors.
            pub fn try_clone(&self) -> Result<$ty, Error> {
                Ok($ty(self.0.try_clone()?))
            }
        }
    };
}

sending!(Connection);
receiving!(Connection);
cloning!(Connection);
sending!(Sender);
cloning!(Sender);
receiving!(Receiver);
cloning!(Receiver);

macro_rules! from_socket {
    ($ty:ident) => {
        impl From<OwnedFd> for $ty {
            /// Wraps a connected Unix stream socket, like Python's
            /// `Connection(handle)`. The peer must speak corral's framing (a
            /// Python `multiprocessing.connection` peer does, for bytes).
            fn from(socket: OwnedFd) -> $ty {
                let _ = sys::set_nonblocking(socket.as_fd(), false);
                $ty(Endpoint::new(socket))
            }
        }

        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.0.fd.as_fd()
            }
        }
    };
}

from_socket!(Connection);
from_socket!(Sender);
from_socket!(Receiver);
