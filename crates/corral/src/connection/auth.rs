//! The authentication handshake of CPython's `multiprocessing.connection`
//! (`deliver_challenge` / `answer_challenge`), byte for byte.
//!
//! ```text
//! challenger → `#CHALLENGE#{sha256}` + 40 random bytes
//! answerer   → `{sha256}` + HMAC-SHA256(authkey, `{sha256}` + the 40 bytes)
//! challenger → `#WELCOME#` or `#FAILURE#`
//! ```
//!
//! Python 3.11 and older challenge with 20 bare random bytes and answer
//! with a bare 16-byte HMAC-MD5; that legacy form is accepted only when the
//! caller allows it. Handshake frames are at most [`MAX_HANDSHAKE_FRAME`]
//! bytes, and nothing else is read from a peer before it has proved it holds
//! the key.

use std::io::{self, Read, Write};

use hmac::{Hmac, KeyInit, Mac};

use crate::Error;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
pub(crate) const WELCOME: &[u8] = b"#WELCOME#";
pub(crate) const FAILURE: &[u8] = b"#FAILURE#";
const SHA256_TAG: &[u8] = b"{sha256}";
/// Random bytes in a challenge (CPython's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// The largest handshake frame read (CPython reads with `maxlength=256`).
pub(crate) const MAX_HANDSHAKE_FRAME: usize = 256;

/// What this side accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// Accept and answer the legacy HMAC-MD5 form (Python ≤ 3.11 peers).
    pub(crate) legacy_md5: bool,
}

fn refused(why: impl Into<String>) -> Error {
    Error::Authentication(why.into())
}

fn io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            refused("the peer did not complete the handshake in time")
        }
        io::ErrorKind::UnexpectedEof => {
            refused("the peer closed the connection during the handshake")
        }
        _ => Error::Io {
            context: "authenticating a connection",
            source: e,
        },
    }
}

fn send<S: Write>(stream: &mut S, body: &[u8]) -> Result<(), Error> {
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).map_err(io_error)
}

fn recv<S: Read>(stream: &mut S) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).map_err(io_error)?;
    let len = i32::from_be_bytes(header);
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_HANDSHAKE_FRAME)
        .ok_or_else(|| {
            refused(format!(
                "a handshake frame of {len} bytes (at most {MAX_HANDSHAKE_FRAME})"
            ))
        })?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(io_error)?;
    Ok(body)
}

pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Hmac<sha2::Sha256> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac
}

fn hmac_md5(key: &[u8], message: &[u8]) -> Hmac<md5::Md5> {
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac
}

/// A challenge this side sends: the frame's body and the message the
/// peer's MAC must cover.
pub(crate) struct Challenge {
    pub(crate) frame: Vec<u8>,
    message: Vec<u8>,
}

impl Challenge {
    /// `#CHALLENGE#{sha256}` and 40 fresh random bytes.
    pub(crate) fn new() -> Result<Challenge, Error> {
        let mut message = SHA256_TAG.to_vec();
        let mut random = [0u8; MESSAGE_LENGTH];
        fill_random(&mut random)?;
        message.extend_from_slice(&random);
        Ok(Challenge {
            frame: [CHALLENGE, &message].concat(),
            message,
        })
    }

    /// Checks the peer's answer in constant time; the error says why not.
    pub(crate) fn check(&self, key: &[u8], response: &[u8], policy: Policy) -> Result<(), String> {
        let message = &self.message;
        if let Some(mac) = response.strip_prefix(SHA256_TAG) {
            hmac_sha256(key, message)
                .verify_slice(mac)
                .map_err(|_| "the digest received was wrong (another authkey?)".to_owned())
        } else if response.len() == 16 && policy.legacy_md5 {
            hmac_md5(key, message)
                .verify_slice(response)
                .map_err(|_| "the digest received was wrong (another authkey?)".to_owned())
        } else if response.len() == 16 {
            Err(
                "the peer answered with legacy HMAC-MD5 (Python 3.11 or older); \
                 allow it with `allow_legacy_md5(true)`"
                    .to_owned(),
            )
        } else {
            Err("the peer's answer names no digest this side accepts".to_owned())
        }
    }
}

/// The answer to a peer's challenge frame (`#CHALLENGE#` and its message).
pub(crate) fn answer(key: &[u8], frame: &[u8], policy: Policy) -> Result<Vec<u8>, Error> {
    let message = frame
        .strip_prefix(CHALLENGE)
        .filter(|m| m.len() >= 20)
        .ok_or_else(|| refused("the peer sent no valid challenge"))?;
    if message.len() == 20 {
        // A legacy (Python ≤ 3.11) challenger: 20 bare random bytes.
        if !policy.legacy_md5 {
            return Err(refused(
                "the peer challenged with legacy HMAC-MD5 (Python 3.11 or older); \
                 allow it with `allow_legacy_md5(true)`",
            ));
        }
        Ok(hmac_md5(key, message).finalize().into_bytes().to_vec())
    } else if message.starts_with(SHA256_TAG) {
        Ok([
            SHA256_TAG,
            &hmac_sha256(key, message).finalize().into_bytes(),
        ]
        .concat())
    } else if message.starts_with(b"{md5}") && policy.legacy_md5 {
        Ok(hmac_md5(key, message).finalize().into_bytes().to_vec())
    } else {
        Err(refused(
            "the peer asked for a digest this side does not speak",
        ))
    }
}

/// Challenges the peer; `Ok` once it proved it holds `key`.
pub(super) fn deliver_challenge<S: Read + Write>(
    stream: &mut S,
    key: &[u8],
    policy: Policy,
) -> Result<(), Error> {
    let challenge = Challenge::new()?;
    send(stream, &challenge.frame)?;
    let response = recv(stream)?;
    match challenge.check(key, &response, policy) {
        Ok(()) => send(stream, WELCOME),
        Err(why) => {
            let _ = send(stream, FAILURE);
            Err(refused(why))
        }
    }
}

/// Answers the peer's challenge; `Ok` once it welcomed us.
pub(super) fn answer_challenge<S: Read + Write>(
    stream: &mut S,
    key: &[u8],
    policy: Policy,
) -> Result<(), Error> {
    let frame = recv(stream)?;
    send(stream, &answer(key, &frame, policy)?)?;
    match recv(stream)?.as_slice() {
        WELCOME => Ok(()),
        _ => Err(refused("the peer rejected our digest (another authkey?)")),
    }
}

/// Fills `buf` with random bytes from the kernel.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("reading random bytes")(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake both ways over a socket pair, with the given keys.
    fn handshake(a: &[u8], b: &[u8], policy: Policy) -> (Result<(), Error>, Result<(), Error>) {
        let (mut x, mut y) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (a.to_vec(), b.to_vec());
        let server = std::thread::spawn(move || {
            deliver_challenge(&mut x, &a, policy)
                .and_then(|()| answer_challenge(&mut x, &a, policy))
        });
        let client = answer_challenge(&mut y, &b, policy)
            .and_then(|()| deliver_challenge(&mut y, &b, policy));
        (server.join().unwrap(), client)
    }

    #[test]
    fn same_key_welcomes_other_key_fails_both_sides() {
        let policy = Policy { legacy_md5: false };
        let (s, c) = handshake(b"k", b"k", policy);
        assert!(s.is_ok() && c.is_ok());
        let (s, c) = handshake(b"k", b"other", policy);
        assert!(matches!(s, Err(Error::Authentication(_))), "{s:?}");
        assert!(matches!(c, Err(Error::Authentication(_))), "{c:?}");
    }

    #[test]
    fn a_huge_handshake_frame_is_refused_unread() {
        let (mut x, mut y) = std::os::unix::net::UnixStream::pair().unwrap();
        y.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
        let e = answer_challenge(&mut x, b"k", Policy { legacy_md5: true }).unwrap_err();
        assert!(e.to_string().contains("handshake frame"), "{e}");
    }
}
