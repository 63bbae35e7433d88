#!/usr/bin/env bash
# Benchmark group "scheduler" (run through scripts/bench.sh):
#
#   grant_latency_p50_ratio  median time from a releasing event (a holder turning Ready, handed to
#                            the agent's scheduler thread exactly as the watch thread hands it) to
#                            the next waiter's plugin client returning "granted", with 500 waiters
#                            queued on the agent's Unix socket, divided by one Unix-socket round
#                            trip (a line out and a line back between two threads; the median of
#                            2000 back to back) measured in the same run. Target <= 5.
#   grant_latency_p99_ratio  the same at the 99th percentile. Target <= 20 (issue #6).
#
# Everything runs in one process (agent/src/scheduler/tests/bench.rs, an ignored test): the real
# scheduler thread with its state file, the real accept loop and connection threads, and 500
# threads running the plugin's own wait_for_slot. Only the API server is left out, so the figure
# is the agent's own share of the latency; log lines are formatted but not written. The "info"
# lines give the microseconds behind the ratios.
#
# Read the "info" lines with the ratios. On this 2-core VM the baseline itself is unstable: 40-70
# us back to back at times, 3 us at others, while the grant latency stays at 60-95 us (p50) and
# 250-550 us (p99). Back to back the kernel hands the CPU straight from one thread to the other; a
# grant wakes threads that slept (scheduler, connection, client), often on the other CPU. The
# info lines give the grant latency in microseconds, a round trip taken right before each release
# (socket_round_trip_hot_us) and an mpsc round trip. docs/decisions.md D16.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"

# An optimized build of the agent's test binary; the bench prints "info" and "figure" lines.
out="$(cargo test --quiet --release -p pod-pacemaker-agent --bin pod-pacemaker-agent -- \
  --ignored --exact scheduler::tests::bench::grant_latency --nocapture --test-threads=1 2>&1)" || {
  echo "${out}" >&2
  echo "bench scheduler: the benchmark failed" >&2
  exit 1
}
grep -E '^(info|figure) ' <<<"${out}"
