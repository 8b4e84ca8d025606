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
//! [`SharedRegion::load_append`]), whose callers publish and observe them
//! through those atomics (release / acquire).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

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
    ///
    /// Its pages come as they are first touched. A memfd lives on the
    /// kernel's internal shmem mount, which has no size limit (`/dev/shm`'s,
    /// Docker's 64 MiB included, does not apply), so a first write can never
    /// fail for want of room (`SIGBUS`); under memory pressure the OOM
    /// killer acts, as for any allocation. Reserving the pages up front
    /// would cost ~0.8 µs per 4 KiB page for nothing (a worker's 1 MiB
    /// region: 200 µs of every worker start).
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
        SharedRegion::map_len(fd, len)
    }

    /// Maps a received byte segment of any non-zero size.
    pub(crate) fn map_any(fd: OwnedFd) -> io::Result<SharedRegion> {
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an empty shared memory segment",
            ));
        }
        SharedRegion::map_len(fd, len)
    }

    /// Creates a named POSIX shared memory object (`/dev/shm/<name>`) of
    /// `len` bytes; fails with `AlreadyExists` if the name is taken.
    pub(crate) fn create_named(name: &str, len: usize) -> io::Result<SharedRegion> {
        use rustix::shm::OFlags;
        let fd = rustix::shm::open(
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            rustix::fs::Mode::from_raw_mode(0o600),
        )?;
        // Reserve every page now: a full /dev/shm (Docker's default is 64
        // MiB) fails here rather than with SIGBUS at the first write.
        if let Err(e) = rustix::fs::ftruncate(&fd, len as u64)
            .map_err(io::Error::from)
            .and_then(|()| allocate(&fd, len))
        {
            let _ = rustix::shm::unlink(name);
            return Err(e);
        }
        SharedRegion::map_len(fd, len)
    }

    /// Opens an existing named shared memory object, whatever its size.
    pub(crate) fn open_named(name: &str) -> io::Result<SharedRegion> {
        let fd = rustix::shm::open(name, rustix::shm::OFlags::RDWR, rustix::fs::Mode::empty())?;
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the shared memory object {name:?} is empty"),
            ));
        }
        SharedRegion::map_len(fd, len)
    }

    /// Removes a named shared memory object (mappings stay valid).
    pub(crate) fn unlink_named(name: &str) -> io::Result<()> {
        Ok(rustix::shm::unlink(name)?)
    }

    /// Maps `len` bytes (at least one) of `fd`.
    fn map_len(fd: OwnedFd, len: usize) -> io::Result<SharedRegion> {
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
    #[inline]
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

    /// The typed layout `T` at the start of the region (see
    /// [`shared_layout!`](crate::sys::shared_layout)).
    ///
    /// # Panics
    ///
    /// If the region is smaller than `T`.
    pub(crate) fn layout<T: SharedLayout>(&self) -> &T {
        assert!(
            size_of::<T>() <= self.len,
            "the region is smaller than its layout"
        );
        const { assert!(align_of::<T>() <= 4096) };
        // SAFETY: in bounds (checked) and aligned (the mapping is page
        // aligned; `T` needs at most a page); `T` is made only of atomics
        // (`SharedLayout`'s contract), for which every bit pattern, zero
        // included, is valid and every access is atomic, so a `&T` into
        // memory other processes write is sound. Valid for `&self`'s life.
        unsafe { &*self.ptr.as_ptr().cast::<T>() }
    }

    /// The region's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The 4-byte word at byte `offset` (a multiple of 4) as an atomic: the
    /// unit futexes wait on.
    ///
    /// # Panics
    ///
    /// If the word lies outside the region or is misaligned.
    #[inline]
    pub(crate) fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "word32 at {offset} outside the region or misaligned"
        );
        // SAFETY: in bounds and 4-aligned (checked; the mapping is page
        // aligned), valid for the life of `&self`; accessed atomically only.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) }
    }

    /// The 8-byte word at byte `offset` (a multiple of 8) as an atomic.
    ///
    /// # Panics
    ///
    /// If the word lies outside the region or is misaligned.
    #[inline]
    pub(crate) fn word64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8), "word64 at {offset} is misaligned");
        self.word(offset / 8)
    }

    /// The address of byte `offset`, for code that reads and writes shared
    /// plain data under its own synchronisation (the `shared` module).
    ///
    /// # Panics
    ///
    /// If `offset + len` lies outside the region.
    #[inline]
    pub(crate) fn ptr_at(&self, offset: usize, len: usize) -> *mut u8 {
        let end = offset.checked_add(len).expect("range overflow");
        assert!(end <= self.len, "bytes {offset}..{end} outside the region");
        // SAFETY: `offset` is within the mapping (checked).
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Copies `out.len()` bytes out of the region at `offset` into `out`.
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    pub(crate) fn load_into(&self, offset: usize, out: &mut [u8]) {
        let src = self.ptr_at(offset, out.len());
        // SAFETY: the source range is inside the mapping (checked by
        // `ptr_at`); `out` is ordinary process memory, distinct from it.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }

    /// [`load_into`](Self::load_into) for memory not yet written (no
    /// zero-fill of the destination first): afterwards every byte of `out`
    /// is.
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    pub(crate) fn load_into_uninit(&self, offset: usize, out: &mut [MaybeUninit<u8>]) {
        let src = self.ptr_at(offset, out.len());
        // SAFETY: the source range is inside the mapping (checked by
        // `ptr_at`); `out` is ordinary process memory, distinct from it, and
        // any bytes may be written to `MaybeUninit<u8>`s.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().cast::<u8>(), out.len()) };
    }

    /// Appends `len` bytes of the region at `offset` to `out` (no zero-fill
    /// of the destination first).
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    pub(crate) fn load_append(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        let src = self.ptr_at(offset, len);
        out.reserve(len);
        // SAFETY: the source range is inside the mapping (checked by
        // `ptr_at`); `reserve` made room for `len` more bytes after
        // `out.len()`, which the copy initialises before `set_len` exposes
        // them. The two ranges are distinct allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(out.len()), len);
            out.set_len(out.len() + len);
        }
    }

    /// Copies `bytes` into the region at `offset`.
    ///
    /// # Panics
    ///
    /// If the range lies outside the region.
    #[inline]
    pub(crate) fn store_bytes(&self, offset: usize, bytes: &[u8]) {
        let n = bytes.len();
        let end = offset.checked_add(n).expect("range overflow");
        assert!(end <= self.len, "bytes {offset}..{end} outside the region");
        // SAFETY: `offset..end` is inside the mapping (checked above).
        let dst = unsafe { self.ptr.as_ptr().add(offset) };
        // A few bytes (a pack's value, at every item of a `map`) go as two
        // words that may overlap, not by a call to `memcpy`, which cost more
        // than the bytes.
        match n {
            8..=16 => {
                let first = u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"));
                let last = u64::from_ne_bytes(bytes[n - 8..].try_into().expect("8 bytes"));
                // SAFETY: both unaligned word writes lie inside
                // `offset..end`, which is inside the mapping (checked above).
                unsafe {
                    dst.cast::<u64>().write_unaligned(first);
                    dst.add(n - 8).cast::<u64>().write_unaligned(last);
                }
            }
            4..8 => {
                let first = u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
                let last = u32::from_ne_bytes(bytes[n - 4..].try_into().expect("4 bytes"));
                // SAFETY: both unaligned word writes lie inside
                // `offset..end`, which is inside the mapping (checked above).
                unsafe {
                    dst.cast::<u32>().write_unaligned(first);
                    dst.add(n - 4).cast::<u32>().write_unaligned(last);
                }
            }
            // SAFETY: the destination range is inside the mapping (checked
            // above) and cannot overlap `bytes`, ordinary process memory.
            _ => unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n) },
        }
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

/// Allocates the first `len` bytes of `fd`'s file (no-op for 0).
fn allocate(fd: &OwnedFd, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    loop {
        match rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), 0, len as u64) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            // A file system without fallocate: nothing to reserve with.
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A `#[repr(C)]` struct made only of atomics (and arrays or structs of
/// them), which may therefore be viewed in shared memory: every bit
/// pattern is valid and every access is atomic.
///
/// # Safety
///
/// Implement it only through [`shared_layout!`](crate::sys::shared_layout),
/// which checks every field.
pub(crate) unsafe trait SharedLayout: Sync {}

// SAFETY: atomics: any bit pattern, atomic access.
unsafe impl SharedLayout for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl SharedLayout for std::sync::atomic::AtomicU32 {}
// SAFETY: an array of shared layouts has no padding of its own and is made
// of atomics only.
unsafe impl<T: SharedLayout, const N: usize> SharedLayout for [T; N] {}

/// Declares a `#[repr(C)]` struct of atomics that lives in shared memory
/// (viewed with [`SharedRegion::layout`]); every field's type is checked to
/// be a [`SharedLayout`] itself.
macro_rules! shared_layout {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
        }

        const _: () = {
            const fn field<T: $crate::sys::SharedLayout>() {}
            $(field::<$ty>();)*
        };

        #[allow(unsafe_code)]
        // SAFETY: `repr(C)` and every field is a `SharedLayout` (checked
        // just above), so the struct is made only of atomics.
        unsafe impl $crate::sys::SharedLayout for $name {}
    };
}
pub(crate) use shared_layout;

#[cfg(test)]
mod tests {
    use super::SharedRegion;

    /// Every length, on either side of the word paths (4 to 16 bytes) and at
    /// every alignment, lands whole and touches no byte around it.
    #[test]
    fn stored_bytes_land_whole_and_alone() {
        let region = SharedRegion::create(c"corral-test-store", 4096).expect("a region");
        for len in 0..=40usize {
            for at in 0..8usize {
                let offset = 64 + at;
                region.store_bytes(0, &[0xee; 256]);
                let bytes: Vec<u8> = (0..len as u8).map(|b| b + 1).collect();
                region.store_bytes(offset, &bytes);
                let mut back = vec![0; 256];
                region.load_into(0, &mut back);
                let mut expected = vec![0xee; 256];
                expected[offset..offset + len].copy_from_slice(&bytes);
                assert_eq!(back, expected, "{len} bytes at {offset}");
            }
        }
    }
}
