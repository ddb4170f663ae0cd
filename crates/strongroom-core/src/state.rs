//! Key states and the legal transitions between them.
//!
//! ```text
//!            disable                 schedule_destruction(not_before)
//!  Enabled ----------> Disabled  ----------------------------------> PendingDestruction
//!     ^  <----------      |                                            |        |
//!     |     enable        |  cancel_destruction (back to Disabled) <---+        | destroy_due(now),
//!     |                   |                                                     | now >= not_before
//!     +-- schedule_destruction -----------------------------------------------> |
//!                                                                               v
//!  any state but Destroyed ---------- destroy_now ---------------------------> Destroyed
//! ```
//!
//! `PendingDestruction` keys are unusable (like `Disabled`) for the whole waiting period, so a
//! mistaken schedule shows up as refused reads while it can still be cancelled. Cancelling
//! returns the key to `Disabled`; enabling it again is a separate, deliberate step. `Destroyed`
//! is final. An illegal transition is a [`TransitionError`], never a panic.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A timestamp from seconds since the Unix epoch.
    #[must_use]
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// Now, by the system clock (a clock before 1970 reads as the epoch).
    #[must_use]
    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }

    /// Seconds since the Unix epoch.
    #[must_use]
    pub const fn unix_secs(self) -> u64 {
        self.0
    }

    /// This timestamp plus `d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_secs()))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, e.g. `2026-11-30T00:43:35Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The lifecycle state of a root key version or a keyring.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum KeyState {
    /// Usable for every operation.
    Enabled,
    /// Refused for every operation until enabled again.
    Disabled,
    /// Refused for every operation; destroyed once `not_before` has passed, unless cancelled.
    PendingDestruction {
        /// Earliest moment the destruction may be carried out.
        not_before: Timestamp,
    },
    /// Key material erased: whatever it protected is unrecoverable.
    Destroyed,
}

/// A change of state that a caller asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transition {
    /// Enabled -> Disabled.
    Disable,
    /// Disabled -> Enabled.
    Enable,
    /// Enabled or Disabled -> PendingDestruction.
    ScheduleDestruction {
        /// Earliest moment of destruction.
        not_before: Timestamp,
    },
    /// PendingDestruction -> Disabled.
    CancelDestruction,
    /// PendingDestruction -> Destroyed, once `now >= not_before`.
    DestroyDue {
        /// The current time.
        now: Timestamp,
    },
    /// Any state but Destroyed -> Destroyed, at once (an explicit operator decision).
    DestroyNow,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disable => f.write_str("disable"),
            Self::Enable => f.write_str("enable"),
            Self::ScheduleDestruction { not_before } => {
                write!(f, "schedule destruction for {not_before}")
            }
            Self::CancelDestruction => f.write_str("cancel destruction"),
            Self::DestroyDue { .. } => f.write_str("destroy (scheduled)"),
            Self::DestroyNow => f.write_str("destroy now"),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enabled => f.pad("enabled"),
            Self::Disabled => f.pad("disabled"),
            Self::PendingDestruction { not_before } => {
                f.pad(&format!("pending destruction (not before {not_before})"))
            }
            Self::Destroyed => f.pad("destroyed"),
        }
    }
}

/// A transition that the current state does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("cannot {transition}: the key is {from}{}", hint(*.from, *.transition))]
pub struct TransitionError {
    /// The state the key was in.
    pub from: KeyState,
    /// The transition that was refused.
    pub transition: Transition,
}

fn hint(from: KeyState, t: Transition) -> &'static str {
    match (from, t) {
        (KeyState::Destroyed, _) => " (destruction is final)",
        (KeyState::PendingDestruction { .. }, Transition::Enable) => {
            " (cancel the destruction first, then enable)"
        }
        (KeyState::PendingDestruction { .. }, Transition::DestroyDue { .. }) => {
            " (its waiting period has not ended; destroy it now explicitly if that is intended)"
        }
        (_, Transition::CancelDestruction) => " (no destruction is scheduled)",
        _ => "",
    }
}

impl KeyState {
    /// True when the key may be used to wrap, unwrap, seal or open.
    #[must_use]
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Enabled)
    }

    /// The state after `t`, or the reason `t` is not allowed from here.
    ///
    /// # Errors
    /// [`TransitionError`] for every transition the diagram in this module's docs does not show.
    pub fn apply(self, t: Transition) -> Result<Self, TransitionError> {
        use KeyState as S;
        use Transition as T;
        let next = match (self, t) {
            (S::Enabled, T::Disable) => S::Disabled,
            (S::Disabled, T::Enable) => S::Enabled,
            (S::Enabled | S::Disabled, T::ScheduleDestruction { not_before }) => {
                S::PendingDestruction { not_before }
            }
            (S::PendingDestruction { .. }, T::CancelDestruction) => S::Disabled,
            (S::PendingDestruction { not_before }, T::DestroyDue { now }) if now >= not_before => {
                S::Destroyed
            }
            (S::Enabled | S::Disabled | S::PendingDestruction { .. }, T::DestroyNow) => {
                S::Destroyed
            }
            (from, transition) => return Err(TransitionError { from, transition }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_unix_secs(1_000);

    fn all_states() -> [KeyState; 4] {
        [
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::PendingDestruction { not_before: T0 },
            KeyState::Destroyed,
        ]
    }

    fn all_transitions() -> [Transition; 7] {
        [
            Transition::Disable,
            Transition::Enable,
            Transition::ScheduleDestruction { not_before: T0 },
            Transition::CancelDestruction,
            Transition::DestroyDue {
                now: Timestamp::from_unix_secs(999),
            },
            Transition::DestroyDue { now: T0 },
            Transition::DestroyNow,
        ]
    }

    #[test]
    fn the_transition_table_is_exactly_the_diagram() {
        use KeyState as S;
        let pending = S::PendingDestruction { not_before: T0 };
        let mut legal = 0;
        for from in all_states() {
            for t in all_transitions() {
                let expected = match (from, t) {
                    (S::Enabled, Transition::Disable) => Some(S::Disabled),
                    (S::Disabled, Transition::Enable) => Some(S::Enabled),
                    (S::Enabled | S::Disabled, Transition::ScheduleDestruction { .. }) => {
                        Some(pending)
                    }
                    (S::PendingDestruction { .. }, Transition::CancelDestruction) => {
                        Some(S::Disabled)
                    }
                    (S::PendingDestruction { .. }, Transition::DestroyDue { now }) if now >= T0 => {
                        Some(S::Destroyed)
                    }
                    (S::Destroyed, _) => None,
                    (_, Transition::DestroyNow) => Some(S::Destroyed),
                    _ => None,
                };
                match (from.apply(t), expected) {
                    (Ok(got), Some(want)) => {
                        legal += 1;
                        assert_eq!(got, want, "{from:?} --{t:?}");
                    }
                    (Err(e), None) => {
                        assert_eq!(
                            e,
                            TransitionError {
                                from,
                                transition: t
                            }
                        );
                        assert!(!e.to_string().is_empty());
                    }
                    (got, want) => panic!("{from:?} --{t:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, 9);
    }

    #[test]
    fn only_enabled_is_usable() {
        let usable: Vec<_> = all_states().into_iter().filter(|s| s.is_usable()).collect();
        assert_eq!(usable, [KeyState::Enabled]);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = KeyState::Destroyed.apply(Transition::Enable).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot enable: the key is destroyed (destruction is final)"
        );
        let e = KeyState::PendingDestruction { not_before: T0 }
            .apply(Transition::Enable)
            .unwrap_err();
        assert!(
            e.to_string().contains("cancel the destruction first"),
            "{e}"
        );
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(
            Timestamp::from_unix_secs(0).to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_secs(1_795_999_415).to_string(),
            "2026-11-30T00:43:35Z"
        );
        assert_eq!(
            Timestamp::from_unix_secs(951_782_400).to_string(),
            "2000-02-29T00:00:00Z"
        );
    }
}
