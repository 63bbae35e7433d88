#!/usr/bin/env bats
# The slot scheduler on the simulated node (scripts/simnode.sh; issue #6): pods that never start
# do not block the node, a restart keeps the queue's order, and limits change while pods hold and
# wait. Real libcni, real plugin and agent binaries, the fake API server; this test plays the
# kubelet. Needs root. Each test brings up its own node and removes it.

bats_require_minimum_version 1.5.0

setup() {
  load helpers/simnode
  load helpers/scheduler
}

teardown() {
  ppm_teardown
}

@test "two pods with a bad image and five healthy ones at limit 2: the image errors free the slots and the healthy five start" {
  local bad=(bad-1 bad-2) good=(ok-1 ok-2 ok-3 ok-4 ok-5) name
  # shellcheck disable=SC2034 # read by simnode_kubelet_ready
  SIMNODE_WARMUP_MB=32
  simnode_up --limit 2 --max-wait 60
  for name in "${bad[@]}" "${good[@]}"; do simnode_pod_create "${name}"; done

  # The two bad pods take both slots; their containers will never start.
  for name in "${bad[@]}"; do simnode_pod_start "${name}" --no-ready; done
  sched_wait_added 20 "${bad[@]}"
  # The healthy ones ask one after the other, so that their order is known.
  local i=0
  for name in "${good[@]}"; do
    simnode_pod_start "${name}"
    i=$((i + 1))
    sched_wait_count waiting "${i}" 20
  done

  # The kubelet reports the image errors; nobody else releases anything.
  sched_pod_image_error bad-1 ErrImagePull
  sched_pod_image_error bad-2 ImagePullBackOff

  simnode_wait_pods 120 "${good[@]}"
  for name in "${good[@]}"; do
    run simnode_pod_file "${name}" add.rc
    assert_output 0
    run simnode_pod_api_ready "${name}"
    assert_success
    run grep -c 'fail-open' "$(simnode__pod_dir "${name}")/add.err"
    assert_output 0
  done
  run grep -E 'release pod=default/bad-1 .*reason=container-error' "${SIMNODE_DIR}/agent.log"
  assert_success
  run grep -E 'release pod=default/bad-2 .*reason=container-error' "${SIMNODE_DIR}/agent.log"
  assert_success
  # The healthy pods were still paced two at a time, in the order they asked.
  run simnode_max_concurrent "${good[@]}"
  assert_success
  ((output <= 2)) || fail "max_concurrent=${output} above the limit 2"
  run sched_add_order "${good[@]}"
  assert_output "$(printf '%s\n' "${good[@]}")"
}

@test "agent SIGKILLed with ten ADDs waiting: after the restart all ten are granted in their original order" {
  local names=() name i
  for i in $(seq -w 1 10); do names+=("w-${i}"); done
  # shellcheck disable=SC2034 # read by simnode_kubelet_ready
  SIMNODE_WARMUP_MB=16
  simnode_up --limit 1 --max-wait 120
  simnode_pod_create holder
  for name in "${names[@]}"; do simnode_pod_create "${name}"; done

  # The holder takes the only slot and is not Ready. The ten ask one after the other, so that
  # their order is known.
  simnode_pod_start holder --no-ready
  sched_wait_added 20 holder
  i=0
  for name in "${names[@]}"; do
    simnode_pod_start "${name}"
    i=$((i + 1))
    sched_wait_count waiting "${i}" 20
  done
  run sched_waiters
  assert_output "$(printf '%s\n' "${names[@]}")"

  # The agent dies as in an OOM kill, after its last state write (at most every 100 ms).
  sleep 0.5
  simnode_agent_kill
  simnode_agent_start

  # The holder still holds: it has no IP in the API, so only the state file knows it; the ten
  # reconnect and are queued in their old order.
  sched_wait_count waiting 10 20
  run sched_count holders
  assert_output 1
  run sched_waiters
  assert_output "$(printf '%s\n' "${names[@]}")"
  run grep -c 'restored 1 holders and 10 queue positions' "${SIMNODE_DIR}/agent.log"
  assert_output 1

  # The holder turns Ready; each pod after it starts, warms up and turns Ready in turn.
  simnode_kubelet_ready holder
  simnode_wait_pods 120 "${names[@]}"
  run sched_add_order "${names[@]}"
  assert_output "$(printf '%s\n' "${names[@]}")"
  for name in "${names[@]}"; do
    run simnode_pod_file "${name}" add.rc
    assert_output 0
    run grep -c 'fail-open' "$(simnode__pod_dir "${name}")/add.err"
    assert_output 0
  done
}

@test "limits changed by SIGHUP while pods hold and wait: both carry over and the new limit applies from the next grant" {
  local waiters=(w-1 w-2 w-3 w-4) name i config
  simnode_up --limit 1 --max-wait 120
  config="${SIMNODE_DIR}/pacemaker.json"
  echo '{"throttleConfig": {"maxConcurrent": {"value": 1}}}' >"${config}"
  sched_agent_start_with --config "${config}"
  simnode_pod_create holder
  for name in "${waiters[@]}"; do simnode_pod_create "${name}"; done

  simnode_pod_start holder --no-ready
  sched_wait_added 20 holder
  i=0
  for name in "${waiters[@]}"; do
    simnode_pod_start "${name}" --no-ready
    i=$((i + 1))
    sched_wait_count waiting "${i}" 20
  done

  # Raised to 3: the next two in order are granted at once; the holder keeps its slot.
  echo '{"throttleConfig": {"maxConcurrent": {"value": 3}}}' >"${config}"
  sched_agent_hup
  sched_wait_count holders 3 20
  sched_wait_added 20 w-1 w-2
  run sched_waiters
  assert_output "$(printf '%s\n' w-3 w-4)"

  # A file that does not parse is logged and changes nothing.
  echo '{"throttleConfig": {"maxConcurrent": {"value": 0}}}' >"${config}"
  sched_agent_hup
  simnode__wait_for "the reload error" 20 grep -q 'keeping the limits in force' \
    "${SIMNODE_DIR}/agent.log"
  run sched_count limit
  assert_output 3

  # Lowered to 1 with three holders: two releases grant nobody, the third grants w-3.
  echo '{"throttleConfig": {"maxConcurrent": {"value": 1}, "rateLimit": {"fillFactor": "100ms", "burst": 1}}}' >"${config}"
  sched_agent_hup
  sched_wait_count limit 1 20
  simnode_kubelet_ready holder
  simnode_kubelet_ready w-1
  sched_wait_count holders 1 20
  run sched_waiters
  assert_output "$(printf '%s\n' w-3 w-4)"
  simnode_kubelet_ready w-2
  sched_wait_added 20 w-3
  run sched_waiters
  assert_output w-4
  assert [ ! -e "$(simnode__pod_dir w-4)/add_done" ]
  run simnode__alive "${SIMNODE_AGENT_PID}"
  assert_success
}
