//! The fork server's code in huge pages, so that its children take no page
//! faults for it.
//!
//! `fork` copies no page tables for a file-backed mapping without anonymous
//! pages (Linux leaves them to be faulted in again), so each page of code a
//! fork-server child runs on its way to its function is a page fault, and
//! each fault maps up to 16 pages around it, which the child's exit unmaps
//! again: on a 2-core VM, 25 such faults added ~90 µs to a
//! `fork`+`_exit`+`waitpid` of ~115 µs. A copy of the code in anonymous
//! transparent huge pages is copied by `fork` as one page-table entry per
//! 2 MiB: the child takes no fault for it, and its exit unmaps almost
//! nothing.
//!
//! [`HugeCode`] swaps each whole huge page of the read-only run of segments
//! (headers, read-only data, code) of each loaded object (the program, and
//! the libraries big enough: for a Python host, the interpreter's library
//! and corral's module) for such a copy: the same bytes at the same
//! addresses, read-only and executable. The ends of a run that fill
//! no huge page stay mapped from the file: copied in huge pages mapped by
//! small entries, they cost each `fork` ~50 ns a page, more than the faults
//! they save (a child runs code in a few of its 64 KiB windows). Debuggers
//! and `perf` find no file behind the copied addresses in the process and
//! its children.

use std::ffi::c_void;
use std::io;
use std::ptr;

/// `madvise` advice (Linux 6.1): make the range huge pages now, whatever the
/// system's setting for doing so at page faults. An older kernel refuses
/// it, and then nothing is copied.
const MADV_COLLAPSE: i32 = 25;

/// A copy of the code in huge pages, made a huge page at a time (the first
/// touch of each costs 0.5–15 ms on a VM, whose host backs it afresh), so
/// that a process serving requests can make it between them.
///
/// The copies are left out of every fork until each takes its place: a
/// child forked meanwhile runs from the file, as before.
pub(crate) struct HugeCode {
    pending: Vec<Pending>,
}

impl HugeCode {
    /// Plans copies of the whole huge pages of the read-only runs of
    /// segments (headers, read-only data, code) of the loaded objects;
    /// `None` when there are none, or the machine has no transparent huge
    /// pages.
    pub(crate) fn plan() -> Option<HugeCode> {
        let huge = huge_page_size()?;
        let pending: Vec<Pending> = (read_only_runs().into_iter())
            .filter_map(|run| Pending::new(run, huge).ok().flatten())
            .collect();
        (!pending.is_empty()).then_some(HugeCode { pending })
    }

    /// Copies one huge page's worth more, and puts each copy that is
    /// complete in place of its run. Returns whether any work is left.
    ///
    /// A copy is put in place only while the process has one thread:
    /// nothing may run code from a run while it is swapped for its copy.
    /// A copy that fails is dropped, and its run keeps its file mapping.
    pub(crate) fn step(&mut self) -> bool {
        if let Some(next) = self.pending.first_mut()
            && next.copy_some()
        {
            let done = self.pending.remove(0);
            if super::thread_count() == 1 {
                let _ = done.swap();
            }
        }
        !self.pending.is_empty()
    }
}

/// The size of a huge page, if the kernel has transparent huge pages on.
fn huge_page_size() -> Option<usize> {
    let dir = "/sys/kernel/mm/transparent_hugepage";
    let enabled = std::fs::read_to_string(format!("{dir}/enabled")).ok()?;
    if enabled.contains("[never]") {
        return None;
    }
    let size = std::fs::read_to_string(format!("{dir}/hpage_pmd_size")).ok()?;
    size.trim()
        .parse()
        .ok()
        .filter(|s: &usize| s.is_power_of_two())
}

/// A page-aligned run of adjacent read-only loaded segments of one object.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Run {
    start: usize,
    end: usize,
}

/// The runs holding the executable segment of each loaded object.
fn read_only_runs() -> Vec<Run> {
    let mut found = Found {
        page: rustix::param::page_size(),
        runs: Vec::new(),
    };
    // SAFETY: the callback only reads the `dl_phdr_info` the dynamic linker
    // passes it for the duration of the call, and `data` is `&mut found`,
    // alive and not otherwise borrowed until `dl_iterate_phdr` returns.
    unsafe { libc::dl_iterate_phdr(Some(each_object), (&raw mut found).cast()) };
    found.runs
}

struct Found {
    page: usize,
    runs: Vec<Run>,
}

/// Called by `dl_iterate_phdr` for each loaded object, the main program
/// first.
unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _: usize,
    data: *mut c_void,
) -> i32 {
    // SAFETY: `data` is the `Found` that `read_only_runs` passed, and `info`
    // and its program headers are valid for this call (`dl_iterate_phdr`).
    let (found, info) = unsafe { (&mut *data.cast::<Found>(), &*info) };
    let headers = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: as above: `dlpi_phnum` headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let page = found.page;
    let segments: Vec<Segment> = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_memsz > 0)
        .map(|h| {
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            Segment {
                start: start / page * page,
                end: (start + h.p_memsz as usize).div_ceil(page) * page,
                readable: h.p_flags & libc::PF_R != 0,
                writable: h.p_flags & libc::PF_W != 0,
                executable: h.p_flags & libc::PF_X != 0,
            }
        })
        .collect();
    found.runs.extend(run_around_code(&segments));
    0
}

struct Segment {
    start: usize,
    end: usize,
    readable: bool,
    writable: bool,
    executable: bool,
}

/// The run of adjacent read-only segments around the first executable one.
fn run_around_code(segments: &[Segment]) -> Option<Run> {
    let read_only = |i: usize| segments[i].readable && !segments[i].writable;
    let code = (0..segments.len()).find(|&i| segments[i].executable && read_only(i))?;
    let mut first = code;
    while first > 0 && read_only(first - 1) && segments[first - 1].end == segments[first].start {
        first -= 1;
    }
    let mut last = code;
    while last + 1 < segments.len()
        && read_only(last + 1)
        && segments[last].end == segments[last + 1].start
    {
        last += 1;
    }
    Some(Run {
        start: segments[first].start,
        end: segments[last].end,
    })
}

/// A run's copy in the making.
struct Pending {
    copy: HugeCopy,
    /// The range claimed below the run, if any, for the copy's first huge
    /// page to be mapped over.
    claim: Option<Claim>,
    /// The run's bytes are copied from its start (or the copy's, if
    /// higher) to below this address.
    copied_to: usize,
}

impl Pending {
    /// The copy of the whole huge pages of `run`; `None` if it fills none.
    /// When nothing is mapped between the run and the huge-page boundary
    /// below it, the copy starts at that boundary (zeros below the run), so
    /// that the run's first huge page counts as whole too.
    fn new(run: Run, huge: usize) -> io::Result<Option<Pending>> {
        let boundary = run.start / huge * huge;
        let claim = huge_span(run, huge, true)
            .filter(|&(from, _)| from < run.start)
            .and_then(|_| Claim::new(boundary, run.start - boundary));
        let Some((from, to)) = huge_span(run, huge, claim.is_some()) else {
            return Ok(None);
        };
        Ok(Some(Pending {
            copy: HugeCopy::new(from, to, huge)?,
            claim,
            copied_to: run.start.max(from),
        }))
    }

    /// Copies up to the next huge-page boundary; whether all is copied.
    fn copy_some(&mut self) -> bool {
        let huge = self.copy.huge;
        let to = (self.copied_to / huge + 1) * huge;
        let at = self.copy.at(self.copied_to);
        // SAFETY: `[copied_to, to)` lies in the run, loaded and readable,
        // and its place in the copy in the copy's mapping, ours alone.
        unsafe {
            ptr::copy_nonoverlapping(
                self.copied_to as *const u8,
                at as *mut u8,
                to - self.copied_to,
            )
        };
        self.copied_to = to;
        to == self.copy.to
    }

    fn swap(mut self) -> io::Result<()> {
        self.copy.swap()?;
        // The copy was moved over the claimed range.
        std::mem::forget(self.claim.take());
        Ok(())
    }
}

/// The whole huge pages of `run`, as `[from, to)`: from its first
/// huge-page boundary, or from the one below its start if the range between
/// is `free_below`, up to its last; `None` if that holds no huge page.
fn huge_span(run: Run, huge: usize, free_below: bool) -> Option<(usize, usize)> {
    let from = if free_below {
        run.start / huge * huge
    } else {
        run.start.div_ceil(huge) * huge
    };
    let to = run.end / huge * huge;
    (from < to).then_some((from, to))
}

/// A range below a run where nothing was mapped, mapped inaccessible by us
/// until the copy takes it, and unmapped again if it does not.
struct Claim {
    at: usize,
    len: usize,
}

impl Claim {
    fn new(at: usize, len: usize) -> Option<Claim> {
        if len == 0 {
            return None;
        }
        // SAFETY: `MAP_FIXED_NOREPLACE` maps nothing over an existing
        // mapping; a kernel without it takes the address as a hint.
        let got = unsafe {
            libc::mmap(
                at as *mut c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return None;
        }
        let claim = Claim {
            at: got as usize,
            len,
        };
        (claim.at == at).then_some(claim)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // SAFETY: the range mapped in `new`, used by nothing.
        unsafe { libc::munmap(self.at as *mut c_void, self.len) };
    }
}

/// An anonymous mapping of whole huge pages, to hold `[from, to)` (both
/// huge-page aligned), left out of forks until it takes that range's place.
struct HugeCopy {
    /// Where the copy is, huge-page aligned.
    base: usize,
    from: usize,
    to: usize,
    huge: usize,
    /// Moved over `[from, to)`.
    swapped: bool,
}

impl HugeCopy {
    fn new(from: usize, to: usize, huge: usize) -> io::Result<HugeCopy> {
        let size = to - from;
        // SAFETY: a fresh private anonymous mapping, nothing else's.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size + huge,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = (raw as usize).div_ceil(huge) * huge;
        let below = base - raw as usize;
        // SAFETY: the parts of the fresh mapping outside `[base, base +
        // size)`, and then that range itself, used by nothing.
        unsafe {
            if below > 0 {
                libc::munmap(raw, below);
            }
            libc::munmap((base + size) as *mut c_void, huge - below);
            libc::madvise(base as *mut c_void, size, libc::MADV_HUGEPAGE);
            libc::madvise(base as *mut c_void, size, libc::MADV_DONTFORK);
        }
        Ok(HugeCopy {
            base,
            from,
            to,
            huge,
            swapped: false,
        })
    }

    /// Where `addr` of `[from, to)` is in the copy.
    fn at(&self, addr: usize) -> usize {
        self.base + (addr - self.from)
    }

    /// Makes the copy huge pages (if the page faults did not), read-only
    /// and executable, and moves it over `[from, to)`, to be forked from
    /// then on.
    fn swap(&mut self) -> io::Result<()> {
        let (copy, len) = (self.base as *mut c_void, self.to - self.from);
        let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: the copy is ours alone. The move replaces `[from, to)` at
        // once with the same bytes (copied from the run, which is read-only;
        // zeros below it only where nothing was mapped), and the caller is
        // the only thread.
        let moved = unsafe {
            if libc::madvise(copy, len, MADV_COLLAPSE) != 0
                || libc::madvise(copy, len, libc::MADV_DOFORK) != 0
                || libc::mprotect(copy, len, libc::PROT_READ | libc::PROT_EXEC) != 0
            {
                libc::MAP_FAILED
            } else {
                libc::mremap(copy, len, len, fixed, self.from as *mut c_void)
            }
        };
        if moved == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.swapped = true;
        Ok(())
    }
}

impl Drop for HugeCopy {
    fn drop(&mut self) {
        if !self.swapped {
            // SAFETY: the copy's mapping, which took nobody's place.
            unsafe { libc::munmap(self.base as *mut c_void, self.to - self.from) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: usize, end: usize, flags: &str) -> Segment {
        Segment {
            start,
            end,
            readable: flags.contains('r'),
            writable: flags.contains('w'),
            executable: flags.contains('x'),
        }
    }

    #[test]
    fn the_run_is_the_adjacent_read_only_segments_around_the_code() {
        let segments = [
            segment(0x0, 0x2000, "r"),
            segment(0x2000, 0x9000, "rx"),
            segment(0x9000, 0xa000, "r"),
            segment(0xa000, 0xc000, "rw"),
            segment(0xc000, 0xd000, "r"),
        ];
        assert_eq!(
            run_around_code(&segments),
            Some(Run {
                start: 0x0,
                end: 0xa000
            })
        );
        let gap = [segment(0x0, 0x1000, "r"), segment(0x3000, 0x4000, "rx")];
        assert_eq!(
            run_around_code(&gap),
            Some(Run {
                start: 0x3000,
                end: 0x4000
            })
        );
        assert_eq!(run_around_code(&[segment(0, 0x1000, "rw")]), None);
        // Never a segment that cannot be read (the copy reads it).
        let hidden = [segment(0x0, 0x1000, ""), segment(0x1000, 0x2000, "rx")];
        assert_eq!(
            run_around_code(&hidden),
            Some(Run {
                start: 0x1000,
                end: 0x2000
            })
        );
    }

    #[test]
    fn only_whole_huge_pages_are_copied() {
        const M: usize = 1 << 20;
        let run = |start, end| Run { start, end };
        // 3.5 MiB from 1 MiB: one huge page inside; with the range below
        // free, the first counts as whole too.
        assert_eq!(
            huge_span(run(M, 9 * M / 2), 2 * M, false),
            Some((2 * M, 4 * M))
        );
        assert_eq!(huge_span(run(M, 9 * M / 2), 2 * M, true), Some((0, 4 * M)));
        // 1.5 MiB from 1 MiB: one only from the boundary below.
        assert_eq!(huge_span(run(M, 5 * M / 2), 2 * M, false), None);
        assert_eq!(huge_span(run(M, 5 * M / 2), 2 * M, true), Some((0, 2 * M)));
        // 1 MiB ending past a boundary: none, even from the one below.
        assert_eq!(huge_span(run(5 * M / 2, 7 * M / 2), 2 * M, true), None);
        assert_eq!(huge_span(run(3 * M, 5 * M), 2 * M, false), None);
        // Aligned at both ends: all of it.
        assert_eq!(
            huge_span(run(2 * M, 6 * M), 2 * M, false),
            Some((2 * M, 6 * M))
        );
    }
}
