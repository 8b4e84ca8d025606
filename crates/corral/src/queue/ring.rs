//! The byte queue under [`super::Queue`]: a ring of chunks in shared memory,
//! one robust lock for producers and one for consumers.
//!
//! # Layout
//!
//! After the object header come cache lines that each side writes alone:
//! the producers' lock and private state, the published tail, the consumers'
//! lock and private state, the published head, then the rarely written
//! waiter counts. The ring starts at [`DATA`]; positions are byte counts
//! that only grow, and `position % ring` is where they land.
//!
//! # Chunks
//!
//! A message is one or more chunks, each an 8-byte header (`len: u32`,
//! `flags: u32`) and its payload padded to 8 bytes. A message larger than a
//! quarter of the ring streams through it: the producer writes chunks as the
//! consumer frees space, so a 1 GiB message needs no 1 GiB ring.
//!
//! # Publication and waiting
//!
//! The producer holding the producer lock copies a chunk in, then stores
//! the new tail (release). The consumer holding the consumer lock reads the
//! tail (acquire), copies the chunk out, then stores the new head (release).
//! Neither side takes the other's lock, so one producer and one consumer
//! run in parallel. Each side caches the other's position in its private
//! line and rereads it only when the ring looks full (or empty).
//!
//! A side that must wait spins briefly, then announces itself in its
//! side's sleeper record and sleeps on the other side's sequence word (a
//! futex). When the other side last published from this very CPU, it is
//! not running: a spin would hold the CPU it waits for, so the waiting side
//! yields that CPU instead, for as long as the spin would have lasted.
//! Until 2026-12-03 a producer waiting for room slept at once there, and a
//! consumer waiting for a message spun: while the two sides took turns on
//! one CPU, the one cost a wake-up per message or two, the other held the
//! CPU for its whole spin. Under a CPU hog (alternating runs), the
//! benchmark's small messages 1→1 went from 4.7 to 8.5-9.5 M/s (with two
//! hogs, from 1.4 to 10.4), 4→4 from 3.1-3.9 to 5.0-6.4 M/s, 1 MiB messages
//! from 8.5-9.2 to 11.1-11.3 GB/s. A round trip whose two sides share a
//! CPU is two yields, 3.0-3.1 µs (worst batch 3.5), where it was 2.6-10.2
//! (worst 17-26); but the build before drew two CPUs more often in another
//! sitting (1.1-1.2 µs in 4 of 6 runs against 2.1-3.0), a placement no
//! waiter chooses.
//!
//! The waker publishes its position, then reads the record, each side with
//! a sequentially consistent fence in between, so either the sleeper sees
//! the new position or the waker sees the sleeper (a Dekker pair). The
//! record holds the sleepers' pids, so a sleeper SIGKILLed in its sleep is
//! cleared by the next waker that finds no one to wake, instead of costing
//! every later publication a system call (see
//! [`crate::shared::memory::Sleepers`]).
//!
//! # Death
//!
//! Both locks are robust. A message or chunk becomes visible only by the
//! single store that moves tail past it, and is consumed only by the single
//! store that moves head past it, so a process killed anywhere leaves a
//! consistent ring. What it leaves half-done is recorded in its side's
//! private line and finished by the next holder of that lock, which the
//! kernel tells that the owner died:
//!
//! * a producer killed inside a multi-chunk message (`p_open`): the next
//!   producer appends an `ABORT` chunk (space for it is always reserved), and
//!   the consumers drop the partial message;
//! * a consumer killed inside a multi-chunk message (`c_open`): the next
//!   consumer skips the rest of it (the message was being delivered to the
//!   dead process), unless the dead one had not consumed any of it yet.
//!
//! A consumer streaming a message whose producer died notices within
//! [`DEATH_CHECK`] (the death wakes nobody) and finishes the recovery itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::Error;
use crate::shared::memory::{Memory, Region, Sleepers, Word32, Word64};
pub(crate) use crate::shared::memory::{Spinner, Wait};
use crate::shared::object::{HEADER, Kind, Object};
use crate::spin::{cpu_mark, ran_here};
use crate::sys::Acquired;

// Producer side.
const P_LOCK: usize = HEADER;
const P_OPEN: usize = 128;
const P_CACHED_HEAD: usize = 136;
const P_CACHED_GOT: usize = 144;
// Published by producers.
const TAIL: usize = 192;
const PUT_COUNT: usize = 200;
const TAIL_SEQ: usize = 208;
/// The CPU the last producer published from ([`cpu_mark`]).
const P_CPU: usize = 216;
// Consumer side.
const C_LOCK: usize = 256;
const C_OPEN: usize = 320;
const C_CACHED_TAIL: usize = 328;
const C_OPEN_AT: usize = 336;
// Published by consumers.
const HEAD: usize = 384;
const GOT_COUNT: usize = 392;
const HEAD_SEQ: usize = 400;
/// The CPU the last consumer consumed from ([`cpu_mark`]).
const C_CPU: usize = 408;
// Rarely written.
const CLOSED: usize = 456;
const UNFINISHED: usize = 576;
const JOIN_SEQ: usize = 584;
// Who sleeps, on each side.
const CONSUMERS: Sleepers = Sleepers::at(1024);
const PRODUCERS: Sleepers = Sleepers::at(1408);
const JOINERS: Sleepers = Sleepers::at(1792);
const _: () = assert!(1408 + Sleepers::BYTES <= 1792 && 1792 + Sleepers::BYTES <= DATA);
/// Where the ring starts.
pub(crate) const DATA: usize = 4096;

const CHUNK_HEADER: u64 = 8;
const FIRST: u32 = 1;
const LAST: u32 = 2;
const ABORT: u32 = 4;

/// How often a consumer waiting inside a message checks that its producer
/// is alive.
pub(crate) const DEATH_CHECK: Duration = Duration::from_millis(20);

/// The longest a `corral::wait` watcher sleeps before it rechecks whether
/// the wait is over.
const WATCH_NAP: Duration = Duration::from_millis(10);

/// Why a put did not store its message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutFail {
    /// No room within the wait allowed.
    Full,
    /// The queue was closed.
    Closed,
}

/// Why a get returned no message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GetFail {
    /// `Try`: nothing there.
    Empty,
    /// `Until`: nothing came in time.
    Timeout,
    /// The queue is closed and drained.
    Closed,
}

/// The untyped queue, in memory `M` (a shared region, or loom's model).
#[derive(Clone, Debug)]
pub(crate) struct Ring<M = Region> {
    mem: M,
    size: u64,
    capacity: u64,
    joinable: bool,
}

fn pad(len: u64) -> u64 {
    len.next_multiple_of(8)
}

/// Releases a side's lock when dropped (also on a panic while copying).
struct Held<'a, M: Memory>(&'a M, usize);

impl<M: Memory> Drop for Held<'_, M> {
    fn drop(&mut self) {
        self.0.unlock(self.1);
    }
}

impl Ring {
    /// A ring of `size` bytes (a power of two, at least 4 KiB) holding at
    /// most `capacity` messages (0: no count limit).
    pub(crate) fn create(size: usize, capacity: u64, joinable: bool) -> Result<Ring, Error> {
        debug_assert!(size.is_power_of_two() && size >= 4096);
        let obj = Object::create(
            Kind::Queue,
            DATA + size,
            &[size as u64, capacity, joinable as u64],
        )?;
        for at in [P_LOCK, C_LOCK] {
            obj.region()
                .robust_mutex(at)
                .init(false)
                .map_err(Error::io("initialising a process-shared mutex"))?;
        }
        Ring::from_object(obj).map_err(|_| Error::Unsupported("a queue of this size"))
    }

    /// The region, for serialization.
    pub(crate) fn object(&self) -> &Object {
        &self.mem
    }

    /// Checks a received queue region.
    pub(crate) fn from_object(obj: Object) -> Result<Ring, String> {
        let size = obj.param(0);
        if !size.is_power_of_two() || size < 4096 || obj.region().len() as u64 != DATA as u64 + size
        {
            return Err("a corrupt Queue handle".into());
        }
        Ok(Ring {
            capacity: obj.param(1),
            joinable: obj.param(2) != 0,
            size,
            mem: obj,
        })
    }
}

impl<M: Memory> Ring<M> {
    /// A ring over any memory (loom's model): `size` bytes of data at
    /// [`DATA`], locks at zero, counters at zero.
    #[cfg(test)]
    pub(crate) fn over(mem: M, size: u64, capacity: u64, joinable: bool) -> Ring<M> {
        Ring {
            mem,
            size,
            capacity,
            joinable,
        }
    }

    #[inline]
    fn w64(&self, at: usize) -> &M::U64 {
        self.mem.w64(at)
    }

    #[inline]
    fn w32(&self, at: usize) -> &M::U32 {
        self.mem.w32(at)
    }

    /// The largest chunk payload: a quarter of the ring, so that a message
    /// streams rather than waiting for the whole ring to drain.
    fn max_chunk(&self) -> u64 {
        self.size / 4 - CHUNK_HEADER
    }

    /// Copies `bytes` into the ring at position `pos`, wrapping.
    fn write_at(&self, pos: u64, bytes: &[u8]) {
        let at = (pos % self.size) as usize;
        let first = bytes.len().min(self.size as usize - at);
        self.mem.store(DATA + at, &bytes[..first]);
        if first < bytes.len() {
            self.mem.store(DATA, &bytes[first..]);
        }
    }

    /// Appends `len` bytes of the ring at position `pos` to `out`, wrapping.
    fn append_from(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        let at = (pos % self.size) as usize;
        let first = len.min(self.size as usize - at);
        self.mem.append(DATA + at, first, out);
        if first < len {
            self.mem.append(DATA, len - first, out);
        }
    }

    /// Copies `out.len()` bytes out of the ring at position `pos`, wrapping.
    fn read_at(&self, pos: u64, out: &mut [u8]) {
        let at = (pos % self.size) as usize;
        let first = out.len().min(self.size as usize - at);
        self.mem.load(DATA + at, &mut out[..first]);
        if first < out.len() {
            self.mem.load(DATA, &mut out[first..]);
        }
    }

    /// Messages stored and not yet taken.
    pub(crate) fn len(&self) -> usize {
        let got = self.w64(GOT_COUNT).load(Ordering::Acquire);
        let put = self.w64(PUT_COUNT).load(Ordering::Acquire);
        put.saturating_sub(got) as usize
    }

    /// Closes the queue for every holder: puts fail, gets drain what is left.
    pub(crate) fn close(&self) {
        self.w32(CLOSED).store(1, Ordering::SeqCst);
        self.mem.wake(self.w32(TAIL_SEQ), u32::MAX);
        self.mem.wake(self.w32(HEAD_SEQ), u32::MAX);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.w32(CLOSED).load(Ordering::Acquire) != 0
    }

    // ---------------------------------------------------------------- put

    /// Stores one message.
    pub(crate) fn put(&self, bytes: &[u8], wait: Wait) -> Result<(), PutFail> {
        if self.is_closed() {
            return Err(PutFail::Closed);
        }
        let how = self.mem.lock(P_LOCK, wait).map_err(|()| PutFail::Full)?;
        let _held = Held(&self.mem, P_LOCK);
        if how == Acquired::OwnerDied {
            self.recover_producer();
        }
        let total = bytes.len() as u64;
        // The whole message must fit at once unless it has to stream.
        let single = total <= self.max_chunk();
        let first_need = if single {
            CHUNK_HEADER + pad(total)
        } else {
            CHUNK_HEADER + self.max_chunk() + CHUNK_HEADER
        };
        self.wait_for_room(first_need, true, wait.deadline())?;
        if single {
            self.write_chunk(bytes, FIRST | LAST);
            return Ok(());
        }
        self.w32(P_OPEN).store(1, Ordering::Relaxed);
        let mut rest = bytes;
        let mut flags = FIRST;
        loop {
            let n = rest.len().min(self.max_chunk() as usize);
            let last = n == rest.len();
            if last {
                flags |= LAST;
            }
            // Every chunk but the last leaves room for an ABORT after it.
            let need = CHUNK_HEADER + pad(n as u64) + if last { 0 } else { CHUNK_HEADER };
            // The message has started: it is finished whatever the deadline
            // (consumers are draining it).
            let _ = self.wait_for_room(need, false, None);
            self.write_chunk(&rest[..n], flags);
            rest = &rest[n..];
            flags = 0;
            if last {
                break;
            }
        }
        self.w32(P_OPEN).store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Writes one chunk at the tail and publishes it.
    fn write_chunk(&self, payload: &[u8], flags: u32) {
        let tail = self.w64(TAIL).load(Ordering::Relaxed);
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&flags.to_le_bytes());
        self.write_at(tail, &header);
        self.write_at(tail + CHUNK_HEADER, payload);
        if flags & LAST != 0 && self.joinable {
            // Counted as the message is published: an aborted message never
            // was, and a consumer cannot mark it done before it counts.
            self.w64(UNFINISHED).fetch_add(1, Ordering::SeqCst);
        }
        if flags & LAST != 0 {
            // Only the producer-lock holder writes it: no read-modify-write.
            let put = self.w64(PUT_COUNT).load(Ordering::Relaxed);
            self.w64(PUT_COUNT).store(put + 1, Ordering::Relaxed);
        }
        let next = tail + CHUNK_HEADER + pad(payload.len() as u64);
        self.w64(P_CPU).store(cpu_mark(), Ordering::Relaxed);
        self.w64(TAIL).store(next, Ordering::Release);
        self.w32(TAIL_SEQ).store(next as u32, Ordering::Release);
        self.mem.fence();
        // All: one of them may be streaming this very message.
        CONSUMERS.wake(&self.mem, self.w32(TAIL_SEQ), u32::MAX);
    }

    /// Whether the other side last published from this very CPU (`at`:
    /// [`P_CPU`] or [`C_CPU`]): it is not running now, so a spin would hold
    /// the CPU it may be waiting for, and this side yields it instead.
    fn last_ran_here(&self, at: usize) -> bool {
        ran_here(self.w64(at).load(Ordering::Relaxed))
    }

    /// Free bytes and free message slots, by the producer's cached view.
    fn room(&self, fresh: bool) -> (u64, bool) {
        if fresh {
            let got = self.w64(GOT_COUNT).load(Ordering::Acquire);
            let head = self.w64(HEAD).load(Ordering::Acquire);
            self.w64(P_CACHED_HEAD).store(head, Ordering::Relaxed);
            self.w64(P_CACHED_GOT).store(got, Ordering::Relaxed);
        }
        let head = self.w64(P_CACHED_HEAD).load(Ordering::Relaxed);
        let got = self.w64(P_CACHED_GOT).load(Ordering::Relaxed);
        let tail = self.w64(TAIL).load(Ordering::Relaxed);
        let put = self.w64(PUT_COUNT).load(Ordering::Relaxed);
        let slot = self.capacity == 0 || put - got < self.capacity;
        (self.size - (tail - head), slot)
    }

    /// Waits (holding the producer lock) until `need` bytes are free and,
    /// for a new message, a message slot too.
    fn wait_for_room(
        &self,
        need: u64,
        new: bool,
        deadline: Option<Instant>,
    ) -> Result<(), PutFail> {
        let fits = |fresh| {
            let (bytes, slot) = self.room(fresh);
            bytes >= need && (slot || !new)
        };
        if fits(false) || fits(true) {
            return Ok(());
        }
        let mut spinner = Spinner::new();
        loop {
            let seen = self.w32(HEAD_SEQ).load(Ordering::Acquire);
            if fits(true) {
                return Ok(());
            }
            if new && self.is_closed() {
                return Err(PutFail::Closed);
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(PutFail::Full);
            }
            if self.mem.spin(&mut spinner, self.last_ran_here(C_CPU)) {
                continue;
            }
            // Dekker with the waker's fence (inside `enter`): it sees this
            // sleeper, or this side sees its publication.
            let ticket = PRODUCERS.enter(&self.mem);
            if !fits(true) {
                PRODUCERS.sleep(&self.mem, &ticket, self.w32(HEAD_SEQ), seen, deadline);
            }
            PRODUCERS.leave(&self.mem, ticket);
        }
    }

    /// Run by a producer that got the lock from a dead one.
    fn recover_producer(&self) {
        if self.w32(P_OPEN).load(Ordering::Relaxed) != 0 {
            // Room for this chunk was reserved by the dead producer.
            let _ = self.wait_for_room(CHUNK_HEADER, false, None);
            self.write_chunk(&[], ABORT);
            self.w32(P_OPEN).store(0, Ordering::Relaxed);
        }
    }

    // ---------------------------------------------------------------- get

    /// Takes one message into `out` (cleared first).
    pub(crate) fn get(&self, out: &mut Vec<u8>, wait: Wait) -> Result<(), GetFail> {
        if self.cached_nonempty() && self.try_take(out, wait)? {
            return Ok(());
        }
        let deadline = wait.deadline();
        let mut spinner = Spinner::new();
        loop {
            let seen = self.w32(TAIL_SEQ).load(Ordering::Acquire);
            if self.maybe_nonempty() {
                match self.try_take(out, wait)? {
                    true => return Ok(()),
                    false => continue,
                }
            }
            if self.is_closed() && !self.maybe_nonempty() {
                return Err(GetFail::Closed);
            }
            if let Some(at) = deadline
                && Instant::now() >= at
            {
                return Err(match wait {
                    Wait::Try => GetFail::Empty,
                    _ => GetFail::Timeout,
                });
            }
            if self.mem.spin(&mut spinner, self.last_ran_here(P_CPU)) {
                continue;
            }
            // Dekker with the waker's fence (inside `enter`): it sees this
            // sleeper, or this side sees its publication.
            let ticket = CONSUMERS.enter(&self.mem);
            if !self.maybe_nonempty() && !self.is_closed() {
                CONSUMERS.sleep(&self.mem, &ticket, self.w32(TAIL_SEQ), seen, deadline);
            }
            CONSUMERS.leave(&self.mem, ticket);
        }
    }

    /// Does the consumers' cached tail say a chunk is waiting? (Reads no
    /// line the producer writes.)
    fn cached_nonempty(&self) -> bool {
        self.w64(C_CACHED_TAIL).load(Ordering::Relaxed) > self.w64(HEAD).load(Ordering::Relaxed)
    }

    /// Is anything published beyond the head (without the lock)?
    fn maybe_nonempty(&self) -> bool {
        self.w64(TAIL).load(Ordering::SeqCst) != self.w64(HEAD).load(Ordering::SeqCst)
    }

    /// With the consumer lock: takes a message if one is there. `Ok(false)`:
    /// another consumer was faster (or only an ABORT was there).
    fn try_take(&self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, GetFail> {
        let how = match self.mem.lock(C_LOCK, wait) {
            Ok(how) => how,
            Err(()) => {
                return Err(match wait {
                    Wait::Try => GetFail::Empty,
                    _ => GetFail::Timeout,
                });
            }
        };
        let _held = Held(&self.mem, C_LOCK);
        if how == Acquired::OwnerDied {
            self.recover_consumer(out);
        }
        if !self.chunk_ready() {
            return Ok(false);
        }
        Ok(self.read_message(out, false))
    }

    /// Is a whole chunk published at the head (consumer lock held)?
    fn chunk_ready(&self) -> bool {
        let head = self.w64(HEAD).load(Ordering::Relaxed);
        if self.w64(C_CACHED_TAIL).load(Ordering::Relaxed) > head {
            return true;
        }
        let tail = self.w64(TAIL).load(Ordering::Acquire);
        self.w64(C_CACHED_TAIL).store(tail, Ordering::Relaxed);
        tail > head
    }

    /// Reads chunks from the head until a message is complete. Returns
    /// `false` if the message was aborted by a dying producer. With
    /// `discard`, the message's remaining chunks are skipped instead.
    fn read_message(&self, out: &mut Vec<u8>, discard: bool) -> bool {
        out.clear();
        loop {
            self.wait_for_chunk();
            let head = self.w64(HEAD).load(Ordering::Relaxed);
            let mut header = [0u8; 8];
            self.read_at(head, &mut header);
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
            let flags = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            if flags & ABORT != 0 {
                self.advance(head, 0, false);
                self.w32(C_OPEN).store(0, Ordering::Relaxed);
                out.clear();
                return false;
            }
            if !discard {
                self.append_from(head + CHUNK_HEADER, len as usize, out);
            }
            let last = flags & LAST != 0;
            if flags & FIRST != 0 && !last {
                self.w64(C_OPEN_AT).store(head, Ordering::Relaxed);
                self.w32(C_OPEN).store(1, Ordering::Relaxed);
            }
            self.advance(head, len, last);
            if last {
                self.w32(C_OPEN).store(0, Ordering::Relaxed);
                return true;
            }
        }
    }

    /// Moves the head past a chunk and wakes a waiting producer.
    fn advance(&self, head: u64, len: u64, last: bool) {
        if last {
            // Only the consumer-lock holder writes it.
            let got = self.w64(GOT_COUNT).load(Ordering::Relaxed);
            self.w64(GOT_COUNT).store(got + 1, Ordering::Release);
        }
        let next = head + CHUNK_HEADER + pad(len);
        self.w64(C_CPU).store(cpu_mark(), Ordering::Relaxed);
        self.w64(HEAD).store(next, Ordering::Release);
        self.w32(HEAD_SEQ).store(next as u32, Ordering::Release);
        self.mem.fence();
        PRODUCERS.wake(&self.mem, self.w32(HEAD_SEQ), 1);
    }

    /// Inside a message: waits for its next chunk, checking that the
    /// producer streaming it is alive.
    fn wait_for_chunk(&self) {
        let mut spinner = Spinner::new();
        loop {
            let seen = self.w32(TAIL_SEQ).load(Ordering::Acquire);
            if self.chunk_ready() {
                return;
            }
            if self.mem.spin(&mut spinner, self.last_ran_here(P_CPU)) {
                continue;
            }
            // Dekker with the waker's fence (inside `enter`): it sees this
            // sleeper, or this side sees its publication.
            let ticket = CONSUMERS.enter(&self.mem);
            if !self.chunk_ready() {
                self.mem.wait_for(self.w32(TAIL_SEQ), seen, DEATH_CHECK);
            }
            CONSUMERS.leave(&self.mem, ticket);
            // A producer that died mid-message wakes nobody: finish its
            // recovery here.
            if let Ok(how) = self.mem.lock(P_LOCK, Wait::Try) {
                let _held = Held(&self.mem, P_LOCK);
                if how == Acquired::OwnerDied {
                    self.recover_producer();
                }
            }
        }
    }

    /// Run by a consumer that got the lock from a dead one.
    fn recover_consumer(&self, scratch: &mut Vec<u8>) {
        if self.w32(C_OPEN).load(Ordering::Relaxed) == 0 {
            return;
        }
        let head = self.w64(HEAD).load(Ordering::Relaxed);
        if head == self.w64(C_OPEN_AT).load(Ordering::Relaxed) {
            // It died before taking any of the message: deliver it.
            self.w32(C_OPEN).store(0, Ordering::Relaxed);
            return;
        }
        // The rest of a message that was being delivered to the dead. It
        // will never be marked done by its taker: mark it here, so that a
        // `JoinableQueue::join` does not wait for it forever.
        if self.read_message(scratch, true) && self.joinable {
            self.task_done();
        }
        scratch.clear();
    }

    // ----------------------------------------------------------- waiting

    /// Is an item there to get, or the queue closed (so a get returns at
    /// once)?
    pub(crate) fn readable(&self) -> bool {
        self.maybe_nonempty() || self.is_closed()
    }

    /// Sleeps until the tail moves, `stop` is set, or [`WATCH_NAP`] passes.
    pub(crate) fn watch_once(&self, stop: &std::sync::atomic::AtomicBool) {
        let seen = self.w32(TAIL_SEQ).load(Ordering::Acquire);
        let ticket = CONSUMERS.enter(&self.mem);
        if !self.readable() && !stop.load(Ordering::SeqCst) {
            self.mem.wait_for(self.w32(TAIL_SEQ), seen, WATCH_NAP);
        }
        CONSUMERS.leave(&self.mem, ticket);
    }

    /// How many consumers are announced as sleeping.
    pub(crate) fn sleeping_consumers(&self) -> u32 {
        CONSUMERS.count(&self.mem)
    }

    /// Wakes everyone sleeping on the tail (consumers recheck and sleep
    /// again: harmless).
    pub(crate) fn interrupt(&self) {
        self.mem.wake(self.w32(TAIL_SEQ), u32::MAX);
    }

    // ----------------------------------------------------------- joining

    /// Marks one message processed (`JoinableQueue::task_done`); `false` if
    /// there was none outstanding.
    pub(crate) fn task_done(&self) -> bool {
        let unfinished = self.w64(UNFINISHED);
        let mut now = unfinished.load(Ordering::Acquire);
        loop {
            if now == 0 {
                return false;
            }
            match unfinished.compare_exchange(now, now - 1, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        if now == 1 {
            self.w32(JOIN_SEQ).fetch_add(1, Ordering::SeqCst);
            self.mem.fence();
            JOINERS.wake(&self.mem, self.w32(JOIN_SEQ), u32::MAX);
        }
        true
    }

    /// Messages put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        self.w64(UNFINISHED).load(Ordering::SeqCst)
    }

    /// Waits until every message put has been marked done; `false` if
    /// `deadline` came first.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> bool {
        loop {
            let seen = self.w32(JOIN_SEQ).load(Ordering::SeqCst);
            if self.unfinished() == 0 {
                return true;
            }
            // Dekker with the waker's fence (inside `enter`).
            let ticket = JOINERS.enter(&self.mem);
            let slept = self.unfinished() == 0
                || JOINERS.sleep(&self.mem, &ticket, self.w32(JOIN_SEQ), seen, deadline);
            JOINERS.leave(&self.mem, ticket);
            if !slept {
                return self.unfinished() == 0;
            }
        }
    }
}

/// The ring under loom's model checker: every interleaving (up to a
/// preemption bound) of producers, consumers, and processes that die holding
/// a lock, with loom's model of memory ordering (see `shared::model`). A lost
/// wake-up shows up as a deadlock, a missing release/acquire as a wrong
/// message.
#[cfg(test)]
mod model {
    use std::sync::atomic::Ordering::Relaxed;

    use loom::sync::Arc;

    use super::*;
    use crate::shared::model::{Model, bounded};

    /// A ring small enough to wrap and stream: chunks of at most 8 bytes.
    const SIZE: u64 = 64;

    fn ring(capacity: u64) -> Ring<Arc<Model>> {
        Ring::over(Model::new(DATA, SIZE as usize), SIZE, capacity, false)
    }

    fn take(r: &Ring<Arc<Model>>) -> Vec<u8> {
        let mut out = Vec::new();
        r.get(&mut out, Wait::Block).unwrap();
        out
    }

    /// Messages arrive whole, in order, including one that streams through
    /// the ring in three chunks and wraps around its end.
    #[test]
    fn messages_arrive_whole_and_in_order() {
        bounded(2).check(|| {
            let r = ring(0);
            let producer = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    r.put(&[1; 8], Wait::Block).unwrap();
                    r.put(&[2; 20], Wait::Block).unwrap();
                })
            };
            assert_eq!(take(&r), [1; 8]);
            assert_eq!(take(&r), [2; 20]);
            producer.join().unwrap();
        });
    }

    /// Two producers, two consumers: each message delivered exactly once.
    #[test]
    fn every_message_is_taken_exactly_once() {
        bounded(1).check(|| {
            let r = ring(0);
            let threads: Vec<_> = (0..2u8)
                .map(|i| {
                    let r = r.clone();
                    loom::thread::spawn(move || r.put(&[i; 4], Wait::Block).unwrap())
                })
                .collect();
            let other = {
                let r = r.clone();
                loom::thread::spawn(move || take(&r))
            };
            let mine = take(&r);
            let theirs = other.join().unwrap();
            for t in threads {
                t.join().unwrap();
            }
            let mut got = [mine, theirs];
            got.sort();
            assert_eq!(got, [vec![0; 4], vec![1; 4]]);
            assert_eq!(r.len(), 0);
        });
    }

    /// With room for one message, the producer sleeps until the consumer
    /// takes it: the wake is never lost.
    #[test]
    fn a_full_queue_wakes_its_producer() {
        bounded(2).check(|| {
            let r = ring(1);
            let producer = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    for i in 0..3u8 {
                        r.put(&[i; 8], Wait::Block).unwrap();
                    }
                })
            };
            for i in 0..3u8 {
                assert_eq!(take(&r), [i; 8]);
            }
            producer.join().unwrap();
        });
    }

    /// A producer that dies after the first chunk of a message: whichever
    /// of the next producer or the streaming consumer takes its lock first
    /// closes the message, and the consumer gets the next one intact.
    #[test]
    fn a_producer_dying_mid_message_is_recovered() {
        bounded(2).check(|| {
            let r = ring(0);
            // The dying producer's steps of `put`, up to its death.
            assert_eq!(r.mem.lock(P_LOCK, Wait::Block), Ok(Acquired::Clean));
            r.w32(P_OPEN).store(1, Relaxed);
            r.write_chunk(&[9; 8], FIRST);
            r.mem.die_holding(P_LOCK);
            let consumer = {
                let r = r.clone();
                loom::thread::spawn(move || take(&r))
            };
            r.put(&[3; 8], Wait::Block).unwrap();
            assert_eq!(consumer.join().unwrap(), [3; 8]);
            assert_eq!(r.len(), 0);
        });
    }

    /// A consumer that dies after taking the first chunk of a message: the
    /// next consumer skips the rest, marks it done (a joinable queue), and
    /// gets the following message intact.
    #[test]
    fn a_consumer_dying_mid_message_is_recovered() {
        bounded(2).check(|| {
            let r = Ring::over(Model::new(DATA, SIZE as usize), SIZE, 0, true);
            r.put(&[4; 20], Wait::Block).unwrap();
            // The dying consumer's steps of `get`, up to its death.
            assert_eq!(r.mem.lock(C_LOCK, Wait::Block), Ok(Acquired::Clean));
            assert!(r.chunk_ready());
            let head = r.w64(HEAD).load(Relaxed);
            r.w64(C_OPEN_AT).store(head, Relaxed);
            r.w32(C_OPEN).store(1, Relaxed);
            r.advance(head, 8, false);
            r.mem.die_holding(C_LOCK);
            let producer = {
                let r = r.clone();
                loom::thread::spawn(move || r.put(&[5; 8], Wait::Block).unwrap())
            };
            assert_eq!(take(&r), [5; 8]);
            producer.join().unwrap();
            // The skipped message was marked done for its dead taker: only
            // the one just taken is outstanding.
            assert_eq!(r.unfinished(), 1);
        });
    }
}
