// SPDX-License-Identifier: Apache-2.0
//! Start slots: who holds one, who waits for one, and when a slot is freed.
//!
//! [`Scheduler`] is the pure logic and owns all pacing state: the pod cache, the slots and the
//! FIFO queue of waiters. It does no I/O; every method takes the current [`Instant`] and leaves
//! its replies in an outbox, so the tests drive it step by step. [`run`] is the body of the
//! `agent-sched` thread, the single owner of that state: connection threads and the watch thread
//! talk to it only through [`SchedMsg`] on one `mpsc` channel, and it wakes on its own for lease
//! and wait deadlines.
//!
//! Rules, in the order they are applied to a `WAIT`:
//!
//! 1. The pod is identified by the UID the plugin sends. Without one, the agent looks the pod up
//!    in its cache by namespace and name (the newest such pod that is not being deleted). If the
//!    pod is not in the cache yet (the watch lags the kubelet by a moment), the waiter, and the
//!    slot it may get, are keyed by namespace and name, and are bound to the UID as soon as a pod
//!    of that name that is not being deleted appears.
//! 2. A pod the agent does not pace (annotation `pod-pacemaker/skip: "true"`, or owned by a
//!    DaemonSet) is granted at once with `reason=skip` and takes no slot. A pod granted a slot
//!    before it was known, that turns out to be such a pod, gives its slot back.
//! 3. A pod that holds a slot already (a retried ADD) is granted again at once, without a second
//!    slot.
//! 4. A second WAIT for a pod that is queued takes the first one's place in the queue; the first
//!    gets an error (its client has given up in all likelihood).
//! 5. Otherwise the waiter joins the back of the queue. Slots are granted strictly in arrival
//!    order, and each freed slot wakes exactly one waiter.
//!
//! Slots are keyed by pod UID, so a pod that reuses an old pod's name (a StatefulSet) never
//! shares or frees the old pod's slot (FIELD.md W10). A slot is released when the pod is Ready,
//! Failed or Succeeded, is being deleted or is gone, has a container that cannot start, or when
//! its lease runs out; each release logs one `release pod=... uid=... reason=...` line.
//!
//! When the agent starts, the first pod list rebuilds the holders before the socket is served:
//! every pod of the node whose sandbox exists (it has an IP or container statuses) and that no
//! release rule frees counts as a holder, oldest first, with a fresh lease. That may be more than
//! the limit; no slot is granted until enough of them are released. So an agent restart never
//! admits a new batch on top of pods still warming up (FIELD.md W8).

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use log::{debug, info};
use pod_pacemaker::protocol::{GrantReason, Reply, WaitRequest};

use crate::error::AgentError;
use crate::kube::KubeEvent;
use crate::pod::{PodInfo, ReleaseReason};

/// Identifies one client connection.
pub type ConnId = u64;

/// What the scheduler sends a connection: a reply line, or an error the connection turns into
/// an `ERROR` line.
pub type ConnReply = Result<Reply, AgentError>;

/// The messages the scheduler thread receives.
#[derive(Debug)]
pub enum SchedMsg {
    /// A change to the node's pods.
    Kube(KubeEvent),
    /// A client's `WAIT`; replies go to `replies` until a final one.
    Wait {
        conn: ConnId,
        request: WaitRequest,
        replies: Sender<ConnReply>,
    },
    /// The connection ended without delivering a final reply: its client closed while waiting,
    /// or writing a reply failed. A slot just granted to it is released.
    Gone { conn: ConnId },
    /// The agent is stopping: every waiter gets `ERROR code=shutting-down`, then the thread ends.
    Shutdown,
}

/// The longest the scheduler thread sleeps without a message or a deadline.
const IDLE_WAKEUP: Duration = Duration::from_secs(60);

/// Runs the scheduler until [`SchedMsg::Shutdown`] or until every sender is gone. `on_ready` is
/// called once, after the first pod list has been applied (holders rebuilt).
pub fn run(mut scheduler: Scheduler, messages: &Receiver<SchedMsg>, mut on_ready: impl FnMut()) {
    let mut conns: HashMap<ConnId, Sender<ConnReply>> = HashMap::new();
    loop {
        // 1. Sleep until a message arrives or the next deadline passes.
        let now = Instant::now();
        let wait = scheduler
            .next_deadline()
            .map_or(IDLE_WAKEUP, |d| d.saturating_duration_since(now))
            .min(IDLE_WAKEUP);
        let message = match messages.recv_timeout(wait) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(SchedMsg::Shutdown),
        };

        // 2. Apply it.
        let now = Instant::now();
        let mut stop = false;
        match message {
            Some(SchedMsg::Kube(KubeEvent::Resynced(pods))) => {
                let first = scheduler.on_resync(pods, now);
                if first {
                    on_ready();
                }
            }
            Some(SchedMsg::Kube(KubeEvent::PodUpsert(pod))) => scheduler.on_pod_upsert(pod, now),
            Some(SchedMsg::Kube(KubeEvent::PodDeleted(uid))) => {
                scheduler.on_pod_deleted(&uid, now);
            }
            Some(SchedMsg::Wait {
                conn,
                request,
                replies,
            }) => {
                conns.insert(conn, replies);
                scheduler.on_wait(conn, request, now);
            }
            Some(SchedMsg::Gone { conn }) => {
                conns.remove(&conn);
                scheduler.on_gone(conn, now);
            }
            Some(SchedMsg::Shutdown) => {
                scheduler.shutdown();
                stop = true;
            }
            None => {}
        }
        if !stop {
            scheduler.tick(now);
        }

        // 3. Deliver the replies. A failed send means the connection thread has left; its `Gone`
        //    is on the way.
        for (conn, reply) in scheduler.take_outbox() {
            let last = reply.as_ref().map_or(true, Reply::is_final);
            if let Some(replies) = conns.get(&conn) {
                let _ = replies.send(reply);
            }
            if last {
                conns.remove(&conn);
            }
        }
        if stop {
            return;
        }
    }
}

/// All pacing state of the node; see the module docs for the rules.
#[derive(Debug)]
pub struct Scheduler {
    // TODO(#6): a rate limit, and a limit per CPU core, next to this fixed count.
    limit: usize,
    lease: Duration,
    /// The node's pods by UID, as of the last list and watch event.
    pods: HashMap<String, PodInfo>,
    /// Holders, in grant order.
    slots: Vec<Slot>,
    /// Waiters, first come first.
    queue: VecDeque<Waiter>,
    /// Whether the first pod list has been applied.
    synced: bool,
    outbox: Vec<(ConnId, ConnReply)>,
    /// Every release, for the tests.
    #[cfg(test)]
    released: Vec<(String, ReleaseReason)>,
}

/// A held slot.
#[derive(Debug)]
struct Slot {
    /// `None` until a pod of this namespace and name shows up (a WAIT without UID for a pod not
    /// in the cache yet).
    uid: Option<String>,
    namespace: String,
    name: String,
    since: Instant,
    /// The connection it was granted to; `None` for holders adopted at start.
    via: Option<ConnId>,
    /// Whether the pod has been in the cache while holding the slot. Only such slots are released
    /// when a relist no longer shows the pod; an unseen one may just be ahead of the watch.
    seen: bool,
}

/// A queued WAIT.
#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    uid: Option<String>,
    namespace: String,
    name: String,
    arrived: Instant,
    deadline: Option<Instant>,
    timeout_ms: u64,
    /// The last position sent in a QUEUED line; 0 before the first.
    reported: u32,
}

impl Scheduler {
    /// A scheduler with `limit` slots (at least 1) that releases a slot `lease` after its grant
    /// at the latest.
    pub fn new(limit: u32, lease: Duration) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX).max(1),
            lease,
            pods: HashMap::new(),
            slots: Vec::new(),
            queue: VecDeque::new(),
            synced: false,
            outbox: Vec::new(),
            #[cfg(test)]
            released: Vec::new(),
        }
    }

    /// A client waits for a slot for a pod.
    pub fn on_wait(&mut self, conn: ConnId, request: WaitRequest, now: Instant) {
        let namespace = request.namespace.as_str().to_owned();
        let name = request.name.as_str().to_owned();

        // 1. Which pod: the UID given (or the mirror pod of the static pod it names), else the
        //    cache's pod of that name.
        let uid = match &request.uid {
            Some(uid) => Some(self.api_uid(uid.as_str())),
            None => self.resolve_uid(&namespace, &name),
        };
        debug!(
            "wait pod={namespace}/{name} uid={} conn={conn} timeout_ms={:?}",
            uid.as_deref().unwrap_or("-"),
            request.timeout_ms
        );

        // 2. A pod the agent does not pace passes at once.
        if let Some(pod) = uid.as_ref().and_then(|u| self.pods.get(u)) {
            if let Some(skip) = pod.skip {
                info!(
                    "grant pod={namespace}/{name} uid={} reason=skip skip={skip}",
                    pod.uid
                );
                self.reply(conn, granted(GrantReason::Skip));
                return;
            }
        }

        // 3. A pod that holds a slot already gets it again at once (a retried ADD).
        if let Some(slot) = self.slots.iter_mut().find(|s| {
            same_pod(
                &s.uid,
                &s.namespace,
                &s.name,
                uid.as_deref(),
                &namespace,
                &name,
            )
        }) {
            if slot.uid.is_none() {
                slot.uid.clone_from(&uid);
            }
            info!(
                "grant pod={namespace}/{name} uid={} reason=slot retried=true",
                slot.uid.as_deref().unwrap_or("-")
            );
            self.reply(conn, granted(GrantReason::Slot));
            return;
        }

        // 4. A newer WAIT for a queued pod takes the older one's place; else join the queue.
        let deadline = request
            .timeout_ms
            .and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        let timeout_ms = request.timeout_ms.unwrap_or(0);
        let queued = self.queue.iter_mut().find(|w| {
            same_pod(
                &w.uid,
                &w.namespace,
                &w.name,
                uid.as_deref(),
                &namespace,
                &name,
            )
        });
        if let Some(waiter) = queued {
            let old = std::mem::replace(&mut waiter.conn, conn);
            if waiter.uid.is_none() {
                waiter.uid.clone_from(&uid);
            }
            waiter.deadline = deadline;
            waiter.timeout_ms = timeout_ms;
            waiter.reported = 0;
            debug!("wait pod={namespace}/{name} conn={conn} replaces conn={old} in the queue");
            self.outbox.push((old, Err(AgentError::Superseded)));
        } else {
            self.queue.push_back(Waiter {
                conn,
                uid,
                namespace,
                name,
                arrived: now,
                deadline,
                timeout_ms,
                reported: 0,
            });
        }

        // 5. Grant what is free, tell the rest where they stand.
        self.grant_free_slots(now);
    }

    /// A connection ended without delivering its final reply.
    // TODO(#6): remember the position of a waiter that leaves, so that the runtime's retry of the
    // same pod re-enters where it was instead of at the back (FIELD.md W9).
    pub fn on_gone(&mut self, conn: ConnId, now: Instant) {
        let before = self.queue.len();
        self.queue.retain(|w| w.conn != conn);
        if self.queue.len() != before {
            debug!("waiter conn={conn} left the queue");
        }
        self.release_where(ReleaseReason::Undelivered, |s| s.via == Some(conn));
        self.grant_free_slots(now);
    }

    /// A pod was added or changed.
    pub fn on_pod_upsert(&mut self, pod: PodInfo, now: Instant) {
        self.apply_pod(&pod);
        self.pods.insert(pod.uid.clone(), pod);
        self.grant_free_slots(now);
    }

    /// The pod with `uid` was deleted.
    pub fn on_pod_deleted(&mut self, uid: &str, now: Instant) {
        self.pods.remove(uid);
        self.release_where(ReleaseReason::Deleted, |s| s.uid.as_deref() == Some(uid));
        self.grant_free_slots(now);
    }

    /// A full pod list replaced the cache. Returns `true` for the first one, after which the agent
    /// is ready to serve.
    pub fn on_resync(&mut self, pods: Vec<PodInfo>, now: Instant) -> bool {
        // 1. Pods no longer listed were deleted while the watch was down.
        let listed: HashMap<String, PodInfo> =
            pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        self.release_where(ReleaseReason::Deleted, |s| {
            s.seen && s.uid.as_ref().is_some_and(|u| !listed.contains_key(u))
        });

        // 2. Every listed pod is applied as if it had just changed.
        for pod in listed.values() {
            self.apply_pod(pod);
        }
        self.pods = listed;

        // 3. The first list rebuilds the holders.
        let first = !self.synced;
        if first {
            self.adopt_started_pods(now);
            self.synced = true;
        }
        self.grant_free_slots(now);
        first
    }

    /// Releases expired leases and forgets waiters whose time is up.
    pub fn tick(&mut self, now: Instant) {
        let lease = self.lease;
        self.release_where(ReleaseReason::Lease, |s| {
            now.saturating_duration_since(s.since) >= lease
        });
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for waiter in std::mem::take(&mut self.queue) {
            if waiter.deadline.is_some_and(|d| now >= d) {
                self.expire(waiter);
            } else {
                kept.push_back(waiter);
            }
        }
        self.queue = kept;
        self.grant_free_slots(now);
    }

    /// Tells every waiter that the agent is stopping.
    pub fn shutdown(&mut self) {
        for waiter in std::mem::take(&mut self.queue) {
            self.outbox
                .push((waiter.conn, Err(AgentError::ShuttingDown)));
        }
    }

    /// When [`Scheduler::tick`] has something to do next: a lease or a wait deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let leases = self
            .slots
            .iter()
            .filter_map(|s| s.since.checked_add(self.lease));
        let waits = self.queue.iter().filter_map(|w| w.deadline);
        leases.chain(waits).min()
    }

    /// The replies produced since the last call, in order.
    pub fn take_outbox(&mut self) -> Vec<(ConnId, ConnReply)> {
        std::mem::take(&mut self.outbox)
    }

    /// The API UID for a UID the runtime passed: the same, unless it is the UID of a static pod
    /// whose mirror pod is in the cache.
    fn api_uid(&self, uid: &str) -> String {
        if self.pods.contains_key(uid) {
            return uid.to_owned();
        }
        self.pods
            .values()
            .find(|p| p.mirror_of.as_deref() == Some(uid))
            .map_or_else(|| uid.to_owned(), |p| p.uid.clone())
    }

    /// The UID of the newest cached pod with this name that is not being deleted.
    fn resolve_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.pods
            .values()
            .filter(|p| p.namespace == namespace && p.name == name && !p.is_deleting())
            .max_by(|a, b| a.created.cmp(&b.created))
            .map(|p| p.uid.clone())
    }

    /// Applies what a pod's current state means for the slots and waiters.
    fn apply_pod(&mut self, pod: &PodInfo) {
        // 1. Bind slots and waiters that wait for this name to learn their UID, and those keyed by
        //    the static pod UID of this mirror pod. A pod being deleted is an old instance, not the
        //    one starting.
        if !pod.is_deleting() {
            let unbound_slots = self
                .slots
                .iter_mut()
                .map(|s| (&mut s.uid, &s.namespace, &s.name));
            let unbound_waiters = self
                .queue
                .iter_mut()
                .map(|w| (&mut w.uid, &w.namespace, &w.name));
            for (uid, namespace, name) in unbound_slots.chain(unbound_waiters) {
                let by_name = uid.is_none() && *namespace == pod.namespace && *name == pod.name;
                // A static pod's UID, which the runtime passes, becomes its mirror pod's.
                let by_mirror = pod.mirror_of.is_some() && *uid == pod.mirror_of;
                if by_name || by_mirror {
                    *uid = Some(pod.uid.clone());
                }
            }
        }

        // 2. Waiters for a pod the agent does not pace pass now.
        if let Some(skip) = pod.skip {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            for waiter in std::mem::take(&mut self.queue) {
                if waiter.uid.as_deref() == Some(pod.uid.as_str()) {
                    info!(
                        "grant pod={} uid={} reason=skip skip={skip}",
                        pod.full_name(),
                        pod.uid
                    );
                    self.reply(waiter.conn, granted(GrantReason::Skip));
                } else {
                    kept.push_back(waiter);
                }
            }
            self.queue = kept;
        }

        // 3. The pod's slot, if it holds one: release it if a rule says so.
        let mine = |s: &Slot| s.uid.as_deref() == Some(pod.uid.as_str());
        for slot in self.slots.iter_mut().filter(|s| mine(s)) {
            slot.seen = true;
        }
        let reason = if pod.skip.is_some() {
            Some(ReleaseReason::Skip)
        } else {
            pod.release
        };
        if let Some(reason) = reason {
            if let Some(detail) = pod
                .release_detail
                .as_ref()
                .filter(|_| self.slots.iter().any(mine))
            {
                debug!("pod={} uid={} {detail}", pod.full_name(), pod.uid);
            }
            self.release_where(reason, mine);
        }
    }

    /// Counts the started pods of the node as holders, oldest first (see the module docs).
    // TODO(#6): the queue order itself is lost on a restart: waiters that reconnect queue in the
    // order they reconnect, not the order they first arrived.
    fn adopt_started_pods(&mut self, now: Instant) {
        let mut started: Vec<&PodInfo> = self
            .pods
            .values()
            .filter(|p| {
                p.sandbox_started && !p.host_network && p.skip.is_none() && p.release.is_none()
            })
            .filter(|p| {
                !self
                    .slots
                    .iter()
                    .any(|s| s.uid.as_deref() == Some(p.uid.as_str()))
            })
            .collect();
        started.sort_by(|a, b| {
            (a.created.as_str(), a.namespace.as_str(), a.name.as_str()).cmp(&(
                b.created.as_str(),
                b.namespace.as_str(),
                b.name.as_str(),
            ))
        });
        let adopted: Vec<Slot> = started
            .into_iter()
            .map(|pod| {
                info!(
                    "adopt pod={} uid={} created={}",
                    pod.full_name(),
                    pod.uid,
                    pod.created
                );
                Slot {
                    uid: Some(pod.uid.clone()),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    since: now,
                    via: None,
                    seen: true,
                }
            })
            .collect();
        info!(
            "rebuilt holders from the pod list: {} of {} slots held",
            adopted.len(),
            self.limit
        );
        self.slots.extend(adopted);
    }

    /// Grants free slots to the head of the queue, one waiter per slot, then sends the remaining
    /// waiters their new positions.
    fn grant_free_slots(&mut self, now: Instant) {
        while self.slots.len() < self.limit {
            let Some(waiter) = self.queue.pop_front() else {
                break;
            };
            if waiter.deadline.is_some_and(|d| now >= d) {
                self.expire(waiter);
                continue;
            }
            let seen = waiter
                .uid
                .as_ref()
                .is_some_and(|u| self.pods.contains_key(u));
            let priority = waiter
                .uid
                .as_ref()
                .and_then(|u| self.pods.get(u))
                .map_or(0, |p| p.priority);
            self.slots.push(Slot {
                uid: waiter.uid,
                namespace: waiter.namespace,
                name: waiter.name,
                since: now,
                via: Some(waiter.conn),
                seen,
            });
            if let Some(slot) = self.slots.last() {
                info!(
                    "grant pod={}/{} uid={} reason=slot waited_ms={} holders={}/{} priority={priority}",
                    slot.namespace,
                    slot.name,
                    slot.uid.as_deref().unwrap_or("-"),
                    now.saturating_duration_since(waiter.arrived).as_millis(),
                    self.slots.len(),
                    self.limit
                );
            }
            self.reply(waiter.conn, granted(GrantReason::Slot));
        }
        self.report_positions();
    }

    /// Sends QUEUED to every waiter whose position changed since it was last told.
    fn report_positions(&mut self) {
        let holders = count(self.slots.len());
        let limit = count(self.limit);
        for (index, waiter) in self.queue.iter_mut().enumerate() {
            let position = count(index + 1);
            if waiter.reported != position {
                waiter.reported = position;
                self.outbox.push((
                    waiter.conn,
                    Ok(Reply::Queued {
                        position,
                        holders,
                        limit,
                    }),
                ));
            }
        }
    }

    /// Releases every slot `which` selects, logging one line each.
    fn release_where(&mut self, reason: ReleaseReason, which: impl Fn(&Slot) -> bool) {
        let mut kept = Vec::with_capacity(self.slots.len());
        for slot in std::mem::take(&mut self.slots) {
            if !which(&slot) {
                kept.push(slot);
                continue;
            }
            let uid = slot.uid.as_deref().unwrap_or("-");
            info!(
                "release pod={}/{} uid={uid} reason={reason}",
                slot.namespace, slot.name
            );
            #[cfg(test)]
            self.released.push((uid.to_owned(), reason));
        }
        self.slots = kept;
    }

    /// Drops a waiter whose `timeout_ms` passed.
    fn expire(&mut self, waiter: Waiter) {
        debug!(
            "waiter pod={}/{} conn={} expired after timeout_ms={}",
            waiter.namespace, waiter.name, waiter.conn, waiter.timeout_ms
        );
        self.outbox.push((
            waiter.conn,
            Err(AgentError::WaitExpired {
                timeout_ms: waiter.timeout_ms,
            }),
        ));
    }

    fn reply(&mut self, conn: ConnId, reply: Reply) {
        self.outbox.push((conn, Ok(reply)));
    }
}

/// Whether a slot or waiter keyed by (`held_uid`, namespace, name) is for the pod a request names.
/// A UID matches only the same UID; an entry without UID matches by name, so that a later request
/// or pod with the UID binds it.
fn same_pod(
    held_uid: &Option<String>,
    held_namespace: &str,
    held_name: &str,
    uid: Option<&str>,
    namespace: &str,
    name: &str,
) -> bool {
    match (held_uid.as_deref(), uid) {
        (Some(held), Some(uid)) => held == uid,
        (Some(_), None) => false,
        (None, _) => held_namespace == namespace && held_name == name,
    }
}

fn granted(reason: GrantReason) -> Reply {
    Reply::Granted { reason }
}

/// A count for a protocol field; the counts here are far below `u32::MAX`.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::SkipReason;
    use pod_pacemaker::protocol::Token;

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
            sandbox_started: false,
            release: None,
            release_detail: None,
        }
    }

    fn ready(name: &str, uid: &str) -> PodInfo {
        PodInfo {
            release: Some(ReleaseReason::Ready),
            ..pod(name, uid)
        }
    }

    /// A synced scheduler with `limit` slots and an empty node.
    fn synced(limit: u32, now: Instant) -> Scheduler {
        let mut s = Scheduler::new(limit, LEASE);
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

    fn positions(out: &[(ConnId, ConnReply)]) -> Vec<(ConnId, u32)> {
        out.iter()
            .filter_map(|(c, r)| match r {
                Ok(Reply::Queued { position, .. }) => Some((*c, *position)),
                _ => None,
            })
            .collect()
    }

    fn errors(out: &[(ConnId, ConnReply)]) -> Vec<(ConnId, String)> {
        out.iter()
            .filter_map(|(c, r)| r.as_ref().err().map(|e| (*c, e.to_string())))
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
            assert!(grants(&out).len() <= 1, "one grant per freed slot");
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
        assert_eq!(s.next_deadline(), Some(now + LEASE));
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
        s.on_wait(1, wait("filler", Some("u0")), now);
        s.on_wait(2, wait("annotated", Some("u1")), now);
        s.on_wait(3, wait("ds", None), now);
        let out = s.take_outbox();
        assert_eq!(
            grants(&out),
            [
                (1, GrantReason::Slot),
                (2, GrantReason::Skip),
                (3, GrantReason::Skip)
            ]
        );
        assert_eq!(s.slots.len(), 1);
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
        assert_eq!(s.slots.len(), 1);
        assert_eq!(s.slots[0].uid.as_deref(), Some("new"));
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
        assert_eq!(s.slots[0].uid.as_deref(), Some("new"));

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
        s.on_pod_upsert(pod("b", "ub"), now);
        assert_eq!(s.queue[0].uid.as_deref(), Some("ub"));
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
        let mut timed = wait("c", Some("uc"));
        timed.timeout_ms = Some(1000);
        s.on_wait(3, timed, now);
        s.on_wait(4, wait("d", Some("ud")), now);
        s.take_outbox();

        // The client of b closes: c and d move up.
        s.on_gone(2, now);
        assert_eq!(positions(&s.take_outbox()), [(3, 1), (4, 2)]);

        // c's time passes: it gets an error and d moves up.
        assert_eq!(s.next_deadline(), Some(now + Duration::from_millis(1000)));
        s.tick(now + Duration::from_millis(1000));
        let out = s.take_outbox();
        assert_eq!(errors(&out).len(), 1);
        assert_eq!(errors(&out)[0].0, 3);
        assert!(errors(&out)[0].1.contains("timeout_ms=1000"));
        assert_eq!(positions(&out), [(4, 1)]);

        // The next free slot goes to d, not to the departed.
        s.on_pod_deleted("ua", now);
        assert_eq!(grants(&s.take_outbox()), [(4, GrantReason::Slot)]);
    }

    #[test]
    fn undelivered_grant_frees_the_slot() {
        let now = Instant::now();
        let mut s = synced(1, now);
        s.on_wait(1, wait("a", Some("ua")), now);
        s.on_wait(2, wait("b", Some("ub")), now);
        s.take_outbox();
        s.on_gone(1, now);
        assert_eq!(s.released, [("ua".to_owned(), ReleaseReason::Undelivered)]);
        assert_eq!(grants(&s.take_outbox()), [(2, GrantReason::Slot)]);
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
        assert_eq!(errors(&out).len(), 1);
        assert_eq!(errors(&out)[0].0, 2);
        assert_eq!(positions(&out), [(4, 1)]);
        s.on_pod_deleted("ua", now);
        assert_eq!(grants(&s.take_outbox()), [(4, GrantReason::Slot)]);
    }

    #[test]
    fn first_list_adopts_started_pods_oldest_first() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, LEASE);
        let started = |name: &str, uid: &str, created: &str| PodInfo {
            sandbox_started: true,
            created: created.to_owned(),
            ..pod(name, uid)
        };
        let pods = vec![
            started("young", "u3", "2024-01-03T00:00:00Z"),
            started("old", "u1", "2024-01-01T00:00:00Z"),
            started("middle", "u2", "2024-01-02T00:00:00Z"),
            // Not holders: ready, host network, skipped, not started.
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
            pod("pending", "p"),
        ];
        assert!(s.on_resync(pods, now));
        let held: Vec<&str> = s.slots.iter().filter_map(|s| s.uid.as_deref()).collect();
        assert_eq!(held, ["u1", "u2", "u3"]);

        // Over the limit: a new pod waits until two holders are gone.
        s.on_wait(1, wait("new", Some("un")), now);
        assert_eq!(positions(&s.take_outbox()), [(1, 1)]);
        s.on_pod_upsert(ready("old", "u1"), now);
        assert!(grants(&s.take_outbox()).is_empty());
        s.on_pod_deleted("u2", now);
        assert_eq!(grants(&s.take_outbox()), [(1, GrantReason::Slot)]);

        // A later relist adopts nothing.
        assert!(!s.on_resync(vec![started("late", "ul", "2024-01-04T00:00:00Z")], now));
        assert!(s.slots.iter().all(|s| s.uid.as_deref() != Some("ul")));
    }

    #[test]
    fn shutdown_tells_every_waiter() {
        let now = Instant::now();
        let mut s = synced(1, now);
        s.on_wait(1, wait("a", Some("ua")), now);
        s.on_wait(2, wait("b", Some("ub")), now);
        s.on_wait(3, wait("c", Some("uc")), now);
        s.take_outbox();
        s.shutdown();
        let out = s.take_outbox();
        let codes: Vec<(ConnId, String)> = out
            .iter()
            .filter_map(|(c, r)| match r {
                Err(e) => Some((*c, crate::error::error_code(e).to_string())),
                Ok(_) => None,
            })
            .collect();
        assert_eq!(
            codes,
            [
                (2, "shutting-down".to_owned()),
                (3, "shutting-down".to_owned())
            ]
        );
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
        assert_eq!(s.queue.len(), 1);
    }

    #[test]
    fn owner_thread_serves_messages_and_stops() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            run(Scheduler::new(1, LEASE), &rx, || {
                let _ = ready_tx.send(());
            });
        });
        tx.send(SchedMsg::Kube(KubeEvent::Resynced(Vec::new())))
            .expect("send");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("ready after the first list");
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        tx.send(SchedMsg::Wait {
            conn: 1,
            request: wait("a", Some("ua")),
            replies: reply_tx,
        })
        .expect("send");
        let reply = reply_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reply");
        assert!(matches!(
            reply,
            Ok(Reply::Granted {
                reason: GrantReason::Slot
            })
        ));
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        tx.send(SchedMsg::Wait {
            conn: 2,
            request: wait("b", Some("ub")),
            replies: reply_tx,
        })
        .expect("send");
        let reply = reply_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reply");
        assert!(matches!(reply, Ok(Reply::Queued { position: 1, .. })));
        tx.send(SchedMsg::Shutdown).expect("send");
        let reply = reply_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reply");
        assert!(matches!(reply, Err(AgentError::ShuttingDown)));
        handle.join().expect("thread ends");
    }
}
