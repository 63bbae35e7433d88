// SPDX-License-Identifier: Apache-2.0
//! Keeps the scheduler's view of this node's pods current: list, then watch, forever.
//!
//! [`run`] is the body of the `agent-watch` thread. It lists the node's pods, sends the snapshot
//! as [`KubeEvent::Resynced`], then watches from the list's resource version and sends each change.
//! A watch that ends cleanly is resumed from the last version; an expired version (410) or a
//! broken stream leads to a relist, and the scheduler derives deletions from the new snapshot
//! (there are no tombstones to mishandle, FIELD.md W7). Every failure is logged and retried with
//! a capped backoff; this loop never exits while the scheduler listens.
//!
//! Submodules: `client` (HTTPS transport), `watch` (decoding), `model` (the Pod API slice).

mod client;
pub mod model;
pub mod watch;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

pub use client::KubeClient;
use watch::StreamEnd;

use crate::pod::PodInfo;

/// A change to the node's pods, for the scheduler.
#[derive(Debug, PartialEq, Eq)]
pub enum KubeEvent {
    /// A pod was added or changed.
    PodUpsert(PodInfo),
    /// The pod with this UID was deleted.
    PodDeleted(String),
    /// A full list: every pod of the node. Pods missing from it are gone.
    Resynced(Vec<PodInfo>),
}

/// Why a call to the API server failed.
#[derive(Debug)]
pub enum KubeError {
    /// The CA file holds no usable certificate.
    BadCa { path: PathBuf, problem: String },
    /// The token file is empty or holds characters a header cannot carry.
    BadToken { path: PathBuf },
    /// A watch event did not decode.
    DecodeEvent(serde_json::Error),
    /// A pod list did not decode.
    DecodeList(serde_json::Error),
    /// A watch event line is longer than the limit.
    EventTooLong { limit: usize },
    /// The API server answered with an unexpected status.
    HttpStatus {
        what: &'static str,
        status: u16,
        message: String,
    },
    /// A pod list has no `metadata.resourceVersion` to watch from.
    ListWithoutVersion,
    /// Reading the CA file failed.
    ReadCa { path: PathBuf, source: io::Error },
    /// Reading the watch stream failed (connection lost, body timeout).
    ReadBody(io::Error),
    /// Reading the token file failed.
    ReadToken { path: PathBuf, source: io::Error },
    /// The request failed in transport (connect, TLS, timeout).
    Request {
        what: &'static str,
        source: ureq::Error,
    },
    /// The watch stream ended inside an event.
    TruncatedEvent,
    /// The watch sent an ERROR event other than 410.
    WatchStatus { code: u16, message: String },
}

impl KubeError {
    /// Whether the watch cannot resume from its resource version: the stream was consistent up to
    /// an event that could not be applied, and watching again would meet that event again.
    pub fn needs_relist(&self) -> bool {
        matches!(
            self,
            KubeError::DecodeEvent(_) | KubeError::EventTooLong { .. }
        )
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::BadCa { path, problem } => {
                write!(f, "CA file {}: {problem}", path.display())
            }
            KubeError::BadToken { path } => write!(
                f,
                "token file {} is empty or not a valid header value",
                path.display()
            ),
            KubeError::DecodeEvent(err) => write!(f, "decoding a watch event: {err}"),
            KubeError::DecodeList(err) => write!(f, "decoding the pod list: {err}"),
            KubeError::EventTooLong { limit } => {
                write!(f, "watch event longer than {limit} bytes")
            }
            KubeError::HttpStatus {
                what,
                status,
                message,
            } => write!(f, "{what}: HTTP status {status}: {message}"),
            KubeError::ListWithoutVersion => f.write_str("pod list has no resourceVersion"),
            KubeError::ReadCa { path, source } => {
                write!(f, "reading CA file {}: {source}", path.display())
            }
            KubeError::ReadBody(err) => write!(f, "reading the watch stream: {err}"),
            KubeError::ReadToken { path, source } => {
                write!(f, "reading token file {}: {source}", path.display())
            }
            KubeError::Request { what, source } => write!(f, "{what}: {source}"),
            KubeError::TruncatedEvent => f.write_str("watch stream ended inside an event"),
            KubeError::WatchStatus { code, message } => {
                write!(f, "watch error event (code {code}): {message}")
            }
        }
    }
}

impl std::error::Error for KubeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KubeError::DecodeEvent(err) | KubeError::DecodeList(err) => Some(err),
            KubeError::ReadCa { source, .. } | KubeError::ReadToken { source, .. } => Some(source),
            KubeError::ReadBody(err) => Some(err),
            KubeError::Request { source, .. } => Some(source),
            KubeError::BadCa { .. }
            | KubeError::BadToken { .. }
            | KubeError::EventTooLong { .. }
            | KubeError::HttpStatus { .. }
            | KubeError::ListWithoutVersion
            | KubeError::TruncatedEvent
            | KubeError::WatchStatus { .. } => None,
        }
    }
}

/// A watch that ends sooner than this without an error is treated like a failure, so that a
/// server that closes every watch at once is not hammered.
const MIN_WATCH: Duration = Duration::from_secs(1);

/// Lists and watches forever, passing changes to `sink`; returns when `sink` returns `false`.
pub fn run(client: &KubeClient, sink: &mut impl FnMut(KubeEvent) -> bool) {
    let mut backoff = Backoff::default();
    let mut resume_from: Option<String> = None;
    let mut lists = 0_u64;
    // A watch refused as expired right after a fresh list means the server cannot serve that
    // list's version; relisting again at once would spin.
    let mut expired_at_once = false;
    loop {
        // 1. Relist when there is no version to resume from.
        let mut version = match resume_from.take() {
            Some(version) => version,
            None => match client.list() {
                Ok((pods, version)) => {
                    lists += 1;
                    let what = if lists == 1 { "synced" } else { "resynced" };
                    info!(
                        "{what} {} pods of node {} at resourceVersion {version}",
                        pods.len(),
                        client.node()
                    );
                    if !sink(KubeEvent::Resynced(pods)) {
                        return;
                    }
                    version
                }
                Err(err) => {
                    let delay = backoff.next();
                    warn!(
                        "listing pods failed, retrying in {}s: {err}",
                        delay.as_secs()
                    );
                    thread::sleep(delay);
                    continue;
                }
            },
        };

        // 2. Watch from that version until the stream ends.
        let started = Instant::now();
        let result = client.watch(&mut version, sink);
        let quick = started.elapsed() < MIN_WATCH;
        let was_expired_at_once = std::mem::replace(
            &mut expired_at_once,
            quick && matches!(result, Ok(StreamEnd::Expired)),
        );
        match result {
            Ok(StreamEnd::Closed) if !quick => {
                debug!("watch ended, resuming from resourceVersion {version}");
                backoff.reset();
                resume_from = Some(version);
            }
            Ok(StreamEnd::Closed) => {
                let delay = backoff.next();
                warn!(
                    "watch ended at once, resuming in {}s from resourceVersion {version}",
                    delay.as_secs()
                );
                thread::sleep(delay);
                resume_from = Some(version);
            }
            Ok(StreamEnd::Expired) if !(quick && was_expired_at_once) => {
                info!("watch resourceVersion {version} expired, relisting");
            }
            Ok(StreamEnd::Expired) => {
                let delay = backoff.next();
                warn!(
                    "watch from a fresh list expired again at once, relisting in {}s",
                    delay.as_secs()
                );
                thread::sleep(delay);
            }
            Ok(StreamEnd::SinkClosed) => return,
            Err(err) => {
                let delay = backoff.next();
                let next = if err.needs_relist() {
                    "relisting"
                } else {
                    resume_from = Some(version);
                    "watching again"
                };
                warn!(
                    "watching pods failed, {next} in {}s: {err}",
                    delay.as_secs()
                );
                thread::sleep(delay);
            }
        }
    }
}

/// Doubling retry delay from 1 s to 30 s.
// TODO(#5): add jitter, honour Retry-After, and detect a watch that stays open but silent.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next(), BACKOFF_FIRST);
    }
}
