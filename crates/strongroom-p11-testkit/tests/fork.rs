//! strongroom's nonce generator across a real `fork`: parent and child must never draw the same
//! nonces. (This test lives here because forking needs `unsafe`, which only this crate allows.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use strongroom_core::rng::fill_nonce;

fn draw(n: usize) -> Vec<[u8; 12]> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; 12];
            fill_nonce(&mut b).unwrap();
            b
        })
        .collect()
}

#[test]
fn a_forked_child_draws_nonces_of_its_own() {
    // The parent has drawn before the fork, so its generator state exists and would be copied.
    let _warm = draw(10);
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid, writable array of two file descriptors for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only draws nonces (no locks other threads could hold: the generator is
    // thread-local and this test's thread is the one that forks), writes them to the pipe with
    // a raw File, and leaves with _exit without running destructors or test-harness code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: fds[1] is the pipe's write end, owned by this process from here on.
        let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let bytes: Vec<u8> = draw(1000).concat();
        let ok = w.write_all(&bytes).is_ok();
        drop(w);
        // SAFETY: _exit ends the child at once, as a forked child of a threaded program must.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    // SAFETY: fds[1] is the write end the parent does not use; fds[0] the read end it owns.
    unsafe { libc::close(fds[1]) };
    // SAFETY: as above; the File takes ownership of the read end.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let parent: HashSet<[u8; 12]> = draw(1000).into_iter().collect();
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).unwrap();
    let mut status = 0;
    // SAFETY: waits for the child this test forked; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed"
    );
    assert_eq!(bytes.len(), 12 * 1000);
    let child: Vec<[u8; 12]> = bytes
        .chunks_exact(12)
        .map(|c| c.try_into().unwrap())
        .collect();
    let shared = child.iter().filter(|n| parent.contains(*n)).count();
    assert_eq!(
        shared, 0,
        "parent and child drew {shared} identical nonces after fork"
    );
}
