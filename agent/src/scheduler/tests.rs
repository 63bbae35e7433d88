// SPDX-License-Identifier: Apache-2.0
//! Unit tests of the scheduler rules, one behaviour each, driven step by step with explicit
//! instants. The randomized invariant test is in `invariants.rs`; the benchmark in `bench.rs`.

use super::*;
use crate::config::throttle::RateLimit;
use crate::pod::SkipReason;
use pod_pacemaker::protocol::{self, ErrorCode, Token};
use std::io::BufReader;
use std::os::unix::net::UnixStream;

mod bench;
mod invariants;

const LEASE: Duration = Duration::from_secs(300);

fn token(s: &str) -> Token {
    Token::new(s).expect("valid token")
}

fn wait(name: &str, uid: Option<&str>) -> WaitRequest {
    WaitRequest {
        namespace: token("ns"),
        name: token(name),
        uid: uid.map(token),
        timeout_ms: None,
    }
}

fn timed_wait(name: &str, uid: &str, timeout_ms: u64) -> WaitRequest {
    WaitRequest {
        timeout_ms: Some(timeout_ms),
        ..wait(name, Some(uid))
    }
}

fn pod(name: &str, uid: &str) -> PodInfo {
    PodInfo {
        uid: uid.to_owned(),
        namespace: "ns".to_owned(),
        name: name.to_owned(),
        created: "2024-01-01T00:00:00Z".to_owned(),
        mirror_of: None,
        priority: 0,
        host_network: false,
        skip: None,
        pace_forced: false,
        sandbox_started: false,
        started: false,
        release: None,
        release_detail: None,
    }
}

fn ready(name: &str, uid: &str) -> PodInfo {
    PodInfo {
        release: Some(ReleaseReason::Ready),
        started: true,
        sandbox_started: true,
        ..pod(name, uid)
    }
}

/// Options as the tests want them by default: no wait for unknown pods (they are paced at once,
/// as in the first cut), and every position change reported at once.
fn options() -> Options {
    Options {
        lease: LEASE,
        release_on: ReleaseOn::Ready,
        skip: SkipOptions::default(),
        unknown_pod_wait: Duration::ZERO,
        unknown_pod_policy: UnknownPodPolicy::Pace,
        position_interval: Duration::ZERO,
        position_memory: POSITION_MEMORY,
        max_remembered: MAX_REMEMBERED,
        max_waiting: MAX_WAITING,
        restart_grace: RESTART_GRACE,
    }
}

fn limits(max: u32) -> Limits {
    Limits {
        max_concurrent: max,
        rate_limit: None,
    }
}

/// A synced scheduler with `limit` slots and an empty node.
fn synced(limit: u32, now: Instant) -> Scheduler {
    synced_with(options(), limits(limit), now)
}

fn synced_with(options: Options, limits: Limits, now: Instant) -> Scheduler {
    let mut s = Scheduler::new(options, limits, None, now);
    assert!(s.on_resync(Vec::new(), now));
    s
}

fn grants(out: &[(ConnId, ConnReply)]) -> Vec<(ConnId, GrantReason)> {
    out.iter()
        .filter_map(|(c, r)| match r {
            Ok(Reply::Granted { reason }) => Some((*c, *reason)),
            _ => None,
        })
        .collect()
}

fn slot_grants(out: &[(ConnId, ConnReply)]) -> Vec<ConnId> {
    grants(out)
        .into_iter()
        .filter(|(_, r)| *r == GrantReason::Slot)
        .map(|(c, _)| c)
        .collect()
}

fn positions(out: &[(ConnId, ConnReply)]) -> Vec<(ConnId, u32)> {
    out.iter()
        .filter_map(|(c, r)| match r {
            Ok(Reply::Queued { position, .. }) => Some((*c, *position)),
            _ => None,
        })
        .collect()
}

fn errors(out: &[(ConnId, ConnReply)]) -> Vec<(ConnId, ErrorCode)> {
    out.iter()
        .filter_map(|(c, r)| r.as_ref().err().map(|e| (*c, crate::error::error_code(e))))
        .collect()
}

fn holder_uids(s: &Scheduler) -> Vec<&str> {
    s.slots.iter().filter_map(|s| s.uid.as_deref()).collect()
}

fn queued_names(s: &Scheduler, now: Instant) -> Vec<String> {
    s.status(now)
        .into_iter()
        .filter_map(|l| match l {
            StatusReply::Waiter(w) => Some(w.name.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn grants_in_arrival_order_within_the_limit() {
    let now = Instant::now();
    let mut s = synced(2, now);
    for i in 1..=5 {
        s.on_wait(i, wait(&format!("p{i}"), Some(&format!("u{i}"))), now);
    }
    let out = s.take_outbox();
    assert_eq!(
        grants(&out),
        [(1, GrantReason::Slot), (2, GrantReason::Slot)]
    );
    assert_eq!(positions(&out), [(3, 1), (4, 2), (5, 3)]);

    // One release wakes exactly one waiter, the first; the others move up.
    s.on_pod_upsert(ready("p2", "u2"), now);
    let out = s.take_outbox();
    assert_eq!(grants(&out), [(3, GrantReason::Slot)]);
    assert_eq!(positions(&out), [(4, 1), (5, 2)]);
    assert_eq!(s.released, [("u2".to_owned(), ReleaseReason::Ready)]);
    assert_eq!(s.slots.len(), 2);
}

#[test]
fn limit_is_never_exceeded() {
    let now = Instant::now();
    let mut s = synced(3, now);
    let mut next_conn = 0;
    for round in 0..50_u64 {
        for _ in 0..3 {
            next_conn += 1;
            s.on_wait(
                next_conn,
                wait(&format!("p{next_conn}"), Some(&format!("u{next_conn}"))),
                now,
            );
            assert!(s.slots.len() <= 3);
        }
        s.take_outbox();
        // Free one slot in a different way each round.
        let uid = s.slots[0].uid.clone().expect("bound");
        let name = s.slots[0].name.clone();
        match round % 3 {
            0 => s.on_pod_deleted(&uid, now),
            1 => s.on_pod_upsert(ready(&name, &uid), now),
            _ => {
                let conn = s.slots[0].via.expect("granted");
                s.on_gone(conn, now);
            }
        }
        assert!(s.slots.len() <= 3);
        let out = s.take_outbox();
        assert!(slot_grants(&out).len() <= 1, "one grant per freed slot");
    }
}

#[test]
fn every_release_rule_frees_the_slot() {
    let rules = [
        ReleaseReason::Ready,
        ReleaseReason::Failed,
        ReleaseReason::Succeeded,
        ReleaseReason::Deleting,
        ReleaseReason::ContainerError,
    ];
    for reason in rules {
        let now = Instant::now();
        let mut s = synced(1, now);
        s.on_wait(1, wait("a", Some("ua")), now);
        s.on_pod_upsert(pod("a", "ua"), now);
        assert_eq!(s.slots.len(), 1, "{reason}: a plain update keeps the slot");
        s.on_pod_upsert(
            PodInfo {
                release: Some(reason),
                ..pod("a", "ua")
            },
            now,
        );
        assert!(s.slots.is_empty(), "{reason}");
        assert_eq!(s.released, [("ua".to_owned(), reason)]);
    }
}

#[test]
fn release_on_started_frees_when_every_container_started() {
    let now = Instant::now();
    let started = PodInfo {
        started: true,
        sandbox_started: true,
        ..pod("a", "ua")
    };
    // Default: started is not enough, Ready is needed.
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_pod_upsert(started.clone(), now);
    assert_eq!(s.slots.len(), 1);
    // With --release-on started it is.
    let mut s = synced_with(
        Options {
            release_on: ReleaseOn::Started,
            ..options()
        },
        limits(1),
        now,
    );
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_pod_upsert(pod("a", "ua"), now);
    assert_eq!(s.slots.len(), 1, "no container status yet is not started");
    s.on_pod_upsert(started, now);
    assert_eq!(s.released, [("ua".to_owned(), ReleaseReason::Started)]);
}

#[test]
fn delete_lease_and_resync_free_slots() {
    let now = Instant::now();
    let mut s = synced(3, now);
    s.on_pod_upsert(pod("a", "ua"), now);
    s.on_pod_upsert(pod("b", "ub"), now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, wait("c", Some("uc")), now);

    s.on_pod_deleted("ua", now);
    // b was seen and is missing from the relist; c was never seen, so it stays (the watch may
    // just lag), until its lease runs out.
    s.on_resync(vec![pod("other", "uo")], now);
    assert_eq!(s.next_deadline(now), Some(now + LEASE));
    s.tick(now + LEASE - Duration::from_millis(1));
    assert_eq!(s.slots.len(), 1);
    s.tick(now + LEASE);
    assert_eq!(
        s.released,
        [
            ("ua".to_owned(), ReleaseReason::Deleted),
            ("ub".to_owned(), ReleaseReason::Deleted),
            ("uc".to_owned(), ReleaseReason::Lease),
        ]
    );
    assert!(s.slots.is_empty());
}

#[test]
fn retried_wait_gets_the_held_slot_at_once() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.take_outbox();
    s.on_wait(3, wait("a", Some("ua")), now);
    assert_eq!(grants(&s.take_outbox()), [(3, GrantReason::Slot)]);
    assert_eq!(s.slots.len(), 1);
    // The retry's connection failing does not free the slot the first one delivered.
    s.on_gone(3, now);
    assert_eq!(s.slots.len(), 1);
    assert!(s.released.is_empty());
}

#[test]
fn skipped_pods_pass_without_a_slot() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_pod_upsert(
        PodInfo {
            skip: Some(SkipReason::Annotation),
            ..pod("annotated", "u1")
        },
        now,
    );
    s.on_pod_upsert(
        PodInfo {
            skip: Some(SkipReason::DaemonSet),
            ..pod("ds", "u2")
        },
        now,
    );
    s.on_pod_upsert(
        PodInfo {
            namespace: "kube-system".to_owned(),
            ..pod("dns", "u3")
        },
        now,
    );
    s.on_wait(1, wait("filler", Some("u0")), now);
    s.on_wait(2, wait("annotated", Some("u1")), now);
    s.on_wait(3, wait("ds", None), now);
    s.on_wait(
        4,
        WaitRequest {
            namespace: token("kube-system"),
            ..wait("dns", Some("u3"))
        },
        now,
    );
    let out = s.take_outbox();
    assert_eq!(
        grants(&out),
        [
            (1, GrantReason::Slot),
            (2, GrantReason::Skip),
            (3, GrantReason::Skip),
            (4, GrantReason::Skip)
        ]
    );
    assert_eq!(s.slots.len(), 1);
}

#[test]
fn skip_options_and_the_forcing_annotation() {
    let now = Instant::now();
    let no_ds = Options {
        skip: SkipOptions {
            daemonsets: false,
            namespaces: vec!["kube-system".to_owned()],
        },
        ..options()
    };
    let mut s = synced_with(no_ds, limits(5), now);
    // --skip-daemonsets=false: a DaemonSet pod is paced.
    s.on_pod_upsert(
        PodInfo {
            skip: Some(SkipReason::DaemonSet),
            ..pod("ds", "u1")
        },
        now,
    );
    // The annotation with another value than "true" paces even in an excluded namespace.
    s.on_pod_upsert(
        PodInfo {
            namespace: "kube-system".to_owned(),
            pace_forced: true,
            ..pod("forced", "u2")
        },
        now,
    );
    s.on_wait(1, wait("ds", Some("u1")), now);
    s.on_wait(
        2,
        WaitRequest {
            namespace: token("kube-system"),
            ..wait("forced", Some("u2"))
        },
        now,
    );
    assert_eq!(slot_grants(&s.take_outbox()), [1, 2]);
}

#[test]
fn pod_learned_to_be_skipped_later_passes_or_gives_back_its_slot() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("early", Some("u1")), now);
    s.on_wait(2, wait("queued", Some("u2")), now);
    s.on_wait(3, wait("third", Some("u3")), now);
    s.take_outbox();
    // The queued pod turns out to be a DaemonSet pod: it passes, the third moves up.
    s.on_pod_upsert(
        PodInfo {
            skip: Some(SkipReason::DaemonSet),
            ..pod("queued", "u2")
        },
        now,
    );
    let out = s.take_outbox();
    assert_eq!(grants(&out), [(2, GrantReason::Skip)]);
    assert_eq!(positions(&out), [(3, 1)]);
    // The slot holder turns out to be annotated: the slot goes to the next waiter.
    s.on_pod_upsert(
        PodInfo {
            skip: Some(SkipReason::Annotation),
            ..pod("early", "u1")
        },
        now,
    );
    assert_eq!(grants(&s.take_outbox()), [(3, GrantReason::Slot)]);
    assert_eq!(s.released, [("u1".to_owned(), ReleaseReason::Skip)]);
}

#[test]
fn slots_are_keyed_by_uid_not_name() {
    let now = Instant::now();
    let mut s = synced(2, now);
    // web-0 (old) holds a slot; it is force-deleted and recreated with a new UID, and the new
    // pod's ADD arrives before the agent sees the old one's delete.
    s.on_pod_upsert(pod("web-0", "old"), now);
    s.on_wait(1, wait("web-0", Some("old")), now);
    s.on_wait(2, wait("web-0", Some("new")), now);
    assert_eq!(
        grants(&s.take_outbox()),
        [(1, GrantReason::Slot), (2, GrantReason::Slot)]
    );
    // The old pod's delete frees only the old slot.
    s.on_pod_deleted("old", now);
    assert_eq!(s.released, [("old".to_owned(), ReleaseReason::Deleted)]);
    assert_eq!(holder_uids(&s), ["new"]);
    // The old pod's status never decides for the new one.
    s.on_pod_upsert(ready("web-0", "old"), now);
    assert_eq!(s.slots.len(), 1);
}

#[test]
fn wait_without_uid_resolves_from_the_cache_or_binds_later() {
    let now = Instant::now();
    let mut s = synced(2, now);
    // In the cache: the old web-0 being deleted and the new one.
    s.on_pod_upsert(
        PodInfo {
            release: Some(ReleaseReason::Deleting),
            created: "2024-01-01T00:00:00Z".to_owned(),
            ..pod("web-0", "old")
        },
        now,
    );
    s.on_pod_upsert(
        PodInfo {
            created: "2024-01-02T00:00:00Z".to_owned(),
            ..pod("web-0", "new")
        },
        now,
    );
    s.on_wait(1, wait("web-0", None), now);
    assert_eq!(holder_uids(&s), ["new"]);

    // Not in the cache yet: the slot is keyed by name until the pod shows up.
    s.on_wait(2, wait("late", None), now);
    assert_eq!(s.slots[1].uid, None);
    s.on_pod_upsert(pod("late", "u-late"), now);
    assert_eq!(s.slots[1].uid.as_deref(), Some("u-late"));
    s.on_pod_upsert(ready("late", "u-late"), now);
    assert_eq!(s.released, [("u-late".to_owned(), ReleaseReason::Ready)]);
}

#[test]
fn static_pod_uid_maps_to_its_mirror_pod() {
    let now = Instant::now();
    let mut s = synced(2, now);
    let mirror = |name: &str, uid: &str| PodInfo {
        mirror_of: Some(format!("hash-{name}")),
        ..pod(name, uid)
    };
    // Mirror known before the WAIT.
    s.on_pod_upsert(mirror("static-a", "api-a"), now);
    s.on_wait(1, wait("static-a", Some("hash-static-a")), now);
    assert_eq!(s.slots[0].uid.as_deref(), Some("api-a"));
    // Mirror known only after the grant.
    s.on_wait(2, wait("static-b", Some("hash-static-b")), now);
    s.on_pod_upsert(mirror("static-b", "api-b"), now);
    assert_eq!(s.slots[1].uid.as_deref(), Some("api-b"));
    // The mirror pod's status releases the slot.
    s.on_pod_upsert(
        PodInfo {
            release: Some(ReleaseReason::Ready),
            ..mirror("static-b", "api-b")
        },
        now,
    );
    assert_eq!(s.released, [("api-b".to_owned(), ReleaseReason::Ready)]);
}

#[test]
fn queued_waiter_without_uid_binds_and_keeps_its_place() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", None), now);
    s.on_wait(3, wait("c", Some("uc")), now + Duration::from_millis(1));
    s.on_pod_upsert(pod("b", "ub"), now);
    assert_eq!(queued_names(&s, now), ["b", "c"]);
    s.on_pod_deleted("ua", now);
    assert_eq!(s.slots[0].uid.as_deref(), Some("ub"));
    assert_eq!(s.slots[0].via, Some(2));
}

#[test]
fn waiters_leave_on_close_and_on_timeout() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, timed_wait("c", "uc", 1000), now);
    s.on_wait(4, wait("d", Some("ud")), now);
    s.take_outbox();

    // The client of b closes: c and d move up.
    s.on_gone(2, now);
    assert_eq!(positions(&s.take_outbox()), [(3, 1), (4, 2)]);

    // c's time passes: it gets a timeout error and d moves up.
    let later = now + Duration::from_millis(1000);
    assert_eq!(s.next_deadline(now), Some(later));
    s.tick(later);
    let out = s.take_outbox();
    assert_eq!(errors(&out), [(3, ErrorCode::Timeout)]);
    assert_eq!(positions(&out), [(4, 1)]);

    // The next free slot goes to d, not to the departed.
    s.on_pod_deleted("ua", later);
    assert_eq!(slot_grants(&s.take_outbox()), [4]);
}

#[test]
fn retried_add_resumes_its_old_position() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, timed_wait("a", "ua", 100), now);
    s.on_wait(3, wait("b", Some("ub")), now + Duration::from_millis(10));
    s.on_wait(4, wait("c", Some("uc")), now + Duration::from_millis(20));
    // a's deadline passes (the plugin fails open or the runtime gives up); c's client closes.
    let t = now + Duration::from_millis(100);
    s.tick(t);
    s.on_gone(4, t);
    assert_eq!(errors(&s.take_outbox()), [(2, ErrorCode::Timeout)]);
    assert_eq!(queued_names(&s, t), ["b"]);
    // A newcomer arrives, then the runtime retries a and c: both take their old places.
    s.on_wait(5, wait("d", Some("ud")), t);
    s.on_wait(6, wait("c", Some("uc")), t + Duration::from_secs(10));
    s.on_wait(7, wait("a", Some("ua")), t + Duration::from_secs(11));
    assert_eq!(queued_names(&s, t), ["a", "b", "c", "d"]);
    let out = s.take_outbox();
    assert!(positions(&out).contains(&(7, 1)), "{:?}", positions(&out));
    s.on_pod_deleted("u0", t + Duration::from_secs(12));
    assert_eq!(slot_grants(&s.take_outbox()), [7]);
}

#[test]
fn remembered_positions_are_bounded_in_time_and_forgotten_when_moot() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    for (conn, name) in [(2, "a"), (3, "b"), (4, "c")] {
        s.on_pod_upsert(pod(name, &format!("u{name}")), now);
        s.on_wait(conn, wait(name, Some(&format!("u{name}"))), now);
        s.on_gone(conn, now);
    }
    let status = |s: &Scheduler, t| match s.status(t).last() {
        Some(StatusReply::Summary(sum)) => (sum.waiting, sum.remembered),
        _ => panic!("no summary"),
    };
    assert_eq!(status(&s, now), (0, 3));
    // b's sandbox appears without a slot (its plugin failed open): its ADD will not come back.
    s.on_pod_upsert(
        PodInfo {
            sandbox_started: true,
            ..pod("b", "ub")
        },
        now,
    );
    // c is deleted.
    s.on_pod_deleted("uc", now);
    assert_eq!(status(&s, now), (0, 1));
    // a is forgotten when the memory runs out.
    s.tick(now + POSITION_MEMORY - Duration::from_millis(1));
    assert_eq!(status(&s, now), (0, 1));
    s.tick(now + POSITION_MEMORY);
    assert_eq!(status(&s, now + POSITION_MEMORY), (0, 0));
}

#[test]
fn remembered_positions_are_capped_oldest_departure_first() {
    let now = Instant::now();
    let opts = Options {
        max_remembered: 2,
        ..options()
    };
    let mut s = synced_with(opts, limits(1), now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let conn = 2 + u64::try_from(i).expect("small");
        let t = now + Duration::from_millis(conn);
        s.on_wait(conn, wait(name, Some(&format!("u{name}"))), t);
        s.on_gone(conn, t);
    }
    s.tick(now + Duration::from_millis(10));
    // a left first and is forgotten; b and c keep their places.
    s.on_wait(10, wait("c", Some("uc")), now + Duration::from_millis(20));
    s.on_wait(11, wait("a", Some("ua")), now + Duration::from_millis(21));
    s.on_wait(12, wait("b", Some("ub")), now + Duration::from_millis(22));
    assert_eq!(queued_names(&s, now), ["b", "c", "a"]);
}

#[test]
fn undelivered_grant_frees_the_slot_and_keeps_the_position() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, wait("c", Some("uc")), now);
    s.take_outbox();
    s.on_gone(1, now);
    assert_eq!(s.released, [("ua".to_owned(), ReleaseReason::Undelivered)]);
    assert_eq!(slot_grants(&s.take_outbox()), [2]);
    // a's retry comes before c.
    s.on_wait(4, wait("a", Some("ua")), now);
    s.on_pod_deleted("ub", now);
    assert_eq!(slot_grants(&s.take_outbox()), [4]);
}

#[test]
fn newer_wait_takes_the_queued_ones_place() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, wait("c", Some("uc")), now);
    s.take_outbox();
    s.on_wait(4, wait("b", Some("ub")), now);
    let out = s.take_outbox();
    assert_eq!(errors(&out), [(2, ErrorCode::Superseded)]);
    assert_eq!(positions(&out), [(4, 1)]);
    s.on_pod_deleted("ua", now);
    assert_eq!(slot_grants(&s.take_outbox()), [4]);
}

#[test]
fn priority_first_then_arrival_then_creation_time() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    let with = |name: &str, priority: i32, created: &str| PodInfo {
        priority,
        created: created.to_owned(),
        ..pod(name, &format!("u-{name}"))
    };
    s.on_pod_upsert(with("low-early", 0, "2024-01-01T00:00:00Z"), now);
    s.on_pod_upsert(with("high", 1000, "2024-01-03T00:00:00Z"), now);
    s.on_pod_upsert(with("low-late", 0, "2024-01-01T00:00:00Z"), now);
    s.on_pod_upsert(with("tie-young", 0, "2024-01-02T00:00:00Z"), now);
    s.on_pod_upsert(with("tie-old", 0, "2024-01-01T00:00:00Z"), now);
    s.on_pod_upsert(with("negative", -5, "2024-01-01T00:00:00Z"), now);
    let t1 = now + Duration::from_millis(1);
    let t2 = now + Duration::from_millis(2);
    s.on_wait(2, wait("negative", Some("u-negative")), t1);
    s.on_wait(3, wait("low-early", Some("u-low-early")), t1);
    s.on_wait(4, wait("high", Some("u-high")), t2);
    // Same arrival instant: the older pod first.
    s.on_wait(5, wait("tie-young", Some("u-tie-young")), t2);
    s.on_wait(6, wait("tie-old", Some("u-tie-old")), t2);
    s.on_wait(
        7,
        wait("low-late", Some("u-low-late")),
        now + Duration::from_millis(3),
    );
    s.take_outbox();
    assert_eq!(
        queued_names(&s, t2),
        [
            "high",
            "low-early",
            "tie-old",
            "tie-young",
            "low-late",
            "negative"
        ]
    );
    let mut order = Vec::new();
    let mut holder = "u0".to_owned();
    for _ in 0..6 {
        s.on_pod_deleted(&holder, t2);
        let granted = slot_grants(&s.take_outbox());
        assert_eq!(granted.len(), 1);
        order.push(granted[0]);
        holder = s.slots[0].uid.clone().expect("bound");
    }
    assert_eq!(order, [4, 3, 6, 5, 7, 2]);
}

#[test]
fn a_priority_learned_later_reorders_the_queue() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, wait("a", Some("ua")), now);
    s.on_wait(3, wait("b", Some("ub")), now);
    s.take_outbox();
    assert_eq!(queued_names(&s, now), ["a", "b"]);
    s.on_pod_upsert(
        PodInfo {
            priority: 10,
            ..pod("b", "ub")
        },
        now,
    );
    assert_eq!(queued_names(&s, now), ["b", "a"]);
    s.on_pod_deleted("u0", now);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
}

#[test]
fn unknown_pod_keeps_its_place_until_it_shows_up() {
    let now = Instant::now();
    let opts = Options {
        unknown_pod_wait: Duration::from_secs(2),
        ..options()
    };
    let mut s = synced_with(opts, limits(1), now);
    s.on_pod_upsert(pod("holder", "u0"), now);
    s.on_pod_upsert(pod("b", "ub"), now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, wait("a", Some("ua")), now);
    s.on_wait(3, wait("b", Some("ub")), now + Duration::from_millis(1));
    s.take_outbox();
    let status = s.status(now);
    assert!(matches!(
        &status[1],
        StatusReply::Waiter(w) if w.name.as_str() == "a" && w.state == WaiterState::UnknownPod
    ));
    // A freed slot passes the unknown pod by.
    s.on_pod_deleted("u0", now);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
    // Once a shows up it is served at its position, before a later arrival.
    s.on_wait(4, wait("c", Some("uc")), now);
    s.on_pod_upsert(pod("c", "uc"), now);
    s.on_pod_upsert(pod("a", "ua"), now);
    s.on_pod_deleted("ub", now);
    assert_eq!(slot_grants(&s.take_outbox()), [2]);
}

#[test]
fn unknown_pod_policy_decides_after_the_wait() {
    for (policy, want) in [
        (UnknownPodPolicy::Pace, GrantReason::Slot),
        (UnknownPodPolicy::Skip, GrantReason::Skip),
    ] {
        let now = Instant::now();
        let opts = Options {
            unknown_pod_wait: Duration::from_secs(2),
            unknown_pod_policy: policy,
            ..options()
        };
        let mut s = synced_with(opts, limits(1), now);
        s.on_wait(1, wait("ghost", Some("ug")), now);
        assert!(grants(&s.take_outbox()).is_empty());
        let later = now + Duration::from_secs(2);
        assert_eq!(s.next_deadline(now), Some(later));
        s.tick(later);
        assert_eq!(grants(&s.take_outbox()), [(1, want)], "{policy:?}");
    }
    // With no wait at all, the policy decides at once.
    let now = Instant::now();
    let opts = Options {
        unknown_pod_policy: UnknownPodPolicy::Skip,
        ..options()
    };
    let mut s = synced_with(opts, limits(1), now);
    s.on_wait(1, wait("ghost", Some("ug")), now);
    assert_eq!(grants(&s.take_outbox()), [(1, GrantReason::Skip)]);
}

#[test]
fn waiters_of_finished_or_deleted_pods_pass() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, wait("a", Some("ua")), now);
    s.on_wait(3, wait("b", Some("ub")), now);
    s.on_wait(4, wait("c", Some("uc")), now);
    s.take_outbox();
    s.on_pod_upsert(
        PodInfo {
            release: Some(ReleaseReason::Deleting),
            ..pod("a", "ua")
        },
        now,
    );
    s.on_pod_upsert(pod("b", "ub"), now);
    s.on_pod_deleted("ub", now);
    let out = s.take_outbox();
    assert_eq!(
        grants(&out),
        [(2, GrantReason::Skip), (3, GrantReason::Skip)]
    );
    assert_eq!(s.slots.len(), 1);
    assert_eq!(queued_names(&s, now), ["c"]);
}

#[test]
fn rate_limit_spaces_grants_and_wakes_for_the_next_token() {
    let now = Instant::now();
    let rate = Limits {
        max_concurrent: 10,
        rate_limit: Some(RateLimit {
            fill_factor: Duration::from_millis(500),
            burst: 2,
        }),
    };
    let mut s = synced_with(options(), rate, now);
    for i in 1..=4 {
        s.on_wait(i, wait(&format!("p{i}"), Some(&format!("u{i}"))), now);
    }
    assert_eq!(slot_grants(&s.take_outbox()), [1, 2]);
    let next = now + Duration::from_millis(500);
    assert_eq!(s.next_deadline(now), Some(next));
    s.tick(next - Duration::from_millis(1));
    assert!(slot_grants(&s.take_outbox()).is_empty());
    s.tick(next);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
    s.tick(next + Duration::from_millis(500));
    assert_eq!(slot_grants(&s.take_outbox()), [4]);
}

#[test]
fn a_full_node_does_not_spend_rate_tokens() {
    let now = Instant::now();
    let rate = Limits {
        max_concurrent: 1,
        rate_limit: Some(RateLimit {
            fill_factor: Duration::from_secs(60),
            burst: 2,
        }),
    };
    let mut s = synced_with(options(), rate, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    // b is refused by the slot gate many times; each time the token goes back.
    s.on_wait(2, wait("b", Some("ub")), now);
    for i in 0..10 {
        s.tick(now + Duration::from_millis(i));
    }
    s.on_pod_deleted("ua", now);
    assert_eq!(slot_grants(&s.take_outbox()), [1, 2]);
    match s.status(now).last() {
        Some(StatusReply::Summary(sum)) => assert_eq!(sum.rate_tokens, Some(0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn changing_limits_carries_holders_and_waiters_over() {
    let now = Instant::now();
    let mut s = synced(2, now);
    for i in 1..=6 {
        s.on_wait(i, wait(&format!("p{i}"), Some(&format!("u{i}"))), now);
    }
    assert_eq!(slot_grants(&s.take_outbox()), [1, 2]);
    // Raised: the next two in order are granted at once; nobody else moves.
    s.on_reconfigure(limits(4), now);
    let out = s.take_outbox();
    assert_eq!(slot_grants(&out), [3, 4]);
    assert_eq!(positions(&out), [(5, 1), (6, 2)]);
    // Lowered below the holders: nobody is revoked, nobody granted until below the new limit.
    s.on_reconfigure(limits(1), now);
    assert_eq!(s.slots.len(), 4);
    for uid in ["u1", "u2", "u3"] {
        s.on_pod_deleted(uid, now);
        assert!(slot_grants(&s.take_outbox()).is_empty());
    }
    s.on_pod_deleted("u4", now);
    assert_eq!(slot_grants(&s.take_outbox()), [5]);
    // QUEUED lines carry the new limit.
    assert!(s.take_outbox().is_empty());
    let out = {
        s.on_reconfigure(limits(1), now);
        s.take_outbox()
    };
    assert!(out.iter().any(|(c, r)| *c == 6
        && matches!(
            r,
            Ok(Reply::Queued {
                limit: 1,
                position: 1,
                ..
            })
        )));
}

#[test]
fn position_updates_are_coalesced() {
    let now = Instant::now();
    let opts = Options {
        position_interval: Duration::from_secs(1),
        ..options()
    };
    let mut s = synced_with(opts, limits(1), now);
    for i in 1..=4 {
        s.on_wait(i, wait(&format!("p{i}"), Some(&format!("u{i}"))), now);
    }
    assert_eq!(positions(&s.take_outbox()), [(2, 1), (3, 2), (4, 3)]);
    // Two grants within the interval: no update yet, but a wake-up when it is over.
    s.on_pod_deleted("u1", now);
    s.on_pod_deleted("u2", now + Duration::from_millis(100));
    assert!(positions(&s.take_outbox()).is_empty());
    let due = now + Duration::from_secs(1);
    assert_eq!(s.next_deadline(now + Duration::from_millis(100)), Some(due));
    s.tick(due);
    assert_eq!(positions(&s.take_outbox()), [(4, 1)]);
}

#[test]
fn first_list_adopts_started_pods_oldest_first() {
    let now = Instant::now();
    let mut s = Scheduler::new(options(), limits(2), None, now);
    let started = |name: &str, uid: &str, created: &str| PodInfo {
        sandbox_started: true,
        created: created.to_owned(),
        ..pod(name, uid)
    };
    let pods = vec![
        started("young", "u3", "2024-01-03T00:00:00Z"),
        started("old", "u1", "2024-01-01T00:00:00Z"),
        started("middle", "u2", "2024-01-02T00:00:00Z"),
        // Not holders: ready, host network, skipped, excluded namespace, not started.
        PodInfo {
            release: Some(ReleaseReason::Ready),
            ..started("ready", "r", "2024-01-01T00:00:00Z")
        },
        PodInfo {
            host_network: true,
            ..started("host", "h", "2024-01-01T00:00:00Z")
        },
        PodInfo {
            skip: Some(SkipReason::DaemonSet),
            ..started("ds", "d", "2024-01-01T00:00:00Z")
        },
        PodInfo {
            namespace: "kube-system".to_owned(),
            ..started("dns", "k", "2024-01-01T00:00:00Z")
        },
        pod("pending", "p"),
    ];
    assert!(s.on_resync(pods, now));
    assert_eq!(holder_uids(&s), ["u1", "u2", "u3"]);

    // Over the limit: a new pod waits until two holders are gone.
    s.on_wait(1, wait("new", Some("un")), now);
    assert_eq!(positions(&s.take_outbox()), [(1, 1)]);
    s.on_pod_upsert(ready("old", "u1"), now);
    assert!(grants(&s.take_outbox()).is_empty());
    s.on_pod_deleted("u2", now);
    assert_eq!(slot_grants(&s.take_outbox()), [1]);

    // A later relist adopts nothing.
    assert!(!s.on_resync(vec![started("late", "ul", "2024-01-04T00:00:00Z")], now));
    assert!(s.slots.iter().all(|s| s.uid.as_deref() != Some("ul")));
}

/// The state a scheduler would write, read back by the next one `age` later.
fn restart(
    old: &Scheduler,
    at: Instant,
    age: Duration,
    options: Options,
    limit: u32,
    pods: Vec<PodInfo>,
) -> Scheduler {
    let wall = 1_700_000_000_000_000_000;
    let saved = old.snapshot(at, wall);
    let json = serde_json::to_string(&saved).expect("serializes");
    let saved: SavedState = serde_json::from_str(&json).expect("parses");
    let later = at + age;
    let age_ns = u64::try_from(age.as_nanos()).expect("small");
    let mut s = Scheduler::new(
        options,
        limits(limit),
        Some(saved.restore(later, wall + age_ns)),
        later,
    );
    assert!(s.on_resync(pods, later));
    s
}

#[test]
fn restart_keeps_holders_and_serves_reconnecting_waiters_in_their_old_order() {
    let now = Instant::now();
    let mut s = synced(1, now);
    let names: Vec<String> = (0..=10).map(|i| format!("p{i:02}")).collect();
    let pods: Vec<PodInfo> = names.iter().map(|n| pod(n, &format!("u-{n}"))).collect();
    s.on_resync(pods.clone(), now);
    for (i, name) in names.iter().enumerate() {
        let conn = u64::try_from(i).expect("small");
        let t = now + Duration::from_millis(conn);
        s.on_wait(conn, wait(name, Some(&format!("u-{name}"))), t);
    }
    // p00 holds the slot; it has no IP in the API yet, so only the state file knows it holds.
    assert_eq!(holder_uids(&s), ["u-p00"]);
    let at = now + Duration::from_millis(20);

    // The agent dies; the next one starts a second later.
    let mut s = restart(&s, at, Duration::from_secs(1), options(), 1, pods);
    let t = at + Duration::from_secs(1);
    assert_eq!(holder_uids(&s), ["u-p00"]);

    // The plugins reconnect in reverse order, while p00 turns Ready: nobody may pass p01.
    s.on_pod_upsert(ready("p00", "u-p00"), t);
    for (i, name) in names.iter().enumerate().skip(1).rev() {
        let conn = 100 + u64::try_from(i).expect("small");
        s.on_wait(conn, wait(name, Some(&format!("u-{name}"))), t);
        if i > 1 {
            assert!(slot_grants(&s.take_outbox()).is_empty(), "{name}");
        }
    }
    let mut order = slot_grants(&s.take_outbox());
    while order.len() < 10 {
        let uid = s.slots[0].uid.clone().expect("bound");
        s.on_pod_deleted(&uid, t);
        order.extend(slot_grants(&s.take_outbox()));
    }
    assert_eq!(order, (101..=110).collect::<Vec<u64>>());
}

#[test]
fn restart_grace_ends_for_waiters_that_do_not_come_back() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, wait("gone-for-good", Some("ua")), now);
    s.on_wait(3, wait("b", Some("ub")), now + Duration::from_millis(1));
    let at = now + Duration::from_millis(5);
    let mut s = restart(&s, at, Duration::ZERO, options(), 1, Vec::new());
    // The holder was never seen in the API and is kept until its lease.
    assert_eq!(holder_uids(&s), ["u0"]);
    s.on_reconfigure(limits(2), at);
    s.on_wait(13, wait("b", Some("ub")), at);
    assert!(grants(&s.take_outbox()).is_empty(), "b waits for a");
    let status = s.status(at);
    assert!(matches!(&status[1], StatusReply::Waiter(w) if w.state == WaiterState::Absent));
    let end = at + RESTART_GRACE;
    assert_eq!(s.next_deadline(at), Some(end));
    s.tick(end);
    assert_eq!(slot_grants(&s.take_outbox()), [13]);
}

#[test]
fn restart_drops_what_the_pod_list_settled() {
    let now = Instant::now();
    let mut s = synced(3, now);
    let pods = vec![
        pod("a", "ua"),
        pod("b", "ub"),
        pod("c", "uc"),
        pod("d", "ud"),
    ];
    s.on_resync(pods, now);
    for (conn, name) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        s.on_wait(conn, wait(name, Some(&format!("u{name}"))), now);
    }
    s.on_wait(5, wait("e", Some("ue")), now);
    // While the agent is down: a turns Ready, b is deleted, d's waiter gives up and its pod is
    // deleted; c still holds.
    let listed = vec![ready("a", "ua"), pod("c", "uc")];
    let mut s = restart(&s, now, Duration::from_secs(1), options(), 3, listed);
    assert_eq!(holder_uids(&s), ["uc"]);
    // e was never in the API: its position is kept, waiting for it.
    let t = now + Duration::from_secs(1);
    s.on_wait(15, wait("e", Some("ue")), t);
    assert_eq!(slot_grants(&s.take_outbox()), [15]);
}

#[test]
fn an_old_state_file_keeps_positions_without_grace() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("holder", Some("u0")), now);
    s.on_wait(2, wait("a", Some("ua")), now);
    s.on_wait(3, wait("b", Some("ub")), now + Duration::from_millis(1));
    // Restarted long after every plugin's deadline: nobody is waited for.
    let mut s = restart(&s, now, Duration::from_secs(300), options(), 2, Vec::new());
    let t = now + Duration::from_secs(300);
    s.on_wait(13, wait("b", Some("ub")), t);
    assert_eq!(slot_grants(&s.take_outbox()), [13]);
    // a still finds its place when its retry comes.
    s.on_wait(20, wait("c", Some("uc")), t);
    s.on_wait(12, wait("a", Some("ua")), t);
    assert_eq!(queued_names(&s, t), ["a", "c"]);
}

#[test]
fn status_lists_holders_then_the_queue_in_order() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, wait("c", None), now);
    s.on_gone(2, now);
    let later = now + Duration::from_millis(1500);
    let lines = s.status(later);
    assert_eq!(lines.len(), 3);
    assert!(matches!(&lines[0], StatusReply::Holder(h)
        if h.name.as_str() == "a" && h.uid.as_ref().map(Token::as_str) == Some("ua")
            && h.held_ms == 1500));
    assert!(matches!(&lines[1], StatusReply::Waiter(w)
        if w.name.as_str() == "c" && w.uid.is_none() && w.position == 1
            && w.state == WaiterState::Queued));
    assert!(matches!(&lines[2], StatusReply::Summary(sum)
        if sum.holders == 1 && sum.limit == 1 && sum.waiting == 1 && sum.remembered == 1
            && sum.rate_tokens.is_none()));
}

#[test]
fn shutdown_tells_every_waiter_and_keeps_them_for_the_state_file() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_wait(3, wait("c", Some("uc")), now);
    s.take_outbox();
    s.shutdown();
    assert_eq!(
        errors(&s.take_outbox()),
        [(2, ErrorCode::ShuttingDown), (3, ErrorCode::ShuttingDown)]
    );
    let saved = s.snapshot(now, 1);
    assert_eq!(saved.holders.len(), 1);
    assert!(saved.queue.iter().all(|e| e.waiting));
    assert_eq!(saved.queue.len(), 2);
}

#[test]
fn huge_timeout_does_not_overflow() {
    let now = Instant::now();
    let mut s = synced(1, now);
    s.on_wait(1, wait("a", Some("ua")), now);
    let mut request = wait("b", Some("ub"));
    request.timeout_ms = Some(u64::MAX);
    s.on_wait(2, request, now);
    s.tick(now + Duration::from_secs(1));
    assert_eq!(queued_names(&s, now), ["b"]);
}

/// Starts the `agent-sched` thread on a synced scheduler with one slot; `dir` holds its state
/// file. Returns the channel to it and its handle.
fn start_owner_thread(
    dir: &std::path::Path,
    pods: Vec<PodInfo>,
) -> (Sender<SchedMsg>, std::thread::JoinHandle<()>) {
    let state_file = dir.join("agent-state.json");
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let s = Scheduler::new(options(), limits(1), None, Instant::now());
        run(s, &rx, Some(&state_file), || {
            let _ = ready_tx.send(());
        });
    });
    tx.send(SchedMsg::Kube(KubeEvent::Resynced(pods)))
        .expect("send");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("ready after the first list");
    (tx, handle)
}

/// Sends a `WAIT` whose replies the scheduler writes to its end of a socket pair; returns the
/// client's end.
fn send_wait(tx: &Sender<SchedMsg>, conn: ConnId, name: &str, uid: &str) -> BufReader<UnixStream> {
    let (client, agent_side) = UnixStream::pair().expect("socket pair");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tx.send(SchedMsg::Wait {
        conn,
        request: wait(name, Some(uid)),
        replies: Replier::new(&agent_side).expect("replier"),
    })
    .expect("send");
    BufReader::new(client)
}

fn next_reply(client: &mut BufReader<UnixStream>) -> Reply {
    let line = protocol::read_line(client).expect("reads").expect("a line");
    Reply::decode(&line).expect("decodes")
}

/// The position in the next reply, which must be `QUEUED`.
fn queued_position(client: &mut BufReader<UnixStream>) -> u32 {
    match next_reply(client) {
        Reply::Queued { position, .. } => position,
        other => panic!("expected QUEUED, got {other:?}"),
    }
}

/// The owner thread's answer to a `STATUS`.
fn status_lines(tx: &Sender<SchedMsg>) -> Vec<StatusReply> {
    let (status_tx, status_rx) = std::sync::mpsc::channel();
    tx.send(SchedMsg::Status { replies: status_tx })
        .expect("send");
    status_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("status")
}

const GRANTED: Reply = Reply::Granted {
    reason: GrantReason::Slot,
};

#[test]
fn owner_thread_serves_messages_saves_state_and_stops() {
    let dir = std::env::temp_dir().join(format!("ppm-sched-run-{}", std::process::id()));
    let (tx, handle) = start_owner_thread(&dir, Vec::new());
    let mut a = send_wait(&tx, 1, "a", "ua");
    assert_eq!(next_reply(&mut a), GRANTED);
    let mut b = send_wait(&tx, 2, "b", "ub");
    assert_eq!(queued_position(&mut b), 1);

    let lines = status_lines(&tx);
    assert_eq!(lines.len(), 3);

    tx.send(SchedMsg::Shutdown).expect("send");
    assert!(matches!(
        next_reply(&mut b),
        Reply::Error {
            code: ErrorCode::ShuttingDown,
            ..
        }
    ));
    handle.join().expect("thread ends");

    // The state file holds the holder and the waiter.
    let saved = state::load(&dir.join("agent-state.json"))
        .expect("loads")
        .expect("written");
    assert_eq!(saved.holders.len(), 1);
    assert_eq!(saved.queue.len(), 1);
    assert!(saved.queue[0].waiting);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn owner_thread_passes_a_grant_it_cannot_write_to_the_next_waiter() {
    let dir = std::env::temp_dir().join(format!("ppm-sched-undelivered-{}", std::process::id()));
    let pods = vec![pod("h", "uh"), pod("a", "ua"), pod("b", "ub")];
    let (tx, handle) = start_owner_thread(&dir, pods);
    let mut h = send_wait(&tx, 1, "h", "uh");
    assert_eq!(next_reply(&mut h), GRANTED);
    let mut a = send_wait(&tx, 2, "a", "ua");
    assert_eq!(queued_position(&mut a), 1);
    let mut b = send_wait(&tx, 3, "b", "ub");
    assert_eq!(queued_position(&mut b), 2);

    // a's client is gone: whether the scheduler finds the close first or the grant's write
    // fails, the slot goes to b.
    drop(a);
    let mut ready = pod("h", "uh");
    ready.release = Some(ReleaseReason::Ready);
    tx.send(SchedMsg::Kube(KubeEvent::PodUpsert(ready)))
        .expect("send");
    let next = loop {
        match next_reply(&mut b) {
            Reply::Queued { .. } => {}
            other => break other,
        }
    };
    assert_eq!(next, GRANTED);

    let lines = status_lines(&tx);
    let holders: Vec<_> = lines
        .iter()
        .filter_map(|line| match line {
            StatusReply::Holder(holder) => Some(holder.name.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(holders, ["b"]);
    tx.send(SchedMsg::Shutdown).expect("send");
    handle.join().expect("thread ends");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn owner_thread_lets_a_client_that_closed_leave_the_queue() {
    let dir = std::env::temp_dir().join(format!("ppm-sched-closed-{}", std::process::id()));
    let (tx, handle) = start_owner_thread(&dir, vec![pod("h", "uh"), pod("a", "ua")]);
    let mut h = send_wait(&tx, 1, "h", "uh");
    assert_eq!(next_reply(&mut h), GRANTED);
    let mut a = send_wait(&tx, 2, "a", "ua");
    assert_eq!(queued_position(&mut a), 1);
    drop(a);

    // Within a few close checks the waiter is gone and its position remembered.
    let summary = |tx: &Sender<SchedMsg>| {
        let lines = status_lines(tx);
        match lines.last() {
            Some(StatusReply::Summary(summary)) => summary.clone(),
            other => panic!("no summary: {other:?}"),
        }
    };
    let give_up = Instant::now() + 25 * CLOSE_CHECK;
    let mut last = summary(&tx);
    while last.waiting > 0 && Instant::now() < give_up {
        std::thread::sleep(CLOSE_CHECK / 4);
        last = summary(&tx);
    }
    assert_eq!((last.waiting, last.remembered), (0, 1), "{last:?}");
    tx.send(SchedMsg::Shutdown).expect("send");
    handle.join().expect("thread ends");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client's end of a socket pair whose other end the scheduler writes to.
fn client_pair() -> (BufReader<UnixStream>, Replier) {
    let (client, agent_side) = UnixStream::pair().expect("socket pair");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let replier = Replier::new(&agent_side).expect("replier");
    (BufReader::new(client), replier)
}

fn is_busy(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::Error {
            code: ErrorCode::Busy,
            ..
        }
    )
}

#[test]
fn beyond_the_cap_a_client_that_would_wait_is_told_busy_but_one_that_passes_is_not() {
    let now = Instant::now();
    let mut s = synced(1, now);
    let skipped = PodInfo {
        skip: Some(SkipReason::Annotation),
        ..pod("s", "us")
    };
    for p in [pod("h", "uh"), pod("a", "ua"), pod("b", "ub"), skipped] {
        s.on_pod_upsert(p, now);
    }
    let mut clients = Clients::new(now, 1);
    let mut admit = |s: &mut Scheduler, conn, name: &str, uid: &str| {
        let (client, replier) = client_pair();
        clients.admit(s, conn, wait(name, Some(uid)), replier, now);
        client
    };
    // h holds the slot; a waits and fills the one waiting place.
    let mut h = admit(&mut s, 1, "h", "uh");
    assert_eq!(next_reply(&mut h), GRANTED);
    let _a = admit(&mut s, 2, "a", "ua");
    assert_eq!(queued_names(&s, now), ["a"]);

    // b would wait too: busy, and its place is remembered for its retry.
    let mut b = admit(&mut s, 3, "b", "ub");
    assert!(is_busy(&next_reply(&mut b)));
    assert_eq!(queued_names(&s, now), ["a"]);

    // A pod that passes, and the holder's retried ADD, are answered at once all the same.
    let mut skip = admit(&mut s, 4, "s", "us");
    assert_eq!(
        next_reply(&mut skip),
        Reply::Granted {
            reason: GrantReason::Skip
        }
    );
    let mut again = admit(&mut s, 5, "h", "uh");
    assert_eq!(next_reply(&mut again), GRANTED);
}

#[test]
fn wait_for_a_pod_deleted_before_it_asked_passes_without_a_slot() {
    let now = Instant::now();
    let mut s = synced(1, now);
    for (name, uid) in [("q1", "u1"), ("q2", "u2"), ("q3", "u3"), ("q4", "u4")] {
        s.on_pod_upsert(pod(name, uid), now);
    }
    s.on_wait(1, wait("q1", Some("u1")), now);
    // q2 is deleted by a watch event, q4 by its absence from a relist, before their WAITs come.
    s.on_pod_deleted("u2", now);
    s.on_resync(vec![pod("q1", "u1"), pod("q3", "u3")], now);
    s.take_outbox();
    s.on_wait(2, wait("q2", Some("u2")), now);
    s.on_wait(4, wait("q4", Some("u4")), now);
    assert_eq!(
        grants(&s.take_outbox()),
        [(2, GrantReason::Skip), (4, GrantReason::Skip)]
    );
    assert_eq!(holder_uids(&s), ["u1"]);
    assert!(queued_names(&s, now).is_empty());

    // The slot q1 frees goes to q3, the next pod that exists.
    s.on_wait(3, wait("q3", Some("u3")), now);
    s.on_pod_upsert(ready("q1", "u1"), now);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
    assert_eq!(holder_uids(&s), ["u3"]);

    // The deleted UIDs are remembered for a bounded time only.
    s.tick(now + DELETED_MEMORY);
    assert!(s.deleted.is_empty());
}

#[test]
fn waiter_deleted_while_queued_never_holds_a_slot() {
    // The tester's repro: q2 is deleted while it waits behind q1; when q1 is Ready, q3 gets the
    // slot, and nothing is left for the lease to free.
    let now = Instant::now();
    let mut s = synced(1, now);
    for (name, uid) in [("q1", "u1"), ("q2", "u2"), ("q3", "u3")] {
        s.on_pod_upsert(pod(name, uid), now);
    }
    s.on_wait(1, wait("q1", Some("u1")), now);
    s.on_wait(2, wait("q2", Some("u2")), now);
    s.on_pod_deleted("u2", now);
    assert_eq!(
        grants(&s.take_outbox()),
        [(1, GrantReason::Slot), (2, GrantReason::Skip)]
    );
    // A retried ADD of the deleted pod passes too.
    s.on_wait(5, wait("q2", Some("u2")), now);
    assert_eq!(grants(&s.take_outbox()), [(5, GrantReason::Skip)]);
    s.on_pod_upsert(ready("q1", "u1"), now);
    s.on_wait(3, wait("q3", Some("u3")), now);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
    assert_eq!(holder_uids(&s), ["u3"]);
    assert_eq!(s.released, [("u1".to_owned(), ReleaseReason::Ready)]);
}

#[test]
fn holder_of_a_pod_the_api_does_not_know_is_released_once_the_view_is_current() {
    let now = Instant::now();
    let mut s = synced(1, now);
    // Granted although the pod is unknown (the unknown-pod policy paces it); its client then
    // closes after the grant was delivered.
    s.on_wait(1, wait("ghost", Some("ug")), now);
    s.on_wait(2, wait("b", Some("ub")), now);
    s.on_pod_upsert(pod("b", "ub"), now);
    assert_eq!(slot_grants(&s.take_outbox()), [1]);

    // A bookmark within the grace time: the pod may still be on its way.
    s.on_current(now + UNSEEN_HOLDER_GRACE - Duration::from_millis(1));
    assert_eq!(holder_uids(&s), ["ug"]);

    // The view is current after the grace time and the pod is not in it: released.
    let later = now + UNSEEN_HOLDER_GRACE;
    s.on_current(later);
    assert_eq!(s.released, [("ug".to_owned(), ReleaseReason::NotFound)]);
    assert_eq!(slot_grants(&s.take_outbox()), [2]);

    // A relist does the same; a holder whose pod is listed stays.
    s.on_wait(3, wait("ghost2", Some("ug2")), later);
    s.on_pod_upsert(ready("b", "ub"), later);
    assert_eq!(slot_grants(&s.take_outbox()), [3]);
    s.on_resync(vec![pod("c", "uc")], later + UNSEEN_HOLDER_GRACE);
    assert_eq!(
        s.released.last(),
        Some(&("ug2".to_owned(), ReleaseReason::NotFound))
    );
    s.on_wait(4, wait("c", Some("uc")), later + UNSEEN_HOLDER_GRACE);
    s.on_current(later + 3 * UNSEEN_HOLDER_GRACE);
    assert_eq!(holder_uids(&s), ["uc"]);
}
