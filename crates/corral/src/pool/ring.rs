//! A byte ring between a pool's supervisor and one worker, in the worker's
//! shared region: one writer, one reader, no lock, no system call.
//!
//! The writer copies bytes in at `tail` and publishes them by moving
//! `tail` (release); the reader copies what lies between its `head` and
//! `tail` out, then moves `head` on (release), which gives the room back.
//! Positions only grow and count bytes; `position % capacity` is where they
//! land, and a write may wrap around the end. Nothing is visible before the
//! single store that publishes it, so a process killed anywhere leaves a
//! ring whose every published byte is whole.
//!
//! A worker has two: its results ring (entries, see
//! [`super::results`]) and its task ring (batches, see [`super::worker`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::SharedRegion;

/// Where a ring lies in a region, and the two positions that govern it.
#[derive(Clone, Copy)]
pub(super) struct RingAt<'a> {
    pub(super) region: &'a SharedRegion,
    /// Offset of the ring's bytes in the region.
    pub(super) offset: usize,
    pub(super) capacity: usize,
    /// Bytes published (written by the writer only).
    pub(super) tail: &'a AtomicU64,
    /// Bytes consumed (written by the reader only).
    pub(super) head: &'a AtomicU64,
}

/// The writing end of a ring.
pub(super) struct Writer<'a> {
    ring: RingAt<'a>,
    tail: u64,
    /// The reader's `head` as last read: reread only when the ring looks
    /// full.
    head: u64,
}

impl<'a> Writer<'a> {
    pub(super) fn new(ring: RingAt<'a>) -> Writer<'a> {
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        Writer { ring, tail, head }
    }

    /// Whether `len` bytes would fit now.
    pub(super) fn has_room(&mut self, len: usize) -> bool {
        let cap = self.ring.capacity as u64;
        if cap - (self.tail - self.head) < len as u64 {
            self.head = self.ring.head.load(Ordering::Acquire);
        }
        cap.saturating_sub(self.tail.saturating_sub(self.head)) >= len as u64
    }

    /// Publishes `bytes` if that leaves at least `keep` bytes free; false,
    /// writing nothing, if not.
    #[inline]
    pub(super) fn push(&mut self, bytes: &[u8], keep: u64) -> bool {
        if !self.has_room(bytes.len() + keep as usize) {
            return false;
        }
        let cap = self.ring.capacity as u64;
        let at = (self.tail % cap) as usize;
        let first = bytes.len().min(self.ring.capacity - at);
        let region = self.ring.region;
        region.store_bytes(self.ring.offset + at, &bytes[..first]);
        if first < bytes.len() {
            region.store_bytes(self.ring.offset, &bytes[first..]);
        }
        self.tail += bytes.len() as u64;
        self.ring.tail.store(self.tail, Ordering::Release);
        true
    }
}

/// Whether anything is published that the reader has not consumed.
#[inline]
pub(super) fn nonempty(ring: RingAt<'_>) -> bool {
    ring.tail.load(Ordering::Acquire) != ring.head.load(Ordering::Relaxed)
}

/// The reading end: appends what was published since the last call to
/// `out` and consumes it. `Err` if the positions make no sense (the other
/// side wrote them wrong: it is not one of ours any more).
pub(super) fn drain(ring: RingAt<'_>, out: &mut Vec<u8>) -> Result<bool, ()> {
    let tail = ring.tail.load(Ordering::Acquire);
    let head = ring.head.load(Ordering::Relaxed);
    if tail == head {
        return Ok(false);
    }
    let cap = ring.capacity as u64;
    if tail < head || tail - head > cap {
        return Err(());
    }
    let at = (head % cap) as usize;
    let len = (tail - head) as usize;
    let first = len.min(ring.capacity - at);
    ring.region.load_append(ring.offset + at, first, out);
    if first < len {
        ring.region.load_append(ring.offset, len - first, out);
    }
    ring.head.store(tail, Ordering::Release);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 256;

    fn ring(region: &SharedRegion) -> RingAt<'_> {
        RingAt {
            region,
            offset: 64,
            capacity: CAP,
            tail: region.word64(0),
            head: region.word64(8),
        }
    }

    #[test]
    fn bytes_wrap_around_and_arrive_whole_in_order() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = Writer::new(ring(&region));
        let mut sent = Vec::new();
        let mut out = Vec::new();
        // Pieces of varying sizes, read every few pushes: they straddle the
        // ring's end many times.
        for i in 0..300u32 {
            let piece = vec![i as u8; (i as usize * 7) % 90];
            while !w.push(&piece, 0) {
                assert!(drain(ring(&region), &mut out).expect("sane positions"));
            }
            sent.extend_from_slice(&piece);
            if i % 3 == 0 {
                drain(ring(&region), &mut out).expect("sane positions");
            }
        }
        drain(ring(&region), &mut out).expect("sane positions");
        assert_eq!(out, sent);
    }

    #[test]
    fn a_push_leaves_the_room_asked_for() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = Writer::new(ring(&region));
        assert!(w.push(&[1; 100], 50));
        assert!(!w.push(&[2; 100], 57), "only 156 bytes are free");
        assert!(w.push(&[3; 100], 56));
        assert!(!w.push(&[4; 57], 0), "56 bytes are left");
        let mut out = Vec::new();
        assert!(drain(ring(&region), &mut out).expect("sane positions"));
        assert_eq!(out.len(), 200);
        assert!(w.push(&[5; 200], 56), "room again once read");
    }

    #[test]
    fn nonsense_positions_are_refused() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        region.word64(0).store(CAP as u64 + 1, Ordering::Relaxed);
        assert!(drain(ring(&region), &mut Vec::new()).is_err());
    }
}
