//! The fork server's requests as both ends read and write them: a 16-byte
//! header `[kind: u32][meta length: u32][arg length: u64]`, the meta, the
//! argument and the descriptors attached (the protocol is described in
//! [`super::forkserver`]). The parent writes them to the server; the server
//! writes a start request on to a spare ([`super::spare`]).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::{sys, wire};

/// Start a child that runs the task in the forked process.
pub(super) const KIND_FORK: u32 = 0;
/// Start a child that re-executes the binary.
pub(super) const KIND_EXEC: u32 = 1;
/// Watch a child the parent forked itself (a pidfd attached).
pub(super) const KIND_WATCH: u32 = 2;
/// Remove this shared memory object when the parent dies.
pub(super) const KIND_TRACK_SHM: u32 = 3;
/// No longer remove this shared memory object.
pub(super) const KIND_UNTRACK_SHM: u32 = 4;
/// Kill a child whose pidfd the parent could not take.
pub(super) const KIND_KILL: u32 = 5;
/// The parent took the spare on offer.
pub(super) const KIND_TAKEN: u32 = 6;

/// The longest meta a request may carry.
const MAX_META: usize = 1 << 20;

/// A request as the server reads it.
pub(super) struct Request {
    pub(super) kind: u32,
    pub(super) meta: Vec<u8>,
    pub(super) arg: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
}

/// Sends one request (to the server, or from it to its spare).
pub(super) fn send_request(
    sock: BorrowedFd<'_>,
    kind: u32,
    meta: &[u8],
    arg: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[4..8].copy_from_slice(&(meta.len() as u32).to_le_bytes());
    header[8..].copy_from_slice(&(arg.len() as u64).to_le_bytes());
    wire::send_all(sock, &[&header, meta, arg], fds)
}

/// Reads one request; `None` at end-of-file before any byte of one.
pub(super) fn read_request(ctrl: BorrowedFd<'_>) -> io::Result<Option<Request>> {
    let mut header = [0u8; 16];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < header.len() {
        let n = sys::recv_with_fds(ctrl, &mut header[got..], &mut fds)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let kind = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let meta_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    let arg_len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    if meta_len > MAX_META || arg_len > wire::MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "oversized request",
        ));
    }
    let meta = wire::read_exact_growing(ctrl, meta_len, &mut fds)?;
    let arg = wire::read_exact_growing(ctrl, arg_len as usize, &mut fds)?;
    Ok(Some(Request {
        kind,
        meta,
        arg,
        fds,
    }))
}
