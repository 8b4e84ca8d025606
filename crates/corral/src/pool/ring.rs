//! A byte ring between a pool's supervisor and one worker, in the worker's
//! shared region: one writer, one reader, no lock, no system call.
//!
//! The writer copies bytes in at `tail` and publishes them by moving
//! `tail` (release); the reader copies what lies between its `head` and
//! `tail` out, then moves `head` on (release), which gives the room back.
//! Positions only grow and count bytes, in steps of 8 (each write is padded);
//! `position % capacity` is where they land, and a write may wrap around the
//! end. Nothing is visible before the single store that publishes it, so a
//! process killed anywhere leaves a ring whose every published byte is
//! whole.
//!
//! A side with nothing to do sleeps elsewhere (a worker in its socket, the
//! supervisor in `poll`), so each direction pairs a publication with a
//! "who must be woken" word, as a Dekker pair: [`must_sleep`] and
//! [`must_wake`] for a reader that sleeps, [`owed`] and [`leave_watch`] for
//! readers that watch, [`owed`] and [`claim_bell`] for the watcher that
//! sleeps on the pool's bell. The tests model-check the ring and the pairs
//! with loom.
//!
//! A worker has two rings: its results ring (entries, see
//! [`super::results`]) and its task ring (batches, see [`super::worker`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shared::memory::Word64;
use crate::sys::SharedRegion;

/// The memory a ring lives in: a shared region, or loom's model of one.
pub(super) trait RingMemory {
    type Word: Word64;
    /// Copies `bytes` in at byte `at` (a multiple of 8).
    fn store(&self, at: usize, bytes: &[u8]);
    /// Appends `len` bytes from byte `at` (both multiples of 8) to `out`.
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>);
    /// A full memory fence.
    fn fence(&self);
}

impl RingMemory for SharedRegion {
    type Word = AtomicU64;

    #[inline]
    fn store(&self, at: usize, bytes: &[u8]) {
        self.store_bytes(at, bytes);
    }

    #[inline]
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
        self.load_append(at, len, out);
    }

    #[inline]
    fn fence(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// `len` rounded up to the ring's step.
#[inline]
pub(super) const fn padded(len: usize) -> usize {
    len.next_multiple_of(8)
}

/// Where a ring lies in its memory, and the two positions that govern it.
pub(super) struct RingAt<'a, M: RingMemory = SharedRegion> {
    pub(super) mem: &'a M,
    /// Offset of the ring's bytes (a multiple of 8).
    pub(super) offset: usize,
    /// A multiple of 8.
    pub(super) capacity: usize,
    /// Bytes published (written by the writer only).
    pub(super) tail: &'a M::Word,
    /// Bytes consumed (written by the reader only).
    pub(super) head: &'a M::Word,
}

impl<M: RingMemory> Clone for RingAt<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: RingMemory> Copy for RingAt<'_, M> {}

/// The writing end of a ring.
pub(super) struct Writer<'a, M: RingMemory = SharedRegion> {
    ring: RingAt<'a, M>,
    tail: u64,
    /// `tail % capacity`, kept as it moves: a division per push costs more
    /// than the small entries most pushes write.
    at: usize,
    /// The reader's `head` as last read: reread only when the ring looks
    /// full.
    head: u64,
}

impl<'a, M: RingMemory> Writer<'a, M> {
    pub(super) fn new(ring: RingAt<'a, M>) -> Writer<'a, M> {
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        let at = (tail % ring.capacity as u64) as usize;
        Writer {
            ring,
            tail,
            at,
            head,
        }
    }

    /// Whether `len` bytes would fit now.
    pub(super) fn has_room(&mut self, len: usize) -> bool {
        let cap = self.ring.capacity as u64;
        let len = padded(len) as u64;
        if cap.saturating_sub(self.tail.wrapping_sub(self.head)) < len {
            self.head = self.ring.head.load(Ordering::Acquire);
        }
        cap.saturating_sub(self.tail.wrapping_sub(self.head)) >= len
    }

    /// Publishes `bytes` (padded to a multiple of 8) if that leaves at
    /// least `keep` bytes free; false, writing nothing, if not.
    #[inline]
    pub(super) fn push(&mut self, bytes: &[u8], keep: usize) -> bool {
        if !self.has_room(padded(bytes.len()) + keep) {
            return false;
        }
        let (at, cap) = (self.at, self.ring.capacity);
        let first = bytes.len().min(cap - at);
        let mem = self.ring.mem;
        mem.store(self.ring.offset + at, &bytes[..first]);
        if first < bytes.len() {
            mem.store(self.ring.offset, &bytes[first..]);
        }
        let step = padded(bytes.len());
        self.at = if at + step >= cap {
            at + step - cap
        } else {
            at + step
        };
        self.tail += step as u64;
        self.ring.tail.store(self.tail, Ordering::Release);
        true
    }
}

/// Whether anything is published that the reader has not consumed.
#[inline]
pub(super) fn nonempty<M: RingMemory>(ring: RingAt<'_, M>) -> bool {
    ring.tail.load(Ordering::Acquire) != ring.head.load(Ordering::Relaxed)
}

/// The reading end: appends what was published since the last call to
/// `out` and consumes it. `Err` if the positions make no sense (the other
/// side wrote them wrong: it is not one of ours any more).
pub(super) fn drain<M: RingMemory>(ring: RingAt<'_, M>, out: &mut Vec<u8>) -> Result<bool, ()> {
    let tail = ring.tail.load(Ordering::Acquire);
    let head = ring.head.load(Ordering::Relaxed);
    if tail == head {
        return Ok(false);
    }
    let cap = ring.capacity as u64;
    if tail < head || tail - head > cap || !tail.is_multiple_of(8) {
        return Err(());
    }
    let at = (head % cap) as usize;
    let len = (tail - head) as usize;
    let first = len.min(ring.capacity - at);
    ring.mem.append(ring.offset + at, first, out);
    if first < len {
        ring.mem.append(ring.offset, len - first, out);
    }
    ring.head.store(tail, Ordering::Release);
    Ok(true)
}

/// A reader with nothing to read, about to sleep until woken: marks itself
/// `asleep`, then looks once more. True if it must sleep; false (unmarked)
/// if something was published meanwhile. Paired with [`must_wake`].
pub(super) fn must_sleep<M: RingMemory>(ring: RingAt<'_, M>, asleep: &M::Word) -> bool {
    asleep.store(1, Ordering::SeqCst);
    ring.mem.fence();
    if nonempty(ring) {
        asleep.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

/// A writer that has just published: true if the reader sleeps (or is
/// about to) and must be woken, which the caller then owes it; the mark is
/// cleared, so one wake-up serves many publications. Either this sees the
/// mark, or [`must_sleep`] sees the publication.
pub(super) fn must_wake<M: RingMemory>(mem: &M, asleep: &M::Word) -> bool {
    mem.fence();
    asleep
        .compare_exchange(1, 0, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok()
}

/// What a writer that has just published owes the readers of its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owed {
    /// A watcher is running: it reads the publication unasked.
    Nothing,
    /// A watcher sleeps on the bell ([`claim_bell`]): ring it.
    Ring,
    /// Nobody watches: announce the publication (on the socket).
    Announce,
}

/// A writer that has just published, running on the CPU `here` names (a
/// [`crate::spin::cpu_mark`], asked for only if a watcher sleeps): whom it
/// must tell. Paired with
/// [`leave_watch`] (no watcher: announced) and [`claim_bell`] (a sleeping
/// watcher: rung, unless it sleeps on this very CPU: then it is announced,
/// and whoever reads the announcement wakes the sleeper from another CPU).
pub(super) fn owed<M: RingMemory>(
    mem: &M,
    watching: &M::Word,
    sleeper: &M::Word,
    here: impl FnOnce() -> u64,
) -> Owed {
    mem.fence();
    let sleeper = sleeper.load(Ordering::Relaxed);
    if sleeper != 0 {
        if sleeper == here() {
            Owed::Announce
        } else {
            Owed::Ring
        }
    } else if watching.load(Ordering::Relaxed) == 0 {
        Owed::Announce
    } else {
        Owed::Nothing
    }
}

/// A watcher that found nothing claims the bell, to sleep on it while it
/// still counts as watching, leaving `mark` (non-zero) in the `sleeper`
/// word; true if it is now the one sleeper. It must then look once more
/// before it sleeps: either that look sees a publication, or the
/// publication's [`owed`] sees the sleeper (and rings).
pub(super) fn claim_bell<M: RingMemory>(mem: &M, sleeper: &M::Word, mark: u64) -> bool {
    debug_assert_ne!(mark, 0);
    let claimed = sleeper
        .compare_exchange(0, mark, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok();
    if claimed {
        mem.fence();
    }
    claimed
}

/// The sleeper gives the bell back (before it stops watching, so that
/// what writers then publish unrung is read by the last watcher out).
pub(super) fn release_bell<M: RingMemory>(sleeper: &M::Word) {
    sleeper.store(0, Ordering::SeqCst);
}

/// A watcher leaves; true if it was the last, which must then read once
/// more: what was published while writers saw it watching was announced
/// to nobody. Either that read sees the publication, or [`owed`] sees no
/// watcher.
pub(super) fn leave_watch<M: RingMemory>(mem: &M, watching: &M::Word) -> bool {
    let last = watching.fetch_add(u64::MAX, Ordering::SeqCst) == 1;
    if last {
        mem.fence();
    }
    last
}

#[cfg(test)]
mod tests {
    use loom::sync::{Arc, Condvar, Mutex};

    use super::*;
    use crate::shared::memory::Memory;
    use crate::shared::model::{Model, bounded};

    impl RingMemory for Arc<Model> {
        type Word = loom::sync::atomic::AtomicU64;

        fn store(&self, at: usize, bytes: &[u8]) {
            Memory::store(self, at, bytes);
        }

        fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
            Memory::append(self, at, len, out);
        }

        fn fence(&self) {
            Memory::fence(self);
        }
    }

    /// Control words: tail, head, asleep, watching, sleeper; then the ring.
    const DATA: usize = 40;
    /// Small enough that the writes below wrap and wait for room.
    const CAP: usize = 32;

    fn ring(mem: &Arc<Model>) -> RingAt<'_, Arc<Model>> {
        RingAt {
            mem,
            offset: DATA,
            capacity: CAP,
            tail: mem.w64(0),
            head: mem.w64(8),
        }
    }

    /// A socket that carries only wake-ups: a flag and a condition.
    #[derive(Default)]
    struct Doorbell {
        rung: Mutex<bool>,
        ring: Condvar,
    }

    impl Doorbell {
        fn ring(&self) {
            *self.rung.lock().unwrap() = true;
            self.ring.notify_one();
        }

        fn sleep(&self) {
            let mut rung = self.rung.lock().unwrap();
            while !*rung {
                rung = self.ring.wait(rung).unwrap();
            }
            *rung = false;
        }
    }

    /// Writes larger than what is free wait for the reader; every byte
    /// arrives once, in order, also across the ring's end.
    #[test]
    fn published_bytes_arrive_whole_and_in_order() {
        bounded(2).check(|| {
            let mem = Model::new(DATA, CAP);
            let writer = {
                let mem = mem.clone();
                loom::thread::spawn(move || {
                    let mut w = Writer::new(ring(&mem));
                    for piece in [&[1u8; 12][..], &[2; 9], &[3; 16]] {
                        while !w.push(piece, 0) {
                            loom::thread::yield_now();
                        }
                    }
                })
            };
            let mut out = Vec::new();
            while out.len() < 48 {
                if !drain(ring(&mem), &mut out).expect("sane positions") {
                    loom::thread::yield_now();
                }
            }
            writer.join().unwrap();
            assert_eq!(out[..12], [1; 12]);
            assert_eq!(out[16..25], [2; 9]);
            assert_eq!(out[32..48], [3; 16]);
        });
    }

    /// A reader that goes to sleep while a writer publishes is always woken
    /// (a lost wake-up would leave it asleep: loom reports the deadlock).
    #[test]
    fn a_sleeping_reader_is_always_woken() {
        bounded(3).check(|| {
            let mem = Model::new(DATA, CAP);
            let bell = Arc::new(Doorbell::default());
            let writer = {
                let (mem, bell) = (mem.clone(), bell.clone());
                loom::thread::spawn(move || {
                    for piece in [[1u8; 8], [2; 8]] {
                        assert!(Writer::new(ring(&mem)).push(&piece, 0));
                        if must_wake(&mem, mem.w64(16)) {
                            bell.ring();
                        }
                    }
                })
            };
            let mut out = Vec::new();
            while out.len() < 16 {
                if drain(ring(&mem), &mut out).expect("sane positions") {
                    continue;
                }
                if must_sleep(ring(&mem), mem.w64(16)) {
                    bell.sleep();
                }
            }
            writer.join().unwrap();
            assert_eq!(out, [[1; 8], [2; 8]].concat());
        });
    }

    /// What a writer publishes while a watcher leaves is read by the
    /// watcher's last look, or announced: never neither.
    #[test]
    fn a_publication_is_read_by_the_last_watcher_or_announced() {
        bounded(3).check(|| {
            let mem = Model::new(DATA, CAP);
            mem.w64(24).store(1, Ordering::Relaxed);
            let writer = {
                let mem = mem.clone();
                loom::thread::spawn(move || {
                    assert!(Writer::new(ring(&mem)).push(&[7; 8], 0));
                    owed(&mem, mem.w64(24), mem.w64(32), || 2) == Owed::Announce
                })
            };
            let mut out = Vec::new();
            drain(ring(&mem), &mut out).expect("sane positions");
            if leave_watch(&mem, mem.w64(24)) {
                drain(ring(&mem), &mut out).expect("sane positions");
            }
            let announced = writer.join().unwrap();
            assert!(announced || out == [7; 8], "neither read nor announced");
        });
    }

    /// A watcher that gives up watching and sleeps on the bell while a
    /// writer publishes is always woken: by the bell, or (announced) by the
    /// thread that reads the announcement and completes its task. A lost
    /// wake-up leaves it asleep, and loom reports the deadlock.
    #[test]
    fn a_watcher_asleep_on_the_bell_is_always_woken() {
        // The writer on another CPU than the sleeper's (mark 1) rings; on
        // the same one it announces, and the reader of the announcement
        // completes the sleeper's task, whose waker rings.
        for here in [1, 2] {
            a_watcher_asleep_on_the_bell_is_woken_from(here);
        }
    }

    fn a_watcher_asleep_on_the_bell_is_woken_from(here: u64) {
        bounded(3).check(move || {
            let mem = Model::new(DATA, CAP);
            mem.w64(24).store(1, Ordering::Relaxed);
            let bell = Arc::new(Doorbell::default());
            let writer = {
                let (mem, bell) = (mem.clone(), bell.clone());
                loom::thread::spawn(move || {
                    assert!(Writer::new(ring(&mem)).push(&[7; 8], 0));
                    if owed(&mem, mem.w64(24), mem.w64(32), || here) != Owed::Nothing {
                        bell.ring();
                    }
                })
            };
            let mut out = Vec::new();
            drain(ring(&mem), &mut out).expect("sane positions");
            if out.is_empty() {
                assert!(claim_bell(&mem, mem.w64(32), 1), "the only sleeper");
                loop {
                    drain(ring(&mem), &mut out).expect("sane positions");
                    if !out.is_empty() {
                        break;
                    }
                    bell.sleep();
                }
                release_bell::<Arc<Model>>(mem.w64(32));
            }
            if leave_watch(&mem, mem.w64(24)) {
                drain(ring(&mem), &mut out).expect("sane positions");
            }
            writer.join().unwrap();
            assert_eq!(out, [7; 8]);
        });
    }

    /// A 256-byte ring in a real region.
    fn in_region(region: &SharedRegion) -> RingAt<'_> {
        RingAt {
            mem: region,
            offset: 64,
            capacity: 256,
            tail: region.word64(0),
            head: region.word64(8),
        }
    }

    #[test]
    fn a_push_leaves_the_room_asked_for() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + 256).expect("region");
        let at = in_region(&region);
        let mut w = Writer::new(at);
        assert!(w.push(&[1; 100], 50), "takes 104");
        assert!(!w.push(&[2; 100], 49), "only 152 bytes are free");
        assert!(w.push(&[3; 100], 48));
        assert!(!w.push(&[4], 41), "48 bytes are left");
        let mut out = Vec::new();
        assert!(drain(at, &mut out).expect("sane positions"));
        assert_eq!(out.len(), 208);
        assert!(w.push(&[5; 200], 56), "room again once read");
    }

    #[test]
    fn nonsense_positions_are_refused() {
        let region = SharedRegion::create(c"corral-test-ring", 64 + 256).expect("region");
        let at = in_region(&region);
        region.word64(0).store(256 + 8, Ordering::Relaxed);
        assert!(drain(at, &mut Vec::new()).is_err());
        region.word64(0).store(12, Ordering::Relaxed);
        assert!(drain(at, &mut Vec::new()).is_err(), "not a multiple of 8");
    }
}
