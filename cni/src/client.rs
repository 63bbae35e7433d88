// SPDX-License-Identifier: Apache-2.0
//! The plugin's side of the socket protocol: ask the agent for a start slot and wait, within a
//! hard deadline.
//!
//! The client decides nothing slow. It reports how the wait ended ([`WaitOutcome`]); the caller
//! turns that into "proceed" or an error according to the config. Every blocking call here is
//! bounded by the deadline: connecting, writing and reading.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{self, GrantReason, Reply, Request, WaitRequest};

/// How long one connect attempt may take. A Unix connect only blocks when the agent's listen
/// backlog is full, which means the agent is wedged.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between reconnect attempts after the agent went away mid-wait.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// How a wait for a slot ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The agent let the pod start.
    Granted(GrantReason),
    /// The agent could not be reached at all (no socket, refused, or wedged on connect).
    Unreachable(String),
    /// The deadline passed before a grant; `last_error` says why the last attempt ended if it
    /// ended early (agent restart, protocol error), `None` if we were simply queued.
    DeadlinePassed { last_error: Option<String> },
    /// The agent answered with something that is not a grant and retrying will not help.
    Refused(String),
}

/// Asks the agent at `socket` for a slot and waits until `deadline`.
///
/// An agent that cannot be reached is retried until the instant `connect_until` returns (the
/// caller returns one in the past when the agent has been gone for long, so that the pod passes
/// at once), then the wait ends with [`WaitOutcome::Unreachable`]. `connect_until` is asked only
/// when a first connect fails, so a reachable agent costs no more than the connect. Once the agent has accepted the request, losing the
/// connection (agent restart) leads to reconnects until the deadline, so the pod keeps its place
/// in the agent's queue.
pub fn wait_for_slot(
    socket: &Path,
    request: &WaitRequest,
    connect_until: &dyn Fn() -> Instant,
    deadline: Instant,
) -> WaitOutcome {
    let mut accepted_once = false;
    let mut retry_connect_until = None;
    let mut last_error = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return WaitOutcome::DeadlinePassed { last_error };
        }
        let mut request = request.clone();
        request.timeout_ms = Some(millis(deadline - now));

        match attempt(socket, &Request::Wait(request), deadline) {
            Attempt::Done(outcome) => return outcome,
            Attempt::ConnectFailed(reason)
                if !accepted_once
                    && now >= *retry_connect_until.get_or_insert_with(connect_until) =>
            {
                return WaitOutcome::Unreachable(reason);
            }
            Attempt::ConnectFailed(reason) => {
                log::debug!("reconnect failed: {reason}");
                last_error = Some(reason);
            }
            Attempt::Lost(reason) => {
                log::info!("connection to agent lost, reconnecting: {reason}");
                accepted_once = true;
                last_error = Some(reason);
            }
        }
        let pause = RECONNECT_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
        thread::sleep(pause);
    }
}

enum Attempt {
    ConnectFailed(String),
    Done(WaitOutcome),
    Lost(String),
}

/// One connection: send the request, read replies until a final one or the deadline.
fn attempt(socket: &Path, request: &Request, deadline: Instant) -> Attempt {
    let stream = match connect(socket, deadline) {
        Ok(stream) => stream,
        Err(reason) => return Attempt::ConnectFailed(reason),
    };

    // 1. Send the version line and the request in one write.
    let mut out = protocol::version_line();
    out.push_str(&request.encode());
    let mut writer = &stream;
    if let Err(err) =
        set_timeouts(&stream, deadline).and_then(|()| writer.write_all(out.as_bytes()))
    {
        return Attempt::Lost(format!("sending request: {err}"));
    }

    // 2. The agent's version line. Every read from here on is bounded by the deadline.
    let mut reader = BufReader::new(DeadlineReader {
        stream: &stream,
        deadline,
    });
    match read_reply_line(&mut reader) {
        Ok(line) if protocol::check_version(&line) => {}
        Ok(line) => match Reply::decode(&line) {
            Ok(Reply::Error { code, message }) => {
                return Attempt::Done(WaitOutcome::Refused(format!("{code}: {message}")));
            }
            _ => {
                return Attempt::Done(WaitOutcome::Refused(format!(
                    "agent does not speak {}: {line:?}",
                    protocol::VERSION_LINE
                )));
            }
        },
        Err(end) => return end.into(),
    }

    // 3. Replies until a final one.
    loop {
        let line = match read_reply_line(&mut reader) {
            Ok(line) => line,
            Err(end) => return end.into(),
        };
        match Reply::decode(&line) {
            Ok(Reply::Queued {
                position,
                holders,
                limit,
            }) => {
                log::debug!("queued at position {position}, {holders}/{limit} slots held");
            }
            Ok(Reply::Granted { reason }) => return Attempt::Done(WaitOutcome::Granted(reason)),
            Ok(Reply::Error {
                code: protocol::ErrorCode::ShuttingDown | protocol::ErrorCode::Busy,
                message,
            }) => return Attempt::Lost(format!("agent shutting down or busy: {message}")),
            // The agent ends the wait a moment before our deadline and keeps the pod's place.
            Ok(Reply::Error {
                code: protocol::ErrorCode::Timeout,
                ..
            }) => return Attempt::Done(WaitOutcome::DeadlinePassed { last_error: None }),
            Ok(Reply::Error { code, message }) => {
                return Attempt::Done(WaitOutcome::Refused(format!("{code}: {message}")));
            }
            Ok(Reply::Pong) => {
                return Attempt::Done(WaitOutcome::Refused("PONG in answer to WAIT".to_owned()));
            }
            Err(err) => {
                return Attempt::Done(WaitOutcome::Refused(format!(
                    "reply {line:?} does not parse: {err}"
                )));
            }
        }
    }
}

enum ReadEnd {
    /// The deadline passed.
    Deadline,
    /// The line is not one the protocol allows; the agent is not speaking our protocol.
    Garbage(String),
    /// The connection ended or failed; a reconnect may help.
    Lost(String),
}

impl From<ReadEnd> for Attempt {
    fn from(end: ReadEnd) -> Self {
        match end {
            ReadEnd::Deadline => Attempt::Done(WaitOutcome::DeadlinePassed { last_error: None }),
            ReadEnd::Garbage(reason) => Attempt::Done(WaitOutcome::Refused(reason)),
            ReadEnd::Lost(reason) => Attempt::Lost(reason),
        }
    }
}

/// A reader whose every read waits at most until one overall deadline, so that a peer sending a
/// byte at a time cannot stretch the wait: a socket read timeout alone bounds each read, not the
/// line.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

fn read_reply_line(reader: &mut BufReader<DeadlineReader<'_>>) -> Result<String, ReadEnd> {
    match protocol::read_line(reader) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(ReadEnd::Lost("agent closed the connection".to_owned())),
        Err(protocol::DecodeError::Io(err))
            if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            Err(ReadEnd::Deadline)
        }
        Err(err @ (protocol::DecodeError::Io(_) | protocol::DecodeError::MissingNewline)) => {
            Err(ReadEnd::Lost(err.to_string()))
        }
        Err(err) => Err(ReadEnd::Garbage(format!("unreadable reply: {err}"))),
    }
}

/// Bounds the next read and write by the deadline. Fails when the deadline has passed (a zero
/// timeout would mean "block forever" to the socket API).
fn set_timeouts(stream: &UnixStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// Connects with a bound. std has no connect timeout for Unix sockets, so the connect runs on a
/// helper thread; if it does not finish in time the thread is left behind and dies with the
/// process, which exits right after the wait.
fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, String> {
    let bound = CONNECT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    let path = PathBuf::from(socket);
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("connect".to_owned())
        .spawn(move || {
            // The receiver may be gone after a timeout; nothing is left to tell then.
            let _ = tx.send(UnixStream::connect(&path));
        });
    if let Err(err) = spawned {
        return Err(format!("spawning connect thread: {err}"));
    }
    match rx.recv_timeout(bound) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(format!("connecting to {}: {err}", socket.display())),
        Err(_) => Err(format!(
            "connecting to {} took longer than {} ms",
            socket.display(),
            bound.as_millis()
        )),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Token;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn request() -> WaitRequest {
        WaitRequest {
            namespace: Token::new("ns").expect("token"),
            name: Token::new("pod").expect("token"),
            uid: None,
            timeout_ms: None,
        }
    }

    /// A socket path in a directory of its own, removed with everything in it on drop.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ppm-client-{}-{name}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::remove_file(dir.join("s.sock"));
            Self(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("s.sock")
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A one-connection agent that answers with `replies` after reading two lines.
    fn fake_agent(path: &Path, replies: &'static str) -> thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).expect("bind");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(&stream);
            let mut lines = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read");
                lines.push(line);
            }
            (&stream).write_all(replies.as_bytes()).expect("write");
            thread::sleep(Duration::from_millis(300));
            lines
        })
    }

    #[test]
    fn missing_socket_is_unreachable_at_once() {
        let start = Instant::now();
        let outcome = wait_for_slot(
            Path::new("/nonexistent/ppm.sock"),
            &request(),
            &|| start,
            start + Duration::from_secs(30),
        );
        assert!(
            matches!(outcome, WaitOutcome::Unreachable(_)),
            "{outcome:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn restarting_agent_is_waited_for_until_connect_until() {
        let dir = TempSocket::new("restart");
        let path = dir.path();
        let later = path.clone();
        let agent = thread::spawn(move || {
            thread::sleep(Duration::from_millis(400));
            fake_agent(&later, "pod-pacemaker/1\nGRANTED reason=slot\n").join()
        });
        let start = Instant::now();
        let outcome = wait_for_slot(
            &path,
            &request(),
            &|| start + Duration::from_secs(5),
            start + Duration::from_secs(10),
        );
        assert_eq!(outcome, WaitOutcome::Granted(GrantReason::Slot));
        assert!(agent.join().is_ok());
    }

    #[test]
    fn grant_after_queueing() {
        let dir = TempSocket::new("grant");
        let path = dir.path();
        let agent = fake_agent(
            &path,
            "pod-pacemaker/1\nQUEUED position=1 holders=2 limit=2\nGRANTED reason=slot\n",
        );
        let outcome = wait_for_slot(
            &path,
            &request(),
            &Instant::now,
            Instant::now() + Duration::from_secs(10),
        );
        assert_eq!(outcome, WaitOutcome::Granted(GrantReason::Slot));
        let lines = agent.join().expect("agent thread");
        assert_eq!(lines[0], "pod-pacemaker/1\n");
        assert!(lines[1].starts_with("WAIT namespace=ns name=pod timeout_ms="));
    }

    #[test]
    fn garbage_reply_is_refused_not_granted() {
        let dir = TempSocket::new("garbage");
        let path = dir.path();
        let _agent = fake_agent(&path, "pod-pacemaker/1\nGRANTED-ISH yes\n");
        let outcome = wait_for_slot(
            &path,
            &request(),
            &Instant::now,
            Instant::now() + Duration::from_secs(10),
        );
        assert!(matches!(outcome, WaitOutcome::Refused(_)), "{outcome:?}");
    }

    #[test]
    fn agent_timeout_reply_is_the_deadline() {
        let dir = TempSocket::new("timeout");
        let path = dir.path();
        let _agent = fake_agent(&path, "pod-pacemaker/1\nERROR code=timeout msg=no slot\n");
        let start = Instant::now();
        let outcome = wait_for_slot(
            &path,
            &request(),
            &|| start,
            start + Duration::from_secs(10),
        );
        assert_eq!(outcome, WaitOutcome::DeadlinePassed { last_error: None });
    }

    #[test]
    fn dripping_agent_cannot_stretch_the_deadline() {
        let dir = TempSocket::new("drip");
        let path = dir.path();
        let listener = UnixListener::bind(&path).expect("bind");
        let _agent = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let _ = stream.write_all(b"pod-pacemaker/1\n");
            for _ in 0..100 {
                if stream.write_all(b"Q").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let outcome = wait_for_slot(
            &path,
            &request(),
            &|| start,
            start + Duration::from_millis(300),
        );
        assert_eq!(outcome, WaitOutcome::DeadlinePassed { last_error: None });
        // Not a speed target: the wait must end near its deadline, not after the drip.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn unreadable_reply_is_refused_at_once_not_retried() {
        for reply in [
            "pod-pacemaker/1\r\n",
            "pod-pacemaker/1\nGRANTED reason=slot\r\n",
        ] {
            let dir = TempSocket::new("crlf");
            let path = dir.path();
            let _agent = fake_agent(&path, reply);
            let start = Instant::now();
            let outcome = wait_for_slot(
                &path,
                &request(),
                &|| start,
                start + Duration::from_secs(30),
            );
            assert!(
                matches!(outcome, WaitOutcome::Refused(_)),
                "{reply:?}: {outcome:?}"
            );
        }
    }

    #[test]
    fn silent_agent_hits_the_deadline() {
        let dir = TempSocket::new("silent");
        let path = dir.path();
        let _agent = fake_agent(&path, "pod-pacemaker/1\n");
        let start = Instant::now();
        let outcome = wait_for_slot(
            &path,
            &request(),
            &|| start,
            start + Duration::from_millis(150),
        );
        assert_eq!(outcome, WaitOutcome::DeadlinePassed { last_error: None });
    }
}
