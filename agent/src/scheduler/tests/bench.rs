// SPDX-License-Identifier: Apache-2.0
//! The grant-latency benchmark behind `scripts/bench.sh scheduler` (issue #6). It is a test only
//! so that it can drive the agent's own threads; it is ignored by `cargo test`, asserts nothing
//! about time, and prints `figure` and `info` lines for the bench script.
//!
//! Set-up, all in this process and all real except the API server: the `agent-sched` owner thread
//! (`run`, with a state file as in production), the accept loop and one connection thread per
//! client on a Unix socket, and 500 waiters, each a thread running the plugin's own
//! `wait_for_slot`. One slot; every pod is known. Then, 500 times: a "Ready" event for the holder
//! goes into the scheduler's channel exactly as the watch thread sends it, and the time until the
//! next waiter's `wait_for_slot` returns `Granted` is the grant latency after the releasing event.
//! The baseline is one round trip on a Unix stream socket between two threads (a line out, a line
//! back): the median of 2000 back to back, taken in the same placement just before the clients
//! start.
//!
//! Where the threads run decides both figures (docs/decisions.md D16): on a VM, waking a thread
//! on another, idle vCPU costs ten times a hand-over on the same vCPU. So the benchmark runs
//! twice, each time with every thread pinned (`taskset` on thread IDs, inherited by the threads
//! they start):
//!
//! - **across two CPUs**: the agent's side (the thread sending the event, the scheduler, the
//!   accept loop and connection threads, the state writer) on one CPU, the plugin clients and the
//!   echoing end of the baseline on another, as a plugin process and the agent usually are;
//! - **on one CPU**: everything on the same CPU.
//!
//! The `figure` lines are those of the first placement; the second is printed as `info`. With
//! fewer than two CPUs only the second runs, and its ratios become the figures.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pod_pacemaker::client::{wait_for_slot, WaitOutcome};
use pod_pacemaker::protocol::StatusReply;

use super::*;
use crate::server::{self, Server};

const WAITERS: usize = 500;
const ROUND_TRIPS: usize = 2_000;
const PAUSED_ROUND_TRIPS: usize = 500;
/// Targets printed with the figures (checked by scripts/bench.sh, never by a test).
const P50_TARGET: f64 = 5.0;
const P99_TARGET: f64 = 20.0;

/// One side of a Unix socket pair whose other side echoes each line from its own thread.
struct Echo {
    client: UnixStream,
    reader: BufReader<UnixStream>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Echo {
    /// The echoing thread runs `place` first.
    fn new(place: impl FnOnce() + Send + 'static) -> Self {
        let (client, server) = UnixStream::pair().expect("socket pair");
        let thread = thread::spawn(move || {
            place();
            let mut reader = BufReader::new(&server);
            let mut writer = &server;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if writer.write_all(b"PONG\n").is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let reader = BufReader::new(client.try_clone().expect("clone"));
        Self {
            client,
            reader,
            thread: Some(thread),
        }
    }

    /// One round trip: a line out, a line back.
    fn round_trip(&mut self) -> Duration {
        let mut line = String::new();
        let start = Instant::now();
        (&self.client).write_all(b"PING\n").expect("write");
        self.reader.read_line(&mut line).expect("read");
        start.elapsed()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Formats every record at info and above, as the agent's logger does, and drops the text: the
/// benchmark pays for the grant and release log lines without writing them anywhere.
struct FormatOnly;

impl log::Log for FormatOnly {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            std::hint::black_box(line);
        }
    }

    fn flush(&self) {}
}

static FORMAT_ONLY: FormatOnly = FormatOnly;

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort_unstable();
    let index = (samples.len() * p / 100).min(samples.len().saturating_sub(1));
    samples.get(index).copied().unwrap_or_default()
}

fn pod_named(i: usize) -> PodInfo {
    PodInfo {
        namespace: "bench".to_owned(),
        ..pod(&format!("pod-{i:04}"), &format!("uid-{i:04}"))
    }
}

fn waiting_count(socket: &std::path::Path) -> u32 {
    server::query_status(socket)
        .ok()
        .and_then(|lines| match lines.last() {
            Some(StatusReply::Summary(s)) => Some(s.waiting),
            _ => None,
        })
        .unwrap_or(0)
}

/// Where the benchmark's threads run.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// The agent's side on `agent`, the plugin side on `plugin`.
    Across { agent: usize, plugin: usize },
    /// Everything on `cpu`.
    One { cpu: usize },
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Across { .. } => "across two CPUs",
            Placement::One { .. } => "on one CPU",
        }
    }

    fn agent_cpu(self) -> usize {
        match self {
            Placement::Across { agent, .. } => agent,
            Placement::One { cpu } => cpu,
        }
    }

    fn plugin_cpu(self) -> usize {
        match self {
            Placement::Across { plugin, .. } => plugin,
            Placement::One { cpu } => cpu,
        }
    }
}

/// The CPUs this process may run on, from /proc/self/status (`Cpus_allowed_list: 0-3,6`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(first)), None) => cpus.push(first),
            (Some(Ok(first)), Some(Ok(last))) => cpus.extend(first..=last),
            _ => {}
        }
    }
    cpus
}

/// Pins the calling thread to `cpus` (a `taskset` list) with `taskset -p` on its thread ID;
/// threads it starts afterwards inherit that. Panics when that fails: a benchmark that did not
/// place its threads would print figures of another set-up.
fn pin_this_thread(cpus: &str) {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a thread ID")
        .to_owned();
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (util-linux) runs");
    assert!(status.success(), "taskset -p -c {cpus} {tid} failed");
}

/// What one placement measured.
struct Figures {
    rtt: Duration,
    /// Round trips with a pause before each: median and 99th percentile.
    paused_p50: Duration,
    paused_p99: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Figures {
    fn ratio(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.rtt.as_secs_f64().max(1e-9)
    }
}

#[test]
#[ignore = "#6: benchmark, run by scripts/bench.sh scheduler"]
fn grant_latency() {
    // Format log lines as the agent does (less the write).
    if log::set_logger(&FORMAT_ONLY).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let cpus = allowed_cpus();
    let all = cpus
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut placements = Vec::new();
    match cpus[..] {
        [agent, plugin, ..] => {
            placements.push(Placement::Across { agent, plugin });
            placements.push(Placement::One { cpu: agent });
        }
        [cpu] => placements.push(Placement::One { cpu }),
        [] => panic!("no CPU list in /proc/self/status"),
    }

    for (i, placement) in placements.into_iter().enumerate() {
        pin_this_thread(&placement.agent_cpu().to_string());
        let figures = measure(placement);
        pin_this_thread(&all);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "info {}: socket_round_trip_us {:.1} grant_latency_p50_us {:.1} p99_us {:.1} \
             max_us {:.1} waiters {WAITERS}",
            placement.name(),
            us(figures.rtt),
            us(figures.p50),
            us(figures.p99),
            us(figures.max),
        );
        println!(
            "info {}: socket_round_trip_after_a_pause_p50_us {:.1} p99_us {:.1}",
            placement.name(),
            us(figures.paused_p50),
            us(figures.paused_p99),
        );
        if i == 0 {
            println!(
                "figure grant_latency_p50_ratio {:.2} x target <= {P50_TARGET}",
                figures.ratio(figures.p50)
            );
            println!(
                "figure grant_latency_p99_ratio {:.2} x target <= {P99_TARGET}",
                figures.ratio(figures.p99)
            );
        } else {
            println!(
                "info {}: grant_latency_p50_ratio {:.2} x, grant_latency_p99_ratio {:.2} x",
                placement.name(),
                figures.ratio(figures.p50),
                figures.ratio(figures.p99)
            );
        }
    }
}

/// One run of the benchmark; the calling thread is already pinned to the agent's CPU.
fn measure(placement: Placement) -> Figures {
    let plugin_cpu = placement.plugin_cpu().to_string();

    // 1. The baseline: this thread and an echoing thread on the plugin's CPU.
    let mut echo = {
        let cpu = plugin_cpu.clone();
        Echo::new(move || pin_this_thread(&cpu))
    };
    for _ in 0..200 {
        echo.round_trip();
    }
    let mut round_trips: Vec<Duration> = (0..ROUND_TRIPS).map(|_| echo.round_trip()).collect();
    let rtt = percentile(&mut round_trips, 50);
    // For reading the tail: round trips with a pause before each, as grants come.
    let mut paused: Vec<Duration> = (0..PAUSED_ROUND_TRIPS)
        .map(|_| {
            thread::sleep(Duration::from_micros(200));
            echo.round_trip()
        })
        .collect();
    let paused_p50 = percentile(&mut paused, 50);
    let paused_p99 = percentile(&mut paused, 99);
    drop(echo);

    // 2. The agent: scheduler thread, socket, accept loop; one slot, every pod known.
    let dir = std::env::temp_dir().join(format!("ppm-bench-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket = dir.join("agent.sock");
    let state_file = dir.join("agent-state.json");
    let (listener, file) = server::bind(&socket).expect("bind");
    let (tx, rx) = mpsc::channel::<SchedMsg>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let sched = {
        thread::spawn(move || {
            let config_defaults = Options {
                lease: Duration::from_secs(300),
                release_on: ReleaseOn::Ready,
                skip: SkipOptions::default(),
                unknown_pod_wait: Duration::from_secs(2),
                unknown_pod_policy: UnknownPodPolicy::Pace,
                position_interval: POSITION_INTERVAL,
                position_memory: POSITION_MEMORY,
                max_remembered: MAX_REMEMBERED,
                max_waiting: MAX_WAITING,
                restart_grace: RESTART_GRACE,
            };
            let s = Scheduler::new(config_defaults, limits(1), None, Instant::now());
            run(s, &rx, Some(&state_file), || {
                let _ = ready_tx.send(());
            });
        })
    };
    let pods: Vec<PodInfo> = (0..=WAITERS).map(pod_named).collect();
    tx.send(SchedMsg::Kube(KubeEvent::Resynced(pods)))
        .expect("send");
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("synced");
    let server = Server::new(server::Capacity::for_open_file_limit(None));
    let acceptor = {
        let server = Arc::clone(&server);
        let tx = tx.clone();
        thread::spawn(move || server.accept_loop(&listener, &tx))
    };

    // 3. The clients: pod 0 takes the slot, 500 more wait, each on its own thread. They are
    //    started by a thread pinned to the plugin's CPU, so that they inherit its placement.
    let (spawn_tx, spawn_rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
    let (handle_tx, handle_rx) = mpsc::channel();
    let spawner = thread::spawn(move || {
        pin_this_thread(&plugin_cpu);
        for job in spawn_rx {
            let spawned = thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(job)
                .expect("spawn client");
            if handle_tx.send(spawned).is_err() {
                return;
            }
        }
    });
    let (granted_tx, granted_rx) = mpsc::channel::<(usize, Instant)>();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut clients = Vec::with_capacity(WAITERS + 1);
    for i in 0..=WAITERS {
        let socket = socket.clone();
        let granted_tx = granted_tx.clone();
        let request = WaitRequest {
            namespace: token("bench"),
            name: token(&format!("pod-{i:04}")),
            uid: Some(token(&format!("uid-{i:04}"))),
            timeout_ms: None,
        };
        spawn_tx
            .send(Box::new(move || {
                let outcome = wait_for_slot(&socket, &request, &|| deadline, deadline);
                let at = Instant::now();
                assert!(matches!(outcome, WaitOutcome::Granted(_)), "{outcome:?}");
                let _ = granted_tx.send((i, at));
            }))
            .expect("to the spawner");
        clients.push(handle_rx.recv().expect("a client thread"));
        if i == 0 {
            let (first, _) = granted_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("first grant");
            assert_eq!(first, 0);
        }
    }
    drop(spawn_tx);
    let _ = spawner.join();
    while waiting_count(&socket) < u32::try_from(WAITERS).unwrap_or(u32::MAX) {
        thread::sleep(Duration::from_millis(50));
    }
    // Let the first burst of position updates settle.
    thread::sleep(Duration::from_millis(1500));

    // 4. 500 releases, one at a time: the holder turns Ready, the next waiter's grant is timed.
    let mut holder = 0;
    let mut samples = Vec::with_capacity(WAITERS);
    for _ in 0..WAITERS {
        let mut ready = pod_named(holder);
        ready.release = Some(ReleaseReason::Ready);
        ready.started = true;
        ready.sandbox_started = true;
        let start = Instant::now();
        tx.send(SchedMsg::Kube(KubeEvent::PodUpsert(ready)))
            .expect("send");
        let (next, at) = granted_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the next grant");
        samples.push(at.saturating_duration_since(start));
        holder = next;
    }

    // 5. Stop everything.
    server.stop(&socket);
    let _ = acceptor.join();
    let _ = tx.send(SchedMsg::Shutdown);
    let _ = sched.join();
    for client in clients {
        let _ = client.join();
    }
    file.remove();
    let _ = std::fs::remove_dir_all(&dir);

    Figures {
        rtt,
        paused_p50,
        paused_p99,
        p50: percentile(&mut samples, 50),
        p99: percentile(&mut samples, 99),
        max: samples.last().copied().unwrap_or_default(),
    }
}
