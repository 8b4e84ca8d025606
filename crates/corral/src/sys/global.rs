//! Process-global values that every forked child gets afresh.
//!
//! After `fork` the child holds a copy of the parent's globals, including
//! mutexes that a vanished parent thread may have held at the instant of the
//! fork. A [`ForkLocal`] never hands such a copy out: each forked child bumps
//! the process generation first thing ([`new_process_generation`]) and the
//! next access builds a new value. The stale value is leaked on purpose (it may
//! be locked forever); that is one small allocation per fork generation.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};

/// What a forked child writes first thing ([`forked`]), together: a fork
/// shares the parent's pages until each is written, and each first write is
/// a page fault and a copy, so these take one page (32-byte aligned, so
/// never across two), not one each.
#[repr(C, align(32))]
struct ForkState {
    /// The process generation ([`new_process_generation`]).
    generation: AtomicU64,
    /// Forks since this process's line began watching ([`watch_forks`]): 0
    /// in the process that installed the handler, one more in each child of
    /// a `fork` after that (from corral, a `libc::fork` of the program's
    /// own, Python's `os.fork`).
    forks: AtomicU64,
    /// A descriptor every forked child closes at once, or -1: the fork
    /// server connection, which the server watches for end-of-file to learn
    /// that its parent died (a child holding a copy would keep it open).
    closed_in_children: AtomicI32,
}

static FORK_STATE: ForkState = ForkState {
    generation: AtomicU64::new(1),
    forks: AtomicU64::new(0),
    closed_in_children: AtomicI32::new(-1),
};

/// Marks the calling process as a new process: every [`ForkLocal`] is rebuilt
/// on its next access. Call it first thing in a freshly forked child.
pub(crate) fn new_process_generation() {
    FORK_STATE.generation.fetch_add(1, Ordering::AcqRel);
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A lazily built global that is distinct in every process.
pub(crate) struct ForkLocal<T: 'static> {
    slot: AtomicPtr<Slot<T>>,
    init: fn() -> T,
}

impl<T: Send + Sync + 'static> ForkLocal<T> {
    /// A global built by `init` on first access in each process.
    pub(crate) const fn new(init: fn() -> T) -> Self {
        ForkLocal {
            slot: AtomicPtr::new(ptr::null_mut()),
            init,
        }
    }

    /// The value of the current process, if it was built (never builds it).
    pub(crate) fn get_if_built(&'static self) -> Option<&'static T> {
        let generation = FORK_STATE.generation.load(Ordering::Acquire);
        let current = self.slot.load(Ordering::Acquire);
        if current.is_null() {
            return None;
        }
        // SAFETY: as in `get`: published slots are never freed.
        let slot = unsafe { &*current };
        (slot.generation == generation).then_some(&slot.value)
    }

    /// The value of the current process.
    pub(crate) fn get(&'static self) -> &'static T {
        let generation = FORK_STATE.generation.load(Ordering::Acquire);
        loop {
            let current = self.slot.load(Ordering::Acquire);
            if !current.is_null() {
                // SAFETY: a non-null pointer in `slot` came from `Box::into_raw`
                // below and is never freed once published (stale slots are
                // leaked), so it is valid for 'static and only read here.
                let slot = unsafe { &*current };
                if slot.generation == generation {
                    return &slot.value;
                }
            }
            let fresh = Box::into_raw(Box::new(Slot {
                generation,
                value: (self.init)(),
            }));
            match self
                .slot
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: `fresh` was just published and is never freed.
                Ok(_) => return unsafe { &(*fresh).value },
                Err(_) => {
                    // SAFETY: `fresh` was never published, so this thread still
                    // owns it exclusively.
                    drop(unsafe { Box::from_raw(fresh) });
                }
            }
        }
    }
}

/// Runs in every child of a `fork` (a `pthread_atfork` handler), before
/// anything else there: the child is a new process for every
/// [`ForkLocal`], drops the parent's fork server connection, and counts
/// the fork. Async-signal-safe, as such a handler must be: atomics and
/// `close`.
extern "C" fn forked() {
    FORK_STATE.forks.fetch_add(1, Ordering::Relaxed);
    new_process_generation();
    close_inherited_connection();
}

/// Installs the handler that makes every forked child a new process
/// ([`forked`]; once, later calls only read), and returns the forks so
/// far: a value made by this process compares [`forks`] with it to know
/// whether it has since been forked into a child, where it is a copy.
pub(crate) fn watch_forks() -> u64 {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: `forked` is an `extern "C" fn()` that only touches atomics
        // and closes a descriptor; glibc calls it in the child right after
        // each `fork`. Registration fails only for lack of memory
        // (`ENOMEM`); then forks go unwatched, as before it existed.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    forks()
}

/// How many forks separate this process from the one that began watching
/// (see [`ForkState::forks`]).
#[inline]
pub(crate) fn forks() -> u64 {
    FORK_STATE.forks.load(Ordering::Relaxed)
}

/// Makes `fd` (or none, for -1) the descriptor forked children close at
/// once.
pub(crate) fn close_in_forked_children(fd: RawFd) {
    FORK_STATE.closed_in_children.store(fd, Ordering::Release);
}

/// In a freshly forked child: closes its inherited copy of the descriptor
/// of [`close_in_forked_children`] (the handler does it in every fork; a
/// fork made before it was installed calls this itself).
pub(crate) fn close_inherited_connection() {
    super::close_inherited(FORK_STATE.closed_in_children.swap(-1, Ordering::AcqRel));
}
