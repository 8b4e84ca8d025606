//! A scan of a pickle before it is decoded, refusing the ones that would
//! decode into far more than they weigh.
//!
//! serde-pickle copies a value each time the pickle refers to it again
//! (`DUP`, the memo's `GET`s): a 2 KiB request that duplicates a tuple into
//! itself thirty times decodes into gigabytes (found by the fuzz target).
//! This scan runs the pickle's stack without building anything, tracking
//! only whether each entry is a container: a second reference to a
//! container is refused, and the bytes copied by references to scalars are
//! bounded. CPython's pickler never emits `DUP`, and refers back to an
//! object only when the same object appears twice, so plain requests pass.

/// What a stack entry is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A mark (`MARK`).
    Mark,
    /// A scalar of this many bytes.
    Scalar(usize),
    /// A list, tuple, dict, set or object, nested this deep.
    Container(u32),
}

/// How deep containers may nest (CPython's own recursion limit is 1,000):
/// decoding, and dropping, a decoded value recurses once per level, and a
/// million levels fit in a few megabytes of pickle.
const MAX_DEPTH: u32 = 500;

/// Bytes that references to scalars may copy, beyond the pickle's own.
const COPY_BUDGET: usize = 1 << 20;

fn refuse<T>(why: &str) -> Result<T, String> {
    Err(why.to_owned())
}

/// Reads `n` argument bytes at `at`.
fn take(data: &[u8], at: &mut usize, n: usize) -> Result<usize, String> {
    let start = *at;
    let end = start.checked_add(n).filter(|&e| e <= data.len());
    match end {
        Some(end) => {
            *at = end;
            Ok(start)
        }
        None => refuse("a truncated pickle"),
    }
}

/// A little-endian length of `n` bytes at `at`, then that many bytes.
fn counted(data: &[u8], at: &mut usize, n: usize) -> Result<usize, String> {
    let start = take(data, at, n)?;
    let mut len = 0usize;
    for (i, b) in data[start..start + n].iter().enumerate() {
        if i >= 8 {
            break;
        }
        len |= (*b as usize).checked_shl(8 * i as u32).unwrap_or(0);
    }
    take(data, at, len)?;
    Ok(len)
}

/// Skips to the end of a newline-terminated argument; its length.
fn line(data: &[u8], at: &mut usize) -> Result<usize, String> {
    let rest = &data[*at..];
    let n = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| "a truncated pickle".to_owned())?;
    *at += n + 1;
    Ok(n)
}

/// A memo index argument of `n` bytes (or a decimal line for `n == 0`).
fn index(data: &[u8], at: &mut usize, n: usize) -> Result<u64, String> {
    if n == 0 {
        let start = *at;
        let len = line(data, at)?;
        return std::str::from_utf8(&data[start..start + len])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "a bad memo index".to_owned());
    }
    let start = take(data, at, n)?;
    Ok(data[start..start + n]
        .iter()
        .rev()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

struct Machine {
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, Slot>,
    copied: usize,
}

impl Machine {
    fn pop(&mut self) -> Result<Slot, String> {
        match self.stack.pop() {
            Some(Slot::Mark) | None => refuse("a pickle whose stack runs out"),
            Some(s) => Ok(s),
        }
    }

    /// Pops `n` entries: the deepest nesting among them.
    fn pop_n(&mut self, n: usize) -> Result<u32, String> {
        (0..n).try_fold(0, |deepest, _| Ok(deepest.max(depth(self.pop()?))))
    }

    /// Pops down to and including the last mark: the deepest nesting
    /// among the entries popped.
    fn pop_mark(&mut self) -> Result<u32, String> {
        let mut deepest = 0;
        loop {
            match self.stack.pop() {
                Some(Slot::Mark) => return Ok(deepest),
                Some(s) => deepest = deepest.max(depth(s)),
                None => return refuse("a pickle without its mark"),
            }
        }
    }

    /// Pushes a container holding entries nested `inner` deep.
    fn build(&mut self, inner: u32) -> Result<(), String> {
        let d = nest(inner)?;
        self.stack.push(Slot::Container(d));
        Ok(())
    }

    /// Entries nested `inner` deep went into the container on top.
    fn fill_top(&mut self, inner: u32) -> Result<(), String> {
        let d = nest(inner)?;
        match self.stack.last_mut() {
            Some(Slot::Container(top)) => *top = (*top).max(d),
            Some(Slot::Scalar(_)) => return refuse("a pickle adding items to a scalar"),
            Some(Slot::Mark) | None => return refuse("a pickle whose stack runs out"),
        }
        Ok(())
    }

    /// Pushes a second reference to `slot`.
    fn again(&mut self, slot: Slot) -> Result<(), String> {
        match slot {
            Slot::Scalar(n) => {
                self.copied += n;
                if self.copied > COPY_BUDGET {
                    return refuse("a pickle repeating its strings beyond 1 MiB");
                }
                self.stack.push(slot);
                Ok(())
            }
            _ => refuse(
                "a pickle holding the same list, tuple or dict twice (shared references are refused: they would be copied)",
            ),
        }
    }

    fn top(&self) -> Result<Slot, String> {
        // (A second reference is refused for containers, so depth never
        // doubles up through the memo.)
        match self.stack.last() {
            Some(Slot::Mark) | None => refuse("a pickle memoizing nothing"),
            Some(s) => Ok(*s),
        }
    }
}

fn depth(s: Slot) -> u32 {
    match s {
        Slot::Container(d) => d,
        _ => 0,
    }
}

/// One level above `inner`, within the limit.
fn nest(inner: u32) -> Result<u32, String> {
    if inner >= MAX_DEPTH {
        return refuse("a pickle nesting containers more than 500 deep");
    }
    Ok(inner + 1)
}

/// `Ok` if decoding `data` cannot blow up; why not otherwise.
pub(crate) fn check(data: &[u8]) -> Result<(), String> {
    let mut m = Machine {
        stack: Vec::new(),
        memo: std::collections::HashMap::new(),
        copied: 0,
    };
    let mut at = 0;
    while at < data.len() {
        let op = data[at];
        at += 1;
        if op == b'.' {
            return Ok(());
        }
        match scalar(op, data, &mut at)? {
            Some(len) => m.stack.push(Slot::Scalar(len)),
            None => m.step(op, data, &mut at)?,
        }
    }
    refuse("a pickle without its STOP")
}

/// For an opcode that pushes a scalar: its argument's length (reading
/// past it). `None` for every other opcode.
fn scalar(op: u8, data: &[u8], at: &mut usize) -> Result<Option<usize>, String> {
    let fixed = |at: &mut usize, n: usize| take(data, at, n).map(|_| n);
    Ok(Some(match op {
        b'F' | b'I' | b'L' | b'S' | b'V' => line(data, at)?,
        b'J' => fixed(at, 4)?,
        b'K' => fixed(at, 1)?,
        b'M' => fixed(at, 2)?,
        b'G' => fixed(at, 8)?,
        b'N' | 0x88 | 0x89 => 1,
        b'T' | b'X' | b'B' | 0x8b => counted(data, at, 4)?,
        b'U' | b'C' | 0x8c | 0x8a => counted(data, at, 1)?,
        0x8d | 0x8e | 0x96 => counted(data, at, 8)?,
        _ => return Ok(None),
    }))
}

impl Machine {
    /// Every opcode but STOP and the scalars: marks, containers, the memo,
    /// objects (which serde-pickle refuses later; here they only nest).
    fn step(&mut self, op: u8, data: &[u8], at: &mut usize) -> Result<(), String> {
        match op {
            b'(' => self.stack.push(Slot::Mark),
            b'0' => drop(self.pop_n(1)?),
            b'1' => drop(self.pop_mark()?),
            b'2' => {
                let top = self.top()?;
                self.again(top)?;
            }
            b'}' | b']' | b')' | 0x8f | 0x97 => self.build(0)?,
            b'a' | b'b' => {
                let item = self.pop_n(1)?;
                self.fill_top(item)?;
            }
            b's' => {
                let pair = self.pop_n(2)?;
                self.fill_top(pair)?;
            }
            b'e' | b'u' | 0x90 => {
                let items = self.pop_mark()?;
                self.fill_top(items)?;
            }
            b't' | b'l' | b'd' | 0x91 | b'o' => {
                let items = self.pop_mark()?;
                self.build(items)?;
            }
            b'i' => {
                line(data, at)?;
                line(data, at)?;
                let items = self.pop_mark()?;
                self.build(items)?;
            }
            0x85..=0x87 => {
                let items = self.pop_n(usize::from(op - 0x84))?;
                self.build(items)?;
            }
            b'R' | 0x81 | 0x93 => {
                let args = self.pop_n(2)?;
                self.build(args)?;
            }
            0x92 => {
                let args = self.pop_n(3)?;
                self.build(args)?;
            }
            b'Q' | 0x98 => {
                let inner = self.pop_n(1)?;
                self.build(inner)?;
            }
            b'c' => {
                line(data, at)?;
                line(data, at)?;
                self.build(0)?;
            }
            b'P' => {
                line(data, at)?;
                self.build(0)?;
            }
            0x82..=0x84 => {
                take(data, at, [1, 2, 4][usize::from(op - 0x82)])?;
                self.build(0)?;
            }
            0x80 => drop(take(data, at, 1)?),
            0x95 => drop(take(data, at, 8)?),
            _ => self.memo_step(op, data, at)?,
        }
        Ok(())
    }

    /// The memo's opcodes: a `GET` is a second reference to what a `PUT`
    /// stored.
    fn memo_step(&mut self, op: u8, data: &[u8], at: &mut usize) -> Result<(), String> {
        match op {
            b'g' | b'h' | b'j' => {
                let width = match op {
                    b'g' => 0, // a decimal line
                    b'h' => 1,
                    _ => 4,
                };
                let i = index(data, at, width)?;
                let slot = *self
                    .memo
                    .get(&i)
                    .ok_or_else(|| "a pickle reading an empty memo slot".to_owned())?;
                self.again(slot)
            }
            b'p' | b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'p' => index(data, at, 0)?,
                    b'q' => index(data, at, 1)?,
                    b'r' => index(data, at, 4)?,
                    _ => self.memo.len() as u64,
                };
                let top = self.top()?;
                self.memo.insert(i, top);
                Ok(())
            }
            _ => refuse("an unknown pickle opcode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_duplicating_tuple_is_refused() {
        // PROTO 2, NONE, then 40 × (DUP, TUPLE2): 2^40 Nones once decoded.
        let mut p = vec![0x80, 2, b'N'];
        for _ in 0..40 {
            p.extend_from_slice(&[b'2', 0x86]);
        }
        p.push(b'.');
        assert!(check(&p).is_err());
    }

    #[test]
    fn containers_nested_a_million_deep_are_refused() {
        // A list holding a list holding a list ...: 2 MB of pickle.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 1_000_000));
        p.extend(std::iter::repeat_n(b'a', 999_999));
        p.push(b'.');
        assert!(check(&p).unwrap_err().contains("500 deep"));
        // 400 deep is fine.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 400));
        p.extend(std::iter::repeat_n(b'a', 399));
        p.push(b'.');
        assert_eq!(check(&p), Ok(()));
    }

    #[test]
    fn plain_requests_pass() {
        // pickle.dumps((None, 'dummy', (), {}), protocol=4)
        let p = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00(N\x8c\x05dummy\x94)}\x94t\x94.";
        assert_eq!(check(p), Ok(()));
    }
}
