//! Serves, until killed, a dict registered as `get_config`, a list as
//! `get_results` and a queue as `get_jobs`: a manager for corral programs
//! and stock Python clients alike.
//!
//! ```sh
//! CORRAL_AUTHKEY=$(printf secret | xxd -p) cargo run --release --example manager_server -- 127.0.0.1:50000
//! ```
//!
//! ```python
//! from multiprocessing.managers import BaseManager, DictProxy
//! class M(BaseManager): pass
//! M.register('get_config', proxytype=DictProxy)
//! M.register('get_results'); M.register('get_jobs')
//! m = M(address=('127.0.0.1', 50000), authkey=b'secret'); m.connect()
//! m.get_jobs().put('job-1'); m.get_config()['mode'] = 'fast'
//! m.get_results().append(m.get_jobs().get())
//! ```
//!
//! From Rust: `Manager::connect(address, key)?.registered::<Dict<String,
//! String>>("get_config")`. It prints `listening ADDRESS` once ready. The
//! stock Python of many machines is 3.11, which only speaks the legacy
//! HMAC-MD5 handshake, so this example allows it; `CORRAL_NO_MD5=1`
//! refuses it.

use corral::manager::{Kind, Manager};

#[path = "common/authkey.rs"]
mod authkey;
use authkey::authkey_from_env;

fn main() {
    corral::init();
    let address = std::env::args()
        .nth(1)
        .expect("usage: manager_server ADDRESS (host:port, a Unix socket path, or @name)");
    let key = authkey_from_env();
    let mut manager = Manager::builder()
        .register("get_config", Kind::Dict)
        .register("get_results", Kind::List)
        .register("get_jobs", Kind::Queue)
        .allow_legacy_md5(std::env::var_os("CORRAL_NO_MD5").is_none())
        .serve(address.as_str(), &key)
        .unwrap_or_else(|e| panic!("cannot serve at {address}: {e}"));
    println!("listening {}", manager.address());
    // The server is a child process: it dies with this one, even by SIGKILL.
    manager.wait();
}
