#!/usr/bin/env bats
# The agent's API client against a real kube-apiserver and etcd (scripts/realnode.sh), for the
# faults a real control plane produces by itself: a 410 after etcd was compacted and the API server
# restarted, a half-open connection, and a bound ServiceAccount token that stops being valid.
#
# Each test runs its own agent as a host process in the node's network namespace, reaching the
# API server the way a DaemonSet pod does: through the kubernetes Service IP (10.96.0.1:443, DNAT
# to the API server), with the DaemonSet's ServiceAccount, RBAC and a TokenRequest token bound to a
# Secret (deploy/pod-pacemaker.yaml minus the DaemonSet). Going through the Service IP lets the
# test cut exactly the agent's connections with one conntrack rule in the node's own netns, in both
# directions and without a reset: a real half-open connection. Pods are real (kubelet, containerd,
# the workload image, never Ready in these tests); the test plays the plugin over the agent's socket.
# The plugin is not chained: the API client is under test, not pacing.
#
# The same four checks as tests/bats/kube-faults.bats: recovery within a bound, the view converges
# to the API server's, the process never exits, no slot leaked or counted twice. The file skips
# when the real node cannot run (tests/realnode/bats-lib.bash says when).

bats_require_minimum_version 1.5.0

load '../realnode/bats-lib'

NS=kube-rn
CUT_COMMENT="pod-pacemaker kube-realnode.bats: agent cut off"

setup_file() {
  realnode_setup_file
  [[ -z "${REALNODE_SKIP:-}" ]] || return 0
  # The agent's identity from the manifest (namespace, ServiceAccount, RBAC), without the DaemonSet.
  awk '/^kind: DaemonSet/{exit} {print}' "${REPO_ROOT}/deploy/pod-pacemaker.yaml" | sed '$d' |
    realnode_log kc apply -f -
  realnode_log kc create namespace "${NS}"
}

teardown_file() { realnode_teardown_file; }

setup() {
  realnode_setup
  load helpers/kube
  KUBE_DIR="$(mktemp -d /tmp/ppm-kube-rn.XXXXXX)"
  : >"${KUBE_DIR}/pids"
  # shellcheck disable=SC2034 # read by helpers/kube.bash
  KUBE_NS="${NS}"
  # shellcheck disable=SC2034 # read by helpers/kube.bash
  KUBE_NODE="${REALNODE_NODE}"
  # The real kubelet posts status every few seconds and bookmarks come once a minute: a longer
  # silence bound than against the fake, still well under the test bounds.
  KUBE_SILENCE_S=8
}

teardown() {
  [[ -z "${REALNODE_SKIP:-}" ]] || return 0
  cut_restore
  cp "${KUBE_DIR}/agent.log" "${REALNODE_TEST_LOG_DIR}/kube-agent.test-${BATS_TEST_NUMBER}.log" 2>/dev/null || true
  kc delete pods --all -n "${NS}" --grace-period=0 --force >/dev/null 2>&1 || true
  kc delete secrets --all -n pod-pacemaker >/dev/null 2>&1 || true
  kube_teardown
}

in_node() { nsenter --net="/run/netns/${REALNODE_NETNS}" -- "$@"; }

# token NAME: a TokenRequest token of the agent's ServiceAccount, bound to Secret NAME (deleting
# the Secret invalidates it at once), written to the agent's token file atomically.
token() {
  kc -n pod-pacemaker create secret generic "$1" >/dev/null
  (umask 077 && kc -n pod-pacemaker create token pod-pacemaker-agent --duration=1h \
    --bound-object-kind Secret --bound-object-name "$1" >"${KUBE_DIR}/agent-token.new")
  mv -f "${KUBE_DIR}/agent-token.new" "${KUBE_DIR}/agent-token"
}

# agent_start: the release agent in the node's netns, as in-cluster as it gets outside a pod.
agent_start() {
  token tok-1
  cp "${REALNODE_DIR}/pki/ca.crt" "${KUBE_DIR}/ca.crt"
  nsenter --net="/run/netns/${REALNODE_NETNS}" -- env -u http_proxy -u https_proxy -u HTTP_PROXY \
    -u HTTPS_PROXY -u all_proxy -u ALL_PROXY "${KUBE_AGENT_BIN}" \
    --node-name "${REALNODE_NODE}" --socket "${KUBE_DIR}/agent.sock" --max-concurrent 2 \
    --api-server "https://${REALNODE_SERVICE_IP}:443" --token-file "${KUBE_DIR}/agent-token" \
    --ca-file "${KUBE_DIR}/ca.crt" --watch-silence-seconds "${KUBE_SILENCE_S}" \
    --pod-cache-file "${KUBE_DIR}/pods.json" --state-file "${KUBE_DIR}/state.json" \
    >>"${KUBE_DIR}/agent.log" 2>&1 3>&- </dev/null &
  KUBE_AGENT_PID=$!
  echo "${KUBE_AGENT_PID}" >>"${KUBE_DIR}/pids"
  kube_wait_for "the agent's socket" 30 kube__agent_ready
}

# pod NAME: a real pod on the node that starts and never turns Ready; prints its uid.
pod() {
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: ${NS}}
spec:
  nodeName: ${REALNODE_NODE}
  terminationGracePeriodSeconds: 0
  containers:
  - name: work
    image: localhost/ppm-workload:dev
    imagePullPolicy: IfNotPresent
    env: [{name: WORK_SECONDS, value: "3600"}]
    readinessProbe:
      exec: {command: ["/workload", "-check"]}
      periodSeconds: 5
EOF
  kc get pod "$1" -n "${NS}" -o jsonpath='{.metadata.uid}'
}

force_delete() {
  kc delete pod "$1" -n "${NS}" --grace-period=0 --force >/dev/null 2>&1
}

# hold_two: a and b hold the two slots, c waits.
hold_two() {
  local name uid
  for name in a b; do
    uid="$(pod "${name}")"
    kube_wait_for "pod ${name} in the agent's view" 20 kube__in_view "${uid}"
    kube_wait_slot "${name}" "${uid}"
    kube_wait_for "a slot for ${name}" 20 kube_granted "${name}"
  done
  uid="$(pod c)"
  kube_wait_for "pod c in the agent's view" 20 kube__in_view "${uid}"
  kube_wait_slot c "${uid}"
  kube_wait_for "c to queue" 20 kube_queued c
}

# The agent's view against the API server's: uid and resourceVersion of every pod on the node.
converged() {
  local server agent
  server="$(kc get pods -A --field-selector "spec.nodeName=${REALNODE_NODE}" -o json |
    jq -cS '[.items[] | {uid: .metadata.uid, namespace: .metadata.namespace,
      name: .metadata.name, resourceVersion: .metadata.resourceVersion}] | sort_by(.uid)')" || return 1
  agent="$(jq -cS '.pods | sort_by(.uid)' "${KUBE_DIR}/pods.json" 2>/dev/null)" || return 1
  [[ "${server}" == "${agent}" ]]
}

# cut_off / cut_restore: drop, silently and both ways, every packet of the agent's connections
# (those opened to the Service IP; the kubelet and the control plane use other addresses).
cut_off() {
  in_node iptables -w 5 -I OUTPUT -p tcp -m conntrack --ctorigdst "${REALNODE_SERVICE_IP}" \
    --ctorigdstport 443 -m comment --comment "${CUT_COMMENT}" -j DROP
}

cut_restore() {
  while in_node iptables -w 5 -D OUTPUT -p tcp -m conntrack --ctorigdst "${REALNODE_SERVICE_IP}" \
    --ctorigdstport 443 -m comment --comment "${CUT_COMMENT}" -j DROP 2>/dev/null; do :; done
}

# etcd_compact: compacts etcd at its current revision (the v3 JSON gateway, in the node's netns).
etcd_compact() {
  local rev
  rev="$(in_node curl -sS --max-time 10 -X POST http://127.0.0.1:2379/v3/kv/range -d '{"key":"AA=="}' |
    jq -er '.header.revision')"
  in_node curl -sS --max-time 30 -X POST http://127.0.0.1:2379/v3/kv/compaction \
    -d "{\"revision\":\"${rev}\",\"physical\":true}" >/dev/null
  echo "${rev}"
}

# apiserver_restart: stops kube-apiserver and starts it again with the same command line in the
# node's namespaces, recording the new pid where realnode.sh keeps it (so that `down` stops it).
apiserver_restart() {
  local pidfile="${REALNODE_DIR}/pids/kube-apiserver" pid holder args=()
  read -r pid _ <"${pidfile}"
  mapfile -d '' -t args <"/proc/${pid}/cmdline"
  [[ "${#args[@]}" -gt 1 && "${args[0]}" == *kube-apiserver ]] ||
    { echo "pid ${pid} is not the kube-apiserver" >&2; return 1; }
  # SIGTERM starts a graceful shutdown that waits for in-flight requests (the agent's cut-off
  # watch among them); like realnode.sh down, SIGKILL what is still there after 10 s.
  kill -TERM "${pid}"
  kube_wait_for "kube-apiserver (pid ${pid}) to exit" 10 kube__dead "${pid}" 2>/dev/null ||
    kill -KILL "${pid}"
  kube_wait_for "kube-apiserver (pid ${pid}) to exit" 10 kube__dead "${pid}"
  holder="$(awk '{print $1}' "${REALNODE_DIR}/pids/holder")"
  nohup nsenter -t "${holder}" --net --mount -- "${args[@]}" \
    >>"${REALNODE_DIR}/logs/kube-apiserver.log" 2>&1 </dev/null 3>&- 9>&- &
  pid=$!
  echo "${pid} $(sed 's/^.*) //' "/proc/${pid}/stat" | awk '{print $20}')" >"${pidfile}"
  kube_wait_for "kube-apiserver /readyz" 90 kc get --raw /readyz
}

assert_recovered() {
  kube_wait_for "c to get the slot a freed" "$1" kube_granted c
  kube_wait_for "the agent's view to match the API server" 60 converged
  assert_equal "$(kube_releases a)" 1
  assert_equal "$(kube_releases b)" 0
  kube_agent_alive
  kube_assert_holders b c
}

@test "real: etcd compacted and kube-apiserver restarted while the agent was cut off: a real 410, a relist, the deleted holder's slot freed once" {
  agent_start
  hold_two

  cut_off
  force_delete a
  etcd_compact >/dev/null
  apiserver_restart
  cut_restore

  assert_recovered 120
  run grep -E 'expired \(410\), relisting|resynced .* 1 gone' "${KUBE_DIR}/agent.log"
  assert_line --partial 'expired (410), relisting'
  assert_line --regexp 'resynced .* 1 gone'
  run grep -E "release pod=${NS}/a .*reason=deleted" "${KUBE_DIR}/agent.log"
  assert_success
}

@test "real: a half-open connection (packets dropped both ways): silence detected, watch resumed from its version after the path is back" {
  agent_start
  hold_two

  cut_off
  force_delete a
  kube_wait_for "the agent to notice the silence" $((KUBE_SILENCE_S + 30)) \
    grep -q "watch silent for ${KUBE_SILENCE_S}s" "${KUBE_DIR}/agent.log"
  run kube_agent_alive
  assert_success
  cut_restore

  assert_recovered 90
  run grep -c 'resynced ' "${KUBE_DIR}/agent.log"
  assert_output 0
  # The replay holds the deletion as the API server recorded it: the deletionTimestamp first
  # (reason=deleting), then the removal.
  run grep -E "release pod=${NS}/a .*reason=delet(ing|ed)" "${KUBE_DIR}/agent.log"
  assert_success
}

@test "real: the agent's bound token is invalidated: 401 on reconnect, recovery once the kubelet-style file swap brings a new token" {
  agent_start
  hold_two

  # The Secret the token is bound to goes away: the API server refuses the token from now on.
  kc -n pod-pacemaker delete secret tok-1 >/dev/null
  cut_off
  force_delete a
  kube_wait_for "the agent to notice the silence" $((KUBE_SILENCE_S + 30)) \
    grep -q "watch silent for ${KUBE_SILENCE_S}s" "${KUBE_DIR}/agent.log"
  cut_restore
  kube_wait_for "a 401" 60 grep -q "refuses the agent's token (401)" "${KUBE_DIR}/agent.log"
  run kube_agent_alive
  assert_success

  token tok-2
  assert_recovered 90
}
