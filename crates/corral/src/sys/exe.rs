//! The identity of the code that holds corral.
//!
//! A child must never call into a code offset computed in a different build.
//! The identity is the ELF GNU build-id of the object whose code holds corral
//! (a hash of the linked image, the same on every host that runs the same
//! build): the executable, or the shared library corral was linked into when
//! a host program loaded it (a Python extension module, say; the
//! interpreter's own build-id would not tell two builds of the module
//! apart). When the object has no build-id, the identity falls back to the
//! file's size, modification time and inode, which is stricter (it changes on
//! copy) but still never confuses two different builds.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::OnceLock;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The identity of the code holding corral, computed once per process image.
pub(crate) fn executable_identity() -> &'static [u8] {
    static IDENTITY: OnceLock<Vec<u8>> = OnceLock::new();
    IDENTITY.get_or_init(|| compute().unwrap_or_else(|_| b"unknown-executable".to_vec()))
}

fn compute() -> io::Result<Vec<u8>> {
    let file = code_object().unwrap_or(File::open("/proc/self/exe")?);
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

/// The file mapped where this very function's code is, from
/// `/proc/self/maps`: through `/proc/self/map_files` when readable (the
/// mapped file itself, even if its path was replaced since), else its path.
fn code_object() -> Option<File> {
    let here = compute as fn() -> io::Result<Vec<u8>> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        if !(start..end).contains(&here) {
            return None;
        }
        let path = fields.nth(4).filter(|p| p.starts_with('/'))?;
        File::open(format!("/proc/self/map_files/{range}"))
            .or_else(|_| File::open(path))
            .ok()
    })
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
    fn identity_names_the_object_holding_the_code() {
        // In a test binary corral is linked into the executable itself.
        let object = super::code_object().expect("this code is mapped from a file");
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(
            super::build_id(&object).unwrap(),
            super::build_id(&exe).unwrap()
        );
    }

    #[test]
    fn identity_is_stable_and_names_the_build() {
        let a = super::executable_identity();
        assert_eq!(a, super::compute().unwrap());
        assert!(a.starts_with(b"build-id:") || a.starts_with(b"file:"));
    }
}
