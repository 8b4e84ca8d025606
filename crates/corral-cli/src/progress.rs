//! `--bar` and `--eta` on stderr (indicatif); nothing without them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display, if asked for.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` jobs (a counter when the total is unknown).
    pub(crate) fn new(bar: bool, eta: bool, total: Option<usize>) -> Progress {
        if !bar && !eta {
            return Progress { bar: None };
        }
        let template = match (bar, total.is_some()) {
            (true, true) => "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}",
            (false, true) => "{pos}/{len} done {msg} ETA {eta}",
            (_, false) => "{spinner} {pos} done {msg} {elapsed_precise}",
        };
        let pb =
            ProgressBar::with_draw_target(total.map(|n| n as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            pb.set_style(style.progress_chars("=> "));
        }
        Progress { bar: Some(pb) }
    }

    /// One more job recorded.
    pub(crate) fn job_done(&self, done: u64, failed: u64) {
        if let Some(pb) = &self.bar {
            pb.set_position(done);
            if failed > 0 {
                pb.set_message(format!("({failed} failed)"));
            }
        }
    }

    /// Runs `f` (which prints) with the bar out of the way.
    pub(crate) fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(pb) => pb.suspend(f),
            None => f(),
        }
    }

    /// Leaves the final state on screen.
    pub(crate) fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}
