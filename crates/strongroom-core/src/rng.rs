//! Randomness: the OS for keys, a fork-safe userspace CSPRNG for nonces.
//!
//! Asking the OS for every 96-bit nonce cost about 0.4-0.6 us here, so nonces come from a
//! per-thread ChaCha20 generator seeded from the OS. Two processes must never share a generator
//! state: a `fork` after the first nonce would make parent and child draw the same nonces under
//! the same DEK, which breaks AES-GCM outright. Each generator therefore carries a fork guard and
//! is replaced by a freshly seeded one the first time it is used in a forked child:
//!
//! - normally the guard reads a counter that a `pthread_atfork` child handler bumps (the
//!   `forkguard` crate; one relaxed atomic load per nonce, the same scheme as OpenSSL's fork id);
//! - if `pthread_atfork` cannot be registered, it falls back to comparing the process id on every
//!   draw (a `getpid` system call, about 140 ns here).
//!
//! Generators are also reseeded every [`RESEED_INTERVAL`] draws. A child made by a raw `clone`
//! system call that bypasses libc's fork handlers is not detected; strongroom never forks.

use std::cell::{Cell, RefCell};

use forkguard::{atfork, pid};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroize;

/// Draws from one generator before it is reseeded from the OS.
pub const RESEED_INTERVAL: u32 = 1 << 16;

/// The operating system could not provide randomness.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the operating system's random number generator failed ({0}); strongroom cannot make keys or nonces without it"
)]
pub struct RandomError(String);

enum ForkGuard {
    Atfork(atfork::Guard),
    Pid(pid::Guard),
}

impl ForkGuard {
    fn new() -> Self {
        atfork::Guard::try_new().map_or_else(|_| Self::Pid(pid::Guard::default()), Self::Atfork)
    }

    fn forked(&mut self) -> bool {
        match self {
            Self::Atfork(g) => g.detected_fork(),
            Self::Pid(g) => g.detected_fork(),
        }
    }
}

struct Local {
    guard: ForkGuard,
    draws: u32,
    rng: ChaCha20Rng,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    /// Set by tests to make the next draw behave as the first draw in a forked child.
    static SIMULATED_FORK: Cell<bool> = const { Cell::new(false) };
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`RandomError`] when the OS call fails.
pub fn os_fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

fn seeded() -> Result<Local, RandomError> {
    // The guard is made before the seed is drawn, so a fork between the two is still seen.
    let guard = ForkGuard::new();
    let mut seed = <ChaCha20Rng as SeedableRng>::Seed::default();
    os_fill(&mut seed)?;
    let rng = ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    Ok(Local {
        guard,
        draws: 0,
        rng,
    })
}

/// Fills `buf` from this thread's userspace CSPRNG (for nonces; never for keys). A draw made
/// while the thread shuts down, from another thread-local's destructor after this generator is
/// gone, comes from the OS instead.
///
/// # Errors
/// [`RandomError`] when the generator needs a seed and the OS cannot provide one.
pub fn fill_nonce(buf: &mut [u8]) -> Result<(), RandomError> {
    LOCAL
        .try_with(|cell| draw_local(cell, buf))
        .unwrap_or_else(|_| os_fill(buf))
}

fn draw_local(cell: &RefCell<Option<Local>>, buf: &mut [u8]) -> Result<(), RandomError> {
    let mut slot = cell.borrow_mut();
    let simulated_fork = SIMULATED_FORK.with(|f| f.replace(false));
    let usable = slot.as_mut().is_some_and(|l| {
        // Always ask the guard, so it records a fork it has seen.
        let forked = l.guard.forked() || simulated_fork;
        !forked && l.draws < RESEED_INTERVAL
    });
    let local = match slot.as_mut() {
        Some(l) if usable => l,
        _ => slot.insert(seeded()?),
    };
    local.rng.fill_bytes(buf);
    local.draws += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn draws() -> u32 {
        LOCAL.with(|c| c.borrow().as_ref().map_or(0, |l| l.draws))
    }

    #[test]
    fn the_fork_guard_is_the_cheap_one() {
        assert!(matches!(ForkGuard::new(), ForkGuard::Atfork(_)));
    }

    #[test]
    fn nonces_do_not_repeat_across_reseeds() {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 12];
        for _ in 0..(RESEED_INTERVAL as usize + 1000) {
            fill_nonce(&mut buf).unwrap();
            assert!(seen.insert(buf), "nonce repeated");
        }
        assert!(
            draws() <= 1000,
            "the generator was not reseeded after the interval"
        );
    }

    #[test]
    fn a_fork_forces_a_reseed() {
        let mut b = [0u8; 12];
        fill_nonce(&mut b).unwrap();
        fill_nonce(&mut b).unwrap();
        assert!(draws() >= 2);
        SIMULATED_FORK.with(|f| f.set(true));
        fill_nonce(&mut b).unwrap();
        assert_eq!(draws(), 1, "the generator must be replaced, not continued");
    }

    #[test]
    fn threads_get_independent_streams() {
        let draw = || {
            let mut v = Vec::new();
            for _ in 0..64 {
                let mut b = [0u8; 12];
                fill_nonce(&mut b).unwrap();
                v.push(b);
            }
            v
        };
        let a = std::thread::spawn(draw).join().unwrap();
        let b = std::thread::spawn(draw).join().unwrap();
        let a: HashSet<_> = a.into_iter().collect();
        assert!(b.iter().all(|n| !a.contains(n)));
    }
}
