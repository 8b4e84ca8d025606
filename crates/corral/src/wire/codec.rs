//! Serde encoding with corral handles carried out of band.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tap;
use crate::CodecError;

thread_local! {
    /// Descriptors collected while encoding, in index order.
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// Descriptors available while decoding, taken by index.
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// The message of a handle that failed to (de)serialize (a descriptor
    /// that could not be duplicated, say): kept here because postcard drops
    /// it and a second run may not fail the same way.
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records a handle's error message (see [`HANDLE_ERROR`]) and returns it.
fn handle_error(message: String) -> String {
    HANDLE_ERROR.with(|e| *e.borrow_mut() = Some(message.clone()));
    message
}

const OUTSIDE: &str = "a corral handle can only be sent to another process through corral \
                       (spawn, a Pipe or a Queue), not serialized on its own";

/// Runs a user type's decoding: a panic inside it (a `Deserialize` written
/// by hand) becomes a codec error of this value alone, rather than
/// unwinding through a receiver in the middle of its bookkeeping.
#[inline]
fn guarded<T: ?Sized, R>(
    what: &str,
    body: impl FnOnce() -> Result<R, CodecError>,
) -> Result<R, CodecError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(panicked(payload, what, std::any::type_name::<T>())),
    }
}

#[cold]
fn panicked(payload: Box<dyn std::any::Any + Send>, what: &str, name: &str) -> CodecError {
    let message = crate::error::panic_message(&*payload);
    // The payload may itself panic on drop.
    std::mem::forget(payload);
    CodecError::new(format!("{message} (a panic while {what} {name})"))
}

/// An encoded value and the descriptors its handles refer to.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Encodes `value`, collecting duplicates of the descriptors of the corral
/// handles it contains.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, CodecError> {
    let outer = OUTGOING.with(|cell| cell.replace(Some(Vec::new())));
    let result = postcard::to_stdvec(value).map_err(|e| encode_error(value, e));
    let fds = OUTGOING
        .with(|cell| cell.replace(outer))
        .unwrap_or_default();
    Ok(Encoded {
        bytes: result?,
        fds,
    })
}

/// The error for a failed encoding of `value`: a custom error's own message
/// and field path (recovered, since postcard keeps neither), else
/// postcard's. Called while the encoding's handle table is still in place.
fn encode_error<T: Serialize + ?Sized>(value: &T, e: postcard::Error) -> CodecError {
    let handle = HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let why = match e {
        postcard::Error::SerdeSerCustom => handle
            .or_else(|| tap::explain_ser(value))
            .unwrap_or_else(|| e.to_string()),
        other => other.to_string(),
    };
    // The second run may have recorded one again.
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    CodecError::new(format!("{why} (encoding {})", std::any::type_name::<T>()))
}

/// The error for a failed decoding of `bytes` as a `T` (see
/// [`encode_error`]). `plain`: the bytes carry no handles, so decoding them
/// again is harmless.
fn decode_error<T: DeserializeOwned>(bytes: &[u8], e: postcard::Error, plain: bool) -> CodecError {
    let handle = HANDLE_ERROR.with(|h| h.borrow_mut().take());
    let why = match e {
        postcard::Error::SerdeDeCustom => match handle {
            Some(why) => why,
            None if plain => tap::explain_de::<T>(bytes).unwrap_or_else(|| e.to_string()),
            None => e.to_string(),
        },
        other => other.to_string(),
    };
    HANDLE_ERROR.with(|h| h.borrow_mut().take());
    CodecError::new(format!("{why} (decoding {})", std::any::type_name::<T>()))
}

/// A byte buffer an encoding is appended to.
pub(crate) trait Out {
    /// Appends `data`.
    fn append(&mut self, data: &[u8]);
    fn push(&mut self, byte: u8);
    fn len(&self) -> usize;
    fn truncate(&mut self, len: usize);
}

impl Out for Vec<u8> {
    #[inline]
    fn append(&mut self, data: &[u8]) {
        // Most calls carry a varint (1 to 10 bytes). Up to 8 are appended
        // as one word: a call to `memcpy` for each would cost more than
        // the bytes (a `map` of small items makes two an item).
        if data.len() <= 8 {
            let word = data
                .iter()
                .rev()
                .fold(0u64, |word, &b| (word << 8) | u64::from(b));
            let len = self.len() + data.len();
            self.extend_from_slice(&word.to_le_bytes());
            self.truncate(len);
        } else {
            self.extend_from_slice(data);
        }
    }

    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

/// A small buffer (a single task's argument, kept inline in its job).
impl<const N: usize> Out for smallvec::SmallVec<[u8; N]> {
    fn append(&mut self, data: &[u8]) {
        // Byte by byte: `extend_from_slice` inserts, with a call to
        // `memmove` (of nothing), and `extend` reserves by the iterator's
        // hint first; a submitted `u64`'s encoding took 93 instructions
        // under callgrind that way, 67 this way.
        for &byte in data {
            smallvec::SmallVec::push(self, byte);
        }
    }

    fn push(&mut self, byte: u8) {
        smallvec::SmallVec::push(self, byte);
    }

    fn len(&self) -> usize {
        smallvec::SmallVec::len(self)
    }

    fn truncate(&mut self, len: usize) {
        smallvec::SmallVec::truncate(self, len);
    }
}

/// A postcard output that appends to a borrowed buffer.
struct AppendTo<'a, O: Out>(&'a mut O);

impl<O: Out> postcard::ser_flavors::Flavor for AppendTo<'_, O> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.append(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the encoding of `value` to `out` (left as it was on error) and
/// returns duplicates of the descriptors of the corral handles inside it
/// (usually none: no allocation then).
pub(crate) fn encode_into<T: Serialize + ?Sized, O: Out>(
    value: &T,
    out: &mut O,
) -> Result<Vec<OwnedFd>, CodecError> {
    let start = out.len();
    let outer = OUTGOING.with(|cell| cell.replace(Some(Vec::new())));
    let result =
        postcard::serialize_with_flavor(value, AppendTo(out)).map_err(|e| encode_error(value, e));
    let fds = OUTGOING
        .with(|cell| cell.replace(outer))
        .unwrap_or_default();
    if result.is_err() {
        out.truncate(start);
    }
    result.map(|()| fds)
}

/// Appends the encoding of a value that holds no corral handles (one that
/// does fails, and `out` is left as it was).
pub(crate) fn encode_plain_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    postcard::serialize_with_flavor(value, AppendTo(out)).map_err(|e| {
        out.truncate(start);
        encode_error(value, e)
    })
}

/// Decodes a value that holds no corral handles. A panic in `T`'s
/// `Deserialize` unwinds: this is the pool's per-item path, guarded by its
/// callers once per run of items (see [`decode_plain_guarded`]).
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decoded(bytes, postcard::take_from_bytes::<T>(bytes), true)
}

/// [`decode_plain`], a panic in `T`'s `Deserialize` being a codec error of
/// this value alone.
pub(crate) fn decode_plain_guarded<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    guarded::<T, _>("decoding", || decode_plain(bytes))
}

/// Decodes a `T` from `bytes`; handles inside take their descriptors from `fds`.
/// Descriptors that no handle claimed are closed.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, CodecError> {
    let plain = fds.is_empty();
    let table = fds.into_iter().map(Some).collect();
    let outer = INCOMING.with(|cell| cell.replace(Some(table)));
    let result = guarded::<T, _>("decoding", || {
        let result = postcard::take_from_bytes::<T>(bytes);
        decoded(bytes, result, plain)
    });
    INCOMING.with(|cell| cell.replace(outer));
    result
}

/// The value postcard decoded, or why not: an error of its own, or bytes
/// left over (the two sides disagree on the type).
#[inline]
fn decoded<T: DeserializeOwned>(
    bytes: &[u8],
    result: postcard::Result<(T, &[u8])>,
    plain: bool,
) -> Result<T, CodecError> {
    match result {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(CodecError::new(format!(
            "{} trailing bytes after a {}: the two sides disagree on the type",
            rest.len(),
            std::any::type_name::<T>()
        ))),
        Err(e) => Err(decode_error::<T>(bytes, e, plain)),
    }
}

/// Serializes a descriptor as an index into the outgoing descriptor table.
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let table = cell
            .as_mut()
            .ok_or_else(|| S::Error::custom(handle_error(OUTSIDE.to_owned())))?;
        let dup = fd.try_clone_to_owned().map_err(|e| {
            S::Error::custom(handle_error(format!(
                "duplicating a handle's descriptor: {e}"
            )))
        })?;
        table.push(dup);
        Ok(table.len() as u32 - 1)
    })?;
    s.serialize_newtype_struct("corral.fd", &index)
}

/// Deserializes a descriptor serialized by [`serialize_fd`].
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename = "corral.fd")]
    struct Index(u32);
    let Index(index) = Index::deserialize(d)?;
    INCOMING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let table = cell
            .as_mut()
            .ok_or_else(|| D::Error::custom(handle_error(OUTSIDE.to_owned())))?;
        table
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                D::Error::custom(handle_error(format!("handle #{index} has no descriptor")))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize, Clone)]
    struct Sample {
        id: u64,
        name: String,
        values: Vec<i32>,
        nested: Option<Box<Sample>>,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        let leaf = (
            any::<u64>(),
            ".*",
            proptest::collection::vec(any::<i32>(), 0..20),
        )
            .prop_map(|(id, name, values)| Sample {
                id,
                name,
                values,
                nested: None,
            });
        leaf.prop_recursive(3, 8, 1, |inner| {
            (any::<u64>(), ".*", inner).prop_map(|(id, name, n)| Sample {
                id,
                name,
                values: vec![],
                nested: Some(Box::new(n)),
            })
        })
    }

    proptest! {
        #[test]
        fn values_round_trip(value in sample()) {
            let encoded = encode(&value).unwrap();
            prop_assert!(encoded.fds.is_empty());
            let back: Sample = decode(&encoded.bytes, vec![]).unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn framed_values_round_trip(values in proptest::collection::vec(sample(), 0..5)) {
            let mut stream = Vec::new();
            for v in &values {
                stream.extend(crate::wire::frame_bytes(&encode(v).unwrap().bytes));
            }
            let frames = crate::wire::split_frames(&stream);
            prop_assert_eq!(frames.len(), values.len());
            for (frame, v) in frames.into_iter().zip(&values) {
                let back: Sample = decode(&frame.unwrap(), vec![]).unwrap();
                prop_assert_eq!(&back, v);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes, vec![]);
            let _ = crate::wire::split_frames(&bytes);
        }

        #[test]
        fn truncated_frames_are_errors(value in sample(), cut in 1usize..64) {
            let frame = crate::wire::frame_bytes(&encode(&value).unwrap().bytes);
            let cut = cut.min(frame.len() - 1); // an empty stream is simply no frames
            let frames = crate::wire::split_frames(&frame[..frame.len() - cut]);
            prop_assert!(
                matches!(frames.last(), Some(Err(crate::WireError::Truncated { .. }))),
                "{:?}", frames
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap().bytes;
        bytes.push(0);
        assert!(
            decode::<u32>(&bytes, vec![])
                .unwrap_err()
                .message()
                .contains("trailing")
        );
    }

    #[test]
    fn a_huge_announced_vec_does_not_allocate() {
        // A varint length of 2^62 elements with no data behind it.
        let bytes = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(decode::<Vec<u64>>(&bytes, vec![]).is_err());
    }
}
