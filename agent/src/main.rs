// SPDX-License-Identifier: Apache-2.0
//! pod-pacemaker-agent: the node agent that paces pod sandbox starts.
//!
//! `main` parses the command line, sets up logging, and wires the threads; it holds no pacing
//! state itself. The threads are:
//!
//! - `agent-watch`: lists and watches this node's pods (`kube`), sends changes to the scheduler;
//! - `agent-sched`: owns all pacing state (`scheduler`), the only thread that changes it;
//! - `agent-sock`: accepts connections on the Unix socket (`server`);
//! - `agent-conn`: one per connection while its request is read; answers it, or hands a `WAIT` to
//!   the scheduler, which writes its replies;
//! - `agent-signal`: turns SIGTERM/SIGINT into an orderly stop, and SIGHUP into a re-read of the
//!   `--config` file, whose limits `main` hands to the scheduler.
//!
//! The socket is created only after the first pod list has been applied, so its existence means
//! "ready". On a signal the agent stops accepting, removes the socket, tells waiters
//! `shutting-down` and exits 0. Errors are printed with `Display`; a bad command line exits 2, a
//! start-up failure 1. Log levels: error = a requested action failed, warn = something abnormal was
//! handled, info = an infrequent state change an operator cares about (started, synced, grant,
//! release), debug/trace = diagnostics.

mod config;
mod error;
mod kube;
mod pod;
mod scheduler;
mod server;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn, LevelFilter};
use pod_pacemaker::heartbeat;
use pod_pacemaker::protocol::StatusReply;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use config::throttle;
use config::{Command, Config};
use error::AgentError;
use kube::KubeClient;
use scheduler::{SchedMsg, Scheduler};
use server::{Server, SocketFile};

/// What the main thread waits for.
#[derive(Debug)]
enum MainEvent {
    /// The first pod list is applied: serve the socket.
    Ready,
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP: read the config file again.
    Reload,
}

/// How long to let connections write their last reply on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket this process created, for the panic hook to remove.
static SOCKET: OnceLock<SocketFile> = OnceLock::new();

fn main() -> ExitCode {
    let config = match config::parse(std::env::args_os().skip(1), &|key| std::env::var(key).ok()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Status { socket }) => return print_status(&socket),
        Err(err) => {
            eprintln!("pod-pacemaker-agent: {err}");
            eprintln!("run pod-pacemaker-agent --help for the options");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = init_logging(config.log_level) {
        eprintln!("pod-pacemaker-agent: setting up logging: {err}");
        return ExitCode::FAILURE;
    }
    install_panic_hook();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), AgentError> {
    let limits = config
        .throttle
        .resolve(throttle::node_cpus())
        .map_err(AgentError::Throttle)?;
    info!(
        "starting pod-pacemaker-agent {} node={} {} lease={}s release_on={:?} api_server={}",
        env!("CARGO_PKG_VERSION"),
        config.node_name,
        config.throttle.describe(&limits),
        config.lease.as_secs(),
        config.release_on,
        config.api_server
    );

    // 1. The API client; a bad CA file is a start-up error.
    let client = KubeClient::new(config).map_err(AgentError::BuildKubeClient)?;

    // 2. Signals, before anything can block.
    let (main_tx, main_rx) = mpsc::channel::<MainEvent>();
    spawn_signal_thread(main_tx.clone())?;

    // 3. The scheduler, then the watch that feeds it. The socket's caps fit the open-file limit.
    let capacity = server::Capacity::for_open_file_limit(server::open_file_limit());
    if capacity != server::Capacity::for_open_file_limit(None) {
        info!(
            "the open-file limit allows at most {} connections being read and {} waiting clients",
            capacity.connections, capacity.waiting
        );
    }
    let (sched_tx, sched_rx) = mpsc::channel::<SchedMsg>();
    let scheduler = Scheduler::new(
        scheduler::Options {
            max_waiting: capacity.waiting,
            ..scheduler::Options::from_config(config)
        },
        limits,
        restore_state(config),
        Instant::now(),
    );
    let ready_tx = main_tx;
    let state_file = config.state_file.clone();
    let sched_thread = spawn("agent-sched", move || {
        scheduler::run(scheduler, &sched_rx, Some(&state_file), || {
            let _ = ready_tx.send(MainEvent::Ready);
        });
    })?;
    let watch_tx = sched_tx.clone();
    let cache_file = config.pod_cache_file.clone();
    spawn("agent-watch", move || {
        kube::run(&client, cache_file, &mut |event| {
            watch_tx.send(SchedMsg::Kube(event)).is_ok()
        });
    })?;

    // 4. Wait for the first pod list; a signal before it ends the run.
    info!("waiting for the first pod list before serving");
    loop {
        match main_rx.recv() {
            Ok(MainEvent::Ready) => break,
            Ok(MainEvent::Reload) => reload(config, &sched_tx),
            Ok(MainEvent::Stop) | Err(_) => {
                info!("stopping before ready");
                return Ok(());
            }
        }
    }

    // 5. Serve the socket.
    let (listener, socket) = server::bind(&config.socket)?;
    let _ = SOCKET.set(socket.clone());
    let guard = RemoveOnDrop(socket);
    let server = Server::new(capacity);
    {
        let server = Arc::clone(&server);
        let sched_tx = sched_tx.clone();
        spawn("agent-sock", move || {
            server.accept_loop(&listener, &sched_tx)
        })?;
    }
    spawn_heartbeat(&config.socket)?;
    info!("ready: serving {}", config.socket.display());

    // 6. Run until a stop signal; SIGHUP reloads the limits.
    wait_for_stop(&main_rx, config, &sched_tx);
    info!("stopping");

    // 7. Stop accepting, remove the socket, tell the waiters, let connections finish writing.
    server.stop(guard.0.path());
    drop(guard);
    let _ = sched_tx.send(SchedMsg::Shutdown);
    let _ = sched_thread.join();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while server.active() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    info!("stopped");
    Ok(())
}

/// Removes the socket file when dropped, on every return path of `run`.
struct RemoveOnDrop(SocketFile);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.0.remove();
    }
}

fn wait_for_stop(events: &Receiver<MainEvent>, config: &Config, scheduler: &Sender<SchedMsg>) {
    loop {
        match events.recv() {
            Ok(MainEvent::Stop) | Err(_) => return,
            Ok(MainEvent::Reload) => reload(config, scheduler),
            Ok(MainEvent::Ready) => {}
        }
    }
}

/// SIGHUP: reads the `--config` file again and hands the new limits to the scheduler. A file that
/// does not parse is logged and the running limits stay (docs/prior-art.md W6).
fn reload(config: &Config, scheduler: &Sender<SchedMsg>) {
    let Some(path) = &config.config_file else {
        info!("SIGHUP without --config: nothing to reload");
        return;
    };
    let limits = throttle::read_file(path).and_then(|t| {
        let limits = t.resolve(throttle::node_cpus())?;
        info!("reloaded {}: {}", path.display(), t.describe(&limits));
        Ok(limits)
    });
    match limits {
        Ok(limits) => {
            let _ = scheduler.send(SchedMsg::Reconfigure(limits));
        }
        Err(err) => error!(
            "config file {}: {err}; keeping the limits in force",
            path.display()
        ),
    }
}

/// The state file of the previous run, if there is a usable one.
fn restore_state(config: &Config) -> Option<scheduler::state::Restored> {
    match scheduler::state::load(&config.state_file) {
        Ok(Some(saved)) => Some(saved.restore(Instant::now(), scheduler::state::wall_now_ns())),
        Ok(None) => None,
        Err(err) => {
            warn!("{err}; starting from the pod list alone");
            None
        }
    }
}

/// `--status`: prints the running agent's answer, one line each, and exits 0; 1 when it cannot
/// be asked.
fn print_status(socket: &std::path::Path) -> ExitCode {
    match server::query_status(socket) {
        Ok(lines) => {
            let text: String = lines.iter().map(StatusReply::encode).collect();
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // A reader that stops early (`| head`) is not a failure.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("pod-pacemaker-agent: writing the status: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(err) => {
            eprintln!("pod-pacemaker-agent: {err}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_signal_thread(events: Sender<MainEvent>) -> Result<(), AgentError> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(AgentError::InstallSignalHandler)?;
    spawn("agent-signal", move || {
        for signal in signals.forever() {
            info!("received signal {signal}");
            if signal == SIGHUP {
                let _ = events.send(MainEvent::Reload);
                continue;
            }
            let _ = events.send(MainEvent::Stop);
            return;
        }
    })?;
    Ok(())
}

/// Touches the heartbeat file beside the socket while the agent runs, so that the plugin can tell
/// a restarting agent from a missing one (`pod_pacemaker::heartbeat`). A failure is logged when
/// it starts and when it ends, not on every beat.
fn spawn_heartbeat(socket: &Path) -> Result<(), AgentError> {
    let path = heartbeat::path(socket);
    spawn("agent-heartbeat", move || {
        let mut failing = false;
        loop {
            let touched = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .and_then(|file| file.set_modified(SystemTime::now()));
            match touched {
                Err(err) if !failing => {
                    warn!("cannot touch heartbeat file {}: {err}", path.display());
                    failing = true;
                }
                Ok(()) if failing => {
                    info!("heartbeat file {} writable again", path.display());
                    failing = false;
                }
                _ => {}
            }
            thread::sleep(heartbeat::INTERVAL);
        }
    })?;
    Ok(())
}

fn spawn<F>(name: &'static str, body: F) -> Result<JoinHandle<()>, AgentError>
where
    F: FnOnce() + Send + 'static,
{
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(|source| AgentError::SpawnThread { name, source })
}

/// Logs to stderr with UTC timestamps and thread names. The HTTP and TLS crates log every
/// request at debug; they are held at warn unless the level is trace.
fn init_logging(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    let library_level = if level == LevelFilter::Trace {
        LevelFilter::Trace
    } else {
        level.min(LevelFilter::Warn)
    };
    simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("ureq", library_level)
        // ureq_proto's trace level dumps the raw request bytes, Authorization header included:
        // never above debug, so the token cannot reach the log (STYLE.md habit 8). ureq's own
        // trace lines redact headers and are kept.
        .with_module_level("ureq_proto", library_level.min(LevelFilter::Debug))
        .with_module_level("rustls", library_level)
        .with_utc_timestamps()
        .with_threads(true)
        .init()
}

/// A panic is a bug: log it, remove the socket so that nothing waits on a dead agent, and abort so
/// that the kubelet restarts the container (release builds abort on panic anyway).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error!("panic: {info}");
        if let Some(socket) = SOCKET.get() {
            socket.remove();
        }
        std::process::abort();
    }));
}
