//! `SharedMemory`: a sized byte segment, anonymous or named.

use std::fmt;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, start, sys, wire};

/// A segment of shared bytes (Python's
/// `multiprocessing.shared_memory.SharedMemory`).
///
/// * [`SharedMemory::new`] makes an anonymous segment (a memfd): pass the
///   handle to children; it disappears with its last user, whoever dies.
/// * [`SharedMemory::create`] makes a named one (`/dev/shm/<name>`) that
///   unrelated processes can [`open`](SharedMemory::open). It stays until
///   [`unlink`](SharedMemory::unlink) or until the creating process ends:
///   corral's fork server removes it then, even if the creator was
///   SIGKILLed (Python's `resource_tracker` only warns about it, and leaks
///   when it is killed itself).
///
/// The bytes are shared with other processes at any moment, so the segment
/// never hands out `&[u8]`: copy in and out with [`read`](SharedMemory::read)
/// and [`write`](SharedMemory::write), use the atomic words of
/// [`atomic_u64`](SharedMemory::atomic_u64), or take
/// [`as_ptr`](SharedMemory::as_ptr) and synchronise yourself.
///
/// # Examples
///
/// ```
/// use corral::SharedMemory;
/// let shm = SharedMemory::new(4096).unwrap();
/// shm.write(100, b"hello");
/// let mut out = [0u8; 5];
/// shm.read(100, &mut out);
/// assert_eq!(&out, b"hello");
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    region: Arc<sys::SharedRegion>,
    name: Option<Arc<str>>,
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 200 || name.contains('/') || name.contains('\0') {
        return Err(Error::Unsupported(
            "a shared memory name is 1 to 200 bytes without '/' or NUL",
        ));
    }
    Ok(())
}

impl SharedMemory {
    /// An anonymous zero-filled segment of `len` bytes (at least 1).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the memory cannot be created.
    pub fn new(len: usize) -> Result<SharedMemory, Error> {
        let region = sys::SharedRegion::create(c"corral-shm", len.max(1))
            .map_err(Error::io("creating shared memory"))?;
        Ok(SharedMemory {
            region: Arc::new(region),
            name: None,
        })
    }

    /// Creates the named segment `/dev/shm/<name>` of `len` bytes.
    ///
    /// It is removed by [`SharedMemory::unlink`], or when this process
    /// ends, however it ends.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the name is taken (`AlreadyExists`) or the segment
    /// cannot be made; [`Error::Unsupported`] for a name with `/`.
    pub fn create(name: &str, len: usize) -> Result<SharedMemory, Error> {
        check_name(name)?;
        let region = sys::SharedRegion::create_named(name, len.max(1))
            .map_err(Error::io("creating a named shared memory segment"))?;
        if let Err(e) = start::runtime::track_shm(name, true) {
            let _ = sys::SharedRegion::unlink_named(name);
            return Err(e);
        }
        Ok(SharedMemory {
            region: Arc::new(region),
            name: Some(name.into()),
        })
    }

    /// Attaches to the named segment `/dev/shm/<name>`, made by this or any
    /// other program.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (`NotFound`) if there is no such segment.
    pub fn open(name: &str) -> Result<SharedMemory, Error> {
        check_name(name)?;
        let region = sys::SharedRegion::open_named(name)
            .map_err(Error::io("opening a named shared memory segment"))?;
        Ok(SharedMemory {
            region: Arc::new(region),
            name: Some(name.into()),
        })
    }

    /// Removes the name `/dev/shm/<name>`: nobody can `open` it any more;
    /// processes that have it mapped keep their mapping.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (`NotFound`) if there is no such segment.
    pub fn unlink(name: &str) -> Result<(), Error> {
        check_name(name)?;
        sys::SharedRegion::unlink_named(name)
            .map_err(Error::io("removing a named shared memory segment"))?;
        let _ = start::runtime::track_shm(name, false);
        Ok(())
    }

    /// The segment's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The segment's size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always `false`: a segment has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `out.len()` bytes at `offset` into `out`.
    ///
    /// # Panics
    ///
    /// If the range is outside the segment.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        self.region.load_into(offset, out);
    }

    /// Copies `bytes` into the segment at `offset`.
    ///
    /// # Panics
    ///
    /// If the range is outside the segment.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        self.region.store_bytes(offset, bytes);
    }

    /// The 8-byte word at byte `offset` (a multiple of 8) as an atomic,
    /// shared with every process that maps the segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::Ordering;
    /// let shm = corral::SharedMemory::new(64).unwrap();
    /// shm.atomic_u64(8).fetch_add(5, Ordering::SeqCst);
    /// assert_eq!(shm.atomic_u64(8).load(Ordering::SeqCst), 5);
    /// ```
    ///
    /// # Panics
    ///
    /// If the word is outside the segment or misaligned.
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.region.word64(offset)
    }

    /// The address of the first byte, valid while this handle (or a clone)
    /// lives. Dereferencing it is `unsafe`: other processes may write the
    /// bytes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.ptr_at(0, 0)
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("len", &self.len())
            .finish()
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire::serialize_fd(self.region.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedMemory, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        let region = sys::SharedRegion::map_any(fd).map_err(D::Error::custom)?;
        Ok(SharedMemory {
            region: Arc::new(region),
            name: None,
        })
    }
}
