//! A proptest model of the key lifecycle: random sequences of put, get, delete, rotations,
//! disable, enable, schedule, cancel, destroy, re-encrypt and reopen run against the store and
//! against a plain in-memory model; any divergence in a value or in the kind of error fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Fixture, kr};
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
}

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
        other => panic!("unexpected error in the model run: {other:?}"),
    }
}

struct Model {
    state: [M; 2],
    records: [BTreeMap<u8, Vec<u8>>; 2],
}

impl Model {
    fn destroy_due(&mut self) {
        for i in 0..2 {
            if self.state[i] == (M::Pending { due: true }) {
                self.state[i] = M::Destroyed;
                self.records[i].clear();
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
            Op::Put(r, key, v) => refusal(self.state[r]).unwrap_or_else(|| {
                self.records[r].insert(key, vec![v; usize::from(v % 7) + 1]);
                Out::Ok
            }),
            Op::Get(r, key) => refusal(self.state[r])
                .unwrap_or_else(|| Out::Value(self.records[r].get(&key).cloned())),
            Op::Delete(r, key) => refusal(self.state[r])
                .unwrap_or_else(|| Out::Deleted(self.records[r].remove(&key).is_some())),
            Op::RotateKek(r) | Op::RotateDek(r) | Op::Reencrypt(r) => {
                refusal(self.state[r]).unwrap_or(Out::Ok)
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
        let mut model = Model { state: [M::Enabled; 2], records: [BTreeMap::new(), BTreeMap::new()] };
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
            }
        }
        prop_assert!(fx.store().verify_audit().unwrap().is_ok());
    }
}
