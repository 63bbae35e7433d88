// SPDX-License-Identifier: Apache-2.0
//! The queue: every pod the agent has seen ask for a slot and not granted yet, in serving order.
//!
//! An [`Entry`] is one pod. While a client waits for it, it carries a [`Waiting`]; when the client
//! leaves (closed, timed out, or the agent restarted) the entry stays as a remembered position for
//! a bounded time, so that the runtime's retry of the same pod takes the place it had
//! (docs/prior-art.md W9). The order is [`Entry::key`]: higher `spec.priority` first, then the instant the
//! agent first saw a request for the pod, then the pod's creation time, then a sequence number
//! that makes the order total. The queue is a vector kept sorted by that key: a node has at most a
//! few thousand entries, and every operation that walks it walks it once.

use std::cmp::Reverse;
use std::time::Instant;

use super::ConnId;

/// One pod in the queue.
#[derive(Debug)]
pub struct Entry {
    /// The pod's API UID; `None` while a WAIT without UID names a pod the agent has not seen.
    pub uid: Option<String>,
    /// The UID was looked up by name rather than sent by the runtime, so it may be the wrong
    /// pod of that name (an old StatefulSet pod) and is looked up again if that pod goes away.
    pub uid_by_name: bool,
    pub namespace: String,
    pub name: String,
    /// Whether the pod has been in the agent's cache while queued; only then does its absence
    /// from a pod list mean it is gone.
    pub seen: bool,
    pub priority: i32,
    /// `metadata.creationTimestamp`, RFC 3339; empty while unknown.
    pub created: String,
    /// When the agent first saw a request for this pod.
    pub arrival: Instant,
    pub seq: u64,
    /// `Some` while a client waits.
    pub waiting: Option<Waiting>,
    /// While no client waits: when the remembered position is dropped.
    pub forget_at: Option<Instant>,
    /// While no client waits after an agent restart: the entries behind this one are not served
    /// before this instant, so that the clients that were waiting can reconnect in any order and
    /// still be served in their old order.
    pub ghost_until: Option<Instant>,
}

/// A client waiting for an entry's pod.
#[derive(Debug)]
pub struct Waiting {
    pub conn: ConnId,
    /// The client's `timeout_ms` as an instant.
    pub deadline: Option<Instant>,
    pub timeout_ms: u64,
    /// While the agent has not seen the pod: until when it waits for it before the unknown-pod
    /// policy decides. Such an entry keeps its place but is not served.
    pub unknown_until: Option<Instant>,
    /// The last position sent in a QUEUED line; 0 before the first.
    pub reported: u32,
    /// No QUEUED line before this instant (position updates are coalesced).
    pub quiet_until: Option<Instant>,
}

/// The sort key; smaller is served first. An unknown creation time sorts after every known one.
pub type Key<'a> = (Reverse<i32>, Instant, bool, &'a str, u64);

impl Entry {
    pub fn key(&self) -> Key<'_> {
        (
            Reverse(self.priority),
            self.arrival,
            self.created.is_empty(),
            self.created.as_str(),
            self.seq,
        )
    }

    /// Whether the entry holds a place the entries behind it must respect: a waiting client, or a
    /// client expected back after a restart.
    pub fn counts(&self, now: Instant) -> bool {
        self.waiting.is_some() || self.ghost_until.is_some_and(|until| now < until)
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The entries, sorted by [`Entry::key`].
#[derive(Debug, Default)]
pub struct Queue {
    entries: Vec<Entry>,
}

impl Queue {
    pub fn insert(&mut self, entry: Entry) {
        let at = self.entries.partition_point(|e| e.key() < entry.key());
        self.entries.insert(at, entry);
    }

    pub fn remove(&mut self, index: usize) -> Entry {
        self.entries.remove(index)
    }

    /// The entry a client on `conn` waits for.
    pub fn find_conn(&self, conn: ConnId) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.waiting.as_ref().is_some_and(|w| w.conn == conn))
    }

    /// Restores the order after priorities or creation times changed.
    pub fn resort(&mut self) {
        self.entries.sort_by(|a, b| a.key().cmp(&b.key()));
    }

    /// Removes and returns the entries `which` selects, keeping the order of the rest.
    pub fn take_where(&mut self, mut which: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.entries.len());
        for entry in std::mem::take(&mut self.entries) {
            if which(&entry) {
                taken.push(entry);
            } else {
                kept.push(entry);
            }
        }
        self.entries = kept;
        taken
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut Entry> {
        self.entries.get_mut(index)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Entry> {
        self.entries.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the entries are in key order; for the tests' invariants.
    #[cfg(test)]
    pub fn is_sorted(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].key() <= w[1].key())
    }
}

/// Whether an entry or slot keyed by (`held_uid`, namespace, name) is for the pod a request names.
/// A UID matches only the same UID; an entry without UID matches by name, so that a later request
/// or pod with the UID binds it. A request without UID whose name the cache could not resolve
/// never matches an entry with a UID: that entry is another pod of the same name (an old
/// StatefulSet pod), or the request would have resolved to it.
pub fn same_pod(
    held_uid: Option<&str>,
    held_namespace: &str,
    held_name: &str,
    uid: Option<&str>,
    namespace: &str,
    name: &str,
) -> bool {
    match (held_uid, uid) {
        (Some(held), Some(uid)) => held == uid,
        (Some(_), None) => false,
        (None, _) => held_namespace == namespace && held_name == name,
    }
}
