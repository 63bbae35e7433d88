#!/usr/bin/env bash
# demo.sh: shows pod-pacemaker pacing a burst of pod starts on a simulated node.
#
# Usage: scripts/demo.sh [--pods N] [--limit L] [--warmup-mb M] [--max-wait S] [--timeout S]
#
# Brings up a simulated node (see scripts/simnode.sh), creates N pods, fires all their CNI ADDs
# at once, plays kubelet for each (CPU warm-up, then Ready), and prints a timeline, checks, and
# one summary line:
#
#   pods=8 limit=2 max_concurrent=2 all_ready_s=12.3 fail_open=0
#
# max_concurrent is the most pods that were at once between their ADD returning and their Ready;
# all_ready_s runs from firing the ADDs to the last Ready. Exits non-zero when max_concurrent
# exceeds the limit, a pod has no IPv4 on eth0 or is not Ready in the API, or the run takes
# longer than the timeout. Needs root; runs unattended; cleans up even when interrupted.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pods=8
limit=2
warmup_mb=512
max_wait=120
timeout=""
usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}
while (($#)); do
  case "$1" in
    --pods) pods="$2"; shift 2 ;;
    --limit) limit="$2"; shift 2 ;;
    --warmup-mb) warmup_mb="$2"; shift 2 ;;
    --max-wait) max_wait="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in pods limit warmup_mb max_wait; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]] || ((${!v} < 1)); then
    echo "demo: --${v//_/-} must be a positive integer" >&2
    exit 2
  fi
done
# A generous bound on the whole burst: one maximum wait (a pod may legitimately wait that long
# and then fail open) plus half a minute per pod for the ADD, warm-up and status update.
: "${timeout:=$((max_wait + 30 + pods * 30))}"

# --- prerequisites, quietly when already satisfied -----------------------------------------
# Their output goes to a log that is shown only on failure, so a repeated demo prints just the
# demo.
prep_log="$(mktemp /tmp/ppm-demo-prep.XXXXXX)"
run_quiet() {
  if ! "$@" >>"${prep_log}" 2>&1; then
    echo "demo: '$*' failed:" >&2
    sed 's/^/  | /' "${prep_log}" >&2
    rm -f "${prep_log}"
    exit 1
  fi
}
echo "== preparing (install-deps, build)"
run_quiet bash "${repo_root}/scripts/install-deps.sh" --quiet
run_quiet bash "${repo_root}/scripts/build.sh" --quiet
rm -f "${prep_log}"

# shellcheck source=scripts/simnode.sh
source "${repo_root}/scripts/simnode.sh"
SIMNODE_WARMUP_MB="${warmup_mb}"
simnode_install_trap

echo "== bringing up a simulated node (limit ${limit}, maxWaitTimeInSeconds ${max_wait})"
simnode_up --limit "${limit}" --max-wait "${max_wait}"

names=()
for ((i = 1; i <= pods; i++)); do
  names+=("$(printf 'pod-%02d' "${i}")")
done
echo "== creating ${pods} pods in the API and their network namespaces"
for name in "${names[@]}"; do
  simnode_pod_create "${name}"
done

echo "== firing ${pods} CNI ADDs at once; each pod then warms up (sha256 of ${warmup_mb} MiB, standing in for a JVM start) and is marked Ready"
t0="$(simnode_now)"
for name in "${names[@]}"; do
  simnode_pod_start "${name}"
done
failures=()
if ! simnode_wait_pods "${timeout}" "${names[@]}"; then
  failures+=("not every pod finished within ${timeout}s")
fi

echo "== timeline (seconds since the ADDs were fired; warm_done = Ready PATCH sent)"
simnode_timeline "${t0}" "${names[@]}"

echo "== checks"
api_ready="$(simnode_node_pods_ready || true)"
last_ready=""
for name in "${names[@]}"; do
  add_rc="$(simnode_pod_file "${name}" add.rc || echo none)"
  if [[ "${add_rc}" != 0 ]]; then
    failures+=("${name}: ADD exited ${add_rc}: $(tail -n 3 "$(simnode__pod_dir "${name}")/add.err" 2>/dev/null | tr '\n' ' ')")
  fi
  if ! ip_addr="$(simnode_pod_ip "${name}")"; then
    failures+=("${name}: no IPv4 address on eth0 in its netns")
  fi
  if ! grep -qx "${name} true" <<<"${api_ready}"; then
    failures+=("${name}: not Ready in the API")
  fi
  echo "${name}: add_rc=${add_rc} ip=${ip_addr:-none} ready_in_api=$(grep -q "^${name} true$" <<<"${api_ready}" && echo yes || echo no)"
  ready="$(simnode_pod_file "${name}" ready || true)"
  if [[ -n "${ready}" ]] && { [[ -z "${last_ready}" ]] || awk -v a="${ready}" -v b="${last_ready}" 'BEGIN { exit !(a > b) }'; }; then
    last_ready="${ready}"
  fi
done

max_concurrent="$(simnode_max_concurrent "${names[@]}")"
fail_open="$(simnode_fail_open_count "${names[@]}")"
if [[ -n "${last_ready}" ]]; then
  all_ready_s="$(awk -v a="${last_ready}" -v b="${t0}" 'BEGIN { printf "%.1f", a - b }')"
else
  all_ready_s="none"
fi
if ((max_concurrent > limit)); then
  failures+=("max_concurrent=${max_concurrent} exceeds the limit ${limit}")
fi
if ((fail_open > 0)); then
  # Not a failure by itself (fail-open is the configured policy), but pacing did not hold for
  # those pods, so say so plainly.
  echo "note: ${fail_open} pod(s) proceeded without a slot (fail-open); see their add.err"
fi

# The agent's log is the most useful thing to see when something went wrong; show its tail.
if ((${#failures[@]} > 0)); then
  echo "== agent log (last 30 lines)"
  tail -n 30 "${SIMNODE_DIR}/agent.log" 2>/dev/null || true
fi

# Tear down before the summary, so that the summary is the last line printed.
simnode_down
trap - EXIT INT TERM

for f in "${failures[@]}"; do
  echo "FAIL: ${f}"
done
echo "pods=${pods} limit=${limit} max_concurrent=${max_concurrent} all_ready_s=${all_ready_s} fail_open=${fail_open}"
if ((${#failures[@]} > 0)); then
  exit 1
fi
