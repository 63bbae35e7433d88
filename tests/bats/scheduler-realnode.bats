#!/usr/bin/env bats
# The slot scheduler on the real single-node Kubernetes (scripts/realnode.sh; issue #6): a real
# kubelet, containerd and API server, the product installed as an operator would
# (deploy/pod-pacemaker.yaml, plugin chained). Bad images do not block the node, and an agent
# killed while ADDs wait grants them in their original order after it restarts. When this file
# runs or skips: tests/realnode/bats-lib.bash.

bats_require_minimum_version 1.5.0

load '../realnode/bats-lib'

setup_file() { realnode_setup_file; }
teardown_file() { realnode_teardown_file; }
setup() {
  realnode_setup
  load helpers/scheduler-realnode
}
# After each test, pass or fail: the agent's log into the test log directory, then this file's
# pods removed.
teardown() {
  [[ -z "${REALNODE_SKIP:-}" ]] || return 0
  agent_log >"${REALNODE_TEST_LOG_DIR}/agent.scheduler-test-${BATS_TEST_NUMBER}.log"
  realnode_log kc get pods -A -o wide || true
  schedr_cleanup
}

@test "scheduler (limit 2): two pods with a bad image and five healthy ones: the image errors free both slots and the five start, paced and in order" {
  pacemaker_ensure 2
  local good=(ok-1 ok-2 ok-3 ok-4 ok-5) name watch events="${BATS_TEST_TMPDIR}/ok.events"
  watch="$(pods_watch_start group=ok "${events}")"
  schedr_pod bad-1 0 "${SCHEDR_MISSING_IMAGE}"
  schedr_pod bad-2 0 "${SCHEDR_MISSING_IMAGE}"
  wait_until 60 schedr_has_ip bad-1
  wait_until 60 schedr_has_ip bad-2
  # The healthy pods ask one after the other, so that their order is known.
  for name in "${good[@]}"; do
    schedr_pod "${name}" 2 "${SCHEDR_WORKLOAD}" ok
    wait_until 60 schedr_asked "${name}"
  done
  wait_until 120 schedr_all_ready "${good[@]}"
  sleep 1
  pods_watch_stop "${watch}"

  run agent_log
  assert_output --regexp ' release pod=default/bad-1 .*reason=container-error'
  assert_output --regexp ' release pod=default/bad-2 .*reason=container-error'
  run schedr_grant_order ok-
  assert_output "$(printf '%s\n' "${good[@]}")"
  local max
  max="$(inflight_max "${events}")"
  ((max <= 2)) || fail "${max} healthy pods started-but-not-Ready at once (limit 2); events in ${events}"
}

@test "scheduler (limit 2): the agent SIGKILLed with ten ADDs waiting: after the restart all ten are granted in their original order" {
  pacemaker_ensure 2
  local names=() name i served pid mark
  for i in $(seq -w 1 10); do names+=("ord-${i}"); done
  # Two pods that will not be Ready for an hour hold both slots.
  schedr_pod hog-1 3600
  schedr_pod hog-2 3600
  wait_until 60 schedr_has_ip hog-1
  wait_until 60 schedr_has_ip hog-2
  # The ten ask one after the other: each is queued before the next is created.
  i=0
  for name in "${names[@]}"; do
    schedr_pod "${name}" 1
    i=$((i + 1))
    wait_until 60 schedr_count_is waiting "${i}"
  done
  run schedr_waiters
  assert_output "$(printf '%s\n' "${names[@]}")"

  # The agent dies (its state is written at most every 100 ms); the kubelet restarts it.
  sleep 0.5
  served="$(schedr_served_count)"
  mark="$(agent_log | wc -l)"
  pid="$(schedr_agent_pid)"
  [[ "${pid}" =~ ^[0-9]+$ ]] || fail "no agent pid: '${pid}'"
  kill -KILL "${pid}"
  wait_until 90 schedr_served_at_least "$((served + 1))"
  run agent_log
  assert_output --partial 'restored 2 holders and 10 queue positions'

  # The plugins reconnect; the queue is the old one, and the two hogs still hold.
  wait_until 30 schedr_count_is waiting 10
  run schedr_waiters
  assert_output "$(printf '%s\n' "${names[@]}")"
  run schedr_count holders
  assert_output 2

  # The hogs go; the ten are granted two at a time, in their original order.
  kc delete pod hog-1 hog-2 --wait=false >/dev/null
  wait_until 120 schedr_all_ready "${names[@]}"
  run schedr_grant_order ord- "${mark}"
  assert_output "$(printf '%s\n' "${names[@]}")"
}
