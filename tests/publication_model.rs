//! An exhaustive interleaving test of the publish → take → acknowledge handoff: two
//! publishers (one may be slow and send an older version late) and two workers, every order
//! of their steps. In every interleaving: a worker's version never goes back, no update is
//! lost (after a final quiescent turn every worker serves the newest version), and every
//! superseded snapshot is freed (no one holds it any more).

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use sluice::core::route::RouteTable;
use sluice::core::snapshot::Snapshot;
use sluice::engine::publish::take_newer;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Publisher `p` sends its next snapshot to worker `w`.
    Send { p: usize, w: usize },
    /// Worker `w` runs its quiescent point.
    Turn { w: usize },
}

/// Versions each publisher sends, in its order. Publisher 1 is "slow": it sends version 3
/// after publisher 0 may already have sent 4.
const PLANS: [&[u64]; 2] = [&[2, 4], &[3]];
const WORKERS: usize = 2;
const TURNS: usize = 2;

fn all_steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for (p, plan) in PLANS.iter().enumerate() {
        for _ in 0..plan.len() {
            for w in 0..WORKERS {
                steps.push(Step::Send { p, w });
            }
        }
    }
    for w in 0..WORKERS {
        for _ in 0..TURNS {
            steps.push(Step::Turn { w });
        }
    }
    steps
}

/// Every distinct order of the multiset of steps, keeping each actor's own steps in order
/// (a publisher sends version by version, worker by worker; a worker's turns are sequential).
fn interleavings(steps: &[Step]) -> Vec<Vec<Step>> {
    // Actors: publisher sends per (p, w) pair are ordered by version; represent each actor's
    // queue and interleave the queues.
    let mut queues: Vec<Vec<Step>> = Vec::new();
    for (p, plan) in PLANS.iter().enumerate() {
        for w in 0..WORKERS {
            queues.push(vec![Step::Send { p, w }; plan.len()]);
        }
    }
    for w in 0..WORKERS {
        queues.push(vec![Step::Turn { w }; TURNS]);
    }
    assert_eq!(queues.iter().map(Vec::len).sum::<usize>(), steps.len());
    let mut out = Vec::new();
    let mut cursor = vec![0usize; queues.len()];
    let mut current = Vec::new();
    fn rec(
        queues: &[Vec<Step>],
        cursor: &mut Vec<usize>,
        current: &mut Vec<Step>,
        out: &mut Vec<Vec<Step>>,
    ) {
        let mut any = false;
        for q in 0..queues.len() {
            if cursor[q] < queues[q].len() {
                any = true;
                current.push(queues[q][cursor[q]]);
                cursor[q] += 1;
                rec(queues, cursor, current, out);
                cursor[q] -= 1;
                current.pop();
            }
        }
        if !any {
            out.push(current.clone());
        }
    }
    rec(&queues, &mut cursor, &mut current, &mut out);
    out
}

fn snapshot(version: u64) -> Arc<Snapshot> {
    Arc::new(Snapshot::new(version, RouteTable::default(), Vec::new()))
}

#[test]
fn every_interleaving_ends_on_the_newest_version_with_nothing_leaked() {
    let schedules = interleavings(&all_steps());
    assert!(schedules.len() > 1000, "only {} schedules", schedules.len());
    for schedule in &schedules {
        // The publishers' snapshots, and weak handles to check they are freed.
        let made: Vec<Vec<Arc<Snapshot>>> = PLANS
            .iter()
            .map(|plan| plan.iter().map(|&v| snapshot(v)).collect())
            .collect();
        let weak: Vec<_> = made.iter().flatten().map(Arc::downgrade).collect();
        let initial = snapshot(1);
        let weak_initial = Arc::downgrade(&initial);
        let mut mailboxes: Vec<(Sender<Arc<Snapshot>>, _)> =
            (0..WORKERS).map(|_| channel()).collect();
        let mut serving: Vec<Arc<Snapshot>> = (0..WORKERS).map(|_| initial.clone()).collect();
        drop(initial);
        // Per publisher and worker: how many of its versions it has sent there.
        let mut sent = vec![vec![0usize; WORKERS]; PLANS.len()];
        for step in schedule {
            match *step {
                Step::Send { p, w } => {
                    let s = made[p][sent[p][w]].clone();
                    sent[p][w] += 1;
                    mailboxes[w].0.send(s).unwrap();
                }
                Step::Turn { w } => {
                    let before = serving[w].version;
                    if let Some(newer) = take_newer(&mailboxes[w].1, before) {
                        serving[w] = newer;
                    }
                    assert!(
                        serving[w].version >= before,
                        "worker {w} went back: {schedule:?}"
                    );
                }
            }
        }
        drop(made);
        // A last quiescent turn on every worker.
        for w in 0..WORKERS {
            if let Some(newer) = take_newer(&mailboxes[w].1, serving[w].version) {
                serving[w] = newer;
            }
            assert_eq!(serving[w].version, 4, "lost update: {schedule:?}");
        }
        for (i, wk) in weak.iter().enumerate() {
            let alive = wk.strong_count() > 0;
            let version = wk.upgrade().map(|s| s.version);
            assert_eq!(
                alive,
                version == Some(4),
                "snapshot #{i} leaked or freed early: {schedule:?}"
            );
        }
        assert_eq!(weak_initial.strong_count(), 0, "the first snapshot leaked");
        mailboxes.clear();
    }
}
