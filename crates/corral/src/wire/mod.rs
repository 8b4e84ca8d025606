//! The wire: how values cross between processes.
//!
//! # Framing
//!
//! Every message is a frame with the header of Python's
//! `multiprocessing.connection`: a 4-byte big-endian signed length, or, for
//! messages of 2 GiB and more, the value `-1` followed by an 8-byte
//! big-endian length. A bytes message sent by corral is therefore readable by
//! Python's `Connection.recv_bytes` and vice versa.
//!
//! Readers never trust a header: a frame longer than the channel's limit is
//! rejected before any allocation, and the buffer grows only as bytes really
//! arrive, so a hostile header announcing 4 GiB and sending 10 bytes costs
//! 10 bytes. A truncated stream is a [`crate::WireError::Truncated`], never a
//! hang or a panic.
//!
//! # Codec
//!
//! Values are encoded with [postcard](https://docs.rs/postcard), chosen by
//! measurement (see `bench/RESULTS.md`): on this machine a small struct
//! round-trips in 96 ns (bincode 1: 65 ns, bitcode's serde mode: 838 ns) and a
//! million `u64` in 25 ms (bincode: 13 ms, bitcode: 2.7 ms). bincode is faster
//! on fixed-size data but its maintainers declared it unmaintained (3.0.0 is a
//! tombstone release); bitcode is slow on the small messages that dominate
//! process traffic. postcard is maintained, has a stable documented wire
//! format and decodes from bounded input without trusting lengths. Decoding
//! rejects trailing bytes.
//!
//! corral handles (pipe ends, and later queues and locks) serialize as an index
//! into a side table of file descriptors that travels out of band
//! (`SCM_RIGHTS`, or inheritance across fork and exec).

mod codec;
mod frame;
mod tap;

pub(crate) use codec::{
    Out, decode, decode_plain, decode_plain_guarded, deserialize_fd, encode, encode_into,
    encode_plain_into, serialize_fd,
};
pub(crate) use frame::{
    FrameReader, Progress, SendFailed, encode_header, parse_header, read_exact_growing, send_all,
    send_all_with, write_frame,
};

/// The largest frame corral accepts (4 GiB): large enough for 1 GiB values
/// with room for their encoding, small enough to reject absurd headers.
pub(crate) const MAX_FRAME: u64 = 1 << 32;

/// Splits a byte stream into frames exactly as a corral reader does; used by
/// the fuzz target and the property tests.
#[doc(hidden)]
pub fn split_frames(stream: &[u8]) -> Vec<Result<Vec<u8>, crate::WireError>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        match parse_header(rest, MAX_FRAME) {
            Ok(Some((len, header))) => {
                let total = header as u64 + len;
                if (rest.len() as u64) < total {
                    out.push(Err(crate::WireError::Truncated {
                        expected: total,
                        received: rest.len() as u64,
                    }));
                    break;
                }
                out.push(Ok(rest[header..total as usize].to_vec()));
                rest = &rest[total as usize..];
            }
            Ok(None) => {
                out.push(Err(crate::WireError::Truncated {
                    expected: 4,
                    received: rest.len() as u64,
                }));
                break;
            }
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

/// Decodes a value from untrusted bytes without any descriptors; used by the
/// fuzz target.
#[doc(hidden)]
pub fn decode_untrusted<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, crate::CodecError> {
    decode(bytes, Vec::new())
}

/// Encodes one frame (header and payload) into a byte vector.
#[doc(hidden)]
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let (header, n) = encode_header(payload.len() as u64);
    let mut out = header[..n].to_vec();
    out.extend_from_slice(payload);
    out
}
