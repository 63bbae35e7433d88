#!/usr/bin/env bats
# The real single-node Kubernetes (scripts/realnode.sh): etcd, kube-apiserver, controller-manager,
# scheduler, containerd + runc and a kubelet in their own network namespace, brought up once for
# this file and taken down at its end. First the node itself (smoke tests), then the product as a
# cluster operator installs it: deploy/pod-pacemaker.yaml (the agent's DaemonSet, limit patched in)
# and our plugin chained in the node's primary conflist. See docs/testing.md, "The real node", and
# tests/realnode/bats-lib.bash for when this file runs or skips.

bats_require_minimum_version 1.5.0

load '../realnode/bats-lib'

setup_file() { realnode_setup_file; }
teardown_file() { realnode_teardown_file; }
setup() { realnode_setup; }
# After each test, pass or fail: the agent's log and the pods into the test log directory, then
# the test's pods removed, so that a failure never leaks into the next test.
teardown() {
  [[ -z "${REALNODE_SKIP:-}" ]] || return 0
  agent_log >"${REALNODE_TEST_LOG_DIR}/agent.test-${BATS_TEST_NUMBER}.log"
  realnode_log kc get pods -A -o wide || true
  cleanup_pods
}

WORKLOAD=localhost/ppm-workload:dev
MISSING_IMAGE=localhost/ppm-does-not-exist:dev

# workload_pod NAME WORK_SECONDS [NAMESPACE [IMAGE [ANNOTATIONS_FLOW_MAP]]]: a pod whose container
# does WORK_SECONDS of CPU work, then passes its exec readiness probe.
workload_pod() {
  local annotations="{}"
  [[ -z "${5:-}" ]] || annotations="$5"
  workload_pod_apply "$1" "$2" "${3:-default}" "${4:-${WORKLOAD}}" "{test: realnode}" "${annotations}"
}

# workload_deployment NAME WORK_SECONDS: a Deployment with 0 replicas of the workload.
workload_deployment() {
  kc apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: default}
spec:
  replicas: 0
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: work
        image: ${WORKLOAD}
        env: [{name: WORK_SECONDS, value: "$2"}]
        readinessProbe:
          exec: {command: ["/workload", "-check"]}
          periodSeconds: 1
EOF
}

pod_ip() { kc get pod "$1" -n "${2:-default}" -o 'jsonpath={.status.podIP}' 2>/dev/null; }
has_ip() { [[ -n "$(pod_ip "$@")" ]]; }
is_ready() {
  [[ "$(kc get pod "$1" -n "${2:-default}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
ready_replicas() { kc get deploy "$1" -o 'jsonpath={.status.readyReplicas}' 2>/dev/null; }
all_ready() { [[ "$(ready_replicas "$1")" == "$2" ]]; }
waiting_reason() {
  kc get pod "$1" -o 'jsonpath={.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null
}
image_pull_failed() { [[ "$(waiting_reason "$1")" =~ ^(ErrImagePull|ImagePullBackOff)$ ]]; }
agent_log_has() { agent_log | grep -qE "$1"; }
# granted_at_least PREFIX N: the agent has granted slots to N pods whose names start with PREFIX.
granted_at_least() { (($(agent_log | grep -c " grant pod=default/$1") >= $2)); }

# The agent's container id and its process id on the host.
agent_container() {
  "${REALNODE_CRICTL}" --runtime-endpoint "unix://${REALNODE_CONTAINERD_SOCK}" ps --name '^agent$' --state running -q | head -n1
}
agent_pid() {
  "${REALNODE_CRICTL}" --runtime-endpoint "unix://${REALNODE_CONTAINERD_SOCK}" inspect \
    -o go-template --template '{{.info.pid}}' "$(agent_container)"
}

cleanup_pods() {
  kc delete deploy --all --wait=false >/dev/null 2>&1 || true
  kc delete pods -l test=realnode -A --wait=true --timeout=60s >/dev/null 2>&1 || true
}

# --- the node ----------------------------------------------------------------------------------

@test "real node: a workload pod becomes Ready behind its readiness probe and gets an IP from the pod CIDR" {
  run kc get node "${REALNODE_NODE}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}'
  assert_success
  assert_output --regexp '^True v1\.34\.[0-9]+ containerd://1\.'

  run workload_pod smoke 3
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

  run pod_ip smoke
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
  run workload_pod nosuchimage 0 default "${MISSING_IMAGE}"
  assert_success
  wait_until 60 image_pull_failed nosuchimage
  # The node's netns has no route out: only lo and the pod bridge.
  run "${REALNODE}" exec ip route show default
  assert_success
  assert_output ""
  run kc delete pod nosuchimage --wait=true --timeout=60s
  assert_success
}

@test "real node: the kubernetes Service's ClusterIP 10.96.0.1:443 reaches the API server at its endpoint 10.244.76.1:6443 without kube-proxy" {
  run kc get service kubernetes -o 'jsonpath={.spec.clusterIP}:{.spec.ports[0].port}'
  assert_success
  assert_output "${REALNODE_SERVICE_IP}:443"
  run kc get endpointslices -l kubernetes.io/service-name=kubernetes \
    -o 'jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}'
  assert_success
  assert_output "${REALNODE_NODE_IP}:6443"
  # From the node's netns, as a hostNetwork pod (the agent) connects, verifying the API server's
  # certificate for the ClusterIP with the cluster CA.
  run "${REALNODE}" exec curl -sS --noproxy '*' --max-time 5 --cacert "${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}/pki/ca.crt" \
    "https://${REALNODE_SERVICE_IP}:443/version"
  assert_success
  assert_output --partial '"gitVersion": "v1.34.'
}

@test "real node locks: a second test run's session lock gives up after its bound naming the holder, and a down that cannot get the node lock leaves the node running" {
  # This file holds the session lock (setup_file); another run asking with a 1 s bound gives up.
  local other
  sleep 30 3>&- &
  other=$!
  run "${REALNODE}" session-lock "${other}" 1
  kill "${other}"
  assert_failure
  assert_output --regexp "could not take .*session.lock within 1s \(held by owner pid [0-9]+"
  # Someone else is in the middle of up/down/pacemaker (holds the node lock): down waits for its
  # bound, then gives up without touching anything.
  local lock="${REALNODE_LOCK:-/run/lock/pod-pacemaker-realnode.lock}" holder
  (exec 8>>"${lock}" && flock -n 8 && exec sleep 10) 3>&- &
  holder=$!
  sleep 0.3
  run env REALNODE_LOCK_WAIT=1 "${REALNODE}" down
  kill "${holder}"
  assert_failure
  assert_output --partial "timed out after 1s waiting for ${lock}"
  run "${REALNODE}" status
  assert_success
}

# --- the product: deploy/pod-pacemaker.yaml and the plugin in the chain ------------------------

@test "pod-pacemaker as the DaemonSet: the agent runs from localhost/pod-pacemaker:dev with the limit patched in, reaches the API through the in-cluster Service, serves its socket, and the plugin is chained" {
  pacemaker_ensure 2
  run kc -n pod-pacemaker get pods -l app.kubernetes.io/name=pod-pacemaker-agent \
    -o 'jsonpath={range .items[*]}{.status.phase} {.spec.hostNetwork} {.spec.containers[0].image} {.spec.containers[0].command[0]} {.spec.containers[0].args}{"\n"}{end}'
  assert_success
  assert_output --regexp '^Running true localhost/pod-pacemaker:dev /pod-pacemaker-agent .*--max-concurrent=2'
  # In-cluster configuration: the Service's address from the environment the kubelet gives it,
  # the projected ServiceAccount token, and the first pod list before serving.
  wait_until 20 agent_log_has 'ready: serving /var/run/pod-pacemaker/pod-pacemaker.sock'
  run agent_log
  assert_output --partial "api_server=https://${REALNODE_SERVICE_IP}:443"
  assert_output --partial "synced"
  refute_output --regexp ' (ERROR|WARN) '
  # The socket and the heartbeat in the node's /run (a hostPath in the kubelet's mount namespace).
  run "${REALNODE}" node-exec sh -c 'test -S /var/run/pod-pacemaker/pod-pacemaker.sock && test -e /var/run/pod-pacemaker/pod-pacemaker.sock.heartbeat'
  assert_success
  # The plugin: a copy of the release binary in containerd's CNI bin dir, last in the conflist.
  local state="${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}"
  run cmp "${state}/cni/bin/pod-pacemaker" "${REPO_ROOT}/target/x86_64-unknown-linux-musl/release/pod-pacemaker"
  assert_success
  run python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["plugins"]; print(" ".join(x["type"] for x in p), p[-1]["daemonSocketPath"])' \
    "${state}/cni/net.d/10-ppm-realnode.conflist"
  assert_success
  assert_output "bridge pod-pacemaker /var/run/pod-pacemaker/pod-pacemaker.sock"
}

@test "pod-pacemaker (limit 2): a Deployment scaled 0 -> 12 never has more than 2 started-but-not-Ready pods (every API watch event), and all 12 become Ready" {
  pacemaker_ensure 2
  local limit=2 replicas=12 watch events="${BATS_TEST_TMPDIR}/burst.events"
  workload_deployment burst 2 >/dev/null
  watch="$(pods_watch_start app=burst "${events}")"
  sleep 1
  kc scale deploy/burst --replicas="${replicas}"
  local t0="${SECONDS}"
  wait_until 180 all_ready burst "${replicas}"
  local took=$((SECONDS - t0))
  sleep 1
  pods_watch_stop "${watch}"
  local max
  max="$(inflight_max "${events}")"
  realnode_diag "burst: ${replicas} Ready in ${took}s, max started-but-not-Ready ${max} (limit ${limit}), $(wc -l <"${events}") watch events"
  ((max <= limit)) || fail "${max} pods started-but-not-Ready at once (limit ${limit}); events in ${events}"
  # Each pod got its slot from the agent, and pacing happened: some waited for one.
  local grants granted longest
  grants="$(agent_log | grep -oE ' grant pod=default/burst-[^ ]+ uid=[^ ]+ reason=slot waited_ms=[0-9]+' || true)"
  granted="$(grep -oE 'burst-[^ ]+' <<<"${grants}" | sort -u | wc -l)"
  ((granted == replicas)) || fail "the agent granted slots to ${granted} of ${replicas} pods"
  longest="$(grep -oE 'waited_ms=[0-9]+' <<<"${grants}" | cut -d= -f2 | sort -n | tail -n1)"
  ((longest >= 2000)) || fail "no pod waited 2 s or more for a slot (longest ${longest} ms): not paced"
}

@test "pod-pacemaker (limit 2): pods whose image does not exist release their slots on ErrImagePull (reason=container-error), and healthy pods still start" {
  pacemaker_ensure 2
  run workload_pod badimg-1 0 default "${MISSING_IMAGE}"
  assert_success
  run workload_pod badimg-2 0 default "${MISSING_IMAGE}"
  assert_success
  # Both sandboxes are up: they took both slots.
  wait_until 60 has_ip badimg-1
  wait_until 60 has_ip badimg-2
  workload_deployment healthy 1 >/dev/null
  kc scale deploy/healthy --replicas=3
  wait_until 60 agent_log_has ' release pod=default/badimg-1 .*reason=container-error'
  wait_until 60 agent_log_has ' release pod=default/badimg-2 .*reason=container-error'
  wait_until 90 all_ready healthy 3
  # The bad pods are still not running: they were released, not started.
  run waiting_reason badimg-1
  assert_output --regexp '^(ErrImagePull|ImagePullBackOff)$'
  run waiting_reason badimg-2
  assert_output --regexp '^(ErrImagePull|ImagePullBackOff)$'
}

@test "pod-pacemaker (limit 2): pods in kube-system and pods annotated pod-pacemaker/skip: \"true\" start while two never-Ready pods hold both slots" {
  pacemaker_ensure 2
  # Two pods that never become Ready (an hour of work) take both slots.
  run workload_pod hog-1 3600
  assert_success
  run workload_pod hog-2 3600
  assert_success
  wait_until 60 has_ip hog-1
  wait_until 60 has_ip hog-2
  run "${REALNODE}" pacemaker status
  assert_output --partial 'holders=2 limit=2'
  # A third ordinary pod queues behind them.
  run workload_pod queued 0
  assert_success
  # Neither of these waits.
  run workload_pod excluded 0 kube-system
  assert_success
  run workload_pod annotated 0 default "${WORKLOAD}" '{pod-pacemaker/skip: "true"}'
  assert_success
  local t0="${SECONDS}"
  wait_until 30 is_ready excluded kube-system
  wait_until 30 is_ready annotated
  realnode_diag "kube-system and skip-annotated pods Ready in $((SECONDS - t0))s with both slots held"
  # The slots were full all along: the ordinary pod still has no sandbox network.
  run pod_ip queued
  assert_output ""
  run "${REALNODE}" pacemaker status
  assert_output --partial 'holders=2 limit=2'
}

@test "pod-pacemaker (limit 2): the agent killed (SIGKILL) mid-burst does not wedge pod creation: all 8 pods of a Deployment become Ready within 120 s" {
  pacemaker_ensure 2
  local replicas=8 pid restarts watch events="${BATS_TEST_TMPDIR}/killed.events"
  workload_deployment killed 2 >/dev/null
  watch="$(pods_watch_start app=killed "${events}")"
  kc scale deploy/killed --replicas="${replicas}"
  # Mid-burst: two pods granted, the rest waiting in the plugin.
  wait_until 60 granted_at_least killed- 2
  pid="$(agent_pid)"
  [[ "${pid}" =~ ^[0-9]+$ ]] || fail "no agent pid: '${pid}'"
  kill -KILL "${pid}"
  local t0="${SECONDS}"
  wait_until 120 all_ready killed "${replicas}"
  realnode_diag "agent SIGKILL: ${replicas} Ready $((SECONDS - t0))s after the kill, max started-but-not-Ready $(inflight_max "${events}")"
  pods_watch_stop "${watch}"
  # The kubelet restarted the agent, which served again.
  restarts="$(kc -n pod-pacemaker get pods -l app.kubernetes.io/name=pod-pacemaker-agent -o 'jsonpath={.items[0].status.containerStatuses[0].restartCount}')"
  ((restarts >= 1)) || fail "agent restartCount ${restarts}"
  [[ "$(agent_log | grep -c 'ready: serving')" -ge 2 ]] || fail "the restarted agent never served"
}

@test "pod-pacemaker (limit 2): the agent's pod deleted mid-burst (the DaemonSet replaces it) does not wedge pod creation: all 8 pods become Ready within 120 s" {
  pacemaker_ensure 2
  local replicas=8 old new watch events="${BATS_TEST_TMPDIR}/deleted.events"
  old="$(kc -n pod-pacemaker get pods -l app.kubernetes.io/name=pod-pacemaker-agent -o 'jsonpath={.items[0].metadata.name}')"
  workload_deployment deleted 2 >/dev/null
  watch="$(pods_watch_start app=deleted "${events}")"
  kc scale deploy/deleted --replicas="${replicas}"
  wait_until 60 granted_at_least deleted- 2
  # The old pod's log goes with it: keep it.
  agent_log >"${REALNODE_TEST_LOG_DIR}/agent.test-${BATS_TEST_NUMBER}.before-delete.log"
  run kc -n pod-pacemaker delete pod "${old}" --wait=false
  assert_success
  local t0="${SECONDS}"
  wait_until 120 all_ready deleted "${replicas}"
  realnode_diag "agent pod deleted: ${replicas} Ready $((SECONDS - t0))s after the delete, max started-but-not-Ready $(inflight_max "${events}")"
  pods_watch_stop "${watch}"
  new="$(kc -n pod-pacemaker get pods -l app.kubernetes.io/name=pod-pacemaker-agent --field-selector=status.phase=Running -o 'jsonpath={.items[*].metadata.name}')"
  [[ -n "${new}" && "${new}" != *"${old}"* ]] || fail "agent pods after the delete: '${new}' (old ${old})"
}

@test "pod-pacemaker uninstall: after kubectl delete -f deploy/pod-pacemaker.yaml, with the plugin still chained, new pods start (within the 30 s restart grace, then at once)" {
  pacemaker_ensure 2
  run kc delete -f "${REPO_ROOT}/deploy/pod-pacemaker.yaml" --wait=true --timeout=90s
  assert_success
  run kc get namespace pod-pacemaker
  assert_failure
  # Right after the uninstall the plugin still waits for an agent that might be restarting, for
  # agentRestartGraceSeconds (30) after the last heartbeat.
  local t0="${SECONDS}"
  run workload_pod after-uninstall 0
  assert_success
  wait_until 45 is_ready after-uninstall
  local first=$((SECONDS - t0))
  # Past the grace the plugin passes at once: a pod is Ready in little more than its own start.
  sleep $((first < 32 ? 32 - first : 0))
  t0="${SECONDS}"
  run workload_pod later 0
  assert_success
  wait_until 15 is_ready later
  realnode_diag "uninstall: first pod Ready ${first}s after the uninstall, one past the grace in $((SECONDS - t0))s"
  # Our plugin was in the chain all along.
  run grep -c '"type": "pod-pacemaker"' "${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}/cni/net.d/10-ppm-realnode.conflist"
  assert_output 1
}
