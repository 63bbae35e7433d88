// SPDX-License-Identifier: Apache-2.0
//! The Unix socket: creating it safely, accepting connections, serving one request each.
//!
//! [`bind`] makes the socket appear only when it is ready and never with a looser mode: it binds
//! under a temporary name in the same directory, sets mode 0600, then renames it to the final path.
//! `main` calls it after the first pod list, so "the socket path exists" means "ready to serve".
//! [`SocketFile`] removes the path again on every exit, but only while the path is still the
//! socket this process made (a newer agent may have replaced it).
//!
//! The `agent-sock` thread accepts; each connection gets an `agent-conn` thread, up to
//! [`Capacity::connections`] at once (beyond it: one `ERROR code=busy` and close). A connection reads the
//! version line and one request within one deadline from the accept (`REQUEST_TIMEOUT`; a
//! client dripping bytes cannot stretch it), answers `PING` itself, asks the scheduler
//! for a `STATUS`, and hands a `WAIT` to the scheduler with a [`Replier`], then ends: the
//! scheduler thread writes the replies to the stream itself and checks for clients that closed
//! (`scheduler::CLOSE_CHECK`), so a waiting client costs no thread and a grant wakes no thread
//! between the scheduler and the client. A line that does not
//! parse, or is too long, gets one `ERROR` and the connection is closed; it touches nothing else,
//! so every other client is served as before. Every line is built and parsed by
//! `pod_pacemaker::protocol`; [`query_status`] is the client side of `STATUS`, for `--status`.

use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use pod_pacemaker::protocol::{self, DecodeError, Reply, Request, StatusReply, WaitRequest};

use crate::error::{error_reply, AgentError};
use crate::scheduler::{ConnId, ConnReply, SchedMsg};

/// The most connections whose request is being read at once (a WAIT, once read, is held by the
/// scheduler; `scheduler::MAX_WAITING` bounds those), when the open-file limit allows.
pub const MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept for the agent's own files and API connections when the socket's caps
/// are sized from the open-file limit.
const RESERVED_FDS: u64 = 64;
/// How often at most a refused or failed accept is logged; the count of the others goes with it.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client has to send its version line and request, in total from the accept: a client
/// that drips one byte at a time cannot hold a connection longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply write may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The socket file this process created, identified by device, inode and change time (an inode
/// number can be reused at once for the socket of a newer agent).
#[derive(Clone, Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if the path still names the socket this process made.
    pub fn remove(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if identity(&meta) == self.identity => {
                if let Err(err) = fs::remove_file(&self.path) {
                    warn!("removing socket {}: {err}", self.path.display());
                }
            }
            Ok(_) => debug!(
                "socket {} was replaced by another process; leaving it",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// Creates the listening socket at `path` with mode 0600 (see the module docs).
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), AgentError> {
    // 1. The parent directory, mode 0700 when the agent creates it.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| AgentError::CreateSocketDir {
            path: dir.clone(),
            source,
        })?;

    // 2. A stale socket from an earlier run, and a leftover temporary one.
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pod-pacemaker.sock".to_owned());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    remove_stale_socket(path)?;
    remove_stale_socket(&temp)?;

    // 3. Bind under the temporary name, restrict it, then move it into place.
    let listener = UnixListener::bind(&temp).map_err(|source| AgentError::BindSocket {
        path: temp.clone(),
        source,
    })?;
    let placed = fs::set_permissions(&temp, Permissions::from_mode(0o600))
        .map_err(|source| AgentError::SetSocketMode {
            path: temp.clone(),
            source,
        })
        .and_then(|()| {
            fs::rename(&temp, path).map_err(|source| AgentError::RenameSocket {
                from: temp.clone(),
                to: path.to_owned(),
                source,
            })
        });
    if let Err(err) = placed {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    let meta = fs::symlink_metadata(path).map_err(|source| AgentError::BindSocket {
        path: path.to_owned(),
        source,
    })?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity: identity(&meta),
        },
    ))
}

fn identity(meta: &fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

/// Removes a socket left at `path`; refuses to remove anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), AgentError> {
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AgentError::RemoveStaleSocket {
            path: path.to_owned(),
            source,
        }),
        Ok(meta) if meta.file_type().is_socket() => {
            debug!("removing stale socket {}", path.display());
            fs::remove_file(path).map_err(|source| AgentError::RemoveStaleSocket {
                path: path.to_owned(),
                source,
            })
        }
        Ok(_) => Err(AgentError::NotASocket {
            path: path.to_owned(),
        }),
    }
}

/// How many clients the socket serves at once: connections whose request is being read, and
/// waiting clients (held by the scheduler). Each costs a file descriptor (a connection briefly
/// two, while its `WAIT` is handed over), so both are sized to fit the soft open-file limit: the
/// agent answers `busy` rather than run out of descriptors for its own files and API calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub connections: usize,
    pub waiting: usize,
}

impl Capacity {
    /// The caps for a soft open-file limit of `limit` (`None`: unlimited or unknown): at most
    /// [`MAX_CONNECTIONS`] and `scheduler::MAX_WAITING`, and otherwise a fifth of what is left
    /// after [`RESERVED_FDS`] for connections (two descriptors each), the rest for waiters.
    pub fn for_open_file_limit(limit: Option<u64>) -> Self {
        let max_waiting = crate::scheduler::MAX_WAITING;
        let Some(limit) = limit else {
            return Self {
                connections: MAX_CONNECTIONS,
                waiting: max_waiting,
            };
        };
        let usable = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        let connections = (usable / 5).clamp(1, MAX_CONNECTIONS);
        let waiting = usable.saturating_sub(2 * connections).clamp(1, max_waiting);
        Self {
            connections,
            waiting,
        }
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits`; `None` when it is
/// unlimited or cannot be read.
pub fn open_file_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

/// The soft value of the "Max open files" line of a `/proc/<pid>/limits` text.
fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Logs a refusal at most every [`REFUSAL_LOG_INTERVAL`], with the number of those not logged.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    pub fn warn(&mut self, what: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            self.unlogged += 1;
            return;
        }
        if self.unlogged > 0 {
            warn!("{what} ({} more since the last such line)", self.unlogged);
        } else {
            warn!("{what}");
        }
        self.last = Some(now);
        self.unlogged = 0;
    }
}

/// The accepting side of the server, shared by the `agent-sock` thread and `main`.
#[derive(Debug)]
pub struct Server {
    stopping: AtomicBool,
    active: AtomicUsize,
    next_conn: AtomicU64,
    /// At most this many connections whose request is being read ([`Capacity::connections`]).
    max_connections: usize,
    /// Accepted sockets not closed yet: being read, on their way to the scheduler, or waiting.
    open: AtomicUsize,
    /// At most this many of them (both caps of [`Capacity`] together), so that sockets queued
    /// for a scheduler that falls behind cannot run the agent out of descriptors either.
    max_open: usize,
}

impl Server {
    pub fn new(capacity: Capacity) -> Arc<Self> {
        Arc::new(Self {
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            max_connections: capacity.connections,
            open: AtomicUsize::new(0),
            max_open: capacity.connections + capacity.waiting,
        })
    }

    /// Stops the accept loop: sets the flag, then connects once to unblock `accept`.
    pub fn stop(&self, path: &Path) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(path);
    }

    /// How many connections are being served.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// The accept loop; the body of the `agent-sock` thread.
    pub fn accept_loop(self: &Arc<Self>, listener: &UnixListener, scheduler: &Sender<SchedMsg>) {
        let mut refusals = RefusalLog::default();
        let mut accept_errors = RefusalLog::default();
        let mut spawn_errors = RefusalLog::default();
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                Err(err) => {
                    accept_errors.warn(&format_args!("accepting a connection failed: {err}"));
                    thread::sleep(ACCEPT_PAUSE);
                    continue;
                }
            };

            // Over a cap: one ERROR and close.
            let limit = if self.active.load(Ordering::SeqCst) >= self.max_connections {
                Some(self.max_connections)
            } else if self.open.load(Ordering::SeqCst) >= self.max_open {
                Some(self.max_open)
            } else {
                None
            };
            if let Some(limit) = limit {
                refusals.warn(&format_args!("{limit} connections open, refusing new ones"));
                let err = AgentError::TooManyConnections { limit };
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = write_reply(&stream, &error_reply(&err));
                continue;
            }

            let conn = self.next_conn.fetch_add(1, Ordering::SeqCst);
            let open = CountGuard::new(Arc::clone(self), |s| &s.open);
            let guard = CountGuard::new(Arc::clone(self), |s| &s.active);
            let scheduler = scheduler.clone();
            let spawned = thread::Builder::new()
                .name("agent-conn".to_owned())
                .spawn(move || {
                    // Dropped in reverse: the stream is closed before it stops being counted.
                    let _guard = guard;
                    let stream = stream;
                    serve_counted(&stream, conn, &scheduler, Some(open));
                });
            if let Err(err) = spawned {
                // Out of threads (a pids limit): the client is closed without a reply and retries.
                spawn_errors.warn(&format_args!("starting a connection thread failed: {err}"));
                thread::sleep(ACCEPT_PAUSE);
            }
        }
        debug!("accept loop stopped");
    }
}

/// Counts one connection in one of the server's counters until dropped: `active` while its
/// thread runs, `open` while its socket is open (a `WAIT`'s goes with its [`Replier`]).
#[derive(Debug)]
pub struct CountGuard {
    server: Arc<Server>,
    count: fn(&Server) -> &AtomicUsize,
}

impl CountGuard {
    fn new(server: Arc<Server>, count: fn(&Server) -> &AtomicUsize) -> Self {
        count(&server).fetch_add(1, Ordering::SeqCst);
        Self { server, count }
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.count)(&self.server).fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves the one request of a connection that is not counted (the tests' connections).
#[cfg(test)]
fn serve_connection(stream: &UnixStream, conn: ConnId, scheduler: &Sender<SchedMsg>) {
    serve_counted(stream, conn, scheduler, None);
}

/// Serves the one request of a connection; `open` counts its socket while it is open.
fn serve_counted(
    stream: &UnixStream,
    conn: ConnId,
    scheduler: &Sender<SchedMsg>,
    open: Option<CountGuard>,
) {
    // 1. Read the version line and the request, both within one deadline.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    if let Err(err) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        debug!("conn={conn}: setting socket timeouts failed: {err}");
        return;
    }
    let request = match read_request(stream, deadline) {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(err) => {
            debug!("conn={conn}: {err}");
            let _ = write_reply(stream, &error_reply(&err));
            return;
        }
    };

    // 2. Answer with the version line, then the request's replies.
    if write_version(stream).is_err() {
        return;
    }
    match request {
        Request::Ping => {
            let _ = write_reply(stream, &Reply::Pong);
        }
        Request::Wait(wait) => serve_wait(stream, conn, wait, scheduler, open),
        Request::Status => serve_status(stream, scheduler),
    }
}

/// Reads the version line and one request, both before `deadline`. `Ok(None)` when the client
/// closed before sending a complete request.
fn read_request(stream: &UnixStream, deadline: Instant) -> Result<Option<Request>, AgentError> {
    let mut reader = BufReader::new(DeadlineReader { stream, deadline });
    let Some(version) = read_line_of(&mut reader, "version line")? else {
        return Ok(None);
    };
    if !protocol::check_version(&version) {
        return Err(AgentError::UnsupportedVersion(version));
    }
    let Some(line) = read_line_of(&mut reader, "request line")? else {
        return Ok(None);
    };
    Request::decode(&line)
        .map(Some)
        .map_err(AgentError::BadRequest)
}

/// Reads one line of the request; a deadline that passes is named with the line it cut short.
fn read_line_of(
    reader: &mut BufReader<DeadlineReader<'_>>,
    line: &'static str,
) -> Result<Option<String>, AgentError> {
    protocol::read_line(reader).map_err(|err| match err {
        DecodeError::Io(io) if io.kind() == ErrorKind::TimedOut => AgentError::RequestTimedOut {
            line,
            after: REQUEST_TIMEOUT,
        },
        other => AgentError::BadRequest(other),
    })
}

/// Reads from the stream until one deadline: each read may block only for the time left, so the
/// bound holds for the whole request, not per byte. Past the deadline a read fails `TimedOut`.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timed_out = || io::Error::new(ErrorKind::TimedOut, "request deadline passed");
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        match stream.read(buf) {
            // A socket read timeout shows as WouldBlock (EAGAIN) on Linux.
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(timed_out())
            }
            other => other,
        }
    }
}

/// Hands a WAIT to the scheduler together with a [`Replier`] on this stream; the connection
/// thread then ends. From here on the scheduler thread writes the replies and notices a client
/// that closes, so a grant wakes no thread between the scheduler and the client, and a waiting
/// client costs no thread.
fn serve_wait(
    stream: &UnixStream,
    conn: ConnId,
    wait: WaitRequest,
    scheduler: &Sender<SchedMsg>,
    open: Option<CountGuard>,
) {
    let replier = match Replier::new(stream) {
        Ok(replier) => Replier {
            _open: open,
            ..replier
        },
        Err(err) => {
            debug!("conn={conn}: preparing the replies failed: {err}");
            return;
        }
    };
    let message = SchedMsg::Wait {
        conn,
        request: wait,
        replies: replier,
    };
    if let Err(mpsc::SendError(SchedMsg::Wait { mut replies, .. })) = scheduler.send(message) {
        let _ = replies.send(&Err(AgentError::ShuttingDown));
    }
}

/// The scheduler thread's handle on a waiting client's stream. The stream is non-blocking: a
/// reply that does not fit in the socket buffer at once means a client that does not read (the
/// plugin reads every line as it comes, and the few lines of a wait are far below a buffer), and
/// counts as the client gone, as does a failed write. Dropping the handle closes the stream.
#[derive(Debug)]
pub struct Replier {
    stream: UnixStream,
    /// Counts the socket as open until it is closed (declared after the stream: dropped after).
    _open: Option<CountGuard>,
}

impl Replier {
    /// A handle on (a clone of) `stream`, which becomes non-blocking.
    pub fn new(stream: &UnixStream) -> io::Result<Self> {
        let stream = stream.try_clone()?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            _open: None,
        })
    }

    /// Writes `reply` (an error as its `ERROR` line). Returns whether the reply was final.
    pub fn send(&mut self, reply: &ConnReply) -> io::Result<bool> {
        let error;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                error = error_reply(err);
                &error
            }
        };
        write_reply(&self.stream, reply)?;
        Ok(reply.is_final())
    }

    /// Whether the client is gone: it closed its end, or it sent something. A client sends
    /// nothing after its request (the plugin never does), so a byte now is a broken or hostile
    /// client, and reading on to find its close could take as long as it cares to send.
    pub fn client_gone(&mut self) -> bool {
        let mut buf = [0_u8; 64];
        let mut reader = &self.stream;
        loop {
            match reader.read(&mut buf) {
                Ok(_) => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return err.kind() != ErrorKind::WouldBlock,
            }
        }
    }
}

/// Asks the scheduler for its status and writes the lines.
fn serve_status(stream: &UnixStream, scheduler: &Sender<SchedMsg>) {
    let (replies, from_scheduler) = mpsc::channel();
    // Only a scheduler that is gone means the agent stops; one that is slow to answer is busy.
    let lines = match scheduler.send(SchedMsg::Status { replies }) {
        Err(_) => Err(AgentError::ShuttingDown),
        Ok(()) => from_scheduler
            .recv_timeout(REQUEST_TIMEOUT)
            .map_err(|err| match err {
                RecvTimeoutError::Timeout => AgentError::SchedulerSlow {
                    waited: REQUEST_TIMEOUT,
                },
                RecvTimeoutError::Disconnected => AgentError::ShuttingDown,
            }),
    };
    let lines = match lines {
        Ok(lines) => lines,
        Err(err) => {
            let _ = write_reply(stream, &error_reply(&err));
            return;
        }
    };
    let mut text = String::with_capacity(64 * lines.len());
    for line in &lines {
        text.push_str(&line.encode());
    }
    let mut writer = stream;
    let _ = writer.write_all(text.as_bytes());
}

/// The client side of `STATUS`: connects to the agent at `socket` and returns its answer, the
/// final `STATUS` summary last.
pub fn query_status(socket: &Path) -> Result<Vec<StatusReply>, AgentError> {
    let fail = |problem: String| AgentError::QueryStatus {
        path: socket.to_owned(),
        problem,
    };
    let stream = UnixStream::connect(socket).map_err(|e| fail(format!("connecting: {e}")))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .map_err(|e| fail(e.to_string()))?;
    let request = [protocol::version_line(), Request::Status.encode()].concat();
    let mut writer = &stream;
    writer
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending: {e}")))?;
    let mut reader = BufReader::new(&stream);
    let mut next_line = || match protocol::read_line(&mut reader) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(fail("the agent closed the connection".to_owned())),
        Err(err) => Err(fail(err.to_string())),
    };
    let version = next_line()?;
    if !protocol::check_version(&version) {
        let problem = match StatusReply::decode(&version) {
            Ok(StatusReply::Error { code, message }) => format!("{code}: {message}"),
            _ => format!("unexpected version line {version:?}"),
        };
        return Err(fail(problem));
    }
    let mut lines = Vec::new();
    loop {
        let line = next_line()?;
        let reply = StatusReply::decode(&line)
            .map_err(|err| fail(format!("reply {line:?} does not parse: {err}")))?;
        if let StatusReply::Error { code, message } = &reply {
            return Err(fail(format!("{code}: {message}")));
        }
        let last = reply.is_final();
        lines.push(reply);
        if last {
            return Ok(lines);
        }
    }
}

fn write_version(stream: &UnixStream) -> io::Result<()> {
    let mut writer = stream;
    writer.write_all(protocol::version_line().as_bytes())
}

fn write_reply(stream: &UnixStream, reply: &Reply) -> io::Result<()> {
    let mut writer = stream;
    writer.write_all(reply.encode().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod_pacemaker::protocol::{ErrorCode, GrantReason};
    use std::io::BufRead;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pp-agent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Sends `input` on a fresh connection, serves it on this thread, returns the replies.
    fn serve_once(tx: &Sender<SchedMsg>, input: &[u8]) -> Vec<Reply> {
        let (client, server) = UnixStream::pair().expect("pair");
        (&client).write_all(input).expect("write");
        serve_connection(&server, 1, tx);
        drop(server);
        read_replies(&client)
    }

    fn read_replies(stream: &UnixStream) -> Vec<Reply> {
        let mut reader = BufReader::new(stream);
        let mut replies = Vec::new();
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return replies,
                Ok(_) => {}
            }
            let line = line.trim_end_matches('\n');
            if first && protocol::check_version(line) {
                first = false;
                continue;
            }
            first = false;
            replies.push(Reply::decode(line).expect("reply decodes"));
        }
    }

    /// Serves one connection on a socket pair with a fake scheduler that answers `answer`.
    fn exchange(input: &[u8], answer: Vec<Reply>) -> Vec<Reply> {
        let (client, server) = UnixStream::pair().expect("pair");
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        let fake = thread::spawn(move || {
            while let Ok(msg) = rx.recv() {
                if let SchedMsg::Wait { mut replies, .. } = msg {
                    for reply in &answer {
                        let _ = replies.send(&Ok(reply.clone()));
                    }
                }
            }
        });
        let worker = thread::spawn(move || serve_connection(&server, 1, &tx));
        let mut writer = &client;
        writer.write_all(input).expect("write");
        let replies = read_replies(&client);
        drop(client);
        worker.join().expect("worker");
        fake.join().expect("fake scheduler");
        replies
    }

    fn error_code_of(replies: &[Reply]) -> Option<ErrorCode> {
        match replies.last() {
            Some(Reply::Error { code, .. }) => Some(code.clone()),
            _ => None,
        }
    }

    #[test]
    fn ping_gets_pong() {
        let replies = exchange(b"pod-pacemaker/1\nPING\n", Vec::new());
        assert_eq!(replies, [Reply::Pong]);
    }

    #[test]
    fn wait_relays_the_scheduler_replies() {
        let queued = Reply::Queued {
            position: 1,
            holders: 2,
            limit: 2,
        };
        let granted = Reply::Granted {
            reason: GrantReason::Slot,
        };
        let replies = exchange(
            b"pod-pacemaker/1\nWAIT namespace=a name=b\n",
            vec![queued.clone(), granted.clone()],
        );
        assert_eq!(replies, [queued, granted]);
    }

    #[test]
    fn bad_input_gets_one_error_naming_the_problem() {
        let cases: &[(&[u8], ErrorCode, &str)] = &[
            (
                b"pod-pacemaker/2\nPING\n",
                ErrorCode::UnsupportedVersion,
                "pod-pacemaker/2",
            ),
            (b"pod-pacemaker/1\nHELLO\n", ErrorCode::BadRequest, "HELLO"),
            (
                b"pod-pacemaker/1\nWAIT name=b\n",
                ErrorCode::BadRequest,
                "namespace",
            ),
            (
                b"pod-pacemaker/1\nPI\xffNG\n",
                ErrorCode::BadRequest,
                "UTF-8",
            ),
        ];
        for (input, code, needle) in cases {
            let replies = exchange(input, Vec::new());
            assert_eq!(replies.len(), 1, "{replies:?}");
            assert_eq!(error_code_of(&replies), Some(code.clone()));
            let Reply::Error { message, .. } = &replies[0] else {
                unreachable!()
            };
            assert!(message.contains(needle), "{message}");
        }
        let mut long = b"pod-pacemaker/1\n".to_vec();
        long.extend(vec![b'A'; 5000]);
        long.push(b'\n');
        let replies = exchange(&long, Vec::new());
        assert_eq!(error_code_of(&replies), Some(ErrorCode::LineTooLong));
    }

    /// Sends `input` one byte every `pause` on a new connection pair served by
    /// `serve_connection`; returns the replies and how many bytes were sent before the agent
    /// answered and closed.
    fn drip(input: &'static [u8], pause: Duration) -> (Vec<Reply>, usize) {
        let (client, server) = UnixStream::pair().expect("pair");
        let (tx, _rx) = mpsc::channel::<SchedMsg>();
        let worker = thread::spawn(move || serve_connection(&server, 1, &tx));
        let writer_end = client.try_clone().expect("clone");
        let dripper = thread::spawn(move || {
            let mut sent = 0;
            for byte in input {
                if (&writer_end).write_all(&[*byte]).is_err() {
                    break;
                }
                sent += 1;
                thread::sleep(pause);
            }
            sent
        });
        let replies = read_replies(&client);
        worker.join().expect("worker");
        drop(client);
        (replies, dripper.join().expect("dripper"))
    }

    #[test]
    fn dripping_client_is_cut_off_at_one_deadline_for_the_whole_request() {
        // 40 bytes at one every 250 ms would take 10 s; each byte comes well within any per-read
        // timeout, but the whole request has REQUEST_TIMEOUT (5 s) from the accept.
        let input = b"pod-pacemaker/1\nWAIT namespace=a name=b\n";
        let (replies, sent) = drip(input, Duration::from_millis(250));
        assert!(sent < input.len(), "the agent waited for all {sent} bytes");
        assert_eq!(error_code_of(&replies), Some(ErrorCode::BadRequest));
        let Some(Reply::Error { message, .. }) = replies.last() else {
            unreachable!()
        };
        assert!(message.contains("request timed out"), "{message}");
        assert!(message.contains("request line"), "{message}");
    }

    #[test]
    fn incomplete_version_line_times_out_naming_it() {
        let (replies, _) = drip(b"pod-pace", Duration::ZERO);
        let Some(Reply::Error { code, message }) = replies.last() else {
            panic!("no error reply: {replies:?}");
        };
        assert_eq!(*code, ErrorCode::BadRequest);
        assert_eq!(
            message,
            "request timed out: the version line was not complete within 5 s"
        );
    }

    #[test]
    fn wait_is_handed_to_the_scheduler_and_the_connection_thread_ends() {
        let (client, server) = UnixStream::pair().expect("pair");
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        let mut writer = &client;
        writer
            .write_all(b"pod-pacemaker/1\nWAIT namespace=a name=b\n")
            .expect("write");
        serve_connection(&server, 7, &tx);
        drop(server);
        let Ok(SchedMsg::Wait {
            conn, mut replies, ..
        }) = rx.try_recv()
        else {
            panic!("expected a wait");
        };
        assert_eq!(conn, 7);
        let granted = Reply::Granted {
            reason: GrantReason::Slot,
        };
        assert!(matches!(replies.send(&Ok(granted.clone())), Ok(true)));
        drop(replies);
        assert_eq!(read_replies(&client), [granted]);
    }

    #[test]
    fn replier_notices_a_client_that_closed_or_spoke() {
        let (client, server) = UnixStream::pair().expect("pair");
        let mut replier = Replier::new(&server).expect("replier");
        drop(server);
        assert!(!replier.client_gone());
        drop(client);
        assert!(replier.client_gone());

        // Bytes after the request: gone at once, however many more follow.
        let (client, server) = UnixStream::pair().expect("pair");
        let mut replier = Replier::new(&server).expect("replier");
        (&client).write_all(b"stray").expect("write");
        assert!(replier.client_gone());
    }

    #[test]
    fn capacity_fits_the_open_file_limit() {
        let full = Capacity {
            connections: MAX_CONNECTIONS,
            waiting: crate::scheduler::MAX_WAITING,
        };
        assert_eq!(Capacity::for_open_file_limit(None), full);
        assert_eq!(Capacity::for_open_file_limit(Some(1_048_576)), full);
        // 1024 (a container's usual soft limit): 960 usable, 192 connections of two each, 576
        // waiters.
        let small = Capacity::for_open_file_limit(Some(1024));
        assert_eq!((small.connections, small.waiting), (192, 576));
        assert!(2 * small.connections + small.waiting + 64 <= 1024);
        // Absurdly low: still one of each.
        let tiny = Capacity::for_open_file_limit(Some(10));
        assert_eq!((tiny.connections, tiny.waiting), (1, 1));
    }

    #[test]
    fn open_file_limit_is_the_soft_value() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63392                63392                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), None);
        assert_eq!(parse_open_file_limit(""), None);
    }

    #[test]
    fn replier_fails_when_the_client_is_gone() {
        let (client, server) = UnixStream::pair().expect("pair");
        let mut replier = Replier::new(&server).expect("replier");
        drop(client);
        let granted = Ok(Reply::Granted {
            reason: GrantReason::Slot,
        });
        assert!(replier.send(&granted).is_err());
    }

    #[test]
    fn scheduler_gone_means_shutting_down() {
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        drop(rx);
        let replies = serve_once(&tx, b"pod-pacemaker/1\nWAIT namespace=a name=b\n");
        assert_eq!(error_code_of(&replies), Some(ErrorCode::ShuttingDown));
    }

    #[test]
    fn status_is_busy_not_shutting_down_when_the_scheduler_is_slow() {
        // A scheduler that takes the request but does not answer in time.
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        let replies = serve_once(&tx, b"pod-pacemaker/1\nSTATUS\n");
        assert_eq!(error_code_of(&replies), Some(ErrorCode::Busy));
        assert!(matches!(rx.try_recv(), Ok(SchedMsg::Status { .. })));

        // A scheduler that is gone: the agent is stopping.
        drop(rx);
        let replies = serve_once(&tx, b"pod-pacemaker/1\nSTATUS\n");
        assert_eq!(error_code_of(&replies), Some(ErrorCode::ShuttingDown));
    }

    #[test]
    fn bind_creates_a_private_socket_and_removes_only_its_own() {
        let dir = temp_dir("bind");
        let path = dir.join("sub").join("s.sock");
        let (listener, file) = bind(&path).expect("binds");
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let meta = fs::symlink_metadata(&path).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");

        // A second bind replaces the stale socket; the first owner then must not remove it. (The
        // pause keeps the two change times apart on file systems with a coarse clock.)
        drop(listener);
        thread::sleep(Duration::from_millis(50));
        let (_listener2, file2) = bind(&path).expect("rebinds");
        file.remove();
        assert!(path.exists());
        file2.remove();
        assert!(!path.exists());

        // Something that is not a socket is left alone.
        fs::write(&path, "data").expect("write");
        assert!(matches!(bind(&path), Err(AgentError::NotASocket { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn accept_loop_serves_and_stops() {
        let dir = temp_dir("accept");
        let path = dir.join("s.sock");
        let (listener, file) = bind(&path).expect("binds");
        let server = Server::new(Capacity::for_open_file_limit(None));
        let (tx, _rx) = mpsc::channel::<SchedMsg>();
        let acceptor = {
            let server = Arc::clone(&server);
            thread::spawn(move || server.accept_loop(&listener, &tx))
        };
        let client = UnixStream::connect(&path).expect("connect");
        let mut writer = &client;
        writer.write_all(b"pod-pacemaker/1\nPING\n").expect("write");
        assert_eq!(read_replies(&client), [Reply::Pong]);
        server.stop(&path);
        acceptor.join().expect("acceptor stops");
        file.remove();
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn waits_queued_for_a_slow_scheduler_count_against_the_caps() {
        let dir = temp_dir("open-cap");
        let path = dir.join("s.sock");
        let (listener, file) = bind(&path).expect("binds");
        let server = Server::new(Capacity {
            connections: 2,
            waiting: 1,
        });
        // A scheduler that never takes its messages: the WAITs stay in the channel.
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        let acceptor = {
            let server = Arc::clone(&server);
            thread::spawn(move || server.accept_loop(&listener, &tx))
        };
        let mut waiting = Vec::new();
        for name in ["a", "b", "c"] {
            let mut client = start_wait(&path, name);
            assert_eq!(next_line(&mut client), protocol::VERSION_LINE);
            waiting.push(client);
        }
        // Their connection threads have ended, yet the three sockets are open: a fourth
        // connection is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.active() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.active(), 0);
        let refused = converse(&path, b"pod-pacemaker/1\nPING\n");
        assert!(
            refused
                .last()
                .is_some_and(|l| l.starts_with("ERROR code=busy")),
            "{refused:?}"
        );
        // Once the queued WAITs are dropped (their sockets closed), connections are served again.
        drop(rx);
        drop(waiting);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = converse(&path, b"pod-pacemaker/1\nPING\n");
            if answer.last().map(String::as_str) == Some("PONG") {
                break;
            }
            assert!(Instant::now() < deadline, "still refused: {answer:?}");
            thread::sleep(Duration::from_millis(20));
        }
        server.stop(&path);
        acceptor.join().expect("acceptor stops");
        file.remove();
        let _ = fs::remove_dir_all(&dir);
    }

    /// Sends `input` on a new connection and reads every line until the agent closes.
    fn converse(path: &Path, input: &[u8]) -> Vec<String> {
        let client = UnixStream::connect(path).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = &client;
        // The agent may close before reading everything; what it sent can still be read.
        let _ = writer.write_all(input);
        BufReader::new(&client)
            .lines()
            .map_while(Result::ok)
            .collect()
    }

    /// Sends a WAIT and returns the connection, to read its replies line by line.
    fn start_wait(path: &Path, name: &str) -> BufReader<UnixStream> {
        let client = UnixStream::connect(path).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!("pod-pacemaker/1\nWAIT namespace=ns name={name} uid=u-{name}\n");
        (&client).write_all(request.as_bytes()).expect("write");
        BufReader::new(client)
    }

    fn next_line(reader: &mut BufReader<UnixStream>) -> String {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("a line before the timeout");
        line.trim_end().to_owned()
    }

    #[test]
    fn bad_clients_are_cut_off_while_the_others_are_served() {
        use crate::config::throttle::Limits;
        use crate::kube::KubeEvent;
        use crate::scheduler::{self, Options, Scheduler};

        let dir = temp_dir("mixed");
        let path = dir.join("s.sock");
        let (listener, file) = bind(&path).expect("binds");
        let server = Server::new(Capacity::for_open_file_limit(None));
        let (tx, rx) = mpsc::channel::<SchedMsg>();
        let options = Options {
            lease: Duration::from_secs(300),
            release_on: crate::pod::ReleaseOn::Ready,
            skip: crate::pod::SkipOptions::default(),
            unknown_pod_wait: Duration::ZERO,
            unknown_pod_policy: crate::config::UnknownPodPolicy::Pace,
            position_interval: Duration::ZERO,
            position_memory: scheduler::POSITION_MEMORY,
            max_remembered: scheduler::MAX_REMEMBERED,
            max_waiting: scheduler::MAX_WAITING,
            restart_grace: scheduler::RESTART_GRACE,
        };
        let limits = Limits {
            max_concurrent: 1,
            rate_limit: None,
        };
        let sched = thread::spawn(move || {
            let s = Scheduler::new(options, limits, None, std::time::Instant::now());
            scheduler::run(s, &rx, None, || {});
        });
        tx.send(SchedMsg::Kube(KubeEvent::Resynced(Vec::new())))
            .expect("send");
        let acceptor = {
            let server = Arc::clone(&server);
            let tx = tx.clone();
            thread::spawn(move || server.accept_loop(&listener, &tx))
        };

        // 1. One pod holds the only slot, another waits.
        let mut holder = start_wait(&path, "a");
        assert_eq!(next_line(&mut holder), "pod-pacemaker/1");
        assert_eq!(next_line(&mut holder), "GRANTED reason=slot");
        let mut waiter = start_wait(&path, "b");
        assert_eq!(next_line(&mut waiter), "pod-pacemaker/1");
        assert_eq!(
            next_line(&mut waiter),
            "QUEUED position=1 holders=1 limit=1"
        );

        // 2. Bad clients each get one ERROR naming the problem, then the agent closes.
        let mut long = b"pod-pacemaker/1\n".to_vec();
        long.extend(vec![b'W'; 4 * protocol::MAX_LINE_BYTES]);
        long.push(b'\n');
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (long, "ERROR code=line-too-long"),
            (
                b"pod-pacemaker/1\nHELLO there\n".to_vec(),
                "ERROR code=bad-request",
            ),
            (
                b"pod-pacemaker/1\nWAIT namespace=a\n".to_vec(),
                "ERROR code=bad-request",
            ),
            (
                b"pod-pacemaker/1\nWA\xffIT\n".to_vec(),
                "ERROR code=bad-request",
            ),
            (
                b"pod-pacemaker/7\nPING\n".to_vec(),
                "ERROR code=unsupported-version",
            ),
            (
                vec![b'x'; 3 * protocol::MAX_LINE_BYTES],
                "ERROR code=line-too-long",
            ),
        ];
        for (input, want) in cases {
            let lines = converse(&path, &input);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].starts_with(want), "{lines:?}");
        }

        // 3. The agent still knows and serves everyone: STATUS, then the waiter's grant.
        let status = query_status(&path).expect("status");
        let encoded: Vec<String> = status.iter().map(StatusReply::encode).collect();
        assert_eq!(
            encoded,
            [
                format!(
                    "HOLDER namespace=ns name=a uid=u-a held_ms={}\n",
                    match &status[0] {
                        StatusReply::Holder(h) => h.held_ms,
                        _ => 0,
                    }
                ),
                format!(
                    "WAITER position=1 namespace=ns name=b uid=u-b priority=0 waited_ms={} state=queued\n",
                    match &status[1] {
                        StatusReply::Waiter(w) => w.waited_ms,
                        _ => 0,
                    }
                ),
                "STATUS holders=1 limit=1 waiting=1 remembered=0\n".to_owned(),
            ]
        );
        tx.send(SchedMsg::Kube(KubeEvent::PodDeleted("u-a".to_owned())))
            .expect("send");
        assert_eq!(next_line(&mut waiter), "GRANTED reason=slot");

        // 4. Stop.
        server.stop(&path);
        acceptor.join().expect("acceptor stops");
        tx.send(SchedMsg::Shutdown).expect("send");
        sched.join().expect("scheduler stops");
        file.remove();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn query_status_reports_an_absent_agent() {
        let err = query_status(Path::new("/nonexistent/ppm.sock")).expect_err("no agent");
        assert!(err.to_string().contains("connecting"), "{err}");
    }
}
