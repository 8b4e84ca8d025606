//! A job's collected output: in memory up to a bound, then in a file of the
//! run's own spill directory, so that a job printing gigabytes costs disk,
//! not memory (GNU parallel buffers in temporary files too).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes kept in memory before the rest goes to a file.
const IN_MEMORY: usize = 8 << 20;

/// One stream of a job's output.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Captured {
    bytes: Vec<u8>,
    /// Where everything went once it passed [`IN_MEMORY`].
    file: Option<PathBuf>,
    len: u64,
}

/// Collects one stream in a worker.
#[derive(Debug)]
pub(crate) struct Collector {
    out: Captured,
    /// Where to spill (`None`: keep everything in memory, as on a cluster
    /// node, whose files the runner cannot read).
    spill: Option<PathBuf>,
    writer: Option<File>,
}

impl Collector {
    /// A collector spilling to `spill` (a file name in the run's directory).
    pub(crate) fn new(spill: Option<PathBuf>) -> Collector {
        Collector {
            out: Captured::default(),
            spill,
            writer: None,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.out.len += data.len() as u64;
        if let Some(w) = &mut self.writer {
            if w.write_all(data).is_ok() {
                return;
            }
            // A full disk: keep the rest in memory rather than lose it.
            self.writer = None;
        }
        self.out.bytes.extend_from_slice(data);
        if self.out.bytes.len() > IN_MEMORY && self.out.file.is_none() {
            self.start_spilling();
        }
    }

    fn start_spilling(&mut self) {
        let Some(path) = &self.spill else { return };
        // Only this user may read a job's output.
        let opened = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path);
        if let Ok(mut file) = opened
            && file.write_all(&self.out.bytes).is_ok()
        {
            self.out.bytes = Vec::new();
            self.out.file = Some(path.clone());
            self.writer = Some(file);
        }
    }

    pub(crate) fn finish(self) -> Captured {
        self.out
    }
}

impl Captured {
    /// Bytes in all.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a line of the runner's own (a start failure's message).
    pub(crate) fn push_line(&mut self, line: &str) {
        self.bytes.extend_from_slice(line.as_bytes());
        self.bytes.push(b'\n');
        self.len += line.len() as u64 + 1;
    }

    /// Writes it all to `w`, each line prefixed with `tag` and a tab.
    pub(crate) fn write_to(&self, w: &mut dyn Write, tag: Option<&str>) -> io::Result<()> {
        let mut reader: Box<dyn BufRead> = match &self.file {
            Some(path) => Box::new(BufReader::new(File::open(path)?)),
            None => Box::new(&self.bytes[..]),
        };
        let Some(tag) = tag else {
            io::copy(&mut reader, w)?;
            if self.file.is_some() {
                w.write_all(&self.bytes)?;
            }
            return Ok(());
        };
        let mut line = Vec::new();
        let tail: &[u8] = if self.file.is_some() {
            &self.bytes
        } else {
            &[]
        };
        let mut all = reader.chain(tail);
        loop {
            line.clear();
            if all.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            w.write_all(tag.as_bytes())?;
            w.write_all(b"\t")?;
            w.write_all(&line)?;
        }
    }

    /// Saves it all to `path` (`--results`).
    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        let mut file = File::create(path)?;
        self.write_to(&mut file, None)
    }

    /// Removes its spill file, if it has one.
    pub(crate) fn discard(&self) {
        if let Some(path) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The run's spill directory, `$TMPDIR/corral-run-<pid>`, removed when the
/// run ends; directories of runs whose process is gone
/// (a SIGKILLed `corral`) are removed at the next start.
#[derive(Debug)]
pub(crate) struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    pub(crate) fn create() -> io::Result<SpillDir> {
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let path = tmp.join(format!("corral-run-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)?;
        Ok(SpillDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("corral-run-")) else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
