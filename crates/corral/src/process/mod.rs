//! Processes: start a child that runs a function, wait for it, signal it.
//!
//! See [`crate::spawn`], [`ProcessBuilder`] and [`Child`].

mod builder;
mod child;
mod job;
mod status;
mod wait;

pub use builder::{Process, ProcessBuilder, spawn};
pub use child::Child;
pub(crate) use child::Proc;
pub use job::Job;
pub use status::ExitStatus;
pub(crate) use wait::Watched;
pub use wait::{Waitable, wait};
