//! Structured events through `tracing`, when the `tracing` feature is on
//! (Python's `multiprocessing.log_to_stderr()`): nothing otherwise.

/// Emits a `tracing` event with target `corral` at level `$level`
/// (`trace`, `debug`, `info`, `warn`, `error`); compiles to nothing
/// without the `tracing` feature (the arguments are not evaluated).
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!(target: "corral", $($arg)+);
        }
    }};
}
pub(crate) use event;
