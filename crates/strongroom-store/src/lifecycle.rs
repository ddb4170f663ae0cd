//! What every part of the key lifecycle shares: the progress of a long operation, the state
//! machine's transitions, and the shape of a KEK blob found in the store.
//!
//! The lifecycle itself is laid out by concept: root keys (`roots.rs`), keyrings
//! (`keyrings.rs`), destruction of either (`destruction.rs`), moves between roots
//! (`moves.rs`), resumable jobs (`jobs.rs`); every change of any of them goes through the one
//! commit path (`commit.rs`). Backend calls come before the transaction (a transaction may be
//! retried and must not have outside effects).

use strongroom_core::{KeyState, RootKeyId, Transition};

use crate::error::StoreError;

/// Progress of a long operation, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Items done so far (including those done before a resume).
    pub done: u64,
    /// Items in all, as far as known.
    pub total: u64,
}

/// A wrapped KEK as found in the store.
pub(crate) struct KekBlob {
    pub(crate) keyring_id: u64,
    pub(crate) version: u32,
    pub(crate) bytes: Vec<u8>,
    pub(crate) root: RootKeyId,
}

/// The state a transition leads to, or the refusal.
pub(crate) fn transition(state: KeyState, t: Transition) -> Result<KeyState, StoreError> {
    Ok(state.apply(t)?)
}
