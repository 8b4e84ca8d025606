//! Required by `links = "corral"`; nothing to build.
fn main() {}
