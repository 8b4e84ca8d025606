//! Frames read through a buffer: one `read` brings whatever the peer sent
//! (usually one whole request or reply, often several), instead of one
//! system call for the header and another for the body.

use std::io;
use std::os::fd::BorrowedFd;

use crate::WireError;
use crate::sys;
use crate::wire::parse_header;

/// Bytes a read asks for at least.
const CHUNK: usize = 64 * 1024;

/// Buffered bytes of a stream, cut into frames (Python's framing).
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The largest frame accepted.
    max: u64,
}

impl FrameBuf {
    pub(crate) fn new(max: u64) -> FrameBuf {
        FrameBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    pub(crate) fn set_max(&mut self, max: u64) {
        self.max = max;
    }

    /// One read of what `fd` has: the bytes read (0 at the end of the
    /// stream), or `WouldBlock`. Memory grows with bytes that arrived,
    /// never with a length a peer announced.
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < CHUNK {
            self.buf.resize(self.end + CHUNK, 0);
        }
        let n = sys::read(fd, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Whether the last fill took all the room it had (more may wait).
    pub(crate) fn was_full(&self, n: usize) -> bool {
        n > 0 && self.end == self.buf.len()
    }

    /// The next whole frame, if one is buffered.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let unread = &self.buf[self.start..self.end];
        let Some((len, header)) = parse_header(unread, self.max)? else {
            return Ok(None);
        };
        let total = header + len as usize;
        if unread.len() < total {
            return Ok(None);
        }
        let frame = unread[header..total].to_vec();
        self.start += total;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn frames_split_and_join_across_reads() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut bytes = Vec::new();
        for body in [&b"one"[..], b"", b"three"] {
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        let mut fb = FrameBuf::new(1 << 20);
        a.write_all(&bytes[..5]).unwrap();
        fb.fill(b.as_fd()).unwrap();
        assert_eq!(fb.next_frame().unwrap(), None);
        a.write_all(&bytes[5..]).unwrap();
        fb.fill(b.as_fd()).unwrap();
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(fb.next_frame().unwrap(), None);
        a.write_all(&[0, 0, 1, 0]).unwrap(); // 256 > the max
        fb.set_max(255);
        fb.fill(b.as_fd()).unwrap();
        assert!(fb.next_frame().is_err());
    }
}
