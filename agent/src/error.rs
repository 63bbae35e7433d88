// SPDX-License-Identifier: Apache-2.0
//! The agent's error type, and the one place that turns an error into a protocol `ERROR` reply.
//!
//! [`AgentError`] covers start-up (building the API client, binding the socket, starting threads)
//! and the failures of one socket request. Messages are lowercase without a final period, and
//! name what failed with the path or value involved. [`error_code`] is the only function that
//! picks a protocol [`ErrorCode`]; nothing else in the agent chooses codes. Command-line errors
//! are `config::ConfigError`, and API errors are `kube::KubeError`: the API client retries those
//! itself, so they never reach a client and need no code.

use std::fmt;
use std::io;
use std::path::PathBuf;

use pod_pacemaker::protocol::{DecodeError, ErrorCode, Reply, VERSION_LINE};

use crate::kube::KubeError;

#[derive(Debug)]
pub enum AgentError {
    /// Building the API client failed (the CA file).
    BuildKubeClient(KubeError),
    /// A client's version line or request did not read or parse.
    BadRequest(DecodeError),
    /// Binding the listening socket under its temporary name failed.
    BindSocket { path: PathBuf, source: io::Error },
    /// Creating the socket's parent directory failed.
    CreateSocketDir { path: PathBuf, source: io::Error },
    /// Installing the SIGTERM/SIGINT handler failed.
    InstallSignalHandler(io::Error),
    /// Something other than a socket is at the socket path; the agent does not delete it.
    NotASocket { path: PathBuf },
    /// Removing a stale socket (or a leftover temporary one) failed.
    RemoveStaleSocket { path: PathBuf, source: io::Error },
    /// Moving the bound socket to its final path failed.
    RenameSocket {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    /// Setting mode 0600 on the socket failed.
    SetSocketMode { path: PathBuf, source: io::Error },
    /// The throttle settings cannot be resolved for this node (`perCore` without a CPU count).
    Throttle(crate::config::throttle::ThrottleError),
    /// `--status`: asking the running agent failed (it is the client here).
    QueryStatus { path: PathBuf, problem: String },
    /// The client did not send its version line and request within the deadline; `line` is the
    /// one that was incomplete.
    RequestTimedOut {
        line: &'static str,
        after: std::time::Duration,
    },
    /// The scheduler thread did not answer a `STATUS` within this time (it is busy); the agent
    /// is not stopping.
    SchedulerSlow { waited: std::time::Duration },
    /// The agent is stopping; the client should retry on a new connection.
    ShuttingDown,
    /// Starting a thread failed.
    SpawnThread {
        name: &'static str,
        source: io::Error,
    },
    /// A newer WAIT for the same pod took this waiter's place in the queue.
    Superseded,
    /// The agent serves this many connections already.
    TooManyConnections { limit: usize },
    /// The client's version line names a version this agent does not speak.
    UnsupportedVersion(String),
    /// The waiter's `timeout_ms` passed before it got a slot.
    WaitExpired { timeout_ms: u64 },
}

/// The protocol error code for `err`; the only place that picks one (STYLE.md habit 4).
///
/// The match has no catch-all, so a new variant must be given a code here. Start-up errors never
/// reach a client; they map to `internal` only to keep the match total.
pub fn error_code(err: &AgentError) -> ErrorCode {
    match err {
        AgentError::BadRequest(DecodeError::LineTooLong) => ErrorCode::LineTooLong,
        AgentError::BadRequest(_) | AgentError::RequestTimedOut { .. } => ErrorCode::BadRequest,
        AgentError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        AgentError::ShuttingDown => ErrorCode::ShuttingDown,
        AgentError::Superseded => ErrorCode::Superseded,
        AgentError::TooManyConnections { .. } | AgentError::SchedulerSlow { .. } => ErrorCode::Busy,
        AgentError::WaitExpired { .. } => ErrorCode::Timeout,
        AgentError::QueryStatus { .. }
        | AgentError::Throttle(_)
        | AgentError::BuildKubeClient(_)
        | AgentError::BindSocket { .. }
        | AgentError::CreateSocketDir { .. }
        | AgentError::InstallSignalHandler(_)
        | AgentError::NotASocket { .. }
        | AgentError::RemoveStaleSocket { .. }
        | AgentError::RenameSocket { .. }
        | AgentError::SetSocketMode { .. }
        | AgentError::SpawnThread { .. } => ErrorCode::Internal,
    }
}

/// The `ERROR` reply that tells a client about `err`.
pub fn error_reply(err: &AgentError) -> Reply {
    Reply::Error {
        code: error_code(err),
        message: err.to_string(),
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::BuildKubeClient(err) => write!(f, "building the API client: {err}"),
            AgentError::BadRequest(err) => write!(f, "bad request: {err}"),
            AgentError::BindSocket { path, source } => {
                write!(f, "binding socket {}: {source}", path.display())
            }
            AgentError::CreateSocketDir { path, source } => {
                write!(f, "creating socket directory {}: {source}", path.display())
            }
            AgentError::InstallSignalHandler(err) => {
                write!(f, "installing the SIGTERM/SIGINT handler: {err}")
            }
            AgentError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; not removing it",
                path.display()
            ),
            AgentError::RemoveStaleSocket { path, source } => {
                write!(f, "removing stale socket {}: {source}", path.display())
            }
            AgentError::RenameSocket { from, to, source } => write!(
                f,
                "renaming socket {} to {}: {source}",
                from.display(),
                to.display()
            ),
            AgentError::SetSocketMode { path, source } => {
                write!(
                    f,
                    "setting mode 0600 on socket {}: {source}",
                    path.display()
                )
            }
            AgentError::Throttle(err) => write!(f, "throttle settings: {err}"),
            AgentError::QueryStatus { path, problem } => {
                write!(
                    f,
                    "asking the agent at {} for its status: {problem}",
                    path.display()
                )
            }
            AgentError::RequestTimedOut { line, after } => write!(
                f,
                "request timed out: the {line} was not complete within {} s",
                after.as_secs()
            ),
            AgentError::SchedulerSlow { waited } => write!(
                f,
                "the scheduler did not answer within {} s; try again",
                waited.as_secs()
            ),
            AgentError::ShuttingDown => f.write_str("agent is shutting down"),
            AgentError::SpawnThread { name, source } => {
                write!(f, "starting thread {name}: {source}")
            }
            AgentError::Superseded => {
                f.write_str("a newer wait for the same pod took this one's place")
            }
            AgentError::TooManyConnections { limit } => {
                write!(f, "too many connections (limit {limit})")
            }
            AgentError::UnsupportedVersion(line) => {
                write!(
                    f,
                    "unsupported version {line:?}, this agent speaks {VERSION_LINE}"
                )
            }
            AgentError::WaitExpired { timeout_ms } => write!(
                f,
                "no slot within timeout_ms={timeout_ms}; the pod keeps its place for a retry"
            ),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::BuildKubeClient(err) => Some(err),
            AgentError::BadRequest(err) => Some(err),
            AgentError::BindSocket { source, .. }
            | AgentError::CreateSocketDir { source, .. }
            | AgentError::RemoveStaleSocket { source, .. }
            | AgentError::RenameSocket { source, .. }
            | AgentError::SetSocketMode { source, .. }
            | AgentError::SpawnThread { source, .. }
            | AgentError::InstallSignalHandler(source) => Some(source),
            AgentError::Throttle(err) => Some(err),
            AgentError::NotASocket { .. }
            | AgentError::QueryStatus { .. }
            | AgentError::RequestTimedOut { .. }
            | AgentError::SchedulerSlow { .. }
            | AgentError::ShuttingDown
            | AgentError::Superseded
            | AgentError::TooManyConnections { .. }
            | AgentError::UnsupportedVersion(_)
            | AgentError::WaitExpired { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_protocol() {
        let cases = [
            (
                AgentError::BadRequest(DecodeError::LineTooLong),
                ErrorCode::LineTooLong,
            ),
            (
                AgentError::BadRequest(DecodeError::UnknownVerb("HELLO".to_owned())),
                ErrorCode::BadRequest,
            ),
            (
                AgentError::UnsupportedVersion("pod-pacemaker/9".to_owned()),
                ErrorCode::UnsupportedVersion,
            ),
            (
                AgentError::RequestTimedOut {
                    line: "request line",
                    after: std::time::Duration::from_secs(5),
                },
                ErrorCode::BadRequest,
            ),
            (AgentError::ShuttingDown, ErrorCode::ShuttingDown),
            (AgentError::TooManyConnections { limit: 1 }, ErrorCode::Busy),
            (
                AgentError::SchedulerSlow {
                    waited: std::time::Duration::from_secs(5),
                },
                ErrorCode::Busy,
            ),
            (AgentError::Superseded, ErrorCode::Superseded),
            (
                AgentError::WaitExpired { timeout_ms: 5 },
                ErrorCode::Timeout,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(error_code(&err), code, "{err}");
        }
    }

    #[test]
    fn messages_are_lowercase_without_final_period() {
        let errors = [
            AgentError::BadRequest(DecodeError::MissingField("namespace")),
            AgentError::ShuttingDown,
            AgentError::Superseded,
            AgentError::WaitExpired { timeout_ms: 5 },
            AgentError::UnsupportedVersion("x".to_owned()),
            AgentError::NotASocket {
                path: PathBuf::from("/run/x.sock"),
            },
        ];
        for err in errors {
            let text = err.to_string();
            assert!(!text.ends_with('.'), "{text}");
            assert!(
                text.chars().next().is_some_and(|c| !c.is_uppercase()),
                "{text}"
            );
        }
    }

    #[test]
    fn reply_names_the_problem() {
        let reply = error_reply(&AgentError::BadRequest(DecodeError::UnknownVerb(
            "HELLO".to_owned(),
        )));
        let Reply::Error { code, message } = reply else {
            panic!("not an error reply");
        };
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("HELLO"), "{message}");
    }
}
