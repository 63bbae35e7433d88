#!/usr/bin/env bats
# Smoke tests on the real single-node Kubernetes (scripts/realnode.sh): etcd, kube-apiserver,
# controller-manager, scheduler, containerd + runc and a kubelet, all in their own network
# namespace. The node comes up once for the file (setup_file) and goes down in teardown_file.
#
# When it runs:
#   REALNODE_E2E=1   always (builds the pinned binaries first when they are not cached: a cold
#                    build takes tens of minutes, see docs/testing.md)
#   REALNODE_E2E=0   never
#   unset            only when every binary is already in the cache (a warm machine), so that
#                    `bats tests/bats/` never starts a cold build by surprise
# and only as root on a cgroup v1 host, with containerd and runc installed (build.sh installs them).

bats_require_minimum_version 1.5.0

realnode_lib() {
  local f
  f="$(dpkg -L "$1" 2>/dev/null | grep '/load\.bash$' | head -n1)"
  echo "${f%/load.bash}"
}

setup_file() {
  export REPO_ROOT
  REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
  export REALNODE="${REPO_ROOT}/scripts/realnode.sh"
  export REALNODE_BUILD="${REPO_ROOT}/scripts/realnode/build.sh"

  if [[ "${REALNODE_E2E:-}" == 0 ]]; then
    skip "REALNODE_E2E=0: real node tests disabled"
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    skip "the real node needs root (netns, mounts, cgroups, containerd)"
  fi
  if [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" == cgroup2fs ]]; then
    skip "the real node is written for a cgroup v1 host; this one is cgroup v2 only"
  fi
  if [[ "${REALNODE_E2E:-}" != 1 ]]; then
    local c missing=()
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
      [[ -x "$("${REALNODE_BUILD}" --print-path "${c}")" ]] || missing+=("${c}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      skip "real node binaries not cached (${missing[*]}): run scripts/realnode/build.sh or set REALNODE_E2E=1"
    fi
  fi
  # Debian's containerd, runc and CNI plugins (idempotent; no-op when installed).
  "${REALNODE_BUILD}" >&3 2>&1 || true
  local tool
  for tool in containerd containerd-shim-runc-v2 runc ctr; do
    if ! command -v "${tool}" >/dev/null; then
      skip "${tool} is not installed and could not be installed (apt-get install containerd runc)"
    fi
  done

  # A node left over from an interrupted run is taken down first.
  "${REALNODE}" down >&3 2>&1 || true
  local t0 t1
  t0="$(date +%s.%N)"
  if ! "${REALNODE}" up >"${BATS_FILE_TMPDIR}/up.log" 2>&1; then
    cat "${BATS_FILE_TMPDIR}/up.log" >&3
    "${REALNODE}" down >&3 2>&1 || true
    return 1
  fi
  t1="$(date +%s.%N)"
  awk -v a="${t0}" -v b="${t1}" 'BEGIN{printf "# realnode up: %.1fs\n", b-a}' >&3
  # shellcheck disable=SC1090
  source <("${REALNODE}" env | sed 's/^/export /')
}

teardown_file() {
  [[ -n "${REALNODE:-}" && -x "${REALNODE}" ]] || return 0
  if [[ -f "${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}/.pod-pacemaker-realnode" ]]; then
    "${REALNODE}" status >&3 2>&1 || true
  fi
  "${REALNODE}" down >&3 2>&1
}

setup() {
  load "$(realnode_lib bats-support)/load"
  load "$(realnode_lib bats-assert)/load"
}

kc() { "${REALNODE}" kubectl "$@"; }

# workload_pod NAME IMAGE WORK_SECONDS: a pod with an exec readiness probe on /tmp/ready.
workload_pod() {
  kc apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: work
    image: $2
    imagePullPolicy: IfNotPresent
    env:
    - {name: WORK_SECONDS, value: "$3"}
    readinessProbe:
      exec: {command: ["/workload", "-ready-file", "/tmp/ready", "-check"]}
      periodSeconds: 1
      failureThreshold: 120
EOF
}

@test "real node: a workload pod becomes Ready behind its readiness probe and gets an IP from the pod CIDR" {
  run kc get node "${REALNODE_NODE}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}'
  assert_success
  assert_output --regexp '^True v1\.34\.[0-9]+ containerd://1\.'

  run workload_pod smoke "localhost/ppm-workload:dev" 3
  assert_success
  run kc wait --for=condition=Ready pod/smoke --timeout=120s
  assert_success

  # Not Ready before the work was done: the container started at least 3 s before it was Ready.
  local started ready
  started="$(kc get pod smoke -o 'jsonpath={.status.containerStatuses[0].state.running.startedAt}')"
  ready="$(kc get pod smoke -o 'jsonpath={.status.conditions[?(@.type=="Ready")].lastTransitionTime}')"
  [[ -n "${started}" && -n "${ready}" ]] || fail "no startedAt/Ready time: '${started}' '${ready}'"
  (($(date -d "${ready}" +%s) - $(date -d "${started}" +%s) >= 3)) ||
    fail "Ready at ${ready}, only $(($(date -d "${ready}" +%s) - $(date -d "${started}" +%s)))s after the start at ${started}"

  run kc get pod smoke -o 'jsonpath={.status.podIP}'
  assert_success
  assert_output --regexp '^10\.244\.77\.[0-9]+$'
  # The IP is on eth0 of the pod's sandbox, as the runtime reports it.
  local ip="${output}" sandbox
  sandbox="$("${REALNODE_CRICTL}" --runtime-endpoint "unix://${REALNODE_CONTAINERD_SOCK}" pods --name smoke -q)"
  run "${REALNODE_CRICTL}" --runtime-endpoint "unix://${REALNODE_CONTAINERD_SOCK}" inspectp "${sandbox}"
  assert_success
  assert_output --partial "\"ip\": \"${ip}\""

  run kc delete pod smoke --wait=true --timeout=60s
  assert_success
}

@test "real node: an image that was never imported is a natural ErrImagePull, and no traffic leaves the node's netns" {
  run workload_pod nosuchimage "localhost/ppm-does-not-exist:dev" 0
  assert_success
  local reason="" i
  for i in $(seq 1 60); do
    reason="$(kc get pod nosuchimage -o 'jsonpath={.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)"
    [[ "${reason}" == ErrImagePull || "${reason}" == ImagePullBackOff ]] && break
    sleep 1
  done
  [[ "${reason}" == ErrImagePull || "${reason}" == ImagePullBackOff ]] ||
    fail "waiting reason after ${i}s: '${reason}'"
  # The node's netns has no route out: only lo and the pod bridge.
  run "${REALNODE}" exec ip route show default
  assert_success
  assert_output ""
  run kc delete pod nosuchimage --wait=true --timeout=60s
  assert_success
}
