//! Shared memory mappings: a memfd mapped `MAP_SHARED`, so every process
//! that holds the descriptor sees the same bytes.
//!
//! # Safety
//!
//! A [`SharedRegion`] owns its mapping for its whole life, so every pointer
//! derived from it is valid until `Drop`. Other processes may write the same
//! bytes at any time; the region therefore never hands out `&[u8]` or
//! `&mut [u8]` over shared bytes. Words are reached as atomics, and bytes are
//! copied in and out with raw pointer copies ([`SharedRegion::store_bytes`],
//! [`SharedRegion::load_bytes`]), whose callers publish and observe them
//! through those atomics (release / acquire).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::mm::{MapFlags, ProtFlags};

/// A shared, fixed-size memory region backed by an anonymous memfd.
///
/// The region disappears when the last descriptor and the last mapping are
/// gone, in whichever process: it cannot outlive its users.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics and raw
// copies (see the module docs); a pointer to it is as good in any thread.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; `&SharedRegion` only offers atomic words and raw copies.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes (rounded up to 8).
    pub(crate) fn create(name: &std::ffi::CStr, len: usize) -> io::Result<SharedRegion> {
        let len = len.max(8).next_multiple_of(8);
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        SharedRegion::map(fd)
    }

    /// Maps a region received from another process.
    pub(crate) fn map(fd: OwnedFd) -> io::Result<SharedRegion> {
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len < 8 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a shared region of {len} bytes is not a corral region"),
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) cannot
        // overlap any Rust object; `fd` is a regular file of `len` bytes.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(SharedRegion { fd, ptr, len })
    }

    /// The `index`-th 8-byte word as an atomic.
    ///
    /// # Panics
    ///
    /// If the word lies outside the region.
    pub(crate) fn word(&self, index: usize) -> &AtomicU64 {
        assert!(
            (index + 1) * 8 <= self.len,
            "word {index} outside the region"
        );
        // SAFETY: in bounds (checked), 8-aligned (mmap is page aligned), valid
        // for the life of `&self`; shared words are only ever accessed
        // atomically, by every process.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(index * 8).cast::<u64>()) }
    }

    /// Copies `bytes` into the region at `offset`.
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    pub(crate) fn store_bytes(&self, offset: usize, bytes: &[u8]) {
        let end = offset.checked_add(bytes.len()).expect("range overflow");
        assert!(end <= self.len, "bytes {offset}..{end} outside the region");
        // SAFETY: the destination range is inside the mapping (checked) and
        // cannot overlap `bytes`, which is ordinary process memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    /// Copies `len` bytes out of the region at `offset`.
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    pub(crate) fn load_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = offset.checked_add(len).expect("range overflow");
        assert!(end <= self.len, "bytes {offset}..{end} outside the region");
        let mut out = vec![0u8; len];
        // SAFETY: the source range is inside the mapping (checked); `out` is
        // a distinct allocation of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len)
        };
        out
    }
}

impl AsFd for SharedRegion {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this address and length
        // and no reference into it outlives `&self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
