//! The pipe end types and their framing on a Unix stream socket.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::poison::lock;
use crate::spin::SpinBudget;
use crate::wire::{self, FrameReader, Progress};
use crate::{Error, RecvError, SendError, WireError, sys};

/// Socket buffer size requested for pipes (the kernel caps it at `wmem_max`):
/// large buffers let a 1 MiB message cross in few system calls.
const SOCKET_BUFFER: usize = 4 << 20;

/// Longest a receiver watches for a message before it sleeps.
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

/// A frame's payload and the descriptors that came with it.
type Frame = (Vec<u8>, Vec<OwnedFd>);

struct RecvState {
    /// The frame being read: partial frames survive a timeout, so the stream
    /// is never torn, and several threads receiving on one end share it.
    reader: FrameReader,
    /// Descriptors that came with the frame being read.
    fds: Vec<OwnedFd>,
    /// A whole frame not taken yet (`recv_bytes_into` got too small a buffer).
    ready: Option<Frame>,
}

impl RecvState {
    fn new() -> Mutex<RecvState> {
        Mutex::new(RecvState {
            reader: FrameReader::new(wire::MAX_FRAME),
            fds: Vec::new(),
            ready: None,
        })
    }
}

struct Endpoint {
    fd: OwnedFd,
    send_lock: Mutex<()>,
    recv: Mutex<RecvState>,
    /// How long a receive watches before it sleeps, learnt.
    watch: SpinBudget,
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
            recv: RecvState::new(),
            watch: SpinBudget::new(SPIN),
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
            recv: RecvState::new(),
            watch: SpinBudget::new(SPIN),
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

    /// Receives one whole frame, waiting at most until `deadline` (`None`:
    /// no limit) for all of it, however slowly it arrives. The receive state
    /// is locked only while bytes are read, never while waiting, so a thread
    /// blocked here holds up no other receiver's deadline.
    fn recv_frame_until(&self, deadline: Option<Instant>) -> Result<Frame, RecvError> {
        // A reply usually comes within a few tens of microseconds; watching
        // for it that long is far cheaper than sleeping and being woken
        // (35-60 µs across CPUs on small VMs), while the sender has a CPU
        // (see `SpinBudget`). Then sleep in poll.
        if let Some(frame) = self.try_frame()? {
            return Ok(frame);
        }
        let start = Instant::now();
        let watch_until = self.watch.watch_until(start);
        let mut slept = false;
        loop {
            if let Some(frame) = self.try_frame()? {
                if slept {
                    self.watch.missed();
                } else {
                    self.watch.caught(start.elapsed());
                }
                return Ok(frame);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(RecvError::Timeout);
            }
            if now < watch_until {
                std::hint::spin_loop();
                continue;
            }
            slept = true;
            let left = deadline.map(|d| d.saturating_duration_since(now));
            sys::poll_readable(&[self.fd.as_fd()], left).map_err(RecvError::Io)?;
        }
    }

    /// Reads what has arrived without blocking; a frame once one is whole.
    fn try_frame(&self) -> Result<Option<Frame>, RecvError> {
        let mut st = lock(&self.recv);
        if let Some(frame) = st.ready.take() {
            return Ok(Some(frame));
        }
        let RecvState { reader, fds, .. } = &mut *st;
        let fd = self.fd.as_fd();
        match reader.read_with(|buf| sys::recv_with_fds_flags(fd, buf, fds, false)) {
            Ok(Progress::Frame(bytes)) => Ok(Some((bytes, std::mem::take(fds)))),
            Ok(Progress::Pending) => Ok(None),
            Ok(Progress::Eof) => Err(RecvError::Disconnected),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                match e.into_inner().map(|inner| inner.downcast::<WireError>()) {
                    Some(Ok(wire)) => Err(RecvError::Wire(*wire)),
                    Some(Err(other)) => Err(RecvError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        other,
                    ))),
                    None => Err(RecvError::Io(io::ErrorKind::InvalidData.into())),
                }
            }
            Err(e) => Err(recv_error(e)),
        }
    }

    fn recv_bytes(&self, deadline: Option<Instant>) -> Result<Vec<u8>, RecvError> {
        Ok(self.recv_frame_until(deadline)?.0)
    }

    fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let (bytes, fds) = self.recv_frame_until(None)?;
        let len = bytes.len();
        if len > buf.len() {
            lock(&self.recv).ready = Some((bytes, fds));
            return Err(RecvError::BufferTooSmall { needed: len });
        }
        buf[..len].copy_from_slice(&bytes);
        Ok(len)
    }

    fn recv_frame(&self) -> Result<Frame, RecvError> {
        self.recv_frame_until(None)
    }

    fn recv_value<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let (bytes, fds) = self.recv_frame_until(deadline)?;
        Ok(wire::decode(&bytes, fds)?)
    }

    fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
        if lock(&self.recv).ready.is_some() {
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
            recv: RecvState::new(),
            watch: SpinBudget::new(SPIN),
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
                self.0.recv_value(None)
            }

            /// Like [`recv`](Self::recv), but fails with
            /// [`RecvError::Timeout`] unless a whole message has arrived
            /// within `timeout`. The limit bounds the whole call: a sender
            /// that stalls mid-message, or other threads receiving on the
            /// same end, cannot make it wait longer. Part of a message that
            /// arrived is kept for the next call.
            pub fn recv_timeout<T: DeserializeOwned>(
                &self,
                timeout: Duration,
            ) -> Result<T, RecvError> {
                self.0.recv_value(crate::time::deadline(timeout))
            }

            /// [`recv_bytes`](Self::recv_bytes) with a time limit on the
            /// whole call, as [`recv_timeout`](Self::recv_timeout).
            ///
            /// # Examples
            ///
            /// ```
            /// use std::time::Duration;
            /// use corral::RecvError;
            /// let (rx, tx) = corral::Pipe::simplex().unwrap();
            /// let nothing = rx.recv_bytes_timeout(Duration::from_millis(10));
            /// assert!(matches!(nothing, Err(RecvError::Timeout)));
            /// tx.send_bytes(b"hi").unwrap();
            /// assert_eq!(rx.recv_bytes_timeout(Duration::from_secs(5)).unwrap(), b"hi");
            /// ```
            pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
                self.0.recv_bytes(crate::time::deadline(timeout))
            }

            /// Receives one bytes message.
            ///
            /// # Errors
            ///
            /// As [`recv`](Self::recv), less the codec.
            pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
                self.0.recv_bytes(None)
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
            pub(crate) fn recv_frame(&self) -> Result<Frame, RecvError> {
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
