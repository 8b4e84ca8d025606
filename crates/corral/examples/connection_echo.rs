//! Accepts authenticated connections and sends each bytes message back,
//! until killed: a peer for Python's `multiprocessing.connection.Client`.
//!
//! ```sh
//! CORRAL_AUTHKEY=$(printf secret | xxd -p) cargo run --release --example connection_echo -- 127.0.0.1:6000
//! ```
//!
//! ```python
//! from multiprocessing.connection import Client
//! c = Client(('127.0.0.1', 6000), authkey=b'secret')
//! c.send_bytes(b'ping'); assert c.recv_bytes() == b'ping'
//! ```
//!
//! The authkey is `CORRAL_AUTHKEY`, in hex. The stock Python of many
//! machines is 3.11, which only speaks the legacy HMAC-MD5 handshake, so
//! this example allows it; `CORRAL_NO_MD5=1` refuses it.

use corral::connection::Listener;

#[path = "common/authkey.rs"]
mod authkey;
use authkey::authkey_from_env;

fn main() {
    corral::init();
    let address = std::env::args()
        .nth(1)
        .expect("usage: connection_echo ADDRESS (host:port or a Unix socket path)");
    let key = authkey_from_env();
    let legacy = std::env::var_os("CORRAL_NO_MD5").is_none();
    let listener = Listener::bind(address.as_str(), &key)
        .unwrap_or_else(|e| panic!("cannot listen at {address}: {e}"))
        .allow_legacy_md5(legacy);
    println!("listening {}", listener.address());
    loop {
        match listener.accept() {
            Ok(conn) => {
                // One thread per peer: an echo server for tests and demos.
                std::thread::spawn(move || {
                    while let Ok(msg) = conn.recv_bytes() {
                        if conn.send_bytes(&msg).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => eprintln!("refused a peer: {e}"),
        }
    }
}
