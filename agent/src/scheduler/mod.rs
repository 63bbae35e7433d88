// SPDX-License-Identifier: Apache-2.0
//! Start slots: who holds one, who waits for one, in which order, and when a slot is freed.
//!
//! [`Scheduler`] is the pure logic and owns all pacing state: the pod cache, the slots, the queue
//! and the gates. It does no I/O; every method takes the current [`Instant`] and leaves its
//! replies in an outbox, so the tests drive it step by step. [`run`] is the body of the
//! `agent-sched` thread, the single owner of that state: connection threads, the watch thread and
//! `main` (SIGHUP) talk to it only through [`SchedMsg`] on one `mpsc` channel; it wakes on its own
//! for leases, deadlines and the rate limit, and writes the state file (`state`) when it idles.
//! docs/scheduling.md explains the rules for operators; in short, for a `WAIT`:
//!
//! 1. The pod is identified by the UID the plugin sends (a static pod's UID maps to its mirror
//!    pod). Without one, the agent looks the pod up by namespace and name (the newest such pod
//!    that is not being deleted).
//! 2. A pod the agent does not pace (annotation, DaemonSet, excluded namespace;
//!    [`PodInfo::skip_reason`]) or that is finished or being deleted passes at once with
//!    `reason=skip` and takes no slot.
//! 3. A pod that holds a slot already (a retried ADD) is granted again at once.
//! 4. A pod with an entry in the queue takes that entry: its old position. A client still waiting
//!    on it is told `superseded`.
//! 5. Otherwise the pod gets a new entry: arrival now. A pod the agent has not seen yet keeps its
//!    position but is not served until it shows up, or `--unknown-pod-wait-ms` passes and the
//!    unknown-pod policy decides.
//!
//! The queue is served in order ([`queue::Entry::key`]: priority, then arrival, then creation
//! time). Each grant needs every gate (`gates`): a token of the rate limit and a free slot. One
//! freed slot wakes exactly one waiter. A client that leaves (closes, times out) leaves its entry
//! behind as a remembered position for [`POSITION_MEMORY`]; a grant that could not be delivered
//! frees its slot and puts the entry back at its old position.
//!
//! Slots are keyed by pod UID, so a pod that reuses an old pod's name (a StatefulSet) never
//! shares or frees the old pod's slot (docs/prior-art.md W10). A slot is released by the rules of
//! [`PodInfo::release_reason`], by deletion, by the pod missing from a relist, or by the lease;
//! each release logs one `release pod=... uid=... reason=...` line.
//!
//! On start, before the socket is served, the first pod list rebuilds the holders: those in the
//! state file whose pods still need them, and every pod of the node whose sandbox exists and that
//! no rule frees, oldest first; that may exceed the limit, and nothing is granted until enough are
//! released (docs/prior-art.md W8). The queue comes back from the state file too; the clients that were
//! waiting get [`RESTART_GRACE`] to reconnect, and the entries behind one that has not are not
//! served meanwhile, so they are granted in their old order whatever order they reconnect in.

mod gates;
mod queue;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use pod_pacemaker::protocol::{
    GrantReason, HolderLine, Reply, StatusReply, StatusSummary, Token, WaitRequest, WaiterLine,
    WaiterState,
};

use crate::config::throttle::Limits;
use crate::config::{Config, UnknownPodPolicy};
use crate::error::AgentError;
use crate::kube::KubeEvent;
use crate::pod::{PodInfo, ReleaseOn, ReleaseReason, SkipOptions};
use crate::server::{RefusalLog, Replier};
use gates::Gates;
use queue::{same_pod, Entry, Queue, Waiting};
use state::{Restored, SavedEntry, SavedHolder, SavedState};

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
    /// A client's `WAIT`; this thread writes the replies to `replies` until a final one.
    Wait {
        conn: ConnId,
        request: WaitRequest,
        replies: Replier,
    },
    /// A client's `STATUS`: the answer's lines go to `replies` in one message.
    Status { replies: Sender<Vec<StatusReply>> },
    /// New limits (SIGHUP re-read the config file); they apply from the next grant.
    Reconfigure(Limits),
    /// The agent is stopping: every waiter gets `ERROR code=shutting-down`, the state file is
    /// written, then the thread ends.
    Shutdown,
}

/// How long the position of a pod whose client left is kept for a retry. The kubelet retries a
/// failed sandbox within about ten seconds; ten minutes also covers its longest back-off.
pub const POSITION_MEMORY: Duration = Duration::from_secs(600);
/// At most this many remembered positions; beyond it the oldest departures are dropped.
pub const MAX_REMEMBERED: usize = 10_000;
/// After a restart, how long the pods behind a waiter that has not reconnected wait for it. The
/// plugin reconnects every 200 ms.
pub const RESTART_GRACE: Duration = Duration::from_secs(3);
/// Waiters in a state file older than this are not waited for after a restart: the plugin's own
/// deadline (at most 220 s) has passed, so they will not reconnect.
const GHOST_MAX_AGE: Duration = Duration::from_secs(220);
/// A client is told its position at once, then at most once per this interval.
pub const POSITION_INTERVAL: Duration = Duration::from_secs(1);
/// The longest the scheduler thread sleeps without a message or a deadline.
const IDLE_WAKEUP: Duration = Duration::from_secs(60);
/// The state file is written at most this often (and always when the agent stops), so that a
/// burst of hundreds of requests costs a few writes, not one each. A crash loses at most the
/// changes of this last interval; a waiter missing from the file queues again on reconnect.
const SAVE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a deleted pod's UID is remembered, so that a `WAIT` for it that comes after the
/// deletion (the runtime's ADD raced the delete) passes at once instead of taking a slot. The
/// kubelet gives up on a deleted pod's sandbox within seconds; ten minutes covers a slow one.
pub const DELETED_MEMORY: Duration = Duration::from_secs(600);
/// At most this many deleted UIDs are remembered; beyond it the oldest deletions are dropped.
pub const MAX_DELETED: usize = 10_000;
/// A holder whose pod never showed up in the view is released (`not-found`) once the view is
/// current (a list, or a bookmark of the watch) this long after the grant. The watch lags the
/// kubelet by well under a second, and a static pod's mirror pod is created before its sandbox,
/// so a pod still unknown after this long is one the API does not have.
pub const UNSEEN_HOLDER_GRACE: Duration = Duration::from_secs(30);

/// The behaviour the command line chose.
#[derive(Clone, Debug)]
pub struct Options {
    pub lease: Duration,
    pub release_on: ReleaseOn,
    pub skip: SkipOptions,
    pub unknown_pod_wait: Duration,
    pub unknown_pod_policy: UnknownPodPolicy,
    pub position_interval: Duration,
    pub position_memory: Duration,
    /// At most this many remembered positions ([`MAX_REMEMBERED`]).
    pub max_remembered: usize,
    /// At most this many clients waiting at once ([`MAX_WAITING`], or fewer to fit the open-file
    /// limit: `server::Capacity`).
    pub max_waiting: usize,
    pub restart_grace: Duration,
}

impl Options {
    pub fn from_config(config: &Config) -> Self {
        Self {
            lease: config.lease,
            release_on: config.release_on,
            skip: config.skip.clone(),
            unknown_pod_wait: config.unknown_pod_wait,
            unknown_pod_policy: config.unknown_pod_policy,
            position_interval: POSITION_INTERVAL,
            position_memory: POSITION_MEMORY,
            max_remembered: MAX_REMEMBERED,
            max_waiting: MAX_WAITING,
            restart_grace: RESTART_GRACE,
        }
    }
}

/// Runs the scheduler until [`SchedMsg::Shutdown`] or until every sender is gone. `on_ready` is
/// called once, after the first pod list has been applied (holders rebuilt). The state is written
/// to `state_file` whenever it changed and no message is pending.
pub fn run(
    mut scheduler: Scheduler,
    messages: &Receiver<SchedMsg>,
    state_file: Option<&Path>,
    mut on_ready: impl FnMut(),
) {
    let mut clients = Clients::new(Instant::now(), scheduler.options.max_waiting);
    let mut saver = Saver::new(state_file);
    loop {
        // 1. Take the next message; when there is none, write some position updates if any are
        //    pending, or else save the state if it is time, then sleep until a message arrives or
        //    the next deadline (or save) is due.
        let message = match messages.try_recv() {
            Ok(message) => Some(message),
            Err(TryRecvError::Disconnected) => Some(SchedMsg::Shutdown),
            Err(TryRecvError::Empty) if clients.position_due(Instant::now()) => None,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                let save_due = saver.maybe_save(&mut scheduler, now);
                let wait = scheduler
                    .next_deadline(now)
                    .into_iter()
                    .chain(save_due)
                    .chain(clients.next_close_check())
                    .chain(clients.next_position())
                    .min()
                    .map_or(IDLE_WAKEUP, |d| d.saturating_duration_since(now))
                    .min(IDLE_WAKEUP);
                match messages.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(SchedMsg::Shutdown),
                }
            }
        };

        // 2. Apply it.
        let now = Instant::now();
        let idle_turn = message.is_none();
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
            Some(SchedMsg::Kube(KubeEvent::Current)) => scheduler.on_current(now),
            Some(SchedMsg::Wait {
                conn,
                request,
                replies,
            }) => clients.admit(&mut scheduler, conn, request, replies, now),
            Some(SchedMsg::Status { replies }) => {
                let _ = replies.send(scheduler.status(now));
            }
            Some(SchedMsg::Reconfigure(limits)) => scheduler.on_reconfigure(limits, now),
            Some(SchedMsg::Shutdown) => {
                scheduler.shutdown();
                stop = true;
            }
            None => {}
        }
        if !stop {
            scheduler.tick(now);
        }

        // 3. Write the replies; position updates wait for a turn with nothing else to do. Look
        //    for clients that closed when it is time.
        clients.deliver(&mut scheduler, now, stop);
        if idle_turn {
            clients.write_positions(&mut scheduler, now);
        }
        if !stop && clients.next_close_check().is_some_and(|at| now >= at) {
            clients.check_closed(&mut scheduler, now);
        }
        if stop {
            saver.finish(&mut scheduler);
            return;
        }
    }
}

/// The waiting clients' [`Replier`]s, and the position updates not written yet.
///
/// Final replies (a grant, an error) are written as soon as the scheduler makes them. Position
/// updates are written only on a turn when no message is waiting, one per [`POSITION_SPACING`] at
/// most, so that a release arriving while hundreds of waiters move up is neither queued behind
/// their updates nor left to compete with hundreds of plugins woken at once to read them. Only a client's latest position is kept, and it is dropped when a final reply
/// overtakes it. Every [`CLOSE_CHECK`] each client is checked for a close; one that closed, or
/// that a reply cannot be written to, leaves the queue (`Scheduler::on_gone`).
struct Clients {
    repliers: HashMap<ConnId, Replier>,
    /// Clients with a pending position update, oldest first.
    backlog: VecDeque<ConnId>,
    positions: HashMap<ConnId, Reply>,
    /// When the clients are next checked for a close.
    close_check: Instant,
    /// Not before this instant is the next position update written.
    position_at: Instant,
    /// At most this many waiting clients ([`MAX_WAITING`]).
    max_waiting: usize,
    /// Refusals at that cap, logged at most every 10 s.
    refusals: RefusalLog,
}

/// The least time between two position updates, to any clients: a node's plugins are woken for
/// their positions at most a thousand times a second in all.
const POSITION_SPACING: Duration = Duration::from_millis(1);
/// How often the waiting clients are checked for a close: the delay before a client that gave up
/// leaves the queue (its position is remembered either way).
pub const CLOSE_CHECK: Duration = Duration::from_millis(200);
/// The most clients waiting at once; beyond it a `WAIT` gets `ERROR code=busy`. Each holds only
/// an open socket, no thread.
pub const MAX_WAITING: usize = 4096;

impl Clients {
    fn new(now: Instant, max_waiting: usize) -> Self {
        Self {
            repliers: HashMap::new(),
            backlog: VecDeque::new(),
            positions: HashMap::new(),
            close_check: now + CLOSE_CHECK,
            position_at: now,
            max_waiting,
            refusals: RefusalLog::default(),
        }
    }

    /// Takes a client's `WAIT`. One that is not answered at once (a pod that passes, a retried
    /// ADD of a holder) but would wait beyond the cap on waiting clients gets `busy` and leaves
    /// again, its position remembered for when it comes back.
    fn admit(
        &mut self,
        scheduler: &mut Scheduler,
        conn: ConnId,
        request: WaitRequest,
        replies: Replier,
        now: Instant,
    ) {
        if self.repliers.is_empty() {
            self.close_check = now + CLOSE_CHECK;
        }
        self.repliers.insert(conn, replies);
        scheduler.on_wait(conn, request, now);
        self.deliver(scheduler, now, false);
        if self.repliers.len() > self.max_waiting && self.repliers.contains_key(&conn) {
            let limit = self.max_waiting;
            self.refusals.warn(&format_args!(
                "{limit} clients waiting, refusing more (busy)"
            ));
            let busy = AgentError::TooManyConnections { limit };
            self.write(scheduler, conn, &Err(busy), now, false);
            scheduler.on_gone(conn, now);
            self.deliver(scheduler, now, false);
        }
    }

    /// When the clients are next checked for a close; `None` while nobody waits.
    fn next_close_check(&self) -> Option<Instant> {
        (!self.repliers.is_empty()).then_some(self.close_check)
    }

    /// Lets every client that closed leave the queue.
    fn check_closed(&mut self, scheduler: &mut Scheduler, now: Instant) {
        self.close_check = now + CLOSE_CHECK;
        let closed: Vec<ConnId> = self
            .repliers
            .iter_mut()
            .filter_map(|(conn, replier)| replier.client_gone().then_some(*conn))
            .collect();
        for conn in closed {
            debug!("conn={conn}: client closed (or sent bytes) while waiting");
            self.forget(conn);
            scheduler.on_gone(conn, now);
        }
        self.deliver(scheduler, now, false);
    }

    /// When the next position update may be written; `None` while none is pending.
    fn next_position(&self) -> Option<Instant> {
        (!self.positions.is_empty()).then_some(self.position_at)
    }

    fn position_due(&self, now: Instant) -> bool {
        self.next_position().is_some_and(|at| now >= at)
    }

    fn forget(&mut self, conn: ConnId) {
        self.repliers.remove(&conn);
        self.drop_position(conn);
    }

    /// Drops `conn`'s pending position update; its place in the backlog is skipped later, or
    /// cleared with the rest once no update is pending.
    fn drop_position(&mut self, conn: ConnId) {
        self.positions.remove(&conn);
        if self.positions.is_empty() {
            self.backlog.clear();
        }
    }

    /// Writes the scheduler's final replies and queues its position updates. A client that
    /// cannot be written to is gone; that may free a slot and make more replies, so this repeats
    /// until there are none. While `stopping`, a failed write changes nothing.
    fn deliver(&mut self, scheduler: &mut Scheduler, now: Instant, stopping: bool) {
        loop {
            let outbox = scheduler.take_outbox();
            if outbox.is_empty() {
                return;
            }
            for (conn, reply) in outbox {
                match reply {
                    Ok(position) if !position.is_final() && !stopping => {
                        if self.positions.insert(conn, position).is_none() {
                            self.backlog.push_back(conn);
                        }
                    }
                    reply => {
                        self.drop_position(conn);
                        self.write(scheduler, conn, &reply, now, stopping);
                    }
                }
            }
        }
    }

    /// Writes the oldest pending position update, if one is due.
    fn write_positions(&mut self, scheduler: &mut Scheduler, now: Instant) {
        if !self.position_due(now) {
            return;
        }
        while let Some(conn) = self.backlog.pop_front() {
            if let Some(position) = self.positions.remove(&conn) {
                self.write(scheduler, conn, &Ok(position), now, false);
                self.position_at = now + POSITION_SPACING;
                break;
            }
        }
        if self.positions.is_empty() {
            self.backlog.clear();
        }
        self.deliver(scheduler, now, false);
    }

    fn write(
        &mut self,
        scheduler: &mut Scheduler,
        conn: ConnId,
        reply: &ConnReply,
        now: Instant,
        stopping: bool,
    ) {
        let Some(replier) = self.repliers.get_mut(&conn) else {
            return;
        };
        match replier.send(reply) {
            Ok(false) => {}
            Ok(true) => self.forget(conn),
            Err(err) => {
                debug!("conn={conn}: writing a reply failed: {err}");
                self.forget(conn);
                if !stopping {
                    scheduler.on_gone(conn, now);
                }
            }
        }
    }
}

/// Writes the state file, at most every [`SAVE_INTERVAL`]. The scheduler thread only takes the
/// snapshot; serialising and writing it happens on the `agent-state` thread, so a grant never
/// waits behind a file write.
struct Saver {
    /// Snapshots to write; `None` when there is no state file (or its thread could not start).
    writer: Option<Sender<SavedState>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Not before this instant.
    next: Instant,
}

impl Saver {
    fn new(path: Option<&Path>) -> Self {
        let (writer, thread) = match path.map(|p| Self::spawn_writer(p.to_path_buf())) {
            Some(Ok((writer, thread))) => (Some(writer), Some(thread)),
            Some(Err(err)) => {
                warn!("cannot start the state file writer: {err}; queue order will not survive a restart");
                (None, None)
            }
            None => (None, None),
        };
        Self {
            writer,
            thread,
            next: Instant::now(),
        }
    }

    /// The `agent-state` thread: writes the newest snapshot it has, logging a failure once per
    /// run of failures.
    fn spawn_writer(
        path: std::path::PathBuf,
    ) -> std::io::Result<(Sender<SavedState>, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<SavedState>();
        let thread = std::thread::Builder::new()
            .name("agent-state".to_owned())
            .spawn(move || {
                let mut failed = false;
                while let Ok(mut snapshot) = rx.recv() {
                    // Only the newest state matters; skip any that queued up meanwhile.
                    while let Ok(newer) = rx.try_recv() {
                        snapshot = newer;
                    }
                    match state::save(&path, &snapshot) {
                        Ok(()) if std::mem::take(&mut failed) => {
                            info!("state file {} written again", path.display());
                        }
                        Ok(()) => {}
                        Err(err) if !failed => {
                            warn!("{err}; queue order will not survive a restart until it works again");
                            failed = true;
                        }
                        Err(_) => {}
                    }
                }
            })?;
        Ok((tx, thread))
    }

    /// Hands a snapshot to the writer if the state changed and it is time; returns when it should
    /// be called again for a change that has to wait.
    fn maybe_save(&mut self, scheduler: &mut Scheduler, now: Instant) -> Option<Instant> {
        let writer = self.writer.as_ref()?;
        if !scheduler.dirty {
            return None;
        }
        if now < self.next {
            return Some(self.next);
        }
        scheduler.dirty = false;
        self.next = now + SAVE_INTERVAL;
        // A send fails only if the writer thread is gone; the state then stays unsaved, as with
        // a failed write.
        let _ = writer.send(scheduler.snapshot(now, state::wall_now_ns()));
        None
    }

    /// Writes the final state and waits until it is on disk (the agent is stopping).
    fn finish(mut self, scheduler: &mut Scheduler) {
        if let Some(writer) = self.writer.take() {
            if scheduler.dirty {
                scheduler.dirty = false;
                let _ = writer.send(scheduler.snapshot(Instant::now(), state::wall_now_ns()));
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// All pacing state of the node; see the module docs for the rules.
#[derive(Debug)]
pub struct Scheduler {
    options: Options,
    gates: Gates,
    /// The node's pods by UID, as of the last list and watch event.
    pods: HashMap<String, PodInfo>,
    /// UIDs of pods seen deleted (an event, or gone from a list), with the deletion instant; kept
    /// for [`DELETED_MEMORY`], at most [`MAX_DELETED`].
    deleted: HashMap<String, Instant>,
    /// Holders, in grant order.
    slots: Vec<Slot>,
    queue: Queue,
    /// What the state file held at start, applied with the first pod list.
    restored: Option<Restored>,
    /// Whether the first pod list has been applied.
    synced: bool,
    /// The next sequence number for a queue entry.
    seq: u64,
    /// The earliest instant a held-back position update may be sent.
    report_due: Option<Instant>,
    /// The state changed since the state file was last written.
    dirty: bool,
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
    /// The connection it was granted to; `None` for holders adopted or restored at start.
    via: Option<ConnId>,
    /// Whether the pod has been in the cache while holding the slot. Only such slots are released
    /// when a relist no longer shows the pod; an unseen one may just be ahead of the watch.
    seen: bool,
    /// The queue entry it came from, to put it back if the grant is not delivered.
    arrival: Instant,
    created: String,
    priority: i32,
    seq: u64,
}

impl Slot {
    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Scheduler {
    /// A scheduler with the given options and limits. `restored` is the state file's content,
    /// applied with the first pod list.
    pub fn new(options: Options, limits: Limits, restored: Option<Restored>, now: Instant) -> Self {
        Self {
            options,
            gates: Gates::new(limits, now),
            pods: HashMap::new(),
            deleted: HashMap::new(),
            slots: Vec::new(),
            queue: Queue::default(),
            restored,
            synced: false,
            seq: 0,
            report_due: None,
            dirty: false,
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
        let (uid, uid_by_name) = match &request.uid {
            Some(uid) => (Some(self.api_uid(uid.as_str())), false),
            None => (self.resolve_uid(&namespace, &name), true),
        };
        let known = uid.as_ref().and_then(|u| self.pods.get(u));
        debug!(
            "wait pod={namespace}/{name} uid={} conn={conn} timeout_ms={:?} known={}",
            uid.as_deref().unwrap_or("-"),
            request.timeout_ms,
            known.is_some()
        );

        // 2. A pod the agent does not pace, or that is done or deleted, passes at once.
        if let Some(uid) = uid.as_deref().filter(|u| self.deleted.contains_key(*u)) {
            info!("grant pod={namespace}/{name} uid={uid} reason=skip skip=deleted");
            let index = self
                .queue
                .iter()
                .position(|e| e.uid.as_deref() == Some(uid));
            if let Some(index) = index {
                self.pass_entry(index, "deleted");
            }
            self.reply(conn, granted(GrantReason::Skip));
            return;
        }
        if let Some(pod) = known {
            let why = match pod.skip_reason(&self.options.skip) {
                Some(skip) => Some(skip.as_str()),
                None => pod.is_finished().then_some("finished"),
            };
            if let Some(why) = why {
                info!(
                    "grant pod={namespace}/{name} uid={} reason=skip skip={why}",
                    pod.uid
                );
                let index = self.queue.iter().position(|e| e.uid == uid);
                if let Some(index) = index {
                    self.pass_entry(index, why);
                }
                self.reply(conn, granted(GrantReason::Skip));
                return;
            }
        }

        // 3. A pod that holds a slot already gets it again at once (a retried ADD).
        let pods = &self.pods;
        if let Some(slot) = self.slots.iter_mut().find(|s| {
            request_matches(
                pods,
                s.uid.as_deref(),
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

        // 4. The pod's entry if it has one, else a new one at the back of its priority.
        let unknown = known.is_none();
        let unknown_until = if unknown {
            match self.options.unknown_pod_wait {
                wait if wait.is_zero() => None,
                wait => now.checked_add(wait),
            }
        } else {
            None
        };
        if unknown
            && unknown_until.is_none()
            && self.options.unknown_pod_policy == UnknownPodPolicy::Skip
        {
            info!("grant pod={namespace}/{name} reason=skip skip=unknown-pod");
            self.reply(conn, granted(GrantReason::Skip));
            return;
        }
        let waiting = Waiting {
            conn,
            deadline: request
                .timeout_ms
                .and_then(|ms| now.checked_add(Duration::from_millis(ms))),
            timeout_ms: request.timeout_ms.unwrap_or(0),
            unknown_until,
            reported: 0,
            quiet_until: None,
        };
        let pods = &self.pods;
        let found = self.queue.iter().position(|e| {
            request_matches(
                pods,
                e.uid.as_deref(),
                &e.namespace,
                &e.name,
                uid.as_deref(),
                &namespace,
                &name,
            )
        });
        match found {
            Some(index) => {
                let Some(entry) = self.queue.get_mut(index) else {
                    return;
                };
                if entry.uid.is_none() {
                    entry.uid.clone_from(&uid);
                    entry.uid_by_name = uid_by_name;
                }
                let resumed = if let Some(old) = entry.waiting.replace(waiting) {
                    debug!(
                        "wait pod={namespace}/{name} conn={conn} replaces conn={} in the queue",
                        old.conn
                    );
                    self.outbox.push((old.conn, Err(AgentError::Superseded)));
                    "superseded"
                } else if entry.ghost_until.take().is_some() {
                    "reconnected"
                } else {
                    "retried"
                };
                entry.forget_at = None;
                debug!(
                    "wait pod={namespace}/{name} uid={} resumes its position ({resumed}) from {} ms ago",
                    entry.uid.as_deref().unwrap_or("-"),
                    now.saturating_duration_since(entry.arrival).as_millis()
                );
            }
            None => {
                let (priority, created) =
                    known.map_or((0, String::new()), |p| (p.priority, p.created.clone()));
                let seq = self.next_seq();
                self.queue.insert(Entry {
                    uid,
                    uid_by_name,
                    namespace,
                    name,
                    seen: !unknown,
                    priority,
                    created,
                    arrival: now,
                    seq,
                    waiting: Some(waiting),
                    forget_at: None,
                    ghost_until: None,
                });
            }
        }
        self.dirty = true;

        // 5. Grant what is free, tell the rest where they stand.
        self.grant_free_slots(now);
    }

    /// A connection ended without delivering its final reply.
    pub fn on_gone(&mut self, conn: ConnId, now: Instant) {
        // 1. A waiter leaves; its position is remembered.
        if let Some(index) = self.queue.find_conn(conn) {
            if let Some(entry) = self.queue.get_mut(index) {
                entry.waiting = None;
                entry.forget_at = now.checked_add(self.options.position_memory);
                debug!(
                    "waiter pod={} conn={conn} left the queue; position kept",
                    entry.full_name()
                );
                self.dirty = true;
            }
        }

        // 2. A grant that was not delivered frees its slot and puts the pod back in its place.
        let undelivered =
            self.release_where(ReleaseReason::Undelivered, now, |s| s.via == Some(conn));
        for slot in undelivered {
            self.queue.insert(Entry {
                uid: slot.uid,
                uid_by_name: false,
                namespace: slot.namespace,
                name: slot.name,
                seen: slot.seen,
                priority: slot.priority,
                created: slot.created,
                arrival: slot.arrival,
                seq: slot.seq,
                waiting: None,
                forget_at: now.checked_add(self.options.position_memory),
                ghost_until: None,
            });
        }
        self.grant_free_slots(now);
    }

    /// A pod was added or changed.
    pub fn on_pod_upsert(&mut self, pod: PodInfo, now: Instant) {
        self.deleted.remove(&pod.uid);
        self.apply_pod(&pod, now);
        self.pods.insert(pod.uid.clone(), pod);
        self.grant_free_slots(now);
    }

    /// The pod with `uid` was deleted.
    pub fn on_pod_deleted(&mut self, uid: &str, now: Instant) {
        self.pods.remove(uid);
        self.remember_deleted(uid.to_owned(), now);
        self.release_where(ReleaseReason::Deleted, now, |s| {
            s.uid.as_deref() == Some(uid)
        });
        self.pod_gone(uid, now);
        self.grant_free_slots(now);
    }

    /// A full pod list replaced the cache. Returns `true` for the first one, after which the agent
    /// is ready to serve.
    pub fn on_resync(&mut self, pods: Vec<PodInfo>, now: Instant) -> bool {
        // 1. Pods no longer listed were deleted while the watch was down.
        let listed: HashMap<String, PodInfo> =
            pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        self.release_where(ReleaseReason::Deleted, now, |s| {
            s.seen && s.uid.as_ref().is_some_and(|u| !listed.contains_key(u))
        });
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !listed.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.pod_gone(&uid, now);
            self.remember_deleted(uid, now);
        }

        // 2. Every listed pod is applied as if it had just changed.
        for pod in listed.values() {
            self.deleted.remove(&pod.uid);
            self.apply_pod(pod, now);
        }
        self.pods = listed;

        // 3. The view is complete: holders whose pod never showed up are released after the
        //    grace time (holders restored or adopted at the first list are checked from the next).
        self.release_unseen(now);

        // 4. The first list rebuilds the holders and the queue.
        let first = !self.synced;
        if first {
            self.restore(now);
            self.adopt_started_pods(now);
            self.synced = true;
            self.dirty = true;
        }
        self.grant_free_slots(now);
        first
    }

    /// The watch is current (a bookmark): every change up to now has been applied.
    pub fn on_current(&mut self, now: Instant) {
        self.release_unseen(now);
        self.grant_free_slots(now);
    }

    /// New limits: holders and waiters stay; the limits apply from the next grant.
    pub fn on_reconfigure(&mut self, limits: Limits, now: Instant) {
        info!(
            "limits changed: max_concurrent={} rate_limit={} with {} holders and {} waiting",
            limits.max_concurrent,
            limits.rate_limit.map_or_else(
                || "none".to_owned(),
                |r| format!("{}ms/burst {}", r.fill_factor.as_millis(), r.burst)
            ),
            self.slots.len(),
            self.queue.iter().filter(|e| e.waiting.is_some()).count()
        );
        self.gates.set_limits(limits, now);
        // Everyone's "limit" changed: tell them at the next chance.
        for entry in self.queue.iter_mut() {
            if let Some(waiting) = &mut entry.waiting {
                waiting.reported = 0;
            }
        }
        self.grant_free_slots(now);
    }

    /// Releases expired leases, ends waits whose time is up, and forgets old positions.
    pub fn tick(&mut self, now: Instant) {
        // 1. Leases.
        let lease = self.options.lease;
        self.release_where(ReleaseReason::Lease, now, |s| {
            now.saturating_duration_since(s.since) >= lease
        });

        // 2. Waits: the client's deadline, the wait for an unknown pod, the restart grace.
        self.settle_waits(now);

        // 3. Remembered positions past their time, and the oldest beyond the cap.
        let due = |e: &Entry| e.waiting.is_none() && e.forget_at.is_some_and(|f| now >= f);
        let forgotten = if self.queue.iter().any(due) {
            self.queue.take_where(due)
        } else {
            Vec::new()
        };
        let max = self.options.max_remembered;
        let absent = self.queue.iter().filter(|e| e.waiting.is_none()).count();
        if absent > max {
            // The oldest departures go first: those whose forget time comes first.
            let mut departures: Vec<Instant> = self
                .queue
                .iter()
                .filter(|e| e.waiting.is_none())
                .filter_map(|e| e.forget_at)
                .collect();
            departures.sort();
            if let Some(cut) = departures.get(absent - max).copied() {
                let dropped = self
                    .queue
                    .take_where(|e| e.waiting.is_none() && e.forget_at.is_some_and(|f| f < cut));
                debug!(
                    "dropped {} remembered positions over the cap",
                    dropped.len()
                );
                self.dirty = true;
            }
        }
        if !forgotten.is_empty() {
            debug!("forgot {} remembered positions", forgotten.len());
            self.dirty = true;
        }

        // 4. Deleted UIDs past their time.
        self.deleted
            .retain(|_, at| now.saturating_duration_since(*at) < DELETED_MEMORY);

        self.grant_free_slots(now);
    }

    /// Tells every waiter that the agent is stopping. Their entries stay, so the state file keeps
    /// them for the next agent.
    pub fn shutdown(&mut self) {
        for entry in self.queue.iter() {
            if let Some(waiting) = &entry.waiting {
                self.outbox
                    .push((waiting.conn, Err(AgentError::ShuttingDown)));
            }
        }
        self.dirty = true;
    }

    /// When [`Scheduler::tick`] has something to do next.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let leases = self
            .slots
            .iter()
            .filter_map(|s| s.since.checked_add(self.options.lease));
        let entries = self.queue.iter().flat_map(|e| {
            let waiting = e.waiting.as_ref();
            [
                waiting.and_then(|w| w.deadline),
                waiting.and_then(|w| w.unknown_until),
                e.ghost_until,
                e.forget_at,
            ]
            .into_iter()
            .flatten()
        });
        let token = self
            .queue
            .iter()
            .any(|e| e.waiting.is_some())
            .then(|| self.gates.next_token(now))
            .flatten();
        leases
            .chain(entries)
            .chain(token)
            .chain(self.report_due)
            .min()
    }

    /// The replies produced since the last call, in order.
    pub fn take_outbox(&mut self) -> Vec<(ConnId, ConnReply)> {
        std::mem::take(&mut self.outbox)
    }

    /// The answer to `STATUS`: holders, queued pods in order, then the counts.
    pub fn status(&self, now: Instant) -> Vec<StatusReply> {
        let mut lines = Vec::with_capacity(self.slots.len() + self.queue.len() + 1);
        for slot in &self.slots {
            if let (Ok(namespace), Ok(name)) = (Token::new(&slot.namespace), Token::new(&slot.name))
            {
                lines.push(StatusReply::Holder(HolderLine {
                    namespace,
                    name,
                    uid: slot.uid.as_deref().and_then(|u| Token::new(u).ok()),
                    held_ms: millis(now.saturating_duration_since(slot.since)),
                }));
            }
        }
        let mut position: u32 = 0;
        let mut remembered: u32 = 0;
        for entry in self.queue.iter() {
            if !entry.counts(now) {
                remembered += 1;
                continue;
            }
            position += 1;
            let state = match &entry.waiting {
                Some(w) if w.unknown_until.is_some() => WaiterState::UnknownPod,
                Some(_) => WaiterState::Queued,
                None => WaiterState::Absent,
            };
            if let (Ok(namespace), Ok(name)) =
                (Token::new(&entry.namespace), Token::new(&entry.name))
            {
                lines.push(StatusReply::Waiter(WaiterLine {
                    position,
                    namespace,
                    name,
                    uid: entry.uid.as_deref().and_then(|u| Token::new(u).ok()),
                    priority: entry.priority,
                    waited_ms: millis(now.saturating_duration_since(entry.arrival)),
                    state,
                }));
            }
        }
        let rate = self.gates.rate_status(now);
        lines.push(StatusReply::Summary(StatusSummary {
            holders: count(self.slots.len()),
            limit: count(self.gates.max_concurrent()),
            waiting: position,
            remembered,
            rate_tokens: rate.map(|(tokens, _)| tokens),
            rate_burst: rate.map(|(_, burst)| burst),
        }));
        lines
    }

    /// The state to write to the state file.
    pub fn snapshot(&self, now: Instant, wall_ns: u64) -> SavedState {
        let wall = |instant| state::to_wall(instant, now, wall_ns);
        let holders = self
            .slots
            .iter()
            .map(|s| SavedHolder {
                uid: s.uid.clone(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                seen: s.seen,
                granted_ns: wall(s.since),
                arrival_ns: wall(s.arrival),
                created: s.created.clone(),
                priority: s.priority,
            })
            .collect();
        let queue = self
            .queue
            .iter()
            .map(|e| SavedEntry {
                uid: e.uid.clone(),
                uid_by_name: e.uid_by_name,
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                seen: e.seen,
                arrival_ns: wall(e.arrival),
                created: e.created.clone(),
                priority: e.priority,
                // A client expected back after a restart is still "waiting" for the next one.
                waiting: e.counts(now),
                forget_at_ns: e.forget_at.map(wall),
            })
            .collect();
        SavedState::new(wall_ns, holders, queue)
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

    /// Remembers that the pod with `uid` was deleted; beyond [`MAX_DELETED`] the oldest go.
    fn remember_deleted(&mut self, uid: String, now: Instant) {
        self.deleted.insert(uid, now);
        if self.deleted.len() > MAX_DELETED {
            let oldest = self
                .deleted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(uid, _)| uid.clone());
            if let Some(oldest) = oldest {
                self.deleted.remove(&oldest);
            }
        }
    }

    /// Releases the holders whose pod has never been in the view although the view is current
    /// [`UNSEEN_HOLDER_GRACE`] after their grant (see the constant). `seen` is set whenever the
    /// slot's pod is in the cache, so an unseen slot's pod is not in it.
    fn release_unseen(&mut self, now: Instant) {
        self.release_where(ReleaseReason::NotFound, now, |s| {
            !s.seen && now.saturating_duration_since(s.since) >= UNSEEN_HOLDER_GRACE
        });
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Applies what a pod's current state means for the slots and the queue.
    fn apply_pod(&mut self, pod: &PodInfo, now: Instant) {
        // 1. Bind slots and entries that wait for this name to learn their UID, and those keyed
        //    by the static pod UID of this mirror pod. A pod being deleted is an old instance, not
        //    the one starting.
        if !pod.is_deleting() {
            let slots = self
                .slots
                .iter_mut()
                .map(|s| (&mut s.uid, None, &s.namespace, &s.name));
            let entries = self
                .queue
                .iter_mut()
                .map(|e| (&mut e.uid, Some(&mut e.uid_by_name), &e.namespace, &e.name));
            for (uid, by_name, namespace, name) in slots.chain(entries) {
                let unbound = uid.is_none() && *namespace == pod.namespace && *name == pod.name;
                // A static pod's UID, which the runtime passes, becomes its mirror pod's.
                let mirrored = pod.mirror_of.is_some() && *uid == pod.mirror_of;
                if unbound || mirrored {
                    *uid = Some(pod.uid.clone());
                    if let Some(by_name) = by_name {
                        *by_name = unbound;
                    }
                }
            }
        }

        self.merge_entries(&pod.uid);

        // 2. The pod's queue entry: now known, with its priority and creation time; passed at once
        //    if the pod is not paced or is done; forgotten if its sandbox exists without us.
        let skip = pod.skip_reason(&self.options.skip);
        let release = pod.release_reason(self.options.release_on);
        let mut resort = false;
        let mut pass = None;
        let mut forget = None;
        for (index, entry) in self.queue.iter_mut().enumerate() {
            if entry.uid.as_deref() != Some(pod.uid.as_str()) {
                continue;
            }
            entry.seen = true;
            if entry.priority != pod.priority || entry.created != pod.created {
                entry.priority = pod.priority;
                entry.created.clone_from(&pod.created);
                resort = true;
            }
            if let Some(waiting) = &mut entry.waiting {
                waiting.unknown_until = None;
            }
            if let Some(skip) = skip {
                pass = Some((index, skip.as_str()));
            } else if pod.is_finished() {
                if entry.uid_by_name && entry.waiting.is_some() {
                    // Probably the old pod of this name; look for the new one.
                    entry.uid = None;
                    entry.uid_by_name = false;
                    if let Some(waiting) = &mut entry.waiting {
                        waiting.unknown_until = now.checked_add(self.options.unknown_pod_wait);
                    }
                } else {
                    pass = Some((index, "finished"));
                }
            } else if entry.waiting.is_none() && (pod.sandbox_started || release.is_some()) {
                // The pod got its sandbox without a slot (the plugin failed open): its ADD is
                // done and will not come back.
                forget = Some(index);
            }
            break;
        }
        if let Some((index, why)) = pass {
            self.pass_entry(index, why);
        } else if let Some(index) = forget {
            self.queue.remove(index);
            self.dirty = true;
        }
        if resort {
            self.queue.resort();
            self.dirty = true;
        }

        // 3. The pod's slot, if it holds one: release it if a rule says so.
        let mine = |s: &Slot| s.uid.as_deref() == Some(pod.uid.as_str());
        for slot in self.slots.iter_mut().filter(|s| mine(s)) {
            slot.seen = true;
        }
        let reason = if skip.is_some() {
            Some(ReleaseReason::Skip)
        } else {
            release
        };
        if let Some(reason) = reason {
            if let Some(detail) = pod
                .release_detail
                .as_ref()
                .filter(|_| self.slots.iter().any(mine))
            {
                debug!("pod={} uid={} {detail}", pod.full_name(), pod.uid);
            }
            self.release_where(reason, now, mine);
        }
    }

    /// The pod with `uid` is gone from the API: its entries go, a waiting client passes (the
    /// kubelet tears the sandbox down), unless the UID was only looked up by name, in which case
    /// the entry looks for the new pod of that name.
    fn pod_gone(&mut self, uid: &str, now: Instant) {
        let Some(index) = self
            .queue
            .iter()
            .position(|e| e.uid.as_deref() == Some(uid))
        else {
            return;
        };
        self.dirty = true;
        let unknown_wait = self.options.unknown_pod_wait;
        let Some(entry) = self.queue.get_mut(index) else {
            return;
        };
        match &mut entry.waiting {
            Some(waiting) if entry.uid_by_name => {
                entry.uid = None;
                entry.uid_by_name = false;
                waiting.unknown_until = now.checked_add(unknown_wait);
            }
            Some(_) => self.pass_entry(index, "gone"),
            None => {
                self.queue.remove(index);
            }
        }
    }

    /// Makes one entry of several for the same pod (bound by name and by UID separately): the one
    /// that comes first keeps its place and takes the newest waiting client; an older client is
    /// told it was superseded.
    fn merge_entries(&mut self, uid: &str) {
        let count = self
            .queue
            .iter()
            .filter(|e| e.uid.as_deref() == Some(uid))
            .count();
        if count < 2 {
            return;
        }
        debug!("merging {count} queue entries of pod uid={uid}");
        self.dirty = true;
        let mut dups = self.queue.take_where(|e| e.uid.as_deref() == Some(uid));
        dups.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut merged: Option<Entry> = None;
        for entry in dups {
            let Some(first) = &mut merged else {
                merged = Some(entry);
                continue;
            };
            first.uid_by_name &= entry.uid_by_name;
            first.seen |= entry.seen;
            if let Some(waiting) = entry.waiting {
                if let Some(old) = first.waiting.replace(waiting) {
                    self.outbox.push((old.conn, Err(AgentError::Superseded)));
                }
                first.forget_at = None;
                first.ghost_until = None;
            }
        }
        if let Some(entry) = merged {
            self.queue.insert(entry);
        }
    }

    /// Removes the entry at `index`; a waiting client is granted without a slot.
    fn pass_entry(&mut self, index: usize, why: &str) {
        let entry = self.queue.remove(index);
        self.dirty = true;
        if let Some(waiting) = &entry.waiting {
            info!(
                "grant pod={} uid={} reason=skip skip={why}",
                entry.full_name(),
                entry.uid.as_deref().unwrap_or("-")
            );
            self.reply(waiting.conn, granted(GrantReason::Skip));
        }
    }

    /// Applies the state file at the first pod list: holders whose pods still need a slot, and
    /// the queue (see the module docs).
    fn restore(&mut self, now: Instant) {
        let Some(restored) = self.restored.take() else {
            return;
        };
        let grace_end = (restored.age < GHOST_MAX_AGE)
            .then(|| now.checked_add(self.options.restart_grace))
            .flatten();

        // 1. Holders, unless their pod is gone, not paced, or released meanwhile.
        let mut holders = 0;
        for h in restored.holders {
            let pod = h.uid.as_ref().and_then(|u| self.pods.get(u));
            let done = match (&h.uid, pod) {
                // Seen before and missing now: gone. Never seen: it may never show up (a static
                // pod without a mirror); the lease bounds it.
                (Some(_), None) if h.seen => Some("gone"),
                (Some(_), None) => None,
                (_, Some(pod)) if pod.skip_reason(&self.options.skip).is_some() => Some("skip"),
                (_, Some(pod)) => pod
                    .release_reason(self.options.release_on)
                    .map(ReleaseReason::as_str),
                (None, None) => None,
            };
            if let Some(why) = done {
                info!(
                    "not restoring holder pod={}/{} uid={}: {why}",
                    h.namespace,
                    h.name,
                    h.uid.as_deref().unwrap_or("-")
                );
                continue;
            }
            let seen = h.seen || pod.is_some();
            let seq = self.next_seq();
            self.slots.push(Slot {
                uid: h.uid,
                namespace: h.namespace,
                name: h.name,
                since: h.granted,
                via: None,
                seen,
                arrival: h.arrival,
                created: h.created,
                priority: h.priority,
                seq,
            });
            holders += 1;
        }

        // 2. Queue entries, unless their pod is gone or done. Waiters become ghosts: the entries
        //    behind them wait for them to reconnect, for the grace time.
        let mut waiters = 0;
        let mut positions = 0;
        for e in restored.queue {
            let pod = e.uid.as_ref().and_then(|u| self.pods.get(u));
            let drop = match (&e.uid, pod) {
                (Some(_), None) => e.seen && !e.uid_by_name,
                (_, Some(pod)) => {
                    pod.skip_reason(&self.options.skip).is_some()
                        || pod.is_finished()
                        || pod.sandbox_started
                        || pod.release_reason(self.options.release_on).is_some()
                }
                (None, None) => false,
            };
            if drop {
                continue;
            }
            let (priority, created) =
                pod.map_or((e.priority, e.created), |p| (p.priority, p.created.clone()));
            let seen = e.seen || pod.is_some();
            let ghost_until = if e.waiting { grace_end } else { None };
            waiters += usize::from(ghost_until.is_some());
            positions += 1;
            let seq = self.next_seq();
            self.queue.insert(Entry {
                uid: e.uid,
                uid_by_name: e.uid_by_name,
                namespace: e.namespace,
                name: e.name,
                seen,
                priority,
                created,
                arrival: e.arrival,
                seq,
                waiting: None,
                forget_at: e
                    .forget_at
                    .or_else(|| now.checked_add(self.options.position_memory)),
                ghost_until,
            });
        }
        info!(
            "restored {holders} holders and {positions} queue positions from the state file \
             (saved {} s ago); {waiters} waiters get {} ms to reconnect",
            restored.age.as_secs(),
            self.options.restart_grace.as_millis()
        );
    }

    /// Counts the started pods of the node as holders, oldest first (see the module docs).
    fn adopt_started_pods(&mut self, now: Instant) {
        let mut started: Vec<&PodInfo> = self
            .pods
            .values()
            .filter(|p| {
                p.sandbox_started
                    && !p.host_network
                    && p.skip_reason(&self.options.skip).is_none()
                    && !p.is_finished()
                    && p.release_reason(self.options.release_on).is_none()
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
        let adopted: Vec<(String, String, String, String, i32)> = started
            .into_iter()
            .map(|pod| {
                (
                    pod.uid.clone(),
                    pod.namespace.clone(),
                    pod.name.clone(),
                    pod.created.clone(),
                    pod.priority,
                )
            })
            .collect();
        let count = adopted.len();
        for (uid, namespace, name, created, priority) in adopted {
            info!("adopt pod={namespace}/{name} uid={uid} created={created}");
            let seq = self.next_seq();
            self.slots.push(Slot {
                uid: Some(uid),
                namespace,
                name,
                since: now,
                via: None,
                seen: true,
                arrival: now,
                created,
                priority,
                seq,
            });
        }
        info!(
            "rebuilt holders: {} of {} slots held ({count} adopted from the pod list)",
            self.slots.len(),
            self.gates.max_concurrent()
        );
    }

    /// Ends the waits whose time is up: a client's deadline (`timeout`, position kept), the wait
    /// for an unknown pod (the policy decides), the restart grace. Runs before every grant, so a
    /// grant never passes a waiter whose unknown-pod wait is over but not yet ticked.
    fn settle_waits(&mut self, now: Instant) {
        let memory = self.options.position_memory;
        let policy = self.options.unknown_pod_policy;
        let mut passed = Vec::new();
        for (index, entry) in self.queue.iter_mut().enumerate() {
            if let Some(waiting) = &mut entry.waiting {
                if waiting.deadline.is_some_and(|d| now >= d) {
                    debug!(
                        "waiter pod={}/{} conn={} timed out after timeout_ms={}; position kept",
                        entry.namespace, entry.name, waiting.conn, waiting.timeout_ms
                    );
                    self.outbox.push((
                        waiting.conn,
                        Err(AgentError::WaitExpired {
                            timeout_ms: waiting.timeout_ms,
                        }),
                    ));
                    entry.waiting = None;
                    entry.forget_at = now.checked_add(memory);
                    self.dirty = true;
                    continue;
                }
                if waiting.unknown_until.is_some_and(|u| now >= u) {
                    waiting.unknown_until = None;
                    match policy {
                        UnknownPodPolicy::Pace => info!(
                            "pod={}/{} not seen within the unknown-pod wait; pacing it",
                            entry.namespace, entry.name
                        ),
                        UnknownPodPolicy::Skip => passed.push(index),
                    }
                }
            } else if entry.ghost_until.is_some_and(|g| now >= g) {
                debug!(
                    "pod={}/{} did not reconnect after the restart; position kept",
                    entry.namespace, entry.name
                );
                entry.ghost_until = None;
            }
        }
        for index in passed.into_iter().rev() {
            self.pass_entry(index, "unknown-pod");
        }
    }

    /// The index of the entry to serve next, if one may be served: the first waiting client in
    /// order whose pod is known (or whose unknown-pod wait is over), unless a restart ghost comes
    /// before it.
    fn next_eligible(&self, now: Instant) -> Option<usize> {
        for (index, entry) in self.queue.iter().enumerate() {
            match &entry.waiting {
                Some(w) if w.unknown_until.is_some() => continue,
                Some(w) if w.deadline.is_some_and(|d| now >= d) => continue,
                Some(_) => return Some(index),
                None if entry.ghost_until.is_some_and(|g| now < g) => return None,
                None => continue,
            }
        }
        None
    }

    /// Grants free slots in queue order, one waiter per slot, while every gate agrees; then sends
    /// the remaining waiters their new positions.
    fn grant_free_slots(&mut self, now: Instant) {
        self.settle_waits(now);
        while let Some(index) = self.next_eligible(now) {
            if self.gates.try_acquire(self.slots.len(), now).is_err() {
                break;
            }
            let entry = self.queue.remove(index);
            let Some(waiting) = entry.waiting else {
                continue;
            };
            let seen = entry
                .uid
                .as_ref()
                .is_some_and(|u| self.pods.contains_key(u));
            info!(
                "grant pod={}/{} uid={} reason=slot waited_ms={} holders={}/{} priority={}",
                entry.namespace,
                entry.name,
                entry.uid.as_deref().unwrap_or("-"),
                now.saturating_duration_since(entry.arrival).as_millis(),
                self.slots.len() + 1,
                self.gates.max_concurrent(),
                entry.priority
            );
            self.slots.push(Slot {
                uid: entry.uid,
                namespace: entry.namespace,
                name: entry.name,
                since: now,
                via: Some(waiting.conn),
                seen,
                arrival: entry.arrival,
                created: entry.created,
                priority: entry.priority,
                seq: entry.seq,
            });
            self.dirty = true;
            self.reply(waiting.conn, granted(GrantReason::Slot));
        }
        self.report_positions(now);
    }

    /// Sends QUEUED to each waiter whose position changed since it was last told, at most once
    /// per `position_interval`; a held-back update is sent when its interval is over.
    fn report_positions(&mut self, now: Instant) {
        let holders = count(self.slots.len());
        let limit = count(self.gates.max_concurrent());
        let interval = self.options.position_interval;
        let mut position: u32 = 0;
        let mut due: Option<Instant> = None;
        for entry in self.queue.iter_mut() {
            if !entry.counts(now) {
                continue;
            }
            position += 1;
            let Some(waiting) = &mut entry.waiting else {
                continue;
            };
            if waiting.reported == position {
                continue;
            }
            match waiting.quiet_until {
                Some(quiet) if now < quiet => {
                    due = Some(due.map_or(quiet, |d| d.min(quiet)));
                }
                _ => {
                    waiting.reported = position;
                    waiting.quiet_until = now.checked_add(interval).filter(|_| !interval.is_zero());
                    self.outbox.push((
                        waiting.conn,
                        Ok(Reply::Queued {
                            position,
                            holders,
                            limit,
                        }),
                    ));
                }
            }
        }
        self.report_due = due;
    }

    /// Releases every slot `which` selects, logging one line each; returns them.
    fn release_where(
        &mut self,
        reason: ReleaseReason,
        now: Instant,
        which: impl Fn(&Slot) -> bool,
    ) -> Vec<Slot> {
        let mut kept = Vec::with_capacity(self.slots.len());
        let mut released = Vec::new();
        for slot in std::mem::take(&mut self.slots) {
            if !which(&slot) {
                kept.push(slot);
                continue;
            }
            let uid = slot.uid.as_deref().unwrap_or("-");
            info!(
                "release pod={} uid={uid} reason={reason} held_ms={}",
                slot.full_name(),
                now.saturating_duration_since(slot.since).as_millis()
            );
            #[cfg(test)]
            self.released.push((uid.to_owned(), reason));
            released.push(slot);
        }
        if !released.is_empty() {
            self.dirty = true;
        }
        self.slots = kept;
        released
    }

    fn reply(&mut self, conn: ConnId, reply: Reply) {
        self.outbox.push((conn, Ok(reply)));
    }
}

/// Whether a slot or queue entry keyed by (`held_uid`, namespace, name) is for the pod a request
/// names ([`same_pod`]); besides, a request without UID that the cache could not resolve matches
/// an entry by name when the entry's UID is not a pod the agent knows either (both are the pod
/// the agent has not seen yet), but never a known pod of that name (an old pod being deleted).
fn request_matches(
    pods: &HashMap<String, PodInfo>,
    held_uid: Option<&str>,
    held_namespace: &str,
    held_name: &str,
    uid: Option<&str>,
    namespace: &str,
    name: &str,
) -> bool {
    match (held_uid, uid) {
        (Some(held), None) if !pods.contains_key(held) => {
            held_namespace == namespace && held_name == name
        }
        _ => same_pod(held_uid, held_namespace, held_name, uid, namespace, name),
    }
}

fn granted(reason: GrantReason) -> Reply {
    Reply::Granted { reason }
}

/// A count for a protocol field; the counts here are far below `u32::MAX`.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
