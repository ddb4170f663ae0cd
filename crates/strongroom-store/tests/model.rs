//! A proptest model of the key lifecycle: random sequences of put, get, delete, rotations,
//! disable, enable, schedule, cancel, destroy, re-encrypt and reopen of keyrings, and of a
//! tenant root key (rotate, disable, enable, destroy) with keyrings moving between it and the
//! primary root (moves that finish, and moves interrupted after their re-encryption began,
//! finished later), run against the store and against a plain in-memory model; any divergence
//! in a value, in the kind of error, in a keyring's state, root or pending move fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Fixture, kr, rn};
use proptest::prelude::*;
use strongroom_core::{KeyState, KeyringName};
use strongroom_store::{StoreError, StoreOptions};

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8, u8),
    Get(usize, u8),
    Delete(usize, u8),
    RotateKek(usize),
    RotateDek(usize),
    Reencrypt(usize),
    Disable(usize),
    Enable(usize),
    ScheduleLater(usize),
    ScheduleNow(usize),
    Cancel(usize),
    DestroyNow(usize),
    RunDue,
    Reopen,
    /// Move keyring to root 0 (`service`, the primary) or 1 (`acme`).
    Move(usize, usize),
    /// The same, interrupted once its re-encryption has done a batch (a move already underway
    /// is finished instead).
    MoveInterrupted(usize, usize),
    RotateRoot(usize),
    DisableAcme,
    EnableAcme,
    DestroyAcme,
}

const ROOTS: [&str; 2] = ["service", "acme"];

fn op() -> impl Strategy<Value = Op> {
    let k = 0usize..2;
    prop_oneof![
        6 => (k.clone(), 0u8..4, any::<u8>()).prop_map(|(r, key, v)| Op::Put(r, key, v)),
        6 => (k.clone(), 0u8..4).prop_map(|(r, key)| Op::Get(r, key)),
        2 => (k.clone(), 0u8..4).prop_map(|(r, key)| Op::Delete(r, key)),
        1 => k.clone().prop_map(Op::RotateKek),
        2 => k.clone().prop_map(Op::RotateDek),
        1 => k.clone().prop_map(Op::Reencrypt),
        2 => k.clone().prop_map(Op::Disable),
        2 => k.clone().prop_map(Op::Enable),
        1 => k.clone().prop_map(Op::ScheduleLater),
        1 => k.clone().prop_map(Op::ScheduleNow),
        1 => k.clone().prop_map(Op::Cancel),
        1 => k.clone().prop_map(Op::DestroyNow),
        1 => Just(Op::RunDue),
        1 => Just(Op::Reopen),
        2 => (k.clone(), 0usize..2).prop_map(|(r, to)| Op::Move(r, to)),
        2 => (k.clone(), 0usize..2).prop_map(|(r, to)| Op::MoveInterrupted(r, to)),
        1 => (0usize..2).prop_map(Op::RotateRoot),
        1 => Just(Op::DisableAcme),
        1 => Just(Op::EnableAcme),
        1 => Just(Op::DestroyAcme),
    ]
}

/// The model's view of a keyring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Enabled,
    Disabled,
    Pending { due: bool },
    Destroyed,
}

/// What an operation is expected to (or did) come to, error kinds only.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Ok,
    Value(Option<Vec<u8>>),
    Deleted(bool),
    Disabled,
    Pending,
    Destroyed,
    IllegalTransition,
    RootDisabled,
    RootDestroyed,
    InUse,
    Interrupted,
}

/// The model's view of the tenant root `acme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum R {
    Enabled,
    Disabled,
    Destroyed,
}

fn refusal(m: M) -> Option<Out> {
    match m {
        M::Enabled => None,
        M::Disabled => Some(Out::Disabled),
        M::Pending { .. } => Some(Out::Pending),
        M::Destroyed => Some(Out::Destroyed),
    }
}

fn kind(e: &StoreError) -> Out {
    match e {
        StoreError::KeyringDisabled { .. } => Out::Disabled,
        StoreError::KeyringPendingDestruction { .. } => Out::Pending,
        StoreError::KeyringDestroyed { .. } => Out::Destroyed,
        StoreError::Transition(_) => Out::IllegalTransition,
        StoreError::RootDisabled { .. } => Out::RootDisabled,
        StoreError::RootDestroyed { .. } => Out::RootDestroyed,
        StoreError::InUse(_) => Out::InUse,
        other => panic!("unexpected error in the model run: {other:?}"),
    }
}

struct Model {
    state: [M; 2],
    records: [BTreeMap<u8, Vec<u8>>; 2],
    /// The root each keyring is under, and the one a pending move is leaving.
    root: [usize; 2],
    moving_from: [Option<usize>; 2],
    acme: R,
}

impl Model {
    fn root_refusal(&self, root: usize) -> Option<Out> {
        match (root, self.acme) {
            (1, R::Disabled) => Some(Out::RootDisabled),
            (1, R::Destroyed) => Some(Out::RootDestroyed),
            _ => None,
        }
    }

    /// Refused unless the keyring and its root are usable.
    fn unusable(&self, r: usize) -> Option<Out> {
        refusal(self.state[r]).or_else(|| self.root_refusal(self.root[r]))
    }

    /// A move of keyring `r` to `to`; `interrupted`: its progress callback panics once a batch
    /// of its re-encryption is done (which happens only if the keyring holds records).
    fn apply_move(&mut self, r: usize, to: usize, interrupted: bool) -> Out {
        if let Some(_from) = self.moving_from[r] {
            if self.root[r] != to {
                return Out::InUse;
            }
        } else {
            if let Some(out) = self.unusable(r) {
                return out;
            }
            if self.root[r] == to {
                return Out::Ok;
            }
            if let Some(out) = self.root_refusal(to) {
                return out;
            }
            self.moving_from[r] = Some(self.root[r]);
            self.root[r] = to;
        }
        // The re-encryption (started or resumed) needs the keyring usable.
        if let Some(out) = self.unusable(r) {
            return out;
        }
        if interrupted && !self.records[r].is_empty() {
            return Out::Interrupted;
        }
        self.moving_from[r] = None;
        Out::Ok
    }

    fn destroy_due(&mut self) {
        for i in 0..2 {
            if self.state[i] == (M::Pending { due: true }) {
                self.state[i] = M::Destroyed;
                self.records[i].clear();
                self.moving_from[i] = None;
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Out {
        let trans = |from: M, ok: bool, to: M, st: &mut M| -> Out {
            if ok {
                *st = to;
                Out::Ok
            } else {
                let _ = from;
                Out::IllegalTransition
            }
        };
        match *op {
            Op::Put(r, key, v) => self.unusable(r).unwrap_or_else(|| {
                self.records[r].insert(key, vec![v; usize::from(v % 7) + 1]);
                Out::Ok
            }),
            Op::Get(r, key) => self
                .unusable(r)
                .unwrap_or_else(|| Out::Value(self.records[r].get(&key).cloned())),
            Op::Delete(r, key) => self
                .unusable(r)
                .unwrap_or_else(|| Out::Deleted(self.records[r].remove(&key).is_some())),
            Op::RotateKek(r) | Op::RotateDek(r) | Op::Reencrypt(r) => {
                self.unusable(r).unwrap_or(Out::Ok)
            }
            Op::Move(r, to) => self.apply_move(r, to, false),
            Op::MoveInterrupted(r, to) => {
                let resuming = self.moving_from[r].is_some();
                self.apply_move(r, to, !resuming)
            }
            Op::RotateRoot(root) => self.root_refusal(root).unwrap_or(Out::Ok),
            Op::DisableAcme => match self.acme {
                R::Destroyed => Out::RootDestroyed,
                _ => {
                    self.acme = R::Disabled;
                    Out::Ok
                }
            },
            Op::EnableAcme => match self.acme {
                R::Destroyed => Out::RootDestroyed,
                R::Enabled => Out::IllegalTransition,
                R::Disabled => {
                    self.acme = R::Enabled;
                    Out::Ok
                }
            },
            Op::DestroyAcme => {
                if self.moving_from.contains(&Some(1)) {
                    return Out::InUse;
                }
                self.acme = R::Destroyed;
                for r in 0..2 {
                    if self.root[r] == 1 && self.state[r] != M::Destroyed {
                        self.state[r] = M::Destroyed;
                        self.records[r].clear();
                        self.moving_from[r] = None;
                    }
                }
                Out::Ok
            }
            Op::Disable(r) => {
                let s = self.state[r];
                trans(s, s == M::Enabled, M::Disabled, &mut self.state[r])
            }
            Op::Enable(r) => {
                let s = self.state[r];
                trans(s, s == M::Disabled, M::Enabled, &mut self.state[r])
            }
            Op::ScheduleLater(r) | Op::ScheduleNow(r) => {
                let s = self.state[r];
                let due = matches!(op, Op::ScheduleNow(_));
                trans(
                    s,
                    matches!(s, M::Enabled | M::Disabled),
                    M::Pending { due },
                    &mut self.state[r],
                )
            }
            Op::Cancel(r) => {
                let s = self.state[r];
                trans(
                    s,
                    matches!(s, M::Pending { .. }),
                    M::Disabled,
                    &mut self.state[r],
                )
            }
            Op::DestroyNow(r) => {
                let s = self.state[r];
                let out = trans(s, s != M::Destroyed, M::Destroyed, &mut self.state[r]);
                if out == Out::Ok {
                    self.records[r].clear();
                    self.moving_from[r] = None;
                }
                out
            }
            Op::RunDue | Op::Reopen => {
                self.destroy_due();
                Out::Ok
            }
        }
    }
}

fn run(fx: &mut Fixture, names: &[KeyringName; 2], op: &Op) -> Out {
    let s = fx.store().clone();
    let r = |res: Result<(), StoreError>| res.map_or_else(|e| kind(&e), |()| Out::Ok);
    match *op {
        Op::Put(i, key, v) => r(s.put(&names[i], &[key], &vec![v; usize::from(v % 7) + 1])),
        Op::Get(i, key) => s
            .get(&names[i], &[key])
            .map_or_else(|e| kind(&e), |v| Out::Value(v.map(|p| p.expose().to_vec()))),
        Op::Delete(i, key) => s
            .delete(&names[i], &[key])
            .map_or_else(|e| kind(&e), Out::Deleted),
        Op::RotateKek(i) => r(s.rotate_kek(&names[i]).map(|_| ())),
        Op::RotateDek(i) => r(s.rotate_dek(&names[i]).map(|_| ())),
        Op::Reencrypt(i) => r(s.reencrypt(&names[i], &mut |_| {}).map(|_| ())),
        Op::Disable(i) => r(s.disable_keyring(&names[i])),
        Op::Enable(i) => r(s.enable_keyring(&names[i])),
        Op::ScheduleLater(i) => r(s
            .schedule_keyring_destruction(&names[i], Some(Duration::from_secs(3600)))
            .map(|_| ())),
        Op::ScheduleNow(i) => r(s
            .schedule_keyring_destruction(&names[i], Some(Duration::ZERO))
            .map(|_| ())),
        Op::Cancel(i) => r(s.cancel_keyring_destruction(&names[i])),
        Op::DestroyNow(i) => r(s.destroy_keyring_now(&names[i]).map(|_| ())),
        Op::RunDue => r(s.run_due_destructions().map(|_| ())),
        Op::Reopen => {
            drop(s);
            fx.reopen();
            Out::Ok
        }
        Op::Move(i, to) => r(s
            .move_keyring(&names[i], &rn(ROOTS[to]), &mut |_| {})
            .map(|_| ())),
        // Resuming a move whose re-encryption is underway reports progress at once: that run
        // is not interrupted (the model says so too).
        Op::MoveInterrupted(i, to) if s.keyring(&names[i]).unwrap().moving_from.is_some() => r(s
            .move_keyring(&names[i], &rn(ROOTS[to]), &mut |_| {})
            .map(|_| ())),
        Op::MoveInterrupted(i, to) => {
            // The interruption is a panic from the progress callback; kept off the output (this
            // binary runs no other test that could lose a message to the silent hook).
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.move_keyring(&names[i], &rn(ROOTS[to]), &mut |p| {
                    assert!(p.done == 0, "interrupted");
                })
            }));
            std::panic::set_hook(hook);
            match moved {
                Err(_) => Out::Interrupted,
                Ok(res) => r(res.map(|_| ())),
            }
        }
        Op::RotateRoot(root) => r(s.rotate_root(&rn(ROOTS[root]), &mut |_| {}).map(|_| ())),
        Op::DisableAcme => r(s.disable_root(&rn("acme"))),
        Op::EnableAcme => r(s.enable_root(&rn("acme"))),
        Op::DestroyAcme => r(s.destroy_root_now(&rn("acme")).map(|_| ())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut fx = Fixture::new(StoreOptions { dek_rollover_after: 3, ..StoreOptions::default() });
        let names = [kr("k0"), kr("k1")];
        for n in &names {
            fx.store().create_keyring(n, None).unwrap();
        }
        fx.store().create_root(&rn("acme")).unwrap();
        let mut model = Model {
            state: [M::Enabled; 2],
            records: [BTreeMap::new(), BTreeMap::new()],
            root: [0; 2],
            moving_from: [None; 2],
            acme: R::Enabled,
        };
        for (step, op) in ops.iter().enumerate() {
            let want = model.apply(op);
            let got = run(&mut fx, &names, op);
            prop_assert_eq!(&got, &want, "step {} {:?}", step, op);
            // The keyring states agree too.
            for (i, n) in names.iter().enumerate() {
                let st = fx.store().keyring(n).unwrap().state;
                let agrees = matches!(
                    (model.state[i], st),
                    (M::Enabled, KeyState::Enabled)
                        | (M::Disabled, KeyState::Disabled)
                        | (M::Destroyed, KeyState::Destroyed)
                        | (M::Pending { .. }, KeyState::PendingDestruction { .. })
                );
                prop_assert!(agrees, "step {} {:?}: keyring {} is {:?}, model {:?}", step, op, n, st, model.state[i]);
                let info = fx.store().keyring(n).unwrap();
                prop_assert_eq!(info.root.as_str(), ROOTS[model.root[i]], "step {} {:?}: root of {}", step, op, n);
                prop_assert_eq!(
                    info.moving_from.as_ref().map(|r| r.as_str()),
                    model.moving_from[i].map(|r| ROOTS[r]),
                    "step {} {:?}: pending move of {}", step, op, n
                );
            }
        }
        prop_assert!(fx.store().verify_audit().unwrap().is_ok());
    }
}
