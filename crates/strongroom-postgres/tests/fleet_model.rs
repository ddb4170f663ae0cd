//! A model of two replicas working on one keyring (issue 13): what each replica's operations
//! may return, and what state their concurrent key changes may end in.
//!
//! - Interleaved (a proptest): random sequences of puts, gets, deletes, KEK and DEK rotations,
//!   re-encryptions, disables, enables, scheduled and cancelled destructions and destructions,
//!   each from one of two replicas that never poll (an interval of an hour), so that one works
//!   from a view the other has changed. A key change must do exactly what the model says of the
//!   current state (it starts from it); a write lands only as the current state allows (it is
//!   guarded by it), or is refused as a state the replica still serves refuses; a read may
//!   answer as of the current state or of a state the replica may still be serving (the
//!   bounded staleness of a read), and always with the current value.
//! - Concurrent: two threads, one per replica, fire random key changes at one keyring at the
//!   same moment. Each change either applies whole or is refused (as a conflict, or as illegal
//!   in the state it met). The audit log's order of the changes that applied is a serial
//!   order: replayed through the model, every one of them is legal where it stands, each
//!   replica applied what it was told it applied, and the model's end state is the store's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fleet::{Fleet, fleet_with};
use common::kr;
use proptest::prelude::*;
use strongroom_core::KeyState;
use strongroom_store::{AuditOp, Outcome, Store, StoreError, StoreOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Enabled,
    Disabled,
    Pending,
    Destroyed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Ok,
    Value(Option<Vec<u8>>),
    Deleted(bool),
    Disabled,
    Pending,
    Destroyed,
    Illegal,
}

#[derive(Clone, Copy, Debug)]
enum K {
    Put(u8, u8),
    Get(u8),
    Delete(u8),
    RotateKek,
    RotateDek,
    Reencrypt,
    Disable,
    Enable,
    Schedule,
    Cancel,
    Destroy,
}

fn k_op() -> impl Strategy<Value = K> {
    prop_oneof![
        6 => (0u8..4, any::<u8>()).prop_map(|(k, v)| K::Put(k, v)),
        6 => (0u8..4).prop_map(K::Get),
        2 => (0u8..4).prop_map(K::Delete),
        2 => Just(K::RotateKek),
        2 => Just(K::RotateDek),
        1 => Just(K::Reencrypt),
        3 => Just(K::Disable),
        3 => Just(K::Enable),
        1 => Just(K::Schedule),
        2 => Just(K::Cancel),
        1 => Just(K::Destroy),
    ]
}

fn refusal(m: M) -> Option<Out> {
    match m {
        M::Enabled => None,
        M::Disabled => Some(Out::Disabled),
        M::Pending => Some(Out::Pending),
        M::Destroyed => Some(Out::Destroyed),
    }
}

fn kind(e: &StoreError) -> Out {
    match e {
        StoreError::KeyringDisabled { .. } => Out::Disabled,
        StoreError::KeyringPendingDestruction { .. } => Out::Pending,
        StoreError::KeyringDestroyed { .. } => Out::Destroyed,
        StoreError::Transition(_) => Out::Illegal,
        other => panic!("unexpected error: {other:?}"),
    }
}

fn value(v: u8) -> Vec<u8> {
    vec![v; usize::from(v % 7) + 1]
}

#[derive(Clone, Debug)]
struct Model {
    state: M,
    records: BTreeMap<u8, Vec<u8>>,
    kek_rotations: u32,
    dek_rotations: u32,
}

impl Model {
    fn new() -> Self {
        Self {
            state: M::Enabled,
            records: BTreeMap::new(),
            kek_rotations: 0,
            dek_rotations: 0,
        }
    }

    /// A key change in state `from`: the state it leads to, or `None` if it is illegal there.
    fn transition(op: K, from: M) -> Option<M> {
        match (op, from) {
            (K::Disable, M::Enabled) | (K::Cancel, M::Pending) => Some(M::Disabled),
            (K::Enable, M::Disabled) => Some(M::Enabled),
            (K::Schedule, M::Enabled | M::Disabled) => Some(M::Pending),
            (K::Destroy, M::Enabled | M::Disabled | M::Pending) => Some(M::Destroyed),
            _ => None,
        }
    }

    /// What `op` does to the current state (exactly what a key change or a write must do).
    fn apply(&mut self, op: K) -> Out {
        match op {
            K::Put(k, v) => refusal(self.state).unwrap_or_else(|| {
                self.records.insert(k, value(v));
                Out::Ok
            }),
            K::Get(k) => self.read(self.state, k),
            K::Delete(k) => refusal(self.state)
                .unwrap_or_else(|| Out::Deleted(self.records.remove(&k).is_some())),
            K::RotateKek | K::RotateDek | K::Reencrypt => {
                refusal(self.state).unwrap_or_else(|| {
                    match op {
                        K::RotateKek => self.kek_rotations += 1,
                        K::RotateDek => self.dek_rotations += 1,
                        _ => {}
                    }
                    Out::Ok
                })
            }
            K::Disable | K::Enable | K::Schedule | K::Cancel | K::Destroy => {
                match Self::transition(op, self.state) {
                    Some(to) => {
                        self.state = to;
                        if to == M::Destroyed {
                            self.records.clear();
                        }
                        Out::Ok
                    }
                    None => Out::Illegal,
                }
            }
        }
    }

    /// A read of record `k` by a replica serving state `view`: refused as that state refuses,
    /// or the record as the database holds it now (records are never cached).
    fn read(&self, view: M, k: u8) -> Out {
        refusal(view).unwrap_or_else(|| Out::Value(self.records.get(&k).cloned()))
    }
}

/// A key change.
fn change(s: &Store, op: K) -> Result<(), StoreError> {
    let k = kr("k");
    match op {
        K::RotateKek => s.rotate_kek(&k).map(|_| ()),
        K::RotateDek => s.rotate_dek(&k).map(|_| ()),
        K::Reencrypt => s.reencrypt(&k, &mut |_| {}).map(|_| ()),
        K::Disable => s.disable_keyring(&k),
        K::Enable => s.enable_keyring(&k),
        K::Schedule => s
            .schedule_keyring_destruction(&k, Some(Duration::from_secs(3600)))
            .map(|_| ()),
        K::Cancel => s.cancel_keyring_destruction(&k),
        K::Destroy => s.destroy_keyring_now(&k).map(|_| ()),
        K::Put(..) | K::Get(_) | K::Delete(_) => unreachable!("not a key change"),
    }
}

fn run(s: &Store, op: K) -> Out {
    let k = kr("k");
    let unit = |r: Result<(), StoreError>| r.map_or_else(|e| kind(&e), |()| Out::Ok);
    match op {
        K::Put(key, v) => unit(s.put(&k, &[key], &value(v))),
        K::Get(key) => s
            .get(&k, &[key])
            .map_or_else(|e| kind(&e), |v| Out::Value(v.map(|v| v.expose().to_vec()))),
        K::Delete(key) => s.delete(&k, &[key]).map_or_else(|e| kind(&e), Out::Deleted),
        _ => unit(change(s, op)),
    }
}

fn two_replicas(poll: Duration) -> Fleet {
    let f = fleet_with(2, |i| StoreOptions {
        fleet_poll: poll,
        replica: format!("replica-{i}"),
        ..StoreOptions::default()
    });
    f.replicas[0].create_keyring(&kr("k"), None).unwrap();
    f
}

fn state_of(s: &Store) -> M {
    match s.keyring(&kr("k")).unwrap().state {
        KeyState::Enabled => M::Enabled,
        KeyState::Disabled => M::Disabled,
        KeyState::PendingDestruction { .. } => M::Pending,
        KeyState::Destroyed => M::Destroyed,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn two_replicas_with_stale_views_do_what_the_model_allows(
        ops in prop::collection::vec((0usize..2, k_op()), 1..40)
    ) {
        // Neither replica polls: each learns of the other's changes only when a key change
        // or a write of its own meets them.
        let f = two_replicas(Duration::from_secs(3600));
        let mut model = Model::new();
        // The states each replica may be serving.
        let mut views: [Vec<M>; 2] = [vec![M::Enabled], vec![M::Enabled]];
        for (i, (r, op)) in ops.iter().enumerate() {
            let got = run(&f.replicas[*r], *op);
            if let K::Get(key) = op {
                let allowed: Vec<Out> = views[*r]
                    .iter()
                    .chain(std::iter::once(&model.state))
                    .map(|v| model.read(*v, *key))
                    .collect();
                prop_assert!(allowed.contains(&got), "step {i}: replica {r} {op:?}: {got:?}, allowed {allowed:?}");
                // It may have taken the current state in.
                if !views[*r].contains(&model.state) {
                    views[*r].push(model.state);
                }
            } else if matches!(op, K::Put(..) | K::Delete(_)) {
                // A write lands only as the current state allows (it is guarded by it); one
                // that a state the replica still serves refuses is refused without touching
                // the database, with that state's reason.
                let stale_refusals: Vec<Out> = views[*r].iter().filter_map(|v| refusal(*v)).collect();
                if stale_refusals.contains(&got) && got != model.clone().apply(*op) {
                    if !views[*r].contains(&model.state) {
                        views[*r].push(model.state);
                    }
                } else {
                    let want = model.apply(*op);
                    prop_assert_eq!(&got, &want, "step {}: replica {} {:?} (views {:?})", i, r, op, &views[*r]);
                    views[*r] = vec![model.state];
                }
            } else {
                // A key change starts from the current state.
                let want = model.apply(*op);
                prop_assert_eq!(&got, &want, "step {}: replica {} {:?}", i, r, op);
                views[*r] = vec![model.state];
            }
        }
        // Both end on the model's state.
        for s in &f.replicas {
            // A key change takes the current state in (`write_lifecycle`); a refused one too.
            let _ = s.rotate_kek(&kr("k"));
            prop_assert_eq!(state_of(s), model.state);
        }
        prop_assert!(f.replicas[1].verify_audit().unwrap().is_ok());
    }
}

/// The model's name of an audited key change of keyring `k`.
fn op_of(e: &strongroom_store::AuditEntry) -> Option<K> {
    if e.target != "keyring k" || e.outcome != Outcome::Ok {
        return None;
    }
    match e.op {
        AuditOp::KeyringDisabled => Some(K::Disable),
        AuditOp::KeyringEnabled => Some(K::Enable),
        AuditOp::KekRotated => Some(K::RotateKek),
        AuditOp::DekRotated => Some(K::RotateDek),
        AuditOp::KeyringDestructionScheduled => Some(K::Schedule),
        AuditOp::KeyringDestructionCancelled => Some(K::Cancel),
        _ => None,
    }
}

#[test]
fn concurrent_key_changes_from_two_replicas_serialize_as_the_audit_log_says() {
    let ops = [
        K::Disable,
        K::Enable,
        K::RotateKek,
        K::RotateDek,
        K::Schedule,
        K::Cancel,
    ];
    for round in 0..4u64 {
        let f = two_replicas(Duration::from_millis(20));
        // Per replica: what it was told applied, by change.
        let applied: Vec<BTreeMap<String, u32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = f
                .replicas
                .iter()
                .enumerate()
                .map(|(r, s)| {
                    scope.spawn(move || {
                        // A different fixed sequence per replica and round.
                        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (round << 8) ^ r as u64;
                        let mut applied = BTreeMap::new();
                        for _ in 0..40 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let op = ops[usize::try_from(x % ops.len() as u64).unwrap()];
                            let got = change(s, op);
                            match got {
                                Ok(()) => *applied.entry(format!("{op:?}")).or_insert(0) += 1,
                                // Refused: a conflict with the other replica's change, or
                                // illegal (or refused) in the state it met, or the key states
                                // still being reloaded (a reload that raced the other
                                // replica's changes too often: "retry in a moment"). Nothing
                                // applied: the audit log below says so.
                                Err(
                                    StoreError::Conflict { .. }
                                    | StoreError::InUse(_)
                                    | StoreError::Transition(_)
                                    | StoreError::KeyringDisabled { .. }
                                    | StoreError::KeyringPendingDestruction { .. },
                                ) => {}
                                Err(e) => panic!("replica {r}: {op:?}: {e}"),
                            }
                        }
                        applied
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Replay the audit log's order through the model.
        let a = &f.replicas[0];
        let mut model = Model::new();
        let mut by_replica: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); 2];
        for e in a.audit_entries(1).map(Result::unwrap) {
            let Some(op) = op_of(&e) else { continue };
            assert_eq!(
                model.apply(op),
                Out::Ok,
                "round {round}: seq {} ({:?} by {}) is illegal after the changes before it",
                e.seq,
                op,
                e.replica
            );
            let r: usize = e.replica.trim_start_matches("replica-").parse().unwrap();
            *by_replica[r].entry(format!("{op:?}")).or_insert(0) += 1;
        }
        assert_eq!(
            by_replica, applied,
            "round {round}: what each replica was told applied is what the log holds"
        );
        let total: u32 = applied.iter().flat_map(|m| m.values()).sum();
        assert!(
            total >= 10,
            "round {round}: too few changes applied ({total})"
        );
        // The end state is the model's, on both replicas once they have taken it in (each
        // within its poll interval).
        let (stored, _) = a.generations().unwrap();
        for r in &f.replicas {
            common::fleet::until(Duration::from_secs(5), || {
                let _ = r.get(&kr("k"), b"x");
                (r.generations().unwrap().1 >= stored).then_some(())
            });
            assert_eq!(state_of(r), model.state, "round {round}");
            let info = r.keyring(&kr("k")).unwrap();
            assert_eq!(
                info.current_kek.get(),
                1 + model.kek_rotations,
                "round {round}: KEK versions"
            );
            assert_eq!(
                info.current_dek.get(),
                1 + model.dek_rotations,
                "round {round}: DEK versions"
            );
        }
        assert!(f.replicas[1].verify_audit().unwrap().is_ok());
    }
}
