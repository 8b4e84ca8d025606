//! Pipes: messages, bytes, timeouts, end-of-file, handles in messages, and
//! malformed frames from a hostile peer.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use corral::{Connection, Pipe, Receiver, RecvError, SendError, Sender, WireError};

corral::test_support!();

#[test]
fn duplex_carries_values_both_ways() {
    let (a, b) = Pipe::duplex().unwrap();
    a.send(&("hello", 1u8)).unwrap();
    b.send(&vec![1.5f64, 2.5]).unwrap();
    assert_eq!(b.recv::<(String, u8)>().unwrap(), ("hello".to_string(), 1));
    assert_eq!(a.recv::<Vec<f64>>().unwrap(), vec![1.5, 2.5]);
}

#[test]
fn bytes_messages_keep_their_boundaries() {
    let (rx, tx) = Pipe::simplex().unwrap();
    for len in [0usize, 1, 7, 4096, 1 << 20] {
        tx.send_bytes(&vec![len as u8; len]).unwrap();
    }
    for len in [0usize, 1, 7, 4096, 1 << 20] {
        assert_eq!(rx.recv_bytes().unwrap(), vec![len as u8; len]);
    }
}

#[test]
fn a_too_small_buffer_says_the_size_and_keeps_the_message() {
    let (rx, tx) = Pipe::simplex().unwrap();
    tx.send_bytes(b"twelve bytes").unwrap();
    let mut small = [0u8; 4];
    match rx.recv_bytes_into(&mut small) {
        Err(RecvError::BufferTooSmall { needed }) => assert_eq!(needed, 12),
        other => panic!("{other:?}"),
    }
    assert!(rx.poll(Some(Duration::ZERO)).unwrap());
    let mut big = [0u8; 64];
    assert_eq!(rx.recv_bytes_into(&mut big).unwrap(), 12);
    assert_eq!(&big[..12], b"twelve bytes");
}

#[test]
fn poll_and_recv_timeout_wait_about_their_timeout() {
    let (a, _b) = Pipe::duplex().unwrap();
    let started = Instant::now();
    assert!(!a.poll(Some(Duration::from_millis(50))).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(matches!(
        a.recv_timeout::<u8>(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
}

#[test]
fn closed_ends_are_disconnected_not_hangs() {
    let (a, b) = Pipe::duplex().unwrap();
    a.send(&1u8).unwrap();
    drop(a);
    assert_eq!(b.recv::<u8>().unwrap(), 1);
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Disconnected)));
    assert!(matches!(b.send(&2u8), Err(SendError::Disconnected)));
}

#[test]
fn pipe_ends_travel_inside_messages() {
    let (a, b) = Pipe::duplex().unwrap();
    let (inner_rx, inner_tx) = Pipe::simplex().unwrap();
    a.send(&(7u8, inner_tx)).unwrap();
    let (n, tx): (u8, Sender) = b.recv().unwrap();
    tx.send(&n).unwrap();
    assert_eq!(inner_rx.recv::<u8>().unwrap(), 7);
}

fn relay((rx, tx): (Receiver, Sender)) -> usize {
    let data = rx.recv_bytes().unwrap();
    tx.send_bytes(&data).unwrap();
    data.len()
}

#[test]
fn a_256_mib_message_crosses_to_a_child_and_back() {
    let (to_child_rx, to_child_tx) = Pipe::simplex().unwrap();
    let (from_child_rx, from_child_tx) = Pipe::simplex().unwrap();
    let child = corral::spawn(relay, (to_child_rx, from_child_tx)).unwrap();
    let data: Vec<u8> = (0..256usize << 20).map(|i| (i % 253) as u8).collect();
    to_child_tx.send_bytes(&data).unwrap();
    let back = from_child_rx.recv_bytes().unwrap();
    assert!(back == data);
    assert_eq!(
        child.join_timeout(Duration::from_secs(60)).unwrap(),
        data.len()
    );
}

#[test]
fn handles_refuse_to_serialize_outside_corral() {
    let (_rx, tx) = Pipe::simplex().unwrap();
    let mut buf = [0u8; 64];
    assert!(postcard::to_slice(&tx, &mut buf).is_err());
}

fn hostile(bytes: &[u8]) -> Connection {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.write_all(bytes).unwrap();
    drop(theirs);
    Connection::from(OwnedFd::from(ours))
}

#[test]
fn malformed_frames_are_typed_errors() {
    // Negative length.
    let conn = hostile(&[0x80, 0, 0, 1]);
    assert!(matches!(
        conn.recv_bytes(),
        Err(RecvError::Wire(WireError::Corrupt(_)))
    ));
    // 2^40 bytes announced: rejected before any allocation.
    let mut huge = (-1i32).to_be_bytes().to_vec();
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    let conn = hostile(&huge);
    assert!(matches!(
        conn.recv_bytes(),
        Err(RecvError::Wire(WireError::TooLarge { .. }))
    ));
    // 3 GiB announced, 10 bytes sent: a truncation, with memory bounded by
    // what arrived.
    let mut liar = (-1i32).to_be_bytes().to_vec();
    liar.extend_from_slice(&(3u64 << 30).to_be_bytes());
    liar.extend_from_slice(&[0; 10]);
    let conn = hostile(&liar);
    assert!(matches!(
        conn.recv_bytes(),
        Err(RecvError::Wire(WireError::Truncated { received: 22, .. }))
    ));
    // A header cut in half.
    let conn = hostile(&[0, 0]);
    assert!(matches!(
        conn.recv_bytes(),
        Err(RecvError::Wire(WireError::Truncated { .. }))
    ));
    // A well-framed payload that is not the expected type.
    let conn = hostile(&corral::internal::frame_bytes(&[0xff; 3]));
    assert!(matches!(conn.recv::<String>(), Err(RecvError::Codec(_))));
    // A payload with bytes left over.
    let conn = hostile(&corral::internal::frame_bytes(&[1, 2, 3]));
    assert!(matches!(conn.recv::<u8>(), Err(RecvError::Codec(_))));
}

/// A time limit bounds the whole receive: a sender stalling mid-message or
/// another thread blocked on the same end cannot stretch it.
#[test]
fn recv_timeout_bounds_the_whole_call() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let conn = std::sync::Arc::new(Connection::from(OwnedFd::from(ours)));
    // Header for 100 bytes, then 10 of them, then nothing.
    theirs.write_all(&100i32.to_be_bytes()).unwrap();
    theirs.write_all(&[7; 10]).unwrap();
    let started = Instant::now();
    assert!(matches!(
        conn.recv_bytes_timeout(Duration::from_millis(200)),
        Err(RecvError::Timeout)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The part that arrived is kept: the rest completes the message.
    theirs.write_all(&[7; 90]).unwrap();
    assert_eq!(conn.recv_bytes().unwrap(), vec![7; 100]);

    // Another thread blocked receiving on the same end.
    let blocked = {
        let conn = conn.clone();
        std::thread::spawn(move || conn.recv_bytes())
    };
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    assert!(matches!(
        conn.recv_timeout::<u8>(Duration::from_millis(200)),
        Err(RecvError::Timeout)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    theirs
        .write_all(&corral::internal::frame_bytes(b"go"))
        .unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), b"go");
}

#[test]
fn python_framing_is_byte_for_byte_compatible() {
    // Python: conn.send_bytes(b"abc") writes struct.pack("!i", 3) + b"abc".
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let conn = Connection::from(OwnedFd::from(ours));
    conn.send_bytes(b"abc").unwrap();
    let mut wire = [0u8; 7];
    std::io::Read::read_exact(&mut theirs, &mut wire).unwrap();
    assert_eq!(wire, [0, 0, 0, 3, b'a', b'b', b'c']);
}

#[test]
fn a_1_gib_message_crosses_a_pipe() {
    let (rx, tx) = Pipe::simplex().unwrap();
    let receiver = std::thread::spawn(move || {
        let data = rx.recv_bytes().unwrap();
        (
            data.len(),
            data[0],
            data[data.len() / 2],
            data[data.len() - 1],
        )
    });
    let mut data = vec![0u8; 1 << 30];
    data[0] = 1;
    data[1 << 29] = 2;
    *data.last_mut().unwrap() = 3;
    tx.send_bytes(&data).unwrap();
    drop(data);
    assert_eq!(receiver.join().unwrap(), (1 << 30, 1, 2, 3));
}
