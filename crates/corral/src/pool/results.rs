//! The results ring: how a worker's outcomes reach its supervisor without a
//! system call.
//!
//! A worker appends each outcome as an *entry* to a byte ring in its shared
//! region and publishes it by moving `tail` (release); the supervisor copies
//! what lies between its `head` and `tail` out, then moves `head` on. One
//! writer, one reader, positions that only grow: nothing is ever half
//! visible, so a worker killed anywhere leaves a ring whose every published
//! entry is whole. That makes the ring the crash record as well: what a dead
//! worker finished is read from it like any other result.
//!
//! An entry is `[seq: u64][index: u32][tag: u8][len: u32][body]`, all little
//! endian: the batch, the item's position in it, what the body is. Entries
//! may wrap around the end of the ring; the reader copies them out whole. A
//! batch ends with a [`TAG_DONE`] entry. Socket frames that carry results
//! (an entry too large for the ring, or one that found it full) hold the
//! same entries.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::SharedRegion;

/// Bytes before an entry's body.
pub(super) const ENTRY_HEADER: usize = 17;

/// Entry tag: an encoded value.
pub(super) const TAG_VALUE: u8 = 0;
/// Entry tag: a postcard-encoded [`crate::RemotePanic`].
pub(super) const TAG_PANIC: u8 = 1;
/// Entry tag: a codec error message (UTF-8).
pub(super) const TAG_CODEC: u8 = 2;
/// Entry tag: skipped, the supervisor cancelled it (no body).
pub(super) const TAG_CANCELLED: u8 = 3;
/// Entry tag: the batch `seq` has ended (no body, index 0).
pub(super) const TAG_DONE: u8 = 4;

/// Room kept free for [`TAG_DONE`] entries: a worker holds at most a few
/// batches whose end the supervisor has not read, so an end always fits.
const DONE_RESERVE: u64 = 8 * ENTRY_HEADER as u64;

/// One entry parsed out of the ring or a result frame.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    pub(super) seq: u64,
    pub(super) index: u32,
    pub(super) tag: u8,
    pub(super) body: &'a [u8],
}

/// Appends the header of an entry for item `index` of batch `seq` (its tag
/// and length are filled in by [`close_entry`]); returns where it starts.
#[inline]
pub(super) fn open_entry(out: &mut Vec<u8>, seq: u64, index: u32) -> usize {
    let at = out.len();
    let mut header = [0u8; ENTRY_HEADER];
    header[..8].copy_from_slice(&seq.to_le_bytes());
    header[8..12].copy_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&header);
    at
}

/// Fills in the tag and length of the entry opened at `at`.
#[inline]
pub(super) fn close_entry(out: &mut [u8], at: usize, tag: u8) {
    let len = (out.len() - at - ENTRY_HEADER) as u32;
    out[at + 12] = tag;
    out[at + 13..at + 17].copy_from_slice(&len.to_le_bytes());
}

/// Splits entries; stops at the first malformed one.
pub(super) fn entries(mut bytes: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    std::iter::from_fn(move || {
        let header: &[u8; ENTRY_HEADER] = bytes.get(..ENTRY_HEADER)?.try_into().ok()?;
        let seq = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let index = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes")) as usize;
        let body = bytes.get(ENTRY_HEADER..ENTRY_HEADER + len)?;
        let tag = header[12];
        bytes = &bytes[ENTRY_HEADER + len..];
        Some(Entry {
            seq,
            index,
            tag,
            body,
        })
    })
}

/// Where a ring lies in a region, and the two positions that govern it.
#[derive(Clone, Copy)]
pub(super) struct RingAt<'a> {
    pub(super) region: &'a SharedRegion,
    /// Offset of the ring's bytes in the region.
    pub(super) offset: usize,
    pub(super) capacity: usize,
    /// Bytes published (written by the worker only).
    pub(super) tail: &'a AtomicU64,
    /// Bytes consumed (written by the supervisor only).
    pub(super) head: &'a AtomicU64,
}

/// The worker's end of the ring.
pub(super) struct Writer<'a> {
    ring: RingAt<'a>,
    tail: u64,
    /// The supervisor's `head` as last read: reread only when the ring
    /// looks full.
    head: u64,
}

impl<'a> Writer<'a> {
    pub(super) fn new(ring: RingAt<'a>) -> Writer<'a> {
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        Writer { ring, tail, head }
    }

    /// Publishes one entry; false if it does not fit (beyond the room kept
    /// for batch ends, unless it is one), and nothing was written.
    #[inline]
    pub(super) fn push(&mut self, entry: &[u8]) -> bool {
        let reserve = if entry.get(12) == Some(&TAG_DONE) {
            0
        } else {
            DONE_RESERVE
        };
        let need = entry.len() as u64 + reserve;
        let cap = self.ring.capacity as u64;
        if cap - (self.tail - self.head) < need {
            self.head = self.ring.head.load(Ordering::Acquire);
            if cap.saturating_sub(self.tail.saturating_sub(self.head)) < need {
                return false;
            }
        }
        let at = (self.tail % cap) as usize;
        let first = entry.len().min(self.ring.capacity - at);
        let region = self.ring.region;
        region.store_bytes(self.ring.offset + at, &entry[..first]);
        if first < entry.len() {
            region.store_bytes(self.ring.offset, &entry[first..]);
        }
        self.tail += entry.len() as u64;
        self.ring.tail.store(self.tail, Ordering::Release);
        true
    }
}

/// The supervisor's end: appends what was published since the last call to
/// `out` and consumes it. `Err` if the positions make no sense (the worker
/// wrote them wrong: it is not one of ours any more).
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

    fn entry(seq: u64, index: u32, tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = open_entry(&mut out, seq, index);
        out.extend_from_slice(body);
        close_entry(&mut out, at, tag);
        out
    }

    #[test]
    fn entries_wrap_around_and_arrive_whole_in_order() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = Writer::new(ring(&region));
        let mut seen = Vec::new();
        let mut out = Vec::new();
        // Bodies of varying sizes, read every few pushes: entries straddle
        // the ring's end many times.
        for i in 0..200u32 {
            let body = vec![i as u8; (i as usize * 7) % 40];
            let e = entry(u64::from(i / 10), i, TAG_VALUE, &body);
            while !w.push(&e) {
                assert!(drain(ring(&region), &mut out).expect("sane positions"));
            }
            if i % 3 == 0 {
                drain(ring(&region), &mut out).expect("sane positions");
            }
        }
        drain(ring(&region), &mut out).expect("sane positions");
        for e in entries(&out) {
            assert_eq!(e.seq, u64::from(e.index / 10));
            assert_eq!(e.body, vec![e.index as u8; (e.index as usize * 7) % 40]);
            seen.push(e.index);
        }
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_ring_refuses_but_keeps_room_for_batch_ends() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = Writer::new(ring(&region));
        let big = entry(1, 0, TAG_VALUE, &[7; 80]);
        assert!(w.push(&big));
        assert!(!w.push(&big), "a second would eat the batch-end reserve");
        assert!(w.push(&entry(1, 0, TAG_DONE, &[])));
        let mut out = Vec::new();
        assert!(drain(ring(&region), &mut out).expect("sane positions"));
        let tags: Vec<u8> = entries(&out).map(|e| e.tag).collect();
        assert_eq!(tags, [TAG_VALUE, TAG_DONE]);
        assert!(w.push(&big), "room again once read");
    }

    #[test]
    fn nonsense_positions_are_refused() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        region.word64(0).store(CAP as u64 + 1, Ordering::Relaxed);
        assert!(drain(ring(&region), &mut Vec::new()).is_err());
    }
}
