//! Function addresses as data.
//!
//! A task crosses into a child as a pair of code offsets (the typed entry
//! trampoline and the user's `fn(A) -> R`) measured from [`anchor`], a function
//! of this crate. Offsets, unlike raw addresses, survive re-execution under
//! address-space layout randomisation. They are only meaningful in the very
//! same binary, which the child checks ([`super::executable_identity`]) before
//! turning an offset back into a function pointer.

use std::hint::black_box;

#[inline(never)]
fn anchor() -> usize {
    black_box(0x636f7272616c)
}

fn anchor_addr() -> usize {
    anchor as fn() -> usize as usize
}

/// The offset of a code address from the anchor.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

/// The code address at `offset` from the anchor, in this process.
pub(crate) fn addr_at(offset: i64) -> usize {
    anchor_addr().wrapping_add(offset as usize)
}

/// The address of a function pointer.
pub(crate) fn fn_addr<A, R>(f: fn(A) -> R) -> usize {
    f as usize
}

/// Turns an address back into a function pointer.
///
/// # Safety
///
/// `addr` must be the address of a function of exactly the type `fn(A) -> R`
/// in this process image: an address produced by [`fn_addr`] for the same
/// `A` and `R` in a process running the same binary, translated with
/// [`offset_of`] / [`addr_at`].
pub(crate) unsafe fn fn_at<A, R>(addr: usize) -> fn(A) -> R {
    debug_assert!(addr != 0);
    // SAFETY: fn pointers and usize have the same size and the caller
    // guarantees that `addr` is a function of this exact type.
    unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) }
}

/// Proof that the running binary is the one a start message was made for.
///
/// Only [`Verified::check`] makes one, so code offsets are only ever resolved
/// after the identity check.
#[derive(Debug)]
pub(crate) struct Verified(());

/// The signature of a task entry point (a monomorphized trampoline).
pub(crate) type Entry =
    fn(&Verified, i64, &[u8], Vec<std::os::fd::OwnedFd>) -> crate::start::bootstrap::Outcome;

/// The signature of a pool job entry point (a monomorphized loop that runs
/// the function at the given offset on each item of a job).
pub(crate) type JobEntry = fn(
    &Verified,
    i64,
    &crate::pool::JobMsg<'_>,
    &mut std::vec::IntoIter<std::os::fd::OwnedFd>,
    &mut crate::pool::Recorder<'_>,
) -> Result<(), crate::SendError>;

impl Verified {
    /// Checks that `identity` names this very binary.
    pub(crate) fn check(identity: &[u8]) -> Result<Verified, String> {
        let own = super::executable_identity();
        if identity == own {
            Ok(Verified(()))
        } else {
            Err(format!(
                "the parent runs a different binary ({}) than this child ({}); \
                 rebuild and restart both from the same build",
                String::from_utf8_lossy(identity),
                String::from_utf8_lossy(own)
            ))
        }
    }

    /// The entry point at `offset` from the anchor.
    pub(crate) fn entry(&self, offset: i64) -> Entry {
        let addr = addr_at(offset);
        // SAFETY: the identity check proved that this is the binary in which
        // the parent computed `offset` from an `Entry` function, so `addr` is
        // that function's address here.
        unsafe { std::mem::transmute::<usize, Entry>(addr) }
    }

    /// The pool job entry point at `offset` from the anchor.
    pub(crate) fn job_entry(&self, offset: i64) -> JobEntry {
        let addr = addr_at(offset);
        // SAFETY: the identity check proved that this is the binary in which
        // the parent computed `offset` from a `JobEntry` function.
        unsafe { std::mem::transmute::<usize, JobEntry>(addr) }
    }

    /// The user function at `offset`, typed as the entry point that the parent
    /// paired it with.
    pub(crate) fn func<A, R>(&self, offset: i64) -> fn(A) -> R {
        // SAFETY: the identity check proved the binary is the same; the parent
        // computed `offset` from a `fn(A) -> R` and paired it with the entry
        // monomorphized for the same `A` and `R`, which is the caller.
        unsafe { fn_at::<A, R>(addr_at(offset)) }
    }
}
