//! loom's model of an object's shared memory, for model-checking the
//! algorithms written against [`Memory`]: the queue's ring, semaphores,
//! conditions, events and barriers.
//!
//! Control words and data words are loom atomics (data ones relaxed, so a
//! missing release/acquire shows up as a stale read). A robust lock is a
//! word: FREE, HELD, or DIED (a holder died and the kernel freed it). A
//! futex is a condition variable whose check-and-sleep is atomic with
//! respect to wakes, as a futex's is; a timed wait may time out at any
//! moment, so it only yields.

use std::sync::atomic::Ordering::{self, AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::{Arc, Condvar, Mutex};

use super::memory::{Memory, Spinner, Wait, delegate_words};
use crate::sys::Acquired;

/// Lock word values: free, held, freed by the kernel after a death.
const FREE: u32 = 0;
const HELD: u32 = 1;
const DIED: u32 = 2;

delegate_words!(AtomicU64, AtomicU32);

/// loom's stand-in for a shared region: words, data words, robust
/// locks (a word: FREE / HELD / DIED) and futexes (a condition variable
/// whose check-and-sleep is atomic with respect to wakes, as a futex's).
pub(crate) struct Model {
    w64: Vec<AtomicU64>,
    w32: Vec<AtomicU32>,
    /// Where the data words start (byte offset); words before it are
    /// control words.
    data_at: usize,
    data: Vec<AtomicU64>,
    futex: Mutex<()>,
    wakes: Condvar,
}

impl Model {
    /// Control words up to byte `data_at`, then `data_len` bytes of data.
    pub(crate) fn new(data_at: usize, data_len: usize) -> Arc<Model> {
        Arc::new(Model {
            w64: (0..data_at / 8).map(|_| AtomicU64::new(0)).collect(),
            w32: (0..data_at / 4).map(|_| AtomicU32::new(0)).collect(),
            data_at,
            data: (0..data_len.div_ceil(8))
                .map(|_| AtomicU64::new(0))
                .collect(),
            futex: Mutex::new(()),
            wakes: Condvar::new(),
        })
    }

    /// A process dies holding the lock at `at`: the kernel marks it.
    pub(crate) fn die_holding(&self, at: usize) {
        assert_eq!(self.w32[at / 4].swap(DIED, AcqRel), HELD);
    }
}

impl Memory for Arc<Model> {
    type U64 = AtomicU64;
    type U32 = AtomicU32;

    fn w64(&self, at: usize) -> &AtomicU64 {
        &self.w64[at / 8]
    }
    fn w32(&self, at: usize) -> &AtomicU32 {
        &self.w32[at / 4]
    }
    // Word by word (the ring only starts copies on 8-byte boundaries):
    // one relaxed access per word keeps the state space small.
    fn store(&self, at: usize, bytes: &[u8]) {
        let start = at - self.data_at;
        assert_eq!(start % 8, 0);
        for (i, piece) in bytes.chunks(8).enumerate() {
            let word = &self.data[start / 8 + i];
            let mut le = if piece.len() < 8 {
                word.load(Relaxed).to_le_bytes()
            } else {
                [0; 8]
            };
            le[..piece.len()].copy_from_slice(piece);
            word.store(u64::from_le_bytes(le), Relaxed);
        }
    }
    fn load(&self, at: usize, out: &mut [u8]) {
        let start = at - self.data_at;
        assert_eq!(start % 8, 0);
        for (i, piece) in out.chunks_mut(8).enumerate() {
            let le = self.data[start / 8 + i].load(Relaxed).to_le_bytes();
            piece.copy_from_slice(&le[..piece.len()]);
        }
    }
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        self.load(at, &mut out[start..]);
    }
    fn fence(&self) {
        loom::sync::atomic::fence(SeqCst);
    }
    fn lock(&self, at: usize, wait: Wait) -> Result<Acquired, ()> {
        let word = &self.w32[at / 4];
        loop {
            if word.compare_exchange(FREE, HELD, Acquire, Relaxed).is_ok() {
                return Ok(Acquired::Clean);
            }
            if word.compare_exchange(DIED, HELD, Acquire, Relaxed).is_ok() {
                return Ok(Acquired::OwnerDied);
            }
            if matches!(wait, Wait::Try) {
                return Err(());
            }
            loom::thread::yield_now();
        }
    }
    fn unlock(&self, at: usize) {
        self.w32[at / 4].store(FREE, Release);
    }
    fn wait_until(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
        if deadline.is_some() {
            // A timed wait may time out at any point: let others run.
            loom::thread::yield_now();
            return true;
        }
        let guard = self.futex.lock().unwrap();
        if word.load(SeqCst) == expected {
            drop(self.wakes.wait(guard).unwrap());
        }
        true
    }
    fn wait_for(&self, _word: &AtomicU32, _expected: u32, _timeout: Duration) {
        loom::thread::yield_now();
    }
    fn wake(&self, _word: &AtomicU32, _count: u32) -> usize {
        let _guard = self.futex.lock().unwrap();
        self.wakes.notify_all();
        // Whether anyone slept is not known here: say one did, so that
        // `Sleepers` does not heal (every modelled process is alive).
        1
    }
    fn pid(&self) -> u32 {
        1
    }
    fn alive(&self, _pid: u32) -> bool {
        true
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn spin(&self, _spinner: &mut Spinner, _peer_here: bool) -> bool {
        false
    }
}

/// A model checker with at most `preemptions` preemptions per execution.
pub(crate) fn bounded(preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b
}
