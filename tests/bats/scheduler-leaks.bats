#!/usr/bin/env bats
# Slots that must not leak until the lease (issue #6): pods deleted while queued or before their
# WAIT, and a WAIT for a pod the API does not know. The real agent against the fake API server
# (helpers/kube: the test plays the kubelet and the plugin, no network namespace, no root); the
# lease is 300 s, so a slot freed within the bounds below was freed by the rule, not the lease.

bats_require_minimum_version 1.5.0

setup_file() {
  load helpers/kube
  kube_build_tools
}

setup() {
  load helpers/kube
  KUBE_DIR=""
  KUBE_LIMIT=1
}

teardown() {
  kube_teardown
}

kube__not_in_view() {
  ! kube__in_view "$1"
}

kube__reply_has() {
  grep -q "$2" "${KUBE_DIR}/wait-$1.out"
}

# leaks_status: the agent's STATUS answer.
leaks_status() {
  "${KUBE_AGENT_BIN}" --status --socket "${KUBE_DIR}/agent.sock"
}

@test "pods deleted while queued or before their WAIT never hold a slot; the next pod gets it at once" {
  local u1 u2 u3 u4
  kube_fake_start
  kube_agent_start --lease-seconds 300
  u1="$(kube_pod q1)"
  u2="$(kube_pod q2)"
  u3="$(kube_pod q3)"
  u4="$(kube_pod q4)"
  kube_wait_for "q4 in the agent's view" 10 kube__in_view "${u4}"

  # q1 holds the only slot; q2 waits behind it.
  kube_wait_slot q1 "${u1}"
  kube_wait_for "a slot for q1" 10 kube_granted q1
  kube_wait_slot q2 "${u2}"
  kube_wait_for "q2 to queue" 10 kube_queued q2

  # q2 is deleted while it waits: its WAIT passes without a slot.
  kube_delete q2
  kube_wait_for "q2 to pass" 10 kube__reply_has q2 '^GRANTED reason=skip'

  # q4 is deleted before its WAIT comes (the runtime's ADD raced the delete): it passes too.
  kube_delete q4
  kube_wait_for "q4 to leave the agent's view" 10 kube__not_in_view "${u4}"
  kube_wait_slot q4 "${u4}"
  kube_wait_for "q4 to pass" 10 kube__reply_has q4 '^GRANTED reason=skip'

  # q1 turns Ready: q3 gets the slot, long before any lease.
  kube_ready q1
  kube_wait_slot q3 "${u3}"
  kube_wait_for "a slot for q3" 30 kube_granted q3
  run leaks_status
  assert_success
  assert_line --regexp '^HOLDER namespace=kt name=q3 '
  assert_line --regexp '^STATUS holders=1 limit=1 waiting=0 '
  run grep -E 'release pod=kt/q[24] ' "${KUBE_DIR}/agent.log"
  assert_failure
  run grep -c 'reason=lease' "${KUBE_DIR}/agent.log"
  assert_output 0
  kube_agent_alive
}

@test "a WAIT for a pod the API does not know: its slot is freed (not-found) once the view is current, not at the lease" {
  local u1
  kube_fake_start
  kube_agent_start --lease-seconds 300
  u1="$(kube_pod q1)"
  kube_wait_for "q1 in the agent's view" 10 kube__in_view "${u1}"

  # The unknown pod is paced after the unknown-pod wait and granted; its client closes right
  # after the grant (kube_wait_slot ends at the final reply).
  kube_wait_slot ghost 0b6c5e1e-3f0b-4a59-9d1e-6a2f3b0c9d11
  kube_wait_for "a slot for the unknown pod" 20 kube_granted ghost
  kube_wait_slot q1 "${u1}"
  kube_wait_for "q1 to queue" 10 kube_queued q1

  # The grace time is 30 s, the fake sends a bookmark every second: q1 gets the slot well within
  # 60 s, far below the 300 s lease.
  kube_wait_for "a slot for q1" 60 kube_granted q1
  run grep -E 'release pod=kt/ghost .*reason=not-found' "${KUBE_DIR}/agent.log"
  assert_success
  run leaks_status
  assert_line --regexp '^HOLDER namespace=kt name=q1 '
  assert_line --regexp '^STATUS holders=1 limit=1 '
  kube_agent_alive
}
