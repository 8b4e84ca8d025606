//! Tasks as types: Python's "subclass `Process` and override `run`".

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Data;

/// A task described by a value: its fields are the arguments, [`Job::run`]
/// the body. Start one with [`crate::ProcessBuilder::spawn_job`].
///
/// # Examples
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct CountWords { text: String }
///
/// impl corral::Job for CountWords {
///     type Output = usize;
///     fn run(self) -> usize { self.text.split_whitespace().count() }
/// }
///
/// corral::init();
/// let child = corral::Process::builder()
///     .spawn_job(CountWords { text: "one two three".into() })
///     .unwrap();
/// assert_eq!(child.join().unwrap(), 3);
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// What the job returns.
    type Output: Data;
    /// The job's body, run in the child.
    fn run(self) -> Self::Output;
}
