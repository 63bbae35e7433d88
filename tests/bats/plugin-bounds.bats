#!/usr/bin/env bats
# The plugin's hard bounds on a simulated node: an agent that is restarting is waited for, one
# that has been gone for long is not, and onDeadline decides what a deadline means. Needs root.

bats_require_minimum_version 1.5.0

setup() {
  load helpers/simnode
}

teardown() {
  ppm_teardown
}

# set_plugin_keys JQ: edits the pod-pacemaker entry of the node's conflist.
set_plugin_keys() {
  local tmp="${SIMNODE_CONFLIST}.tmp"
  jq ".plugins[1] += $1" "${SIMNODE_CONFLIST}" >"${tmp}" && mv "${tmp}" "${SIMNODE_CONFLIST}"
}

@test "agent restarting within agentRestartGraceSeconds: a new ADD waits for it and gets a slot" {
  simnode_up --limit 2 --max-wait 60
  set_plugin_keys '{"agentRestartGraceSeconds": 30}'
  simnode_pod_create pod-a
  simnode_agent_kill
  [[ -e "${SIMNODE_SOCKET}.heartbeat" ]] || fail "the agent left no heartbeat file"

  simnode_pod_start pod-a --no-ready
  sleep 2
  simnode_agent_start
  simnode_wait_pods 60 pod-a

  run simnode_pod_file pod-a add.rc
  assert_output 0
  run cat "$(simnode__pod_dir pod-a)/add.err"
  assert_output --partial "start slot granted"
  refute_output --partial "fail-open"
}

@test "agent gone for longer than agentRestartGraceSeconds: ADD passes without waiting for it" {
  simnode_up --limit 2 --max-wait 60
  set_plugin_keys '{"agentRestartGraceSeconds": 30}'
  simnode_pod_create pod-a
  simnode_agent_kill
  # The last heartbeat was ten minutes ago: the agent is not restarting, it is gone.
  touch -d '10 minutes ago' "${SIMNODE_SOCKET}.heartbeat"

  run simnode_pod_add pod-a
  assert_success
  run ppm_elapsed pod-a add
  ppm_assert_lt "${output}" 30 "ADD with a long-gone agent took the restart grace or longer"
  run cat "$(simnode__pod_dir pod-a)/add.err"
  assert_output --partial "fail-open: agent unreachable"
  run simnode_pod_ip pod-a
  assert_output --regexp '^10\.244\.'
}

@test "onDeadline retry: ADD fails with CNI error 11 when no slot comes within maxWaitTimeInSeconds" {
  simnode_up --limit 1 --max-wait 4
  set_plugin_keys '{"onDeadline": "retry"}'
  simnode_pod_create holder
  simnode_pod_create waiter
  # The holder never becomes Ready, so the waiter's deadline passes.
  run simnode_pod_add holder
  assert_success
  run simnode_pod_add waiter
  assert_failure
  run cat "$(simnode__pod_dir waiter)/add.err"
  assert_output --partial "CNI error code 11"
  assert_output --partial "no start slot granted within"
}

@test "onDeadline proceed (default): ADD returns the result with fail-open when no slot comes in time" {
  simnode_up --limit 1 --max-wait 4
  simnode_pod_create holder
  simnode_pod_create waiter
  run simnode_pod_add holder
  assert_success
  run simnode_pod_add waiter
  assert_success
  run cat "$(simnode__pod_dir waiter)/add.err"
  assert_output --partial "fail-open: no slot within maxWaitTimeInSeconds"
  run simnode_pod_ip waiter
  assert_output --regexp '^10\.244\.'
}
