//! The examples' authkey: `CORRAL_AUTHKEY`, in hex.

/// `CORRAL_AUTHKEY` as bytes (hex).
pub(crate) fn authkey_from_env() -> Vec<u8> {
    let hex = std::env::var("CORRAL_AUTHKEY").expect("set CORRAL_AUTHKEY to the authkey, in hex");
    let hex = hex.trim();
    assert!(hex.len().is_multiple_of(2), "CORRAL_AUTHKEY must be hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("CORRAL_AUTHKEY must be hex"))
        .collect()
}
