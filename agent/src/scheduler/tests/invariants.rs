// SPDX-License-Identifier: Apache-2.0
//! The randomized invariant test: many seeds, each a few hundred random steps (arrivals, retries,
//! clients leaving, readiness, failures, deletions, relists, limit changes, agent restarts,
//! time passing) applied to the scheduler exactly as the owner thread would apply them, with the
//! invariants of issue #6 checked after every step against an independent model of the node:
//!
//! - a grant never takes the holders past the limit in force;
//! - FIFO within a priority: no waiter that could be served is passed by one that arrived later
//!   with the same or a lower priority (arrival = the first request for the pod, kept across
//!   retries and restarts);
//! - the rate limit: no window of grants holds more than `burst` plus the tokens the window earns;
//! - nobody is stranded: with a free slot and a token, no servable waiter is left waiting;
//! - every waiter is granted or told it timed out, by its deadline, and gets one final reply;
//! - no slot outlives its pod: no slot for a pod the agent saw deleted, finished or released, or
//!   older than the lease;
//! - the queue stays sorted.
//!
//! The PRNG is written here (xorshift64*), so a failure names the seed and step that reproduce
//! it and no crate is needed. All time is simulated: nothing here sleeps or reads a clock except
//! for the one base instant.

use std::collections::{BTreeMap, HashMap};

use super::*;

/// Seeds and steps: about 60 000 steps in all, well under a second in a debug build.
const SEEDS: u64 = 300;
const STEPS: usize = 200;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        let len = u64::try_from(items.len()).ok()?;
        if len == 0 {
            return None;
        }
        let index = usize::try_from(self.below(len)).ok()?;
        items.get(index).copied()
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max))
    }
}

/// What the API (and so the agent, once told) knows of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Pending,
    Ready,
    ContainerError,
    Deleting,
}

#[derive(Clone, Debug)]
struct ModelPod {
    name: String,
    priority: i32,
    created: String,
    skip: Option<SkipReason>,
    phase: Phase,
    /// The agent has been told about the pod (it is in the API and the watch delivered it).
    in_api: bool,
    /// Deleted from the API.
    gone: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Waiting,
    Granted,
    Skipped,
    Ended,
    Closed,
}

#[derive(Clone, Debug)]
struct ModelConn {
    uid: String,
    /// A retried ADD of a pod that holds a slot: answered at once, outside the queue.
    retry: bool,
    deadline: Option<Instant>,
    /// Until when the agent waits for the pod to appear, if it was unknown at the WAIT.
    unknown_until: Option<Instant>,
    state: ConnState,
}

struct World {
    seed: u64,
    step: usize,
    rng: Rng,
    now: Instant,
    s: Scheduler,
    options: Options,
    limits: Limits,
    pods: BTreeMap<String, ModelPod>,
    conns: BTreeMap<ConnId, ModelConn>,
    next_conn: ConnId,
    next_pod: u64,
    /// The model's queue order: when the agent first saw a request for each pod still queued.
    arrival: HashMap<String, Instant>,
    /// The arrival of pods granted a slot, to put back if the grant is not delivered.
    granted_arrival: HashMap<String, Instant>,
    /// Grant instants since the limits last changed, for the rate check.
    grants: Vec<Instant>,
    /// Conns granted in the last step, whose client may still drop the reply.
    just_granted: Vec<ConnId>,
    /// After a restart: until then, waiters of the old agent may hold their places.
    grace_until: Option<Instant>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let now = Instant::now();
        let options = Options {
            lease: Duration::from_secs(60 + rng.below(240)),
            release_on: ReleaseOn::Ready,
            skip: SkipOptions::default(),
            unknown_pod_wait: rng
                .pick(&[Duration::ZERO, Duration::from_secs(2)])
                .unwrap_or_default(),
            unknown_pod_policy: UnknownPodPolicy::Pace,
            position_interval: rng
                .pick(&[Duration::ZERO, POSITION_INTERVAL])
                .unwrap_or_default(),
            // Longer than any run: a remembered position never expires mid-test, so the model
            // can keep every arrival.
            position_memory: Duration::from_secs(100_000),
            max_remembered: MAX_REMEMBERED,
            max_waiting: MAX_WAITING,
            restart_grace: RESTART_GRACE,
        };
        let limits = random_limits(&mut rng);
        let mut s = Scheduler::new(options.clone(), limits, None, now);
        assert!(s.on_resync(Vec::new(), now));
        Self {
            seed,
            step: 0,
            rng,
            now,
            s,
            options,
            limits,
            pods: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_pod: 1,
            arrival: HashMap::new(),
            granted_arrival: HashMap::new(),
            grants: Vec::new(),
            just_granted: Vec::new(),
            grace_until: None,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {} step {}: {what}\nslots: {:?}\nqueue: {:?}",
            self.seed,
            self.step,
            self.s.slots,
            self.s.queue.iter().collect::<Vec<_>>()
        );
    }

    fn info(&self, uid: &str) -> Option<PodInfo> {
        let p = self.pods.get(uid)?;
        Some(PodInfo {
            uid: uid.to_owned(),
            namespace: "ns".to_owned(),
            name: p.name.clone(),
            created: p.created.clone(),
            mirror_of: None,
            priority: p.priority,
            host_network: false,
            skip: p.skip,
            pace_forced: false,
            sandbox_started: matches!(p.phase, Phase::Ready | Phase::ContainerError),
            started: p.phase == Phase::Ready,
            release: match p.phase {
                Phase::Pending => None,
                Phase::Ready => Some(ReleaseReason::Ready),
                Phase::ContainerError => Some(ReleaseReason::ContainerError),
                Phase::Deleting => Some(ReleaseReason::Deleting),
            },
            release_detail: None,
        })
    }

    fn api_pods(&self) -> Vec<PodInfo> {
        self.pods
            .iter()
            .filter(|(_, p)| p.in_api && !p.gone)
            .filter_map(|(uid, _)| self.info(uid))
            .collect()
    }

    /// The pods holding slots; a slot granted before its pod was seen is keyed by name.
    fn holders(&self) -> Vec<String> {
        self.s
            .slots
            .iter()
            .filter_map(|s| {
                s.uid.clone().or_else(|| {
                    self.pods
                        .iter()
                        .find(|(_, p)| p.name == s.name)
                        .map(|(uid, _)| uid.clone())
                })
            })
            .collect()
    }

    fn waiting_conns(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Waiting)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pods that may ask for a slot: not holding, not done, no client waiting for them now.
    fn idle_pods(&self) -> Vec<&str> {
        let holders = self.holders();
        self.pods
            .iter()
            .filter(|(uid, p)| {
                !p.gone
                    && p.phase == Phase::Pending
                    && !holders.contains(uid)
                    && !self
                        .conns
                        .values()
                        .any(|c| c.uid == **uid && c.state == ConnState::Waiting)
            })
            .map(|(uid, _)| uid.as_str())
            .collect()
    }

    fn new_pod(&mut self, in_api: bool) -> String {
        let n = self.next_pod;
        self.next_pod += 1;
        let uid = format!("u{n}");
        let priority = if self.rng.chance(20) {
            self.rng.pick(&[-1, 100, 1000]).unwrap_or(0)
        } else {
            0
        };
        let skip = if self.rng.chance(5) {
            Some(SkipReason::DaemonSet)
        } else {
            None
        };
        self.pods.insert(
            uid.clone(),
            ModelPod {
                name: format!("p{n}"),
                priority,
                // Distinct creation times in creation order.
                created: format!("2024-01-01T00:{:02}:{:02}Z", n / 60 % 60, n % 60),
                skip,
                phase: Phase::Pending,
                in_api: false,
                gone: false,
            },
        );
        if in_api {
            self.publish(&uid);
        }
        uid
    }

    /// The watch delivers the pod's current state.
    fn publish(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.in_api = true;
        }
        if let Some(info) = self.info(uid) {
            self.s.on_pod_upsert(info, self.now);
            self.after_message();
        }
        if self
            .pods
            .get(uid)
            .is_some_and(|p| p.phase != Phase::Pending)
        {
            self.arrival.remove(uid);
        }
    }

    fn wait(&mut self, uid: &str) {
        let Some(pod) = self.pods.get(uid).cloned() else {
            return;
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let timeout_ms = if self.rng.chance(80) {
            Some(1_000 + self.rng.below(30_000))
        } else {
            None
        };
        let with_uid = pod.in_api || self.rng.chance(80);
        let request = WaitRequest {
            namespace: token("ns"),
            name: token(&pod.name),
            uid: with_uid.then(|| token(uid)),
            timeout_ms,
        };
        let known = self.s.pods.contains_key(uid);
        let retry = self.holders().iter().any(|h| h == uid);
        self.conns.insert(
            conn,
            ModelConn {
                uid: uid.to_owned(),
                retry,
                deadline: timeout_ms.map(|ms| self.now + Duration::from_millis(ms)),
                unknown_until: (!known && !self.options.unknown_pod_wait.is_zero())
                    .then(|| self.now + self.options.unknown_pod_wait),
                state: ConnState::Waiting,
            },
        );
        if !retry && (pod.skip.is_none() || !known) {
            self.arrival.entry(uid.to_owned()).or_insert(self.now);
        }
        self.s.on_wait(conn, request, self.now);
        self.after_message();
    }

    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let uid = c.uid.clone();
        match c.state {
            ConnState::Waiting => c.state = ConnState::Closed,
            // The grant was not delivered: the pod goes back to its old place.
            ConnState::Granted => {
                c.state = ConnState::Closed;
                if let Some(at) = self.granted_arrival.remove(&uid) {
                    self.arrival.insert(uid, at);
                }
            }
            _ => return,
        }
        self.s.on_gone(conn, self.now);
        self.after_message();
    }

    fn set_phase(&mut self, uid: &str, phase: Phase) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.phase = phase;
        }
        if self.pods.get(uid).is_some_and(|p| p.in_api && !p.gone) {
            self.publish(uid);
        }
    }

    fn delete(&mut self, uid: &str, tell: bool) {
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        let was_known = p.in_api && !p.gone;
        p.gone = true;
        self.arrival.remove(uid);
        if tell && was_known {
            self.s.on_pod_deleted(uid, self.now);
            self.after_message();
        }
    }

    fn restart(&mut self) {
        // The old agent dies; its clients' connections die with it.
        let wall = 1_700_000_000_000_000_000;
        let saved = self.s.snapshot(self.now, wall);
        let pause = self.rng.millis(3_000) + Duration::from_millis(1);
        self.now += pause;
        let pause_ns = u64::try_from(pause.as_nanos()).unwrap_or(0);
        let restored = saved.restore(self.now, wall + pause_ns);
        self.s = Scheduler::new(self.options.clone(), self.limits, Some(restored), self.now);
        let pods = self.api_pods();
        assert!(self.s.on_resync(pods, self.now));
        self.grace_until = Some(self.now + self.options.restart_grace);
        self.grants.clear();
        self.just_granted.clear();
        let lost: Vec<ConnId> = self.waiting_conns();
        for conn in lost {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.state = ConnState::Ended;
            }
        }
    }

    /// What the owner thread does after every message: tick, then deliver the replies (here:
    /// read and check them).
    fn after_message(&mut self) {
        self.s.tick(self.now);
        self.take_replies();
    }

    /// Reads the replies of a step into the model and checks each against the rules.
    fn take_replies(&mut self) {
        let out = self.s.take_outbox();
        let mut granted_now = Vec::new();
        for (conn, reply) in out {
            let Some(c) = self.conns.get(&conn).cloned() else {
                self.fail(&format!("reply to unknown conn {conn}"));
            };
            if c.state != ConnState::Waiting {
                self.fail(&format!(
                    "reply {reply:?} to conn {conn} in state {:?}",
                    c.state
                ));
            }
            match reply {
                Ok(Reply::Queued { position, .. }) => {
                    if position == 0 {
                        self.fail("QUEUED position 0");
                    }
                }
                Ok(Reply::Granted {
                    reason: GrantReason::Slot,
                }) => {
                    granted_now.push(conn);
                }
                Ok(Reply::Granted {
                    reason: GrantReason::Skip,
                }) => {
                    self.arrival.remove(&c.uid);
                    self.set_conn(conn, ConnState::Skipped);
                }
                Ok(other) => self.fail(&format!("unexpected reply {other:?}")),
                Err(AgentError::WaitExpired { .. }) => {
                    if c.deadline.is_none_or(|d| self.now < d) {
                        self.fail(&format!("conn {conn} timed out before its deadline"));
                    }
                    self.set_conn(conn, ConnState::Ended);
                }
                Err(AgentError::Superseded) => self.set_conn(conn, ConnState::Ended),
                Err(err) => self.fail(&format!("unexpected error {err}")),
            }
        }

        // Grants: each is checked against the limit, the queue order and the rate.
        let limit = usize::try_from(self.limits.max_concurrent.max(1)).unwrap_or(usize::MAX);
        let new_grants = granted_now
            .iter()
            .any(|c| self.conns.get(c).is_some_and(|c| !c.retry));
        if new_grants && self.s.slots.len() > limit {
            self.fail(&format!(
                "{} holders after a grant, limit {}",
                self.s.slots.len(),
                self.limits.max_concurrent
            ));
        }
        for conn in &granted_now {
            self.check_fifo(*conn, &granted_now);
        }
        for conn in granted_now {
            let Some(c) = self.conns.get(&conn).cloned() else {
                continue;
            };
            let uid = c.uid;
            if !c.retry {
                self.grants.push(self.now);
            }
            if let Some(at) = self.arrival.remove(&uid) {
                self.granted_arrival.insert(uid.clone(), at);
            }
            self.set_conn(conn, ConnState::Granted);
            self.just_granted.push(conn);
        }
        self.check_rate();
    }

    fn set_conn(&mut self, conn: ConnId, state: ConnState) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = state;
        }
    }

    /// The order the rules give a queued pod: higher priority, then earlier first request, then
    /// older pod, as far as the agent has been told about the pod (its cache is the record of
    /// what the watch delivered).
    fn order(&self, uid: &str) -> Option<(i64, Instant, bool, String)> {
        let arrival = *self.arrival.get(uid)?;
        let (priority, created) = self
            .s
            .pods
            .get(uid)
            .map_or((0, String::new()), |p| (p.priority, p.created.clone()));
        Some((-i64::from(priority), arrival, created.is_empty(), created))
    }

    /// Whether a waiting conn could be served now.
    fn servable(&self, conn: &ModelConn) -> bool {
        let Some(pod) = self.pods.get(&conn.uid) else {
            return false;
        };
        let known = self.s.pods.contains_key(&conn.uid);
        let unknown_wait_over = conn.unknown_until.is_none_or(|u| self.now >= u);
        conn.state == ConnState::Waiting
            && !conn.retry
            && (known || unknown_wait_over)
            && !(known && pod.skip.is_some())
            && conn.deadline.is_none_or(|d| self.now < d)
    }

    fn check_fifo(&self, granted: ConnId, batch: &[ConnId]) {
        if self.grace_until.is_some_and(|g| self.now < g) {
            return;
        }
        let Some(g) = self.conns.get(&granted).filter(|g| !g.retry) else {
            return;
        };
        let Some(mine) = self.order(&g.uid) else {
            // A retried ADD of a holder: no queue position involved.
            return;
        };
        for (id, other) in &self.conns {
            if *id == granted || batch.contains(id) || other.uid == g.uid || !self.servable(other) {
                continue;
            }
            if let Some(theirs) = self.order(&other.uid) {
                if theirs < mine {
                    self.fail(&format!(
                        "conn {granted} ({}, {mine:?}) granted before conn {id} ({}, {theirs:?})",
                        g.uid, other.uid
                    ));
                }
            }
        }
    }

    fn check_rate(&self) {
        let Some(rate) = self.limits.rate_limit else {
            return;
        };
        let fill = rate.fill_factor.as_nanos().max(1);
        let n = self.grants.len();
        for i in 0..n {
            let window = self.grants[n - 1].saturating_duration_since(self.grants[i]);
            let allowed = u128::from(rate.burst) + window.as_nanos() / fill;
            let count = u128::try_from(n - i).unwrap_or(u128::MAX);
            if count > allowed {
                self.fail(&format!(
                    "{count} grants within {window:?}; rate allows {allowed}"
                ));
            }
        }
    }

    /// Invariants of the state after a step.
    fn check_state(&self) {
        if !self.s.queue.is_sorted() {
            self.fail("queue out of order");
        }
        let mut uids: Vec<&str> = self
            .s
            .queue
            .iter()
            .filter_map(|e| e.uid.as_deref())
            .collect();
        uids.sort_unstable();
        if uids.windows(2).any(|w| w[0] == w[1]) {
            self.fail("two queue entries for one pod");
        }
        // No slot outlives its pod, nor its lease.
        for slot in &self.s.slots {
            if self.now.saturating_duration_since(slot.since) >= self.options.lease {
                self.fail("slot older than the lease");
            }
            let Some(uid) = &slot.uid else { continue };
            let Some(pod) = self.pods.get(uid) else {
                continue;
            };
            if !pod.in_api {
                continue;
            }
            if pod.gone && slot.seen {
                // Deleted without the agent being told (watch down) is allowed until a relist.
                if self.s.pods.contains_key(uid) {
                    continue;
                }
                self.fail(&format!("slot of deleted pod {uid}"));
            }
            if !pod.gone && pod.phase != Phase::Pending {
                self.fail(&format!("slot of released pod {uid} ({:?})", pod.phase));
            }
        }
        // Every waiter is answered by its deadline.
        for (id, c) in &self.conns {
            if c.state == ConnState::Waiting && c.deadline.is_some_and(|d| self.now >= d) {
                self.fail(&format!("conn {id} still waiting past its deadline"));
            }
        }
        // Nobody is stranded: a free slot and a token mean no servable waiter waits.
        if self.grace_until.is_some_and(|g| self.now < g) {
            return;
        }
        let limit = usize::try_from(self.limits.max_concurrent.max(1)).unwrap_or(usize::MAX);
        let free = self.s.slots.len() < limit;
        let token = self
            .s
            .gates
            .rate_status(self.now)
            .is_none_or(|(tokens, _)| tokens > 0);
        if free && token {
            if let Some((id, _)) = self.conns.iter().find(|(_, c)| self.servable(c)) {
                self.fail(&format!("conn {id} stranded with a free slot"));
            }
        }
    }

    /// One random step, then the owner thread's tick and the checks.
    fn step(&mut self) {
        self.now += Duration::from_millis(1) + self.rng.millis(400);
        let last_granted = std::mem::take(&mut self.just_granted);
        match self.rng.below(100) {
            // A new pod asks for a slot (known to the agent, or not yet).
            0..=24 => {
                let in_api = self.rng.chance(85);
                let uid = self.new_pod(in_api);
                self.wait(&uid);
            }
            // A pod that is not waiting asks (again): a retry after a timeout or a close.
            25..=34 => {
                let idle: Vec<String> = self.idle_pods().into_iter().map(str::to_owned).collect();
                let index = usize::try_from(self.rng.below(idle.len() as u64)).unwrap_or(0);
                if let Some(uid) = idle.get(index).cloned() {
                    self.wait(&uid);
                }
            }
            // A holder asks again (a retried ADD after its grant got lost elsewhere).
            35..=37 => {
                let holders = self.holders();
                if let Some(uid) = holders.first().cloned() {
                    if self.pods.get(&uid).is_some_and(|p| !p.gone) {
                        self.wait(&uid);
                    }
                }
            }
            // A waiting client closes.
            38..=44 => {
                let waiting = self.waiting_conns();
                if let Some(conn) = self.rng.pick(&waiting) {
                    self.close(conn);
                }
            }
            // A grant of the last step was not delivered.
            45..=47 => {
                if let Some(conn) = self.rng.pick(&last_granted) {
                    self.close(conn);
                }
            }
            // A holder turns Ready, or its container cannot start.
            48..=62 => {
                let holders = self.holders();
                let index = usize::try_from(self.rng.below(holders.len() as u64)).unwrap_or(0);
                if let Some(uid) = holders.get(index).cloned() {
                    let phase = if self.rng.chance(80) {
                        Phase::Ready
                    } else {
                        Phase::ContainerError
                    };
                    self.set_phase(&uid, phase);
                }
            }
            // A pod the agent has not seen shows up.
            63..=67 => {
                let late: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(_, p)| !p.in_api && !p.gone)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                if let Some(uid) = late.first().cloned() {
                    self.publish(&uid);
                }
            }
            // A pod is deleted (or starts being deleted), told or not.
            68..=72 => {
                let uids: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(_, p)| !p.gone)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                let index = usize::try_from(self.rng.below(uids.len() as u64)).unwrap_or(0);
                if let Some(uid) = uids.get(index).cloned() {
                    match self.rng.below(3) {
                        0 => self.set_phase(&uid, Phase::Deleting),
                        1 => self.delete(&uid, true),
                        _ => self.delete(&uid, false),
                    }
                }
            }
            // A relist.
            73..=76 => {
                let pods = self.api_pods();
                self.s.on_resync(pods, self.now);
                self.after_message();
            }
            // Time passes.
            77..=88 => {
                self.now += self.rng.millis(20_000);
            }
            // The limits change.
            89..=93 => {
                self.limits = random_limits(&mut self.rng);
                self.grants.clear();
                self.s.on_reconfigure(self.limits, self.now);
                self.after_message();
            }
            // The agent restarts.
            94..=96 => self.restart(),
            // The plugins of a restart reconnect.
            _ => {
                let ended: Vec<String> = self
                    .conns
                    .values()
                    .filter(|c| c.state == ConnState::Ended)
                    .map(|c| c.uid.clone())
                    .collect();
                for uid in ended {
                    if self.idle_pods().contains(&uid.as_str()) && self.rng.chance(70) {
                        self.wait(&uid);
                    }
                }
            }
        }
        self.s.tick(self.now);
        self.take_replies();
        if self.grace_until.is_some_and(|g| self.now >= g) {
            self.grace_until = None;
        }
        self.check_state();
    }

    /// The end: everything the agent holds turns Ready, time passes; every waiter must end.
    fn drain(&mut self) {
        let late: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| !p.in_api && !p.gone)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in late {
            self.publish(&uid);
        }
        for _ in 0..10_000 {
            if self.waiting_conns().is_empty() {
                return;
            }
            self.step += 1;
            for uid in self.holders() {
                self.set_phase(&uid, Phase::Ready);
            }
            self.take_replies();
            self.now += Duration::from_millis(500);
            self.s.tick(self.now);
            self.take_replies();
            if self.grace_until.is_some_and(|g| self.now >= g) {
                self.grace_until = None;
            }
            self.check_state();
        }
        self.fail(&format!("waiters never ended: {:?}", self.waiting_conns()));
    }
}

fn random_limits(rng: &mut Rng) -> Limits {
    let max_concurrent = u32::try_from(1 + rng.below(4)).unwrap_or(1);
    let rate_limit = rng.chance(30).then(|| RateLimit {
        fill_factor: Duration::from_millis(100 + rng.below(2_000)),
        burst: u32::try_from(1 + rng.below(3)).unwrap_or(1),
    });
    Limits {
        max_concurrent,
        rate_limit,
    }
}

#[test]
fn invariants_hold_under_random_steps() {
    for seed in 1..=SEEDS {
        let mut world = World::new(seed);
        for step in 0..STEPS {
            world.step = step;
            world.step();
        }
        world.drain();
    }
}
