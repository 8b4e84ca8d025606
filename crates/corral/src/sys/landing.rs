//! A vector that other processes fill: `map_pod`'s results, which its
//! workers write into the caller's memory (`process_vm_writev`) or which
//! the caller copies out of shared memory. Its memory is not cleared first:
//! every value is written before the vector is read, and clearing it was a
//! pass over the whole vector for nothing (`calloc` clears the memory it
//! reuses, which for a vector under glibc's mmap threshold is every call
//! after the first: 8 of a `map_pod` item's 19 instructions).

use std::mem::MaybeUninit;

use bytemuck::Pod;

/// The size from which a landing asks for huge pages: a smaller one spans
/// few of them, and its faults are few anyway.
const HUGE_ADVICE: usize = 8 << 20;

/// `len` values of `T` that are written (by other processes, or through
/// [`bytes_mut`](Landing::bytes_mut)) before they become a vector
/// ([`assume_filled`](Landing::assume_filled)). Dropped unfilled, it frees
/// its memory without reading it.
pub(crate) struct Landing<T> {
    /// Capacity `len`, length 0 until [`Landing::assume_filled`].
    vec: Vec<T>,
    len: usize,
}

impl<T: Pod> Landing<T> {
    /// Room for `len` values, not written yet. From [`HUGE_ADVICE`] bytes
    /// on it asks for transparent huge pages (see
    /// [`super::prefer_huge_pages`]).
    pub(crate) fn new(len: usize) -> Landing<T> {
        let mut landing = Landing {
            vec: Vec::with_capacity(len),
            len,
        };
        if landing.byte_len() >= HUGE_ADVICE {
            super::prefer_huge_pages(landing.bytes_mut());
        }
        landing
    }

    /// The address of the first value, for another process to write to.
    pub(crate) fn addr(&mut self) -> u64 {
        self.vec.as_mut_ptr() as u64
    }

    /// The size of the values, in bytes.
    pub(crate) fn byte_len(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// The values' bytes, for this process to write.
    pub(crate) fn bytes_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let len = self.byte_len();
        let spare = &mut self.vec.spare_capacity_mut()[..self.len];
        // SAFETY: the same `len` bytes as `spare`, borrowed exclusively for
        // as long as it is; `MaybeUninit<u8>` has alignment 1 and no
        // validity requirement, so any byte (or none) may be written there.
        unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), len) }
    }

    /// The vector of the values.
    ///
    /// # Safety
    ///
    /// Every byte of the `len` values has been written: through
    /// [`bytes_mut`](Landing::bytes_mut), or at [`addr`](Landing::addr) by
    /// another process that has finished and will not write there again.
    pub(crate) unsafe fn assume_filled(mut self) -> Vec<T> {
        // SAFETY: `len` is the capacity asked for, and the caller promises
        // that all `len` values are written; `T: Pod` has no other validity
        // requirement than initialized bytes.
        unsafe { self.vec.set_len(self.len) };
        self.vec
    }
}

#[cfg(test)]
mod tests {
    use super::Landing;

    #[test]
    fn a_landing_filled_through_its_bytes_is_the_vector_of_those_bytes() {
        let mut landing = Landing::<u32>::new(3);
        assert_eq!(landing.byte_len(), 12);
        for (i, byte) in landing.bytes_mut().iter_mut().enumerate() {
            byte.write(i as u8);
        }
        // SAFETY: all 12 bytes were written just above.
        let filled = unsafe { landing.assume_filled() };
        assert_eq!(filled, [0x0302_0100, 0x0706_0504, 0x0b0a_0908]);
        // Dropped unfilled: nothing is read.
        drop(Landing::<u64>::new(1 << 20));
    }
}
