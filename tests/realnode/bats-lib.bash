# shellcheck shell=bash
# Shared by the bats files that run on the real node (scripts/realnode.sh):
#
#   load '../realnode/bats-lib'
#   setup_file()    { realnode_setup_file; }     # skip reason, session lock, node up
#   teardown_file() { realnode_teardown_file; }  # logs kept, node down, lock released
#   setup()         { realnode_setup; }          # skips every test when the node cannot run
#
# When it runs:
#   REALNODE_E2E=1   always (builds the pinned binaries first when they are not cached)
#   REALNODE_E2E=0   never
#   unset            when every binary is already in the cache (scripts/test.sh runs
#                    scripts/realnode/build.sh first, so under test.sh that is always), so that a
#                    bare `bats tests/bats/` never starts a cold build by surprise
# and only as root on a cgroup v1 host: those are the only reasons to skip.
#
# Output hygiene: bats prints TAP on stdout, so nothing here writes plain text there. Diagnostics
# go to fd 3 as `# ` lines (TAP comments); the output of realnode.sh, kubectl and builds goes to
# REALNODE_TEST_LOG (under REALNODE_TEST_LOG_DIR, kept after the run together with the node's
# component and pod logs, copied before `down` removes the state directory).
#
# Two test runs on one machine: setup_file takes the session lock (realnode.sh session-lock) for
# the life of the bats file process, waiting up to REALNODE_SESSION_WAIT seconds (900) for a run
# that holds it, and skips with the holder's identity if it is still held then. A node that is up
# when the lock is ours was either left by a test run that died (it carries the .test-session
# marker: taken down) or started by hand (left alone: the tests skip).

# realnode_diag LINE...: one TAP comment per argument.
realnode_diag() {
  local line
  for line in "$@"; do printf '# %s\n' "${line}" >&3; done
}

# realnode_diag_file FILE [N]: the last N (30) lines of FILE as TAP comments.
realnode_diag_file() {
  tail -n "${2:-30}" "$1" 2>/dev/null | sed 's/^/#   /' >&3 || true
}

# realnode_log CMD...: run CMD with its output appended to the test log.
realnode_log() {
  printf '\n$ %s\n' "$*" >>"${REALNODE_TEST_LOG}"
  "$@" >>"${REALNODE_TEST_LOG}" 2>&1
}

realnode_lib_dir() {
  local f
  f="$(dpkg -L "$1" 2>/dev/null | grep '/load\.bash$' | head -n1)"
  echo "${f%/load.bash}"
}

# realnode_skip_reason: why this machine cannot run the real node, or nothing.
realnode_skip_reason() {
  if [[ "${REALNODE_E2E:-}" == 0 ]]; then
    echo "REALNODE_E2E=0: real node tests disabled"
    return
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "the real node needs root (netns, mounts, cgroups, containerd)"
    return
  fi
  if [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" == cgroup2fs ]]; then
    echo "the real node is written for a cgroup v1 host; this one is cgroup v2 only"
    return
  fi
  local c missing=()
  if [[ "${REALNODE_E2E:-}" != 1 ]]; then
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
      [[ -x "$("${REALNODE_BUILD}" --print-path "${c}")" ]] || missing+=("${c}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      echo "real node binaries not cached (${missing[*]}): run scripts/realnode/build.sh (scripts/test.sh does) or set REALNODE_E2E=1"
      return
    fi
  fi
  # Debian's containerd, runc and CNI plugins, and (REALNODE_E2E=1) any missing binary:
  # idempotent, a second when everything is there.
  if ! realnode_log "${REALNODE_BUILD}"; then
    realnode_diag "scripts/realnode/build.sh failed; the end of ${REALNODE_TEST_LOG}:"
    realnode_diag_file "${REALNODE_TEST_LOG}"
  fi
  local tool
  for tool in containerd containerd-shim-runc-v2 runc ctr iptables; do
    if ! command -v "${tool}" >/dev/null; then
      echo "${tool} is not installed and could not be installed (see ${REALNODE_TEST_LOG})"
      return
    fi
  done
  for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
    if [[ ! -x "$("${REALNODE_BUILD}" --print-path "${tool}")" ]]; then
      echo "${tool} could not be built (see ${REALNODE_TEST_LOG})"
      return
    fi
  done
}

# realnode_product_skip_reason: why the product (release binaries) cannot go on the node, or
# nothing. Builds them when they are missing (scripts/test.sh has built them already).
realnode_product_skip_reason() {
  local rel="${REALNODE_MUSL_DIR:-${REPO_ROOT}/target/x86_64-unknown-linux-musl/release}"
  if [[ ! -x "${rel}/pod-pacemaker" || ! -x "${rel}/pod-pacemaker-agent" ]]; then
    realnode_diag "release binaries missing: scripts/build.sh"
    realnode_log bash "${REPO_ROOT}/scripts/build.sh" --quiet || true
  fi
  if [[ ! -x "${rel}/pod-pacemaker" || ! -x "${rel}/pod-pacemaker-agent" ]]; then
    echo "release binaries could not be built (scripts/build.sh; see ${REALNODE_TEST_LOG})"
  fi
}

realnode_setup_file() {
  export REPO_ROOT REALNODE REALNODE_BUILD REALNODE_SKIP="" REALNODE_PRODUCT_SKIP=""
  export REALNODE_TEST_LOG_DIR REALNODE_TEST_LOG REALNODE_SESSION_HOLDER=""
  REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
  REALNODE="${REPO_ROOT}/scripts/realnode.sh"
  REALNODE_BUILD="${REPO_ROOT}/scripts/realnode/build.sh"
  # Logs of the last few runs stay for debugging (three files a run), not those of every run.
  find "${TMPDIR:-/tmp}" -maxdepth 1 -type d -name 'ppm-realnode-bats.*' -printf '%T@ %p\n' \
    2>/dev/null | sort -rn | tail -n +7 | cut -d' ' -f2- | xargs -r rm -rf --
  REALNODE_TEST_LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ppm-realnode-bats.XXXXXX")"
  REALNODE_TEST_LOG="${REALNODE_TEST_LOG_DIR}/test.log"
  : >"${REALNODE_TEST_LOG}"
  realnode_diag "$(basename "${BATS_TEST_FILENAME}"): real node log in ${REALNODE_TEST_LOG_DIR}"

  REALNODE_SKIP="$(realnode_skip_reason)"
  if [[ -n "${REALNODE_SKIP}" ]]; then
    realnode_diag "skipping the real node: ${REALNODE_SKIP}"
    return 0
  fi

  # The session lock, for as long as this bats file process (the owner) lives.
  local owner="${BASHPID}" wait="${REALNODE_SESSION_WAIT:-900}" t0="${SECONDS}"
  local session_lock="${REALNODE_LOCK:-/run/lock/pod-pacemaker-realnode.lock}"
  session_lock="${session_lock%.lock}.session.lock"
  if [[ -e "${session_lock}" ]] && ! flock -n "${session_lock}" true 2>/dev/null; then
    realnode_diag "another real-node test run holds ${session_lock} ($(cat "${session_lock}.owner" 2>/dev/null || echo '?')): waiting up to ${wait}s"
  fi
  if ! REALNODE_SESSION_HOLDER="$("${REALNODE}" session-lock "${owner}" "${wait}" 2>>"${REALNODE_TEST_LOG}")"; then
    REALNODE_SKIP="another real-node test run kept the session lock for ${wait}s: $(tail -n1 "${REALNODE_TEST_LOG}")"
    realnode_diag "skipping the real node: ${REALNODE_SKIP}"
    return 0
  fi
  ((SECONDS - t0 < 2)) || realnode_diag "waited $((SECONDS - t0))s for another real-node test run"

  local state="${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}"
  if "${REALNODE}" status >/dev/null 2>&1; then
    if [[ ! -e "${state}/.test-session" ]]; then
      REALNODE_SKIP="a real node someone started is up in ${state}; not touching it ('scripts/realnode.sh down' frees it)"
      realnode_diag "skipping the real node: ${REALNODE_SKIP}"
      return 0
    fi
    realnode_diag "a real node left by an earlier test run that died is up: taking it down"
  fi
  # Down also cleans a node whose processes are gone (an interrupted run).
  realnode_log "${REALNODE}" down || true

  REALNODE_PRODUCT_SKIP="$(realnode_product_skip_reason)"
  local t1="${SECONDS}"
  if ! realnode_log "${REALNODE}" up; then
    realnode_diag "realnode.sh up failed; the end of ${REALNODE_TEST_LOG}:"
    realnode_diag_file "${REALNODE_TEST_LOG}"
    touch "${BATS_FILE_TMPDIR}/ours"
    return 1
  fi
  touch "${BATS_FILE_TMPDIR}/ours" "${state}/.test-session"
  realnode_diag "realnode up: $(cat "${state}/up-seconds" 2>/dev/null || echo "$((SECONDS - t1))")s"
  # shellcheck disable=SC1090
  source <("${REALNODE}" env | sed 's/^/export /')
}

realnode_teardown_file() {
  local rc=0
  if [[ -n "${REALNODE:-}" && -e "${BATS_FILE_TMPDIR}/ours" ]]; then
    local state="${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}"
    if [[ -d "${state}" ]]; then
      realnode_log "${REALNODE}" status || true
      # The component and pod logs outlive the state directory, for a look after a failure.
      cp -r "${state}/logs" "${REALNODE_TEST_LOG_DIR}/node-logs" 2>/dev/null || true
      cp -rL "${state}/pod-logs" "${REALNODE_TEST_LOG_DIR}/pod-logs" 2>/dev/null || true
    fi
    if ! realnode_log "${REALNODE}" down; then
      realnode_diag "realnode.sh down failed; the end of ${REALNODE_TEST_LOG}:"
      realnode_diag_file "${REALNODE_TEST_LOG}"
      rc=1
    fi
  fi
  if [[ -n "${REALNODE_SESSION_HOLDER:-}" ]]; then
    "${REALNODE}" session-unlock "${REALNODE_SESSION_HOLDER}" 2>>"${REALNODE_TEST_LOG}" || true
  fi
  return "${rc}"
}

realnode_setup() {
  if [[ -n "${REALNODE_SKIP:-}" ]]; then
    skip "${REALNODE_SKIP}"
  fi
  load "$(realnode_lib_dir bats-support)/load"
  load "$(realnode_lib_dir bats-assert)/load"
}

# --- helpers for tests -------------------------------------------------------------------------
kc() { "${REALNODE}" kubectl "$@"; }

# realnode_kubectl_exec ARGS...: kubectl in the node's netns with this shell's pid being kubectl's
# (nsenter execs it), for background watches that a test stops by pid.
realnode_kubectl_exec() {
  exec nsenter --net="/run/netns/${REALNODE_NETNS}" -- "${REALNODE_KUBECTL}" --kubeconfig "${REALNODE_KUBECONFIG}" "$@"
}

# pods_watch_start SELECTOR FILE: record every watch event of the selected pods in FILE, one
# `TYPE|NAME|DELETION|IP|READY` line each, from a background kubectl; prints its pid.
pods_watch_start() {
  (realnode_kubectl_exec get pods -l "$1" --watch --output-watch-events \
    -o 'jsonpath={.type}|{.object.metadata.name}|{.object.metadata.deletionTimestamp}|{.object.status.podIP}|{.object.status.conditions[?(@.type=="Ready")].status}{"\n"}' \
    >"$2" 2>"$2.err" </dev/null 3>&-) &
  echo $!
}

pods_watch_stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# inflight_max FILE: the most pods that were started but not Ready at once, replaying the
# recorded events in order. Started = the pod has an IP (the CNI ADD, our plugin's wait included,
# returned); a pod being deleted no longer counts.
inflight_max() {
  awk -F'|' '
    { if ($1 != "DELETED" && $3 == "" && $4 != "" && $5 != "True") s[$2] = 1; else delete s[$2]
      n = 0; for (k in s) n++
      if (n > max) max = n }
    END { print max + 0 }' "$1"
}

# agent_log: everything the DaemonSet's agent containers logged on this node (restarts included:
# the kubelet keeps the previous container's log next to the current one).
agent_log() {
  cat "${REALNODE_POD_LOGS}"/pod-pacemaker_pod-pacemaker-agent-*/agent/*.log 2>/dev/null || true
}

# pacemaker_ensure LIMIT: the DaemonSet with LIMIT slots, chained; skips the test when the
# product could not be built.
pacemaker_ensure() {
  if [[ -n "${REALNODE_PRODUCT_SKIP:-}" ]]; then
    skip "${REALNODE_PRODUCT_SKIP}"
  fi
  local state="${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}"
  if [[ "$(cat "${state}/pacemaker-mode" 2>/dev/null)" == daemonset &&
    "$(cat "${state}/pacemaker-limit" 2>/dev/null)" == "$1" ]] &&
    kc -n pod-pacemaker get ds pod-pacemaker-agent >/dev/null 2>&1; then
    return 0
  fi
  "${REALNODE}" pacemaker on --limit "$1" >>"${REALNODE_TEST_LOG}" 2>&1 ||
    fail "realnode.sh pacemaker on --limit $1 failed (see ${REALNODE_TEST_LOG})"
}

# workload_pod_apply NAME WORK_SECONDS NAMESPACE IMAGE LABELS_FLOW_MAP ANNOTATIONS_FLOW_MAP: a bare pod
# whose container (the workload image) does WORK_SECONDS of CPU work, then passes its exec
# readiness probe. Each bats file wraps it with its own labels.
workload_pod_apply() {
  kc apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $3
  labels: $5
  annotations: $6
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: work
    image: $4
    imagePullPolicy: IfNotPresent
    env:
    - {name: WORK_SECONDS, value: "$2"}
    readinessProbe:
      exec: {command: ["/workload", "-ready-file", "/tmp/ready", "-check"]}
      periodSeconds: 1
      failureThreshold: 100000
EOF
}

# wait_until SECONDS CMD...: poll CMD every 0.5 s; fails the test with CMD's last output after
# SECONDS.
wait_until() {
  local secs="$1" deadline
  shift
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      fail "not true after ${secs}s: $*"
      return 1
    fi
    sleep 0.5
  done
}
