//! Who this process is, when corral started it, and how deep it is nested:
//! what [`crate::current_process`] and [`crate::parent_process`] tell, and
//! what stops a runaway recursion of processes.

use std::sync::Mutex;

use crate::poison::lock;
use crate::{Error, sys};

/// Who this process is, when corral started it: what
/// [`crate::current_process`] and [`crate::parent_process`] tell.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) name: Option<String>,
    pub(crate) daemon: bool,
    pub(crate) parent: u32,
    /// How many corral parents it has (a child of the main program: 1).
    pub(crate) depth: u32,
}

/// How deep processes may nest by default (loky's `MAX_DEPTH` is 10).
const DEFAULT_MAX_DEPTH: u32 = 10;

/// This process's nesting depth (the main program: 0).
pub(crate) fn depth() -> u32 {
    identity().map_or(0, |id| id.depth)
}

/// Refuses to start a child once processes are nested `CORRAL_MAX_DEPTH`
/// (default 10) deep: a runaway recursion of tasks that start processes
/// or pools ends with a clear error, not a machine full of processes.
pub(crate) fn check_depth() -> Result<(), Error> {
    let depth = depth();
    let limit = std::env::var("CORRAL_MAX_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_DEPTH);
    if depth >= limit {
        return Err(Error::NestingTooDeep { depth, limit });
    }
    Ok(())
}

/// Set in a child as it starts its task; unset (rebuilt empty) in any
/// process forked from it until that one sets its own.
static IDENTITY: sys::ForkLocal<Mutex<Option<Identity>>> = sys::ForkLocal::new(|| Mutex::new(None));

/// Records who this process is (a child, as it starts its task).
pub(crate) fn set_identity(identity: Identity) {
    *lock(IDENTITY.get()) = Some(identity);
}

/// This process's identity, if corral started it.
pub(crate) fn identity() -> Option<Identity> {
    IDENTITY.get_if_built().and_then(|m| lock(m).clone())
}
