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

/// The offset of a plain `fn()` (see [`Verified::action`]).
pub(crate) fn action_offset(f: fn()) -> i64 {
    offset_of(f as usize)
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

/// A 64-bit digest of this binary's identity (FNV-1a), for shared memory
/// that must record which binary wrote a code offset in it.
pub(crate) fn identity_hash() -> u64 {
    super::executable_identity()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Proof that the running binary is the one a start message was made for.
///
/// Only [`Verified::check`] makes one, so code offsets are only ever resolved
/// after the identity check.
#[derive(Debug)]
pub(crate) struct Verified(());

/// A function-pointer type that code offsets may name: the entry points
/// of the layers above (a child's task trampoline, a pool's job loop),
/// declared with [`code_pointer!`] so that this module names none of them.
pub(crate) trait CodePointer: Copy {
    /// The function at `addr`.
    ///
    /// # Safety
    ///
    /// `addr` must be a function of exactly this type in this process.
    unsafe fn from_addr(addr: usize) -> Self;
}

/// Declares a function-pointer type as a [`CodePointer`].
macro_rules! code_pointer {
    ($ty:ty) => {
        #[allow(unsafe_code)]
        impl $crate::sys::code::CodePointer for $ty {
            unsafe fn from_addr(addr: usize) -> Self {
                const {
                    assert!(size_of::<$ty>() == size_of::<usize>());
                }
                // SAFETY: the caller guarantees `addr` is a function of this
                // exact type; fn pointers and `usize` have the same size.
                unsafe { std::mem::transmute::<usize, $ty>(addr) }
            }
        }
    };
}
pub(crate) use code_pointer;

impl Verified {
    /// Checks that the binary whose identity hashes to `hash` (see
    /// [`identity_hash`]) is this one.
    pub(crate) fn check_hash(hash: u64) -> Result<Verified, String> {
        if hash == identity_hash() {
            Ok(Verified(()))
        } else {
            Err("made by a different binary than this one".into())
        }
    }

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

    /// The entry point of type `F` at `offset` from the anchor.
    ///
    /// Offsets of `F` functions are made by [`offset_of`] from an `F` in the
    /// sender; every entry type is its own `CodePointer` type, and each start
    /// message names the type of its entry by where it is read (a child's
    /// start message holds an `Entry`, a pool batch a `JobEntry`).
    pub(crate) fn entry<F: CodePointer>(&self, offset: i64) -> F {
        // SAFETY: the identity check proved that this is the binary in which
        // the sender computed `offset` from an `F` function, so `addr` is
        // that function's address here.
        unsafe { F::from_addr(addr_at(offset)) }
    }

    /// A plain `fn()` at `offset` (a barrier's action).
    pub(crate) fn action(&self, offset: i64) -> fn() {
        // SAFETY: the identity check proved the binary is the same, and the
        // sender computed `offset` from a `fn()` (see `action_offset`).
        unsafe { std::mem::transmute::<usize, fn()>(addr_at(offset)) }
    }

    /// The user function of type `F`, known by its type alone: `F` is
    /// zero-sized (a fn item, or a closure that captures nothing), and the
    /// entry monomorphized for it is the caller.
    pub(crate) fn by_type<F: Copy + 'static>(&self) -> F {
        // (Checked when run, not at compile time: callers choose this
        // path by `F`'s size, and the other path is compiled for it too.)
        assert!(
            size_of::<F>() == 0,
            "only a zero-sized function is known by its type"
        );
        // SAFETY: `F` is zero-sized, so a value of it has no bytes that
        // could be wrong, and it is inhabited: the sender held one, which
        // is why this job exists. It is `Copy`, so making another is what
        // the sender may do freely; and the identity check proved this is
        // the sender's binary, so `F` is the same type with the same code.
        unsafe { std::mem::zeroed::<F>() }
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
