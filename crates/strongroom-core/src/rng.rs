//! Randomness: the OS for keys, a fork-safe userspace CSPRNG for nonces.
//!
//! Asking the OS for every 96-bit nonce cost about 0.6 us here, so nonces come from a
//! per-thread ChaCha20 generator seeded from the OS. Two processes must never share a generator
//! state, or a `fork` after the first nonce would make parent and child draw the same nonces under
//! the same DEK, which breaks AES-GCM outright. Each generator remembers the process id it was
//! seeded in and reseeds from the OS when it finds itself in another process, and it also reseeds
//! every [`RESEED_INTERVAL`] draws.
//!
//! Limit, documented in the README: a process forked from a process that had *not* drawn since its
//! own fork, created after the original process exited and handed the original's recycled pid,
//! would miss the change. Reaching it needs a double fork and pid reuse with no draw in between;
//! strongroom does not fork.

use std::cell::RefCell;

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

struct Local {
    pid: u32,
    draws: u32,
    rng: ChaCha20Rng,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`RandomError`] when the OS call fails.
pub fn os_fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

fn seeded(pid: u32) -> Result<Local, RandomError> {
    let mut seed = <ChaCha20Rng as SeedableRng>::Seed::default();
    os_fill(&mut seed)?;
    let rng = ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    Ok(Local { pid, draws: 0, rng })
}

/// Fills `buf` from this thread's userspace CSPRNG (for nonces; never for keys).
///
/// # Errors
/// [`RandomError`] when the generator needs a seed and the OS cannot provide one.
pub fn fill_nonce(buf: &mut [u8]) -> Result<(), RandomError> {
    fill_nonce_in(std::process::id(), buf)
}

/// [`fill_nonce`] with the process id given, so tests can show that a change of process
/// (what `fork` looks like from inside) forces a reseed.
fn fill_nonce_in(pid: u32, buf: &mut [u8]) -> Result<(), RandomError> {
    LOCAL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = match slot.as_ref() {
            None => true,
            Some(local) => local.pid != pid || local.draws >= RESEED_INTERVAL,
        };
        if stale {
            *slot = Some(seeded(pid)?);
        }
        match slot.as_mut() {
            Some(local) => {
                local.rng.fill_bytes(buf);
                local.draws += 1;
                Ok(())
            }
            // Just assigned above when it was None.
            None => Err(RandomError("nonce generator missing after seeding".into())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_do_not_repeat_across_reseeds() {
        let mut seen = HashSet::new();
        let mut buf = [0u8; 12];
        for _ in 0..(RESEED_INTERVAL as usize + 1000) {
            fill_nonce(&mut buf).unwrap();
            assert!(seen.insert(buf), "nonce repeated");
        }
    }

    fn local_state() -> (u32, u32) {
        LOCAL.with(|c| {
            let slot = c.borrow();
            let l = slot.as_ref().unwrap();
            (l.pid, l.draws)
        })
    }

    #[test]
    fn a_new_process_id_forces_a_reseed() {
        let mut b = [0u8; 12];
        fill_nonce_in(1_000_001, &mut b).unwrap();
        fill_nonce_in(1_000_001, &mut b).unwrap();
        assert_eq!(local_state(), (1_000_001, 2));
        // Same thread, "another process": the generator must be replaced, not continued.
        fill_nonce_in(1_000_002, &mut b).unwrap();
        assert_eq!(local_state(), (1_000_002, 1));
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
