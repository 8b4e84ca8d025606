//! Authenticated connections (issue #11, item 1): corral to corral, and
//! byte-for-byte interop with the machine's stock `python3` both ways.
//! The Python tests need `python3`: it is found on PATH, installed with
//! apt-get where that works, or the test fails with the install line.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral::Error;
use corral::connection::{Address, Client, Listener};
use corral_fixtures::{python, run_python, within};

corral::test_support!();

const KEY: &[u8] = b"corral test key";

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
try:
    c = Client(('127.0.0.1', int(sys.argv[1])), authkey=bytes.fromhex(sys.argv[2]))
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(0)
c.send_bytes(b'ping from python')
print('got', c.recv_bytes().decode())
c.close()
"#;

/// A corral listener that echoes one message per accepted connection;
/// returns its port and a handle yielding each accept's outcome.
fn echo_listener(
    listener: Listener,
    accepts: usize,
) -> (u16, std::thread::JoinHandle<Vec<Result<(), Error>>>) {
    let port = match listener.address() {
        Address::Tcp(a) => a.port(),
        Address::Unix(_) => unreachable!(),
    };
    let server = std::thread::spawn(move || {
        (0..accepts)
            .map(|_| {
                let conn = listener.accept()?;
                let msg = conn.recv_bytes().unwrap();
                conn.send_bytes(&msg).unwrap();
                Ok(())
            })
            .collect()
    });
    (port, server)
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_python_client_talks_to_a_corral_listener() {
    let (_, version) = python();
    let listener = Listener::bind("127.0.0.1:0", KEY)
        .unwrap()
        .allow_legacy_md5(true);
    let (port, server) = echo_listener(listener, 1);
    let (ok, out, err) = run_python(PY_CLIENT, &[&port.to_string(), &hex(KEY)]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "got ping from python",
        "python {version:?}: {err}"
    );
    assert!(server.join().unwrap()[0].is_ok());
}

#[test]
fn a_python_client_with_another_key_is_refused_and_told() {
    let listener = Listener::bind("127.0.0.1:0", KEY)
        .unwrap()
        .allow_legacy_md5(true);
    let (port, server) = echo_listener(listener, 1);
    let (ok, out, err) = run_python(PY_CLIENT, &[&port.to_string(), &hex(b"wrong")]);
    assert!(ok, "{err}");
    assert!(out.starts_with("AuthenticationError"), "{out}");
    let outcome = server.join().unwrap().pop().unwrap();
    assert!(
        matches!(outcome, Err(Error::Authentication(_))),
        "{outcome:?}"
    );
}

#[test]
fn legacy_md5_is_refused_unless_allowed() {
    let (_, version) = python();
    let listener = Listener::bind("127.0.0.1:0", KEY).unwrap();
    let (port, server) = echo_listener(listener, 1);
    let (ok, out, err) = run_python(PY_CLIENT, &[&port.to_string(), &hex(KEY)]);
    assert!(ok, "{err}");
    let outcome = server.join().unwrap().pop().unwrap();
    if version < (3, 12) {
        // Python 3.11 answers with HMAC-MD5 only.
        assert!(out.starts_with("AuthenticationError"), "{out}");
        let e = outcome.unwrap_err();
        assert!(e.to_string().contains("allow_legacy_md5"), "{e}");
    } else {
        assert_eq!(out.trim(), "got ping from python");
        assert!(outcome.is_ok());
    }
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
with Listener(('127.0.0.1', 0), authkey=bytes.fromhex(sys.argv[1])) as l:
    print(l.address[1], flush=True)
    try:
        c = l.accept()
    except Exception as e:
        print(type(e).__name__, flush=True)
        sys.exit(0)
    m = c.recv_bytes()
    c.send_bytes(b'python echoes ' + m)
    print('served', flush=True)
"#;

/// Starts a Python listener; returns it and the port it printed.
fn python_listener(
    key_hex: &str,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    u16,
) {
    let (py, _) = python();
    let mut child = Command::new(py)
        .args(["-c", PY_LISTENER, key_hex])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port: {line:?}"));
    (child, out, port)
}

fn finish(mut child: std::process::Child, mut out: BufReader<std::process::ChildStdout>) -> String {
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the python listener hangs");
        std::thread::sleep(Duration::from_millis(5));
    }
    rest
}

#[test]
fn a_corral_client_talks_to_a_python_listener() {
    let (child, out, port) = python_listener(&hex(KEY));
    let conn = Client::new(format!("127.0.0.1:{port}"), KEY)
        .allow_legacy_md5(true)
        .connect()
        .unwrap();
    conn.send_bytes(b"hello").unwrap();
    assert_eq!(
        conn.recv_bytes_timeout(Duration::from_secs(30)).unwrap(),
        b"python echoes hello"
    );
    assert_eq!(finish(child, out).trim(), "served");
}

#[test]
fn a_corral_client_with_another_key_is_refused_by_python() {
    let (child, out, port) = python_listener(&hex(b"python's key"));
    let err = Client::new(format!("127.0.0.1:{port}"), KEY)
        .allow_legacy_md5(true)
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Authentication(_)), "{err}");
    assert_eq!(finish(child, out).trim(), "AuthenticationError");
}

#[test]
fn corral_to_corral_over_tcp_and_unix_sockets() {
    let dir = std::env::temp_dir().join(format!("corral-conn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    for address in ["127.0.0.1:0".to_owned(), path.display().to_string()] {
        let listener = Listener::bind(address.as_str(), KEY).unwrap();
        let at = listener.address().clone();
        let server = std::thread::spawn(move || {
            let conn = listener.accept().unwrap();
            let (word, n): (String, u64) = conn.recv().unwrap();
            conn.send(&(word.to_uppercase(), n * 2)).unwrap();
            let big = conn.recv_bytes().unwrap();
            conn.send_bytes(&big[..16]).unwrap();
        });
        let conn = Client::new(&at, KEY).connect().unwrap();
        conn.send(&("corral".to_owned(), 21u64)).unwrap();
        assert_eq!(
            conn.recv::<(String, u64)>().unwrap(),
            ("CORRAL".to_owned(), 42)
        );
        conn.send_bytes(&vec![5u8; 8 << 20]).unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), vec![5u8; 16]);
        server.join().unwrap();
    }
    assert!(!path.exists(), "the Unix listener removed its socket file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_key_fails_on_both_corral_sides() {
    let listener = Listener::bind("127.0.0.1:0", KEY).unwrap();
    let at = listener.address().clone();
    let server = std::thread::spawn(move || listener.accept().map(drop));
    let client = Client::new(&at, b"not the key").connect();
    assert!(
        matches!(client, Err(Error::Authentication(_))),
        "{client:?}"
    );
    assert!(matches!(
        server.join().unwrap(),
        Err(Error::Authentication(_))
    ));
}

#[test]
fn garbage_and_silent_peers_are_dropped_and_the_listener_goes_on() {
    let listener = Listener::bind("127.0.0.1:0", KEY)
        .unwrap()
        .handshake_timeout(Duration::from_millis(300));
    let Address::Tcp(at) = listener.address().clone() else {
        unreachable!()
    };
    let server = std::thread::spawn(move || {
        (0..3)
            .map(|_| {
                listener
                    .accept()
                    .and_then(|c| c.recv::<u8>().map_err(|_| Error::Unsupported("recv")))
            })
            .collect::<Vec<_>>()
    });
    // A peer that answers the challenge with a 1 GiB length.
    let mut garbage = TcpStream::connect(at).unwrap();
    let mut challenge = [0u8; 4 + 59];
    std::io::Read::read_exact(&mut garbage, &mut challenge).unwrap();
    garbage.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    // A peer that says nothing.
    let _silent = TcpStream::connect(at).unwrap();
    let started = Instant::now();
    // A good one, served after both.
    within(Duration::from_secs(30), move || {
        let c = Client::new(at, KEY).connect().unwrap();
        c.send(&7u8).unwrap();
    });
    let outcomes = server.join().unwrap();
    assert!(
        matches!(outcomes[0], Err(Error::Authentication(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(outcomes[1], Err(Error::Authentication(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(matches!(outcomes[2], Ok(7)), "{:?}", outcomes[2]);
    assert!(started.elapsed() < Duration::from_secs(20));
}
