//! Authenticated connections over loopback TCP: connect + handshake, and an
//! 8-byte round trip, against an echo server in another process.

use std::time::Instant;

use corral::connection::{Client, Listener};

use crate::{emit, median, micros};

const KEY: &[u8] = b"bench key";

/// The echo server: reports its port, then echoes every message of every
/// connection, one connection at a time.
fn serve(report: corral::Sender) {
    let listener = Listener::bind("127.0.0.1:0", KEY).expect("bind");
    let port = match listener.address() {
        corral::connection::Address::Tcp(a) => a.port(),
        corral::connection::Address::Unix(_) => unreachable!(),
    };
    report.send(&port).expect("report the port");
    while let Ok(conn) = listener.accept() {
        while let Ok(msg) = conn.recv_bytes() {
            if conn.send_bytes(&msg).is_err() {
                break;
            }
        }
    }
}

pub(crate) fn run(n: impl Fn(usize) -> usize) {
    let (port_rx, port_tx) = corral::Pipe::simplex().expect("pipe");
    let server = corral::Process::builder()
        .daemon(true)
        .spawn(serve, port_tx)
        .expect("spawn the server");
    let port: u16 = port_rx.recv().expect("port");
    let address = format!("127.0.0.1:{port}");
    let connect = || {
        Client::new(address.as_str(), KEY)
            .connect()
            .expect("connect")
    };
    for _ in 0..20 {
        drop(connect());
    }
    let handshakes: Vec<f64> = (0..n(500))
        .map(|_| {
            let t = Instant::now();
            let conn = connect();
            let us = micros(t.elapsed());
            drop(conn);
            us
        })
        .collect();
    emit(
        "corral connection connect+handshake",
        median(handshakes),
        "us",
    );
    let conn = connect();
    let mut buf = [0u8; 8];
    for _ in 0..1000 {
        conn.send_bytes(&buf).expect("send");
        conn.recv_bytes_into(&mut buf).expect("recv");
    }
    let rtt: Vec<f64> = (0..n(20_000))
        .map(|_| {
            let t = Instant::now();
            conn.send_bytes(&buf).expect("send");
            conn.recv_bytes_into(&mut buf).expect("recv");
            micros(t.elapsed())
        })
        .collect();
    emit("corral connection 8B round trip (TCP)", median(rtt), "us");
    drop(conn);
    let _ = server.kill();
    let _ = server.join();
}
