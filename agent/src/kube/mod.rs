// SPDX-License-Identifier: Apache-2.0
//! Keeps the scheduler's view of this node's pods current: list, then watch, forever.
//!
//! [`run`] is the body of the `agent-watch` thread. It lists the node's pods (in pages), sends the
//! snapshot as [`KubeEvent::Resynced`], then watches from the list's resource version with
//! bookmarks and sends each change. Which failure leads where (docs/kube-client.md has the table):
//!
//! - the server ends the watch (its `timeoutSeconds`) or the connection breaks: watch again from
//!   the last resource version seen (event or bookmark); nothing is missed, nothing relisted;
//! - 410 Gone (the version was compacted away): relist at once. The scheduler replaces its cache
//!   with the list, which is how deletions during the gap are found (there are no tombstones to
//!   mishandle, docs/prior-art.md W7, F15); this loop logs what the relist changed;
//! - a watch that delivers no byte for the silence bound is dead (half-open after an API server
//!   restart): it is dropped and reopened from the last version;
//! - any other failure (connect, TLS, 401, 429, 5xx, a broken event): wait out a capped, jittered
//!   backoff, or the server's `Retry-After` when that is longer, then try again. An event that
//!   cannot be decoded at all forces a relist, because watching again would meet it again.
//!
//! Every failure is logged and retried; this loop returns only when the scheduler is gone.
//!
//! Submodules: `access` (server, CA, token), `kubeconfig`, `client` (HTTPS transport), `watch`
//! (decoding), `model` (the Pod API slice), `cache` (the loop's record of the pods), `backoff`,
//! `writes` (Node patches and Events).

mod access;
mod backoff;
mod cache;
mod client;
mod kubeconfig;
pub mod model;
pub mod watch;
// The Node and Event writes are for the agent's next features (docs/kube-client.md).
#[allow(dead_code)]
pub mod writes;

#[cfg(test)]
mod testserver;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use backoff::Backoff;
use cache::PodCache;
pub use client::KubeClient;
use watch::{StreamEnd, WatchEvent};

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
    /// The watch delivered a bookmark (or another event that changes no pod): every change up to
    /// it has been sent, so the view is current as of now.
    Current,
}

/// Why a call to the API server failed.
#[derive(Debug)]
pub enum KubeError {
    /// The CA holds no usable certificate.
    BadCa { origin: String, problem: String },
    /// The token is empty, not UTF-8, or holds characters a header cannot carry.
    BadToken { origin: String },
    /// A write was refused with 409 Conflict every time it was tried.
    Conflict { what: &'static str, attempts: u32 },
    /// A watch event did not decode.
    DecodeEvent(serde_json::Error),
    /// A pod list did not decode.
    DecodeList(serde_json::Error),
    /// A response to a write or a get did not decode.
    DecodeResponse {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A watch event line is longer than the limit.
    EventTooLong { limit: usize },
    /// The API server answered with an unexpected status.
    HttpStatus {
        what: &'static str,
        status: u16,
        message: String,
        /// The `Retry-After` the server sent, in seconds form.
        retry_after: Option<Duration>,
    },
    /// The kubeconfig cannot be read or describes nothing the agent can use.
    Kubeconfig { path: PathBuf, problem: String },
    /// A pod list has no `metadata.resourceVersion` to watch from.
    ListWithoutVersion,
    /// Reading the CA file failed.
    ReadCa { path: PathBuf, source: io::Error },
    /// Reading a response body failed (connection lost, body timeout).
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
    /// The watch delivered nothing, not even a bookmark, for the silence bound.
    WatchSilent,
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

    /// The delay the server asked for (429, 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server refused the credentials (401).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, KubeError::HttpStatus { status: 401, .. })
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::BadCa { origin, problem } => write!(f, "CA from {origin}: {problem}"),
            KubeError::BadToken { origin } => write!(
                f,
                "token from {origin} is empty or not a valid header value"
            ),
            KubeError::Conflict { what, attempts } => {
                write!(f, "{what}: 409 Conflict on each of {attempts} attempts")
            }
            KubeError::DecodeEvent(err) => write!(f, "decoding a watch event: {err}"),
            KubeError::DecodeList(err) => write!(f, "decoding the pod list: {err}"),
            KubeError::DecodeResponse { what, source } => {
                write!(f, "{what}: decoding the response: {source}")
            }
            KubeError::EventTooLong { limit } => {
                write!(f, "watch event longer than {limit} bytes")
            }
            KubeError::HttpStatus {
                what,
                status,
                message,
                retry_after,
            } => {
                write!(f, "{what}: HTTP status {status}: {message}")?;
                if let Some(delay) = retry_after {
                    write!(f, " (Retry-After {}s)", delay.as_secs())?;
                }
                Ok(())
            }
            KubeError::Kubeconfig { path, problem } => {
                write!(f, "kubeconfig {}: {problem}", path.display())
            }
            KubeError::ListWithoutVersion => f.write_str("pod list has no resourceVersion"),
            KubeError::ReadCa { path, source } => {
                write!(f, "reading CA file {}: {source}", path.display())
            }
            KubeError::ReadBody(err) => write!(f, "reading the response: {err}"),
            KubeError::ReadToken { path, source } => {
                write!(f, "reading token file {}: {source}", path.display())
            }
            KubeError::Request { what, source } => write!(f, "{what}: {source}"),
            KubeError::TruncatedEvent => f.write_str("watch stream ended inside an event"),
            KubeError::WatchSilent => {
                f.write_str("watch stream silent (no event or bookmark) past the bound")
            }
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
            KubeError::DecodeResponse { source, .. } => Some(source),
            KubeError::ReadCa { source, .. } | KubeError::ReadToken { source, .. } => Some(source),
            KubeError::ReadBody(err) => Some(err),
            KubeError::Request { source, .. } => Some(source),
            KubeError::BadCa { .. }
            | KubeError::BadToken { .. }
            | KubeError::Conflict { .. }
            | KubeError::EventTooLong { .. }
            | KubeError::HttpStatus { .. }
            | KubeError::Kubeconfig { .. }
            | KubeError::ListWithoutVersion
            | KubeError::TruncatedEvent
            | KubeError::WatchSilent
            | KubeError::WatchStatus { .. } => None,
        }
    }
}

/// A watch that ends sooner than this without an error is treated like a failure, so that a
/// server that closes every watch at once is not hammered.
const MIN_WATCH: Duration = Duration::from_secs(1);
/// A watch that lived this long proves the server healthy: the backoff starts over.
const HEALTHY_WATCH: Duration = Duration::from_secs(30);

/// Lists and watches forever, passing changes to `sink`; returns when `sink` returns `false`.
/// `cache_file`, if set, receives the loop's record of the pods (see `cache.rs`).
pub fn run(
    client: &KubeClient,
    cache_file: Option<PathBuf>,
    sink: &mut impl FnMut(KubeEvent) -> bool,
) {
    let mut backoff = Backoff::default();
    let mut cache = PodCache::new(cache_file);
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
                    let diff = cache.replace(&pods, &version);
                    cache.flush();
                    if lists == 1 {
                        info!(
                            "synced {} pods of node {} at resourceVersion {version}",
                            pods.len(),
                            client.node()
                        );
                    } else {
                        info!(
                            "resynced {} pods of node {} at resourceVersion {version}: \
                             {} gone, {} new, {} changed since the last view",
                            pods.len(),
                            client.node(),
                            diff.gone,
                            diff.added,
                            diff.changed
                        );
                    }
                    if !sink(KubeEvent::Resynced(
                        pods.into_iter().map(|l| l.pod).collect(),
                    )) {
                        return;
                    }
                    version
                }
                Err(err) => {
                    let delay = backoff.after(&err);
                    if err.is_unauthorized() {
                        warn!("the API server refuses the agent's token (401); check the token and its binding");
                    }
                    warn!("listing pods failed, retrying in {}: {err}", secs(delay));
                    thread::sleep(delay);
                    continue;
                }
            },
        };

        // 2. Watch from that version until the stream ends.
        let started = Instant::now();
        let result = client.watch(&mut version, &mut |event, at| {
            apply(&mut cache, event, at, sink)
        });
        cache.set_version(&version);
        cache.flush();
        let lived = started.elapsed();
        let quick = lived < MIN_WATCH;
        if lived >= HEALTHY_WATCH {
            backoff.reset();
        }
        let was_expired_at_once = std::mem::replace(
            &mut expired_at_once,
            quick && matches!(result, Ok(StreamEnd::Expired)),
        );

        // 3. Decide what comes next.
        match result {
            Ok(StreamEnd::Closed) if !quick => {
                debug!("watch ended, resuming from resourceVersion {version}");
                backoff.reset();
                resume_from = Some(version);
            }
            Ok(StreamEnd::Closed) => {
                let delay = backoff.next();
                warn!(
                    "watch ended at once, resuming in {} from resourceVersion {version}",
                    secs(delay)
                );
                thread::sleep(delay);
                resume_from = Some(version);
            }
            Ok(StreamEnd::Expired) if !(quick && was_expired_at_once) => {
                info!("watch resourceVersion {version} expired (410), relisting");
            }
            Ok(StreamEnd::Expired) => {
                let delay = backoff.next();
                warn!(
                    "watch from a fresh list expired again at once, relisting in {}",
                    secs(delay)
                );
                thread::sleep(delay);
            }
            Ok(StreamEnd::SinkClosed) => return,
            Err(KubeError::WatchSilent) => {
                let delay = backoff.next();
                warn!(
                    "watch silent for {}s (no event or bookmark): dropping it, resuming in {} \
                     from resourceVersion {version}",
                    client.watch_silence().as_secs(),
                    secs(delay)
                );
                thread::sleep(delay);
                resume_from = Some(version);
            }
            Err(err) => {
                let delay = backoff.after(&err);
                if err.is_unauthorized() {
                    // The token is read again before every request and after every 401; a 401
                    // that persists is a revoked token or a missing RBAC binding.
                    warn!("the API server refuses the agent's token (401); check the token and its binding");
                }
                let next = if err.needs_relist() {
                    "relisting"
                } else {
                    resume_from = Some(version);
                    "watching again"
                };
                warn!("watching pods failed, {next} in {}: {err}", secs(delay));
                thread::sleep(delay);
            }
        }
    }
}

/// Records one watch event and passes it on; `false` when the scheduler is gone.
fn apply(
    cache: &mut PodCache,
    event: WatchEvent,
    version: &str,
    sink: &mut impl FnMut(KubeEvent) -> bool,
) -> bool {
    cache.set_version(version);
    let sent = match event {
        WatchEvent::Upsert { pod, version } => {
            cache.upsert(&pod, &version);
            sink(KubeEvent::PodUpsert(pod))
        }
        WatchEvent::Deleted { uid } => {
            cache.delete(&uid);
            sink(KubeEvent::PodDeleted(uid))
        }
        WatchEvent::Bookmark => sink(KubeEvent::Current),
        WatchEvent::Expired => true,
    };
    cache.flush();
    sent
}

/// A delay for a log line, to the tenth of a second.
fn secs(delay: Duration) -> String {
    format!("{:.1}s", delay.as_secs_f64())
}
