//! Frame headers and an incremental, allocation-bounded frame reader.

use std::io;
use std::os::fd::BorrowedFd;

use crate::WireError;
use crate::sys;

/// Encodes the header for a payload of `len` bytes; returns the buffer and how
/// many of its bytes are the header.
pub(crate) fn encode_header(len: u64) -> ([u8; 12], usize) {
    let mut out = [0u8; 12];
    if len < 0x7fff_ffff {
        out[..4].copy_from_slice(&(len as i32).to_be_bytes());
        (out, 4)
    } else {
        out[..4].copy_from_slice(&(-1i32).to_be_bytes());
        out[4..].copy_from_slice(&len.to_be_bytes());
        (out, 12)
    }
}

/// Parses a header at the start of `buf`: `Ok(None)` if more bytes are
/// needed, else the payload length and the header's size.
pub(crate) fn parse_header(buf: &[u8], max: u64) -> Result<Option<(u64, usize)>, WireError> {
    let Some(first) = buf.get(..4) else {
        return Ok(None);
    };
    let short = i32::from_be_bytes(first.try_into().expect("4 bytes"));
    let (len, header) = match short {
        -1 => {
            let Some(long) = buf.get(4..12) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(long.try_into().expect("8 bytes"));
            if len < 0x7fff_ffff {
                return Err(WireError::Corrupt("long header for a short frame"));
            }
            (len, 12)
        }
        n if n < 0 => return Err(WireError::Corrupt("negative frame length")),
        n => (n as u64, 4),
    };
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(Some((len, header)))
}

/// What a [`FrameReader::read_from`] call achieved.
#[derive(Debug)]
pub(crate) enum Progress {
    /// The source has no more bytes for now (it would block).
    Pending,
    /// A whole frame's payload.
    Frame(Vec<u8>),
    /// The source ended cleanly between frames.
    Eof,
}

/// Reads frames from a non-blocking descriptor a piece at a time.
///
/// The header is read into a small array, then the payload into a buffer of
/// its own, so a frame is returned without copying. A header is trusted up
/// to 16 MiB (the payload's buffer is made at once); beyond that, memory
/// grows with the bytes that actually arrived, never with what a header
/// announced.
#[derive(Debug)]
pub(crate) struct FrameReader {
    header: [u8; 12],
    /// Header bytes read so far.
    have: usize,
    /// The payload's length, once the header is whole.
    len: Option<usize>,
    body: Vec<u8>,
    /// Payload bytes read so far.
    filled: usize,
    max: u64,
}

const MIN_CHUNK: usize = 64 * 1024;
/// Payloads up to this size get their whole buffer at once (a hostile header
/// can make a reader allocate this much, no more).
const TRUSTED: usize = 16 << 20;

impl FrameReader {
    pub(crate) fn new(max: u64) -> FrameReader {
        FrameReader {
            header: [0; 12],
            have: 0,
            len: None,
            body: Vec::new(),
            filled: 0,
            max,
        }
    }

    /// Reads what `fd` has and returns a frame as soon as one is complete.
    pub(crate) fn read_from(&mut self, fd: BorrowedFd<'_>) -> io::Result<Progress> {
        self.read_with(|buf| sys::read(fd, buf))
    }

    /// Like [`read_from`](Self::read_from), reading through `read`, which
    /// must not block (`WouldBlock` when nothing is there).
    pub(crate) fn read_with(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Progress> {
        loop {
            let Some(len) = self.len else {
                match self.read_header(&mut read)? {
                    Some(progress) => return Ok(progress),
                    None => continue,
                }
            };
            if self.filled == len {
                self.len = None;
                self.have = 0;
                self.filled = 0;
                return Ok(Progress::Frame(std::mem::take(&mut self.body)));
            }
            // Past TRUSTED, grow geometrically with what has arrived.
            let end = if len <= TRUSTED {
                len
            } else {
                len.min(self.filled + MIN_CHUNK.max(self.filled))
            };
            if self.body.len() < end {
                self.body.resize(end, 0);
            }
            match read(&mut self.body[self.filled..end]) {
                Ok(0) => return Err(self.truncated()),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads header bytes; `Some` when the caller must return (nothing more
    /// now, or the end), `None` to go on (the header may be whole).
    fn read_header(
        &mut self,
        read: &mut impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Option<Progress>> {
        if let Some((len, _)) =
            parse_header(&self.header[..self.have], self.max).map_err(invalid)?
        {
            let len = len as usize;
            self.len = Some(len);
            // Zeroed by the allocator (fresh pages for a large one).
            self.body = vec![0u8; len.min(TRUSTED)];
            return Ok(None);
        }
        let need = if self.have < 4 { 4 } else { 12 };
        match read(&mut self.header[self.have..need]) {
            Ok(0) if self.have == 0 => Ok(Some(Progress::Eof)),
            Ok(0) => Err(self.truncated()),
            Ok(n) => {
                self.have += n;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(Progress::Pending)),
            Err(e) => Err(e),
        }
    }

    /// The stream ended inside a frame: what it announced and what came.
    fn truncated(&self) -> io::Error {
        // Once the payload's length is known, `have` is the header's size.
        let have = self.have as u64;
        let (expected, received) = match self.len {
            Some(len) => (have + len as u64, have + self.filled as u64),
            None => (if self.have < 4 { 4 } else { 12 }, have),
        };
        invalid(WireError::Truncated { expected, received })
    }
}

fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Writes one frame (header, then `parts` back to back) to a stream socket,
/// with `fds` attached to its first byte. Blocks until all is written.
pub(crate) fn write_frame(
    sock: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let (header, n) = encode_header(total);
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    pieces.push(&header[..n]);
    pieces.extend_from_slice(parts);
    send_all(sock, &pieces, fds)
}

/// Writes `pieces` back to back to a stream socket, with `fds` attached to the
/// first byte. Blocks (also on a non-blocking socket) until all is written.
pub(crate) fn send_all(
    sock: BorrowedFd<'_>,
    pieces: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_all_with(sock, pieces, fds, || sys::poll_writable(sock)).map_err(|f| f.error)
}

/// A send that failed part-way or before it began.
#[derive(Debug)]
pub(crate) struct SendFailed {
    pub(crate) error: io::Error,
    /// Whether some bytes had left: the stream is then torn.
    pub(crate) partial: bool,
}

/// [`send_all`], calling `blocked` whenever the socket is full; it returns
/// once writing may succeed again (it may do other work meanwhile, such as
/// draining the other direction so that the peer can make progress).
pub(crate) fn send_all_with(
    sock: BorrowedFd<'_>,
    pieces: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    mut blocked: impl FnMut() -> io::Result<()>,
) -> Result<(), SendFailed> {
    let mut pieces: Vec<&[u8]> = pieces.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut fds = fds;
    let mut first = 0;
    let mut sent_any = false;
    while first < pieces.len() {
        let iov: Vec<std::io::IoSlice<'_>> = pieces[first..]
            .iter()
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let partial = sent_any;
        let failed = |error| SendFailed { error, partial };
        let mut sent = match sys::send_with_fds(sock, &iov, fds) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked().map_err(failed)?;
                continue;
            }
            Err(e) => return Err(failed(e)),
        };
        fds = &[];
        sent_any = true;
        while first < pieces.len() && sent >= pieces[first].len() {
            sent -= pieces[first].len();
            first += 1;
        }
        if first < pieces.len() {
            pieces[first] = &pieces[first][sent..];
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes from a blocking descriptor into a buffer that
/// grows with the bytes that arrive. Descriptors that come along go to `fds`.
pub(crate) fn read_exact_growing(
    sock: BorrowedFd<'_>,
    len: usize,
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<Vec<u8>> {
    // Trust a header up to 16 MiB at once; beyond that, grow with the data.
    let mut buf = vec![0u8; len.min(16 << 20)];
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            buf.resize(len.min(buf.len().max(MIN_CHUNK) * 2), 0);
        }
        let n = sys::recv_with_fds(sock, &mut buf[filled..], fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended after {filled} of {len} bytes"),
            ));
        }
        filled += n;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_python() {
        // Python: struct.pack("!i", 5)
        assert_eq!(&encode_header(5).0[..4], &[0, 0, 0, 5]);
        let (h, n) = encode_header(0x8000_0000);
        assert_eq!(n, 12);
        assert_eq!(&h[..4], &[0xff; 4]);
        assert_eq!(parse_header(&h, u64::MAX).unwrap(), Some((0x8000_0000, 12)));
    }

    #[test]
    fn hostile_headers_are_rejected_before_allocation() {
        assert!(matches!(
            parse_header(&[0x80, 0, 0, 0], 1 << 32),
            Err(WireError::Corrupt(_))
        ));
        let mut huge = vec![0xff; 4];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            parse_header(&huge, 1 << 32),
            Err(WireError::TooLarge { .. })
        ));
        let mut short_as_long = vec![0xff; 4];
        short_as_long.extend_from_slice(&5u64.to_be_bytes());
        assert!(matches!(
            parse_header(&short_as_long, 1 << 32),
            Err(WireError::Corrupt(_))
        ));
    }
}
