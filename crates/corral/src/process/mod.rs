//! Processes: start a child that runs a function, wait for it, signal it.
//!
//! See [`crate::spawn`], [`ProcessBuilder`] and [`Child`].

mod builder;
mod child;
mod info;
mod job;
mod status;
mod wait;

pub use builder::{Process, ProcessBuilder, spawn};
pub use child::Child;
pub(crate) use child::Proc;
pub use info::{ProcessInfo, active_children, current_process, parent_process};
pub use job::Job;
pub use status::ExitStatus;
pub use wait::{Waitable, wait};
pub(crate) use wait::{Watched, sealed};
