# shellcheck shell=bash
# Helpers for the scheduler scenarios (tests/bats/scheduler-*.bats) on the simulated node: the
# agent's STATUS answer, restarting the agent with extra flags, playing the kubelet for pods that
# cannot start, and the order in which ADDs returned. Load it after helpers/simnode.

# sched_status: the running agent's STATUS answer (pod-pacemaker-agent --status), one line each.
sched_status() {
  "${SIMNODE_AGENT_BIN}" --status --socket "${SIMNODE_SOCKET}"
}

# sched_count FIELD: a count from the final STATUS line (holders, limit, waiting, remembered).
sched_count() {
  sched_status 2>/dev/null | awk -v key="$1" '
    $1 == "STATUS" { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) print kv[2] } }'
}

# sched_waiters: the names of the queued pods, in queue order.
sched_waiters() {
  sched_status | awk '$1 == "WAITER" {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "name") print kv[2] } }'
}

# sched__count_is FIELD VALUE: for simnode__wait_for; 2 ("never") when the agent is gone.
sched__count_is() {
  if [[ -n "${SIMNODE_AGENT_PID:-}" ]] && ! simnode__alive "${SIMNODE_AGENT_PID}"; then
    simnode_log "agent (pid ${SIMNODE_AGENT_PID}) exited"
    return 2
  fi
  [[ "$(sched_count "$1")" == "$2" ]]
}

# sched_wait_count FIELD VALUE TIMEOUT_S: waits until the STATUS count FIELD is VALUE.
sched_wait_count() {
  if ! simnode__wait_for "STATUS $1=$2" "$3" sched__count_is "$1" "$2"; then
    sched_status >&2 || true
    return 1
  fi
}

# sched_agent_start_with ARGS...: stops the agent simnode_up started, and starts one with the
# simulated node's settings plus ARGS (without --max-concurrent when ARGS has --config); waits
# for its socket like simnode_agent_start. The pid is recorded, so simnode_down stops it.
sched_agent_start_with() {
  simnode_agent_stop || return 1
  local pid args=(
    --node-name "${SIMNODE_NODE_NAME}" --socket "${SIMNODE_SOCKET}"
    --api-server "https://${SIMNODE_API_ADDR}"
    --token-file "${SIMNODE_DIR}/api/token" --ca-file "${SIMNODE_DIR}/api/ca.crt"
    --log-level info
  )
  if [[ " $* " != *" --config "* ]]; then
    args+=(--max-concurrent "${SIMNODE_LIMIT}")
  fi
  rm -f "${SIMNODE_SOCKET}"
  env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    "${SIMNODE_AGENT_BIN}" "${args[@]}" "$@" >>"${SIMNODE_DIR}/agent.log" 2>&1 3>&- </dev/null &
  pid=$!
  simnode__record pids "${pid} agent"
  SIMNODE_AGENT_PID="${pid}"
  echo "${pid}" >"${SIMNODE_DIR}/agent.pid"
  simnode__wait_for "the agent's socket ${SIMNODE_SOCKET}" 20 simnode__agent_ready "${pid}"
}

# sched_agent_hup: SIGHUP to the agent (re-read --config).
sched_agent_hup() {
  kill -HUP "${SIMNODE_AGENT_PID}"
}

# sched_pod_status NAME JSON: merge-patches the pod's status, as the kubelet would.
sched_pod_status() {
  simnode_api PATCH "/api/v1/namespaces/${SIMNODE_NAMESPACE}/pods/$1/status" "$2" \
    application/merge-patch+json >/dev/null
}

# sched_pod_image_error NAME REASON: the kubelet reports that the pod's sandbox is up (its IP) but
# its container cannot start (REASON: ErrImagePull, ImagePullBackOff, ...).
sched_pod_image_error() {
  local ip
  ip="$(simnode_pod_file "$1" ip)"
  sched_pod_status "$1" "$(jq -cn --arg ip "${ip}" --arg reason "$2" '{status: ({
    phase: "Pending",
    conditions: [{type: "Ready", status: "False", reason: "ContainersNotReady"}],
    containerStatuses: [{name: "app", ready: false, started: false, restartCount: 0,
      image: "registry.invalid/simnode/app:1", imageID: "",
      state: {waiting: {reason: $reason, message: "simulated"}}}]
  } + (if $ip == "" then {} else {podIP: $ip, podIPs: [{ip: $ip}]} end))}')"
}

# sched_add_order POD...: the pods whose ADD returned, ordered by when it returned.
sched_add_order() {
  local pod file
  for pod in "$@"; do
    file="$(simnode__pod_dir "${pod}")/add_done"
    if [[ -s "${file}" ]]; then
      printf '%s %s\n' "$(cat "${file}")" "${pod}"
    fi
  done | sort -k1,1g | awk '{print $2}'
}

# sched__added POD: the pod's ADD has returned.
sched__added() {
  [[ -s "$(simnode__pod_dir "$1")/add_done" ]]
}

# sched_wait_added TIMEOUT_S POD...: waits until every named pod's ADD has returned.
sched_wait_added() {
  local timeout="$1" pod
  shift
  for pod in "$@"; do
    simnode__wait_for "the ADD of ${pod}" "${timeout}" sched__added "${pod}" || return 1
  done
}
