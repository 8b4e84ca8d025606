//! Outcomes as they cross from a worker to its supervisor: *entries*,
//! published in the worker's results [`ring`] without a system call.
//!
//! A worker killed anywhere leaves a ring whose every published entry is
//! whole, which makes the ring the crash record as well: what a dead worker
//! finished is read from it like any other outcome.
//!
//! An entry is `[seq: u64][index: u32][tag: u8][len: u32][body]`, all little
//! endian: the batch, the item's position in it, what the body is. Entries
//! may wrap around the end of the ring; the reader copies them out whole. A
//! batch ends with a [`TAG_DONE`] entry. Socket frames that carry results
//! (an entry too large for the ring, or one that found it full) hold the
//! same entries.
//!
//! A `map`'s items, many and small, end in *packs* ([`TAG_PACK`]): one
//! entry for the values of items that follow each other, from `index` on,
//! each `[len: u32][value]`. An entry per item cost a `map` of small items
//! its header, a publication and a clock read in the worker and a parse in
//! the supervisor, about a third of its CPU (`bench/README.md`).

use super::ring;

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
/// Entry tag: a pack, the encoded values of items `index`, `index + 1`,
/// and on, each `[len: u32][value]` (see [`pack_next`]).
pub(super) const TAG_PACK: u8 = 5;

/// Bytes before each value of a pack.
pub(super) const PACK_ITEM_HEADER: usize = 4;

/// The first value of a pack's `body` and the rest; `None` at its end (or
/// where the bytes stop making sense).
#[inline]
pub(super) fn pack_next(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let len: [u8; PACK_ITEM_HEADER] = body.get(..PACK_ITEM_HEADER)?.try_into().ok()?;
    let end = PACK_ITEM_HEADER.checked_add(u32::from_le_bytes(len) as usize)?;
    Some((body.get(PACK_ITEM_HEADER..end)?, &body[end..]))
}

/// Appends the header of a pack's next value to `out` (its length is
/// filled in by [`seal_pack_item`]); returns where it starts.
#[inline]
pub(super) fn open_pack_item(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; PACK_ITEM_HEADER]);
    at
}

/// Fills in the length of the pack value opened at `at`; returns the
/// length's bytes as written.
#[inline]
pub(super) fn seal_pack_item(out: &mut [u8], at: usize) -> [u8; PACK_ITEM_HEADER] {
    let len = ((out.len() - at - PACK_ITEM_HEADER) as u32).to_le_bytes();
    out[at..at + PACK_ITEM_HEADER].copy_from_slice(&len);
    len
}

/// Room kept free for [`TAG_DONE`] entries: a worker holds at most a few
/// batches whose end the supervisor has not read, so an end always fits.
const DONE_RESERVE: usize = 8 * ring::padded(ENTRY_HEADER);

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

/// The entries of a ring's bytes or a result frame (each padded to a
/// multiple of 8 in a ring), in order; stops at the first malformed one.
/// [`peek`](Entries::peek) looks at the next without taking it, so a reader
/// can hand runs of them to different sinks without an adapter per item.
#[derive(Clone, Debug)]
pub(super) struct Entries<'a> {
    bytes: &'a [u8],
}

impl<'a> Entries<'a> {
    /// The next entry, left in place.
    #[inline]
    pub(super) fn peek(&self) -> Option<Entry<'a>> {
        let header: &[u8; ENTRY_HEADER] = self.bytes.get(..ENTRY_HEADER)?.try_into().ok()?;
        let len = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes")) as usize;
        Some(Entry {
            seq: u64::from_le_bytes(header[..8].try_into().expect("8 bytes")),
            index: u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")),
            tag: header[12],
            body: self.bytes.get(ENTRY_HEADER..ENTRY_HEADER + len)?,
        })
    }

    /// Passes over `entry`, which [`peek`](Entries::peek) just returned.
    #[inline]
    pub(super) fn pass(&mut self, entry: &Entry<'_>) {
        // Entries in a ring are padded to its step (a frame holds one).
        let next = ring::padded(ENTRY_HEADER + entry.body.len()).min(self.bytes.len());
        self.bytes = &self.bytes[next..];
    }

    /// The next entry if it satisfies `pred`; left in place if not.
    #[inline]
    pub(super) fn next_if(&mut self, pred: impl FnOnce(&Entry<'a>) -> bool) -> Option<Entry<'a>> {
        let entry = self.peek().filter(pred)?;
        self.pass(&entry);
        Some(entry)
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    #[inline]
    fn next(&mut self) -> Option<Entry<'a>> {
        self.next_if(|_| true)
    }
}

/// The entries of `bytes`.
pub(super) fn entries(bytes: &[u8]) -> Entries<'_> {
    Entries { bytes }
}

/// Publishes `entry` in a results ring; false if it does not fit, beyond
/// the room kept for batch ends unless it is one.
#[inline]
pub(super) fn publish(ring: &mut ring::Writer<'_>, entry: &[u8]) -> bool {
    let keep = if entry.get(12) == Some(&TAG_DONE) {
        0
    } else {
        DONE_RESERVE
    };
    ring.push(entry, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SharedRegion;

    const CAP: usize = 512;

    fn at(region: &SharedRegion) -> ring::RingAt<'_> {
        ring::RingAt {
            mem: region,
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
    fn entries_cross_whole_and_in_order() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = ring::Writer::new(at(&region));
        let mut out = Vec::new();
        for i in 0..200u32 {
            let e = entry(
                u64::from(i / 10),
                i,
                TAG_VALUE,
                &vec![i as u8; (i as usize * 7) % 40],
            );
            while !publish(&mut w, &e) {
                assert!(ring::drain(at(&region), &mut out).expect("sane positions"));
            }
        }
        ring::drain(at(&region), &mut out).expect("sane positions");
        let seen: Vec<u32> = entries(&out)
            .inspect(|e| {
                assert_eq!(e.seq, u64::from(e.index / 10));
                assert_eq!(e.body, vec![e.index as u8; (e.index as usize * 7) % 40]);
            })
            .map(|e| e.index)
            .collect();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_pack_gives_its_values_in_order_and_stops_at_nonsense() {
        let mut out = Vec::new();
        let at = open_entry(&mut out, 3, 10);
        for value in [&b"one"[..], b"", b"three"] {
            let item = open_pack_item(&mut out);
            out.extend_from_slice(value);
            seal_pack_item(&mut out, item);
        }
        close_entry(&mut out, at, TAG_PACK);
        let entry = entries(&out).next().expect("an entry");
        assert_eq!((entry.seq, entry.index, entry.tag), (3, 10, TAG_PACK));
        let mut body = entry.body;
        let mut values = Vec::new();
        while let Some((value, rest)) = pack_next(body) {
            values.push(value);
            body = rest;
        }
        assert_eq!(values, [&b"one"[..], b"", b"three"]);
        // A length past the end, or a header cut short, ends the pack.
        assert_eq!(pack_next(&[9, 0, 0, 0, 1, 2]), None);
        assert_eq!(pack_next(&[1, 0]), None);
    }

    #[test]
    fn a_full_ring_keeps_room_for_batch_ends() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + CAP).expect("region");
        let mut w = ring::Writer::new(at(&region));
        let big = entry(1, 0, TAG_VALUE, &[7; 200]);
        assert!(publish(&mut w, &big));
        assert!(
            !publish(&mut w, &big),
            "a second would eat the batch-end reserve"
        );
        assert!(publish(&mut w, &entry(1, 0, TAG_DONE, &[])));
        let mut out = Vec::new();
        assert!(ring::drain(at(&region), &mut out).expect("sane positions"));
        let tags: Vec<u8> = entries(&out).map(|e| e.tag).collect();
        assert_eq!(tags, [TAG_VALUE, TAG_DONE]);
    }
}
