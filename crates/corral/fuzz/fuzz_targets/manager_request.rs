//! Feeds arbitrary bytes to the manager's request decoder (pickles read as
//! plain data, never executed) and to every kind of shared object: any
//! input must end in a reply or a refusal, never a panic, an abort, a hang
//! or a huge allocation. `cargo fuzz run manager_request` (see
//! crates/corral/fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even a caught one. The
        // manager catches panics inside its pickle decoder (serde-pickle's
        // set ordering is not total for NaN) and refuses the request: those
        // are not crashes. Any other panic still aborts.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !corral::internal::in_guarded_decode() {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        corral::internal::fuzz_manager_request(data);
    }
);
