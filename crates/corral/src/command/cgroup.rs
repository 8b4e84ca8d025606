//! A per-job memory cgroup (cgroup v1 `memory` controller): a hard cap on the
//! whole job tree, an exact out-of-memory verdict and the tree's peak usage.
//!
//! Used when this process may create a child of its own memory cgroup
//! (root, or a delegated hierarchy). Otherwise [`super::Command`] falls back
//! to `RLIMIT_AS`, which caps each process of the job on its own and cannot
//! tell an out-of-memory failure from any other.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One job's memory cgroup; removed on drop.
#[derive(Debug)]
pub(crate) struct MemoryCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl MemoryCgroup {
    /// Creates a child of this process's memory cgroup capped at `bytes`,
    /// and opens its `cgroup.procs` for the job to join.
    pub(crate) fn create(bytes: u64) -> io::Result<(MemoryCgroup, OwnedFd)> {
        let parent = own_memory_cgroup()?;
        let name = format!(
            "corral-job-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        let group = MemoryCgroup { dir, parent };
        group.write("memory.limit_in_bytes", bytes)?;
        // Swap must not let the job escape the cap (absent without swap
        // accounting, which is fine).
        let _ = group.write("memory.memsw.limit_in_bytes", bytes);
        let procs = OpenOptions::new()
            .write(true)
            .open(group.dir.join("cgroup.procs"))?;
        Ok((group, OwnedFd::from(procs)))
    }

    fn write(&self, file: &str, value: u64) -> io::Result<()> {
        fs::write(self.dir.join(file), value.to_string())
    }

    fn read(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(file)).ok()
    }

    /// The job tree's peak memory use, in bytes.
    pub(crate) fn peak(&self) -> Option<u64> {
        self.read("memory.max_usage_in_bytes")?.trim().parse().ok()
    }

    /// Whether the kernel's out-of-memory killer killed a process of the job.
    pub(crate) fn oom_killed(&self) -> bool {
        self.read("memory.oom_control").is_some_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim() != "0")
        })
    }

    /// The processes still in the group.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: a job's background
        // process that outlived it goes back to our own group.
        let pids = self.pids();
        if !pids.is_empty()
            && let Ok(mut procs) = OpenOptions::new()
                .write(true)
                .open(self.parent.join("cgroup.procs"))
        {
            for pid in pids {
                let _ = io::Write::write_all(&mut procs, pid.to_string().as_bytes());
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// This process's cgroup in the v1 `memory` hierarchy.
fn own_memory_cgroup() -> io::Result<PathBuf> {
    let unsupported =
        || io::Error::new(io::ErrorKind::Unsupported, "no cgroup v1 memory controller");
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let path = text
        .lines()
        .filter_map(|line| {
            line.split_once(':')
                .and_then(|(_, rest)| rest.split_once(':'))
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"))
        .map(|(_, path)| path.trim_start_matches('/').to_owned())
        .ok_or_else(unsupported)?;
    let dir = PathBuf::from("/sys/fs/cgroup/memory").join(path);
    // Probe: the controller's files must be there (a mount elsewhere or a
    // read-only hierarchy fails `create_dir` later, which is fine too).
    File::open(dir.join("memory.limit_in_bytes")).map_err(|_| unsupported())?;
    Ok(dir)
}
