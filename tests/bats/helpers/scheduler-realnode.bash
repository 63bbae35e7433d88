# shellcheck shell=bash
# Helpers for tests/bats/scheduler-realnode.bats, on top of tests/realnode/bats-lib.bash (kc,
# wait_until, agent_log, pacemaker_ensure, pods_watch_*): the agent's STATUS answer through
# `realnode.sh pacemaker status`, workload pods labelled for this file, the order of the agent's
# grants, and the agent's process.

SCHEDR_WORKLOAD=localhost/ppm-workload:dev
SCHEDR_MISSING_IMAGE=localhost/ppm-does-not-exist:dev

# schedr_pod NAME WORK_SECONDS [IMAGE [GROUP]]: a bare pod whose container works WORK_SECONDS of CPU,
# then passes its exec readiness probe; labelled test=scheduler-realnode and group=GROUP.
schedr_pod() {
  workload_pod_apply "$1" "$2" default "${3:-${SCHEDR_WORKLOAD}}" \
    "{test: scheduler-realnode, group: ${4:-none}}" "{}" >/dev/null
}

schedr_cleanup() {
  kc delete pods -l test=scheduler-realnode --wait=true --timeout=60s >/dev/null 2>&1 || true
}

schedr_has_ip() {
  [[ -n "$(kc get pod "$1" -o 'jsonpath={.status.podIP}' 2>/dev/null)" ]]
}

schedr_ready() {
  [[ "$(kc get pod "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# schedr_all_ready POD...: every named pod is Ready.
schedr_all_ready() {
  local pod
  for pod in "$@"; do schedr_ready "${pod}" || return 1; done
}

# schedr_status: the agent's STATUS answer (pod-pacemaker-agent --status in the node).
schedr_status() {
  "${REALNODE}" pacemaker status 2>/dev/null
}

# schedr_count FIELD: a count of the final STATUS line (holders, limit, waiting, remembered).
schedr_count() {
  schedr_status | awk -v key="$1" '
    $1 == "STATUS" { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) print kv[2] } }'
}

schedr_count_is() {
  [[ "$(schedr_count "$1")" == "$2" ]]
}

# schedr_waiters: the names of the queued pods, in queue order.
schedr_waiters() {
  schedr_status | awk '$1 == "WAITER" {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "name") print kv[2] } }'
}

# schedr_asked POD: the agent has the pod's request: queued, or granted.
schedr_asked() {
  schedr_waiters | grep -qx "$1" || agent_log | grep -q " grant pod=default/$1 "
}

# schedr_grant_order PREFIX [AFTER_LINE]: the pods (names starting with PREFIX) the agent granted
# a slot, in order, from the agent log after line AFTER_LINE (0).
schedr_grant_order() {
  agent_log | tail -n "+$((${2:-0} + 1))" |
    grep -oE " grant pod=default/$1[^ ]* uid=[^ ]+ reason=slot waited_ms" |
    sed -E 's#^ grant pod=default/([^ ]+) .*#\1#'
}

# schedr_served_count: how often the agent logged "ready: serving" (once per start).
schedr_served_count() {
  agent_log | grep -c 'ready: serving' || true
}

schedr_served_at_least() {
  (($(schedr_served_count) >= $1))
}

# schedr_agent_pid: the host pid of the running agent container.
schedr_agent_pid() {
  local crictl=("${REALNODE_CRICTL}" --runtime-endpoint "unix://${REALNODE_CONTAINERD_SOCK}")
  "${crictl[@]}" inspect -o go-template --template '{{.info.pid}}' \
    "$("${crictl[@]}" ps --name '^agent$' --state running -q | head -n1)"
}
