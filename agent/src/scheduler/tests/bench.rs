// SPDX-License-Identifier: Apache-2.0
//! The grant-latency benchmark behind `scripts/bench.sh scheduler` (issue #6). It is a test only
//! so that it can drive the agent's own threads; it is ignored by `cargo test`, asserts nothing
//! about time, and prints `figure` lines for the bench script.
//!
//! Set-up, all in this process and all real except the API server: the `agent-sched` owner thread
//! (`run`, with a state file as in production), the accept loop and one connection thread per
//! client on a Unix socket, and 500 waiters, each a thread running the plugin's own
//! `wait_for_slot`. One slot; every pod is known. Then, 500 times: a "Ready" event for the holder
//! goes into the scheduler's channel exactly as the watch thread sends it, and the time until the
//! next waiter's `wait_for_slot` returns `Granted` is the grant latency after the releasing event.
//! The baseline is one round trip on a Unix stream socket between two threads (a line out, a line
//! back): the median of 2000 back to back, taken before the clients start; it divides both
//! figures. The median of one round trip taken right before each release is printed too
//! (`socket_round_trip_hot_us`): there the kernel hands the CPU straight over and it is several
//! times cheaper, which is worth knowing when reading the figures (docs/decisions.md D16).

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
    fn new() -> Self {
        let (client, server) = UnixStream::pair().expect("socket pair");
        let thread = thread::spawn(move || {
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

/// The median of `ROUND_TRIPS` round trips through a pair of `mpsc` channels between two threads,
/// the hand-off the watch thread and the scheduler thread use.
fn channel_round_trip() -> Duration {
    let (to_echo, echo_rx) = mpsc::channel::<Instant>();
    let (to_main, main_rx) = mpsc::channel::<Instant>();
    let echo = thread::spawn(move || {
        while let Ok(t) = echo_rx.recv() {
            if to_main.send(t).is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 200 {
        let start = Instant::now();
        to_echo.send(start).expect("send");
        main_rx.recv().expect("recv");
        if i >= 200 {
            samples.push(start.elapsed());
        }
    }
    drop(to_echo);
    let _ = echo.join();
    percentile(&mut samples, 50)
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

#[test]
#[ignore = "#6: benchmark, run by scripts/bench.sh scheduler"]
fn grant_latency() {
    // 1. The baseline, and a logger as costly as the agent's (less the write).
    let mut echo = Echo::new();
    for _ in 0..200 {
        echo.round_trip();
    }
    let mut round_trips: Vec<Duration> = (0..ROUND_TRIPS).map(|_| echo.round_trip()).collect();
    let rtt = percentile(&mut round_trips, 50);
    let channel_rtt = channel_round_trip();
    if log::set_logger(&FORMAT_ONLY).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }

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
    let server = Server::new();
    let acceptor = {
        let server = Arc::clone(&server);
        let tx = tx.clone();
        thread::spawn(move || server.accept_loop(&listener, &tx))
    };

    // 3. The clients: pod 0 takes the slot, 500 more wait, each on its own thread.
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
        let spawned = thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let outcome = wait_for_slot(&socket, &request, &|| deadline, deadline);
                let at = Instant::now();
                assert!(matches!(outcome, WaitOutcome::Granted(_)), "{outcome:?}");
                let _ = granted_tx.send((i, at));
            })
            .expect("spawn client");
        clients.push(spawned);
        if i == 0 {
            let (first, _) = granted_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("first grant");
            assert_eq!(first, 0);
        }
    }
    while waiting_count(&socket) < u32::try_from(WAITERS).unwrap_or(u32::MAX) {
        thread::sleep(Duration::from_millis(50));
    }
    // Let the first burst of position updates settle.
    thread::sleep(Duration::from_millis(1500));

    // 4. 500 releases, one at a time: the holder turns Ready, the next waiter's grant is timed.
    //    Right before each, one more round trip, for the "hot" figure.
    let mut holder = 0;
    let mut samples = Vec::with_capacity(WAITERS);
    let mut hot = Vec::with_capacity(WAITERS);
    for _ in 0..WAITERS {
        hot.push(echo.round_trip());
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

    // 5. Stop everything, then report.
    server.stop(&socket);
    let _ = acceptor.join();
    let _ = tx.send(SchedMsg::Shutdown);
    let _ = sched.join();
    for client in clients {
        let _ = client.join();
    }
    file.remove();
    let _ = std::fs::remove_dir_all(&dir);

    drop(echo);
    let hot = percentile(&mut hot, 50);
    let p50 = percentile(&mut samples, 50);
    let p99 = percentile(&mut samples, 99);
    let ratio = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64().max(1e-9);
    println!("info socket_round_trip_us {:.1}", rtt.as_secs_f64() * 1e6);
    println!(
        "info socket_round_trip_hot_us {:.1} (one right before each release)",
        hot.as_secs_f64() * 1e6
    );
    println!(
        "info channel_round_trip_us {:.1} (mpsc, as between the watch and scheduler threads)",
        channel_rtt.as_secs_f64() * 1e6
    );
    println!(
        "info grant_latency_p50_us {:.1} p99_us {:.1} max_us {:.1} waiters {WAITERS}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
    );
    println!(
        "figure grant_latency_p50_ratio {:.2} x target <= {P50_TARGET}",
        ratio(p50)
    );
    println!(
        "figure grant_latency_p99_ratio {:.2} x target <= {P99_TARGET}",
        ratio(p99)
    );
}
