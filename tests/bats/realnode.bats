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

# realnode_skip_reason: why this machine cannot run the real node now, or nothing. (bats 1.8's
# `skip` in setup_file fails the file, so setup_file records the reason and setup() skips.)
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
  if [[ "${REALNODE_E2E:-}" != 1 ]]; then
    local c missing=()
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
      [[ -x "$("${REALNODE_BUILD}" --print-path "${c}")" ]] || missing+=("${c}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      echo "real node binaries not cached (${missing[*]}): run scripts/realnode/build.sh or set REALNODE_E2E=1"
      return
    fi
  fi
  # Debian's containerd, runc and CNI plugins, and (REALNODE_E2E=1) any missing binary: idempotent,
  # a second when everything is there.
  echo "# scripts/realnode/build.sh (a cold build takes about 8 minutes)" >&3
  if ! "${REALNODE_BUILD}" >"${BATS_FILE_TMPDIR}/build.log" 2>&1; then
    tail -n 30 "${BATS_FILE_TMPDIR}/build.log" >&3
  fi
  local tool
  for tool in containerd containerd-shim-runc-v2 runc ctr; do
    if ! command -v "${tool}" >/dev/null; then
      echo "${tool} is not installed and could not be installed (apt-get install containerd runc; see ${BATS_FILE_TMPDIR}/build.log)"
      return
    fi
  done
  for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl; do
    if [[ ! -x "$("${REALNODE_BUILD}" --print-path "${tool}")" ]]; then
      echo "${tool} could not be built (see ${BATS_FILE_TMPDIR}/build.log)"
      return
    fi
  done
  # One real node per machine. A live one belongs to someone (a developer, another run): leave it
  # alone.
  if "${REALNODE}" status >/dev/null 2>&1; then
    echo "a real node is already up in ${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}; not touching it"
    return
  fi
}

setup_file() {
  export REPO_ROOT
  REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
  export REALNODE="${REPO_ROOT}/scripts/realnode.sh"
  export REALNODE_BUILD="${REPO_ROOT}/scripts/realnode/build.sh"
  export REALNODE_SKIP
  REALNODE_SKIP="$(realnode_skip_reason)"
  if [[ -n "${REALNODE_SKIP}" ]]; then
    echo "# skipping the real node: ${REALNODE_SKIP}" >&3
    return 0
  fi

  # A node whose processes are gone is left over from an interrupted run: clean it first.
  "${REALNODE}" down >&3 2>&1 || true
  touch "${BATS_FILE_TMPDIR}/ours"
  local t0 t1
  t0="$(date +%s.%N)"
  if ! "${REALNODE}" up >"${BATS_FILE_TMPDIR}/up.log" 2>&1; then
    cat "${BATS_FILE_TMPDIR}/up.log" >&3
    return 1
  fi
  t1="$(date +%s.%N)"
  awk -v a="${t0}" -v b="${t1}" 'BEGIN{printf "# realnode up: %.1fs\n", b-a}' >&3
  # shellcheck disable=SC1090
  source <("${REALNODE}" env | sed 's/^/export /')
}

teardown_file() {
  if [[ -z "${REALNODE:-}" || ! -e "${BATS_FILE_TMPDIR}/ours" ]]; then
    return 0
  fi
  if [[ -f "${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}/.pod-pacemaker-realnode" ]]; then
    "${REALNODE}" status >&3 2>&1 || true
  fi
  "${REALNODE}" down >&3 2>&1
}

setup() {
  if [[ -n "${REALNODE_SKIP:-}" ]]; then
    skip "${REALNODE_SKIP}"
  fi
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

# inflight_sample: "IN_FLIGHT READY" for the burst pods now. In flight = the sandbox is up (the
# pod has an IP, so the CNI ADD, our plugin's wait included, has returned) and not Ready yet.
inflight_sample() {
  kc get pods -l app=burst -o 'jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.status.podIP}|{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk -F'|' '$1 == "" && $2 != "" { if ($3 == "True") r++; else f++ } END { printf "%d %d\n", f, r }'
}

@test "real node with pod-pacemaker (limit 2): a Deployment scaled 0 -> 6 never has more than 2 started-but-not-Ready pods, and all become Ready" {
  local rel="${REPO_ROOT}/target/x86_64-unknown-linux-musl/release"
  if [[ ! -x "${rel}/pod-pacemaker" || ! -x "${rel}/pod-pacemaker-agent" ]]; then
    skip "release binaries not built (scripts/build.sh)"
  fi
  local limit=2 replicas=6
  run "${REALNODE}" pacemaker on --limit "${limit}"
  assert_success

  kc apply -f - <<EOT
apiVersion: apps/v1
kind: Deployment
metadata: {name: burst, namespace: default}
spec:
  replicas: 0
  selector: {matchLabels: {app: burst}}
  template:
    metadata: {labels: {app: burst}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: work
        image: localhost/ppm-workload:dev
        env: [{name: WORK_SECONDS, value: "4"}]
        readinessProbe:
          exec: {command: ["/workload", "-check"]}
          periodSeconds: 1
EOT
  kc scale deploy/burst --replicas="${replicas}"

  local max=0 inflight ready=0 deadline=$((SECONDS + 150))
  while ((SECONDS < deadline)); do
    read -r inflight ready < <(inflight_sample)
    ((inflight > max)) && max="${inflight}"
    ((ready == replicas)) && break
    sleep 0.5
  done
  echo "# max in flight ${max}, ready ${ready}/${replicas}" >&3
  ((ready == replicas)) || fail "only ${ready}/${replicas} Ready after 150s (max in flight ${max})"
  ((max <= limit)) || fail "${max} pods started-but-not-Ready at once, limit ${limit}"
  # The agent saw the pods through the API and paced them: some waited for a slot.
  run grep -c ' grant pod=default/burst-' "${REALNODE_DIR}/logs/agent.log"
  assert_success
  assert_output "${replicas}"

  # Out of the chain again, a new pod starts normally.
  run "${REALNODE}" pacemaker off
  assert_success
  kc delete deploy burst --wait=true --timeout=60s
  run workload_pod after-off "localhost/ppm-workload:dev" 0
  assert_success
  run kc wait --for=condition=Ready pod/after-off --timeout=60s
  assert_success
  kc delete pod after-off --wait=true --timeout=60s
}
