//! Feeds arbitrary bytes to the frame splitter and the value decoder: any
//! input must give frames or typed errors, never a panic, an abort or a huge
//! allocation. `cargo fuzz run decode` (see crates/corral/fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code, reason = "the fields exist to be decoded, never read")]
enum Message {
    Unit,
    Number(u64),
    Text(String),
    Blob(Vec<u8>),
    Nested { items: Vec<Message>, tag: Option<(i32, f64)> },
}

fuzz_target!(|data: &[u8]| {
    for frame in corral::internal::split_frames(data).into_iter().flatten() {
        let _ = corral::internal::decode_untrusted::<Message>(&frame);
        let _ = corral::internal::decode_untrusted::<Vec<String>>(&frame);
    }
    let _ = corral::internal::decode_untrusted::<Message>(data);
});
