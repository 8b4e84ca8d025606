//! Process-global values that every forked child gets afresh.
//!
//! After `fork` the child holds a copy of the parent's globals, including
//! mutexes that a vanished parent thread may have held at the instant of the
//! fork. A [`ForkLocal`] never hands such a copy out: each forked child bumps
//! the process generation first thing ([`new_process_generation`]) and the
//! next access builds a new value. The stale value is leaked on purpose (it may
//! be locked forever); that is one small allocation per fork generation.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Marks the calling process as a new process: every [`ForkLocal`] is rebuilt
/// on its next access. Call it first thing in a freshly forked child.
pub(crate) fn new_process_generation() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
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
        let generation = GENERATION.load(Ordering::Acquire);
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
        let generation = GENERATION.load(Ordering::Acquire);
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

/// Forks into this process's line since the program started: 0 in the
/// program itself, one more in each child of a `fork` (from corral, a
/// `libc::fork` of the program's own, Python's `os.fork`), counted by a
/// `pthread_atfork` handler that [`count_forks`] installs.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    // Async-signal-safe, as a handler run in a forked child must be.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Installs the handler that counts forks (once; later calls do nothing)
/// and returns the count so far: a value made by this process compares
/// [`forks`] with it to know whether it has been forked into a child
/// since, where it is only a copy.
pub(crate) fn count_forks() -> u64 {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: `forked` is an `extern "C" fn()` that only touches an
        // atomic; glibc calls it in the child right after each `fork`.
        // Registration cannot fail but for lack of memory (`ENOMEM`); then
        // forks go uncounted, as before this handler existed.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    forks()
}

/// How many forks separate this process from the program (see [`FORKS`]).
pub(crate) fn forks() -> u64 {
    FORKS.load(Ordering::Relaxed)
}
