//! The identity of the running executable.
//!
//! A child must never call into a code offset computed in a different binary.
//! The identity is the ELF GNU build-id of `/proc/self/exe` (a hash of the
//! linked image, the same on every host that runs the same build). When a
//! binary has no build-id, the identity falls back to the file's size,
//! modification time and inode, which is stricter (it changes on copy) but
//! still never confuses two different builds.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::OnceLock;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The identity of the running executable, computed once per process image.
pub(crate) fn executable_identity() -> &'static [u8] {
    static IDENTITY: OnceLock<Vec<u8>> = OnceLock::new();
    IDENTITY.get_or_init(|| compute().unwrap_or_else(|_| b"unknown-executable".to_vec()))
}

fn compute() -> io::Result<Vec<u8>> {
    let file = File::open("/proc/self/exe")?;
    if let Some(id) = build_id(&file)? {
        let mut out = b"build-id:".to_vec();
        out.extend_from_slice(&id);
        return Ok(out);
    }
    let meta = file.metadata()?;
    Ok(format!(
        "file:{}:{}:{}:{}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    )
    .into_bytes())
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the GNU build-id note of a 64-bit little-endian ELF file.
fn build_id(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    ) else {
        return Ok(None);
    };
    let table_len = usize::from(phentsize) * usize::from(phnum);
    if phentsize < 56 || table_len > 64 * 1024 {
        return Ok(None);
    }
    let mut table = vec![0u8; table_len];
    file.read_exact_at(&mut table, phoff)?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if u32_at(entry, 0) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(entry, 8), u64_at(entry, 32)) else {
            continue;
        };
        if size > 64 * 1024 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        file.read_exact_at(&mut notes, offset)?;
        if let Some(id) = find_build_id(&notes) {
            return Ok(Some(id.to_vec()));
        }
    }
    Ok(None)
}

fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    let align = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)? as usize;
        let descsz = u32_at(notes, 4)? as usize;
        let kind = u32_at(notes, 8)?;
        let name_end = 12 + align(namesz);
        let desc_end = name_end.checked_add(align(descsz))?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_is_stable_and_names_the_build() {
        let a = super::executable_identity();
        assert_eq!(a, super::compute().unwrap());
        assert!(a.starts_with(b"build-id:") || a.starts_with(b"file:"));
    }
}
