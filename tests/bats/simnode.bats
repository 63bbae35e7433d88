#!/usr/bin/env bats
# End-to-end behaviour of the plugin and the agent on a simulated node (scripts/simnode.sh):
# real libcni (cnidriver), Debian's bridge and host-local plugins, network namespaces, the fake
# API server, the release binaries. Needs root. Each test brings up its own node and removes it.

bats_require_minimum_version 1.5.0

setup() {
  load helpers/simnode
}

teardown() {
  ppm_teardown
}

@test "pacing holds: at most the limit between ADD returning and Ready, and every pod ends with an IP and Ready" {
  local limit=2 names=(pod-01 pod-02 pod-03 pod-04 pod-05 pod-06) name
  # shellcheck disable=SC2034 # read by simnode_kubelet_ready
  SIMNODE_WARMUP_MB=64
  simnode_up --limit "${limit}" --max-wait 60
  for name in "${names[@]}"; do simnode_pod_create "${name}"; done

  local t0
  t0="$(simnode_now)"
  for name in "${names[@]}"; do simnode_pod_start "${name}"; done
  simnode_wait_pods 150 "${names[@]}"
  simnode_timeline "${t0}" "${names[@]}"

  run simnode_max_concurrent "${names[@]}"
  assert_success
  if ((output > limit)); then
    fail "max_concurrent=${output} exceeds the limit ${limit}"
  fi
  for name in "${names[@]}"; do
    run simnode_pod_file "${name}" add.rc
    assert_output 0
    run simnode_pod_ip "${name}"
    assert_success
    assert_output --regexp '^10\.244\.[0-9]+\.[0-9]+$'
    run simnode_pod_api_ready "${name}"
    assert_success
  done
}

@test "agent stopped: ADD still returns a result with the pod's IP within maxWait, and stderr names fail-open" {
  local max_wait=10
  simnode_up --limit 1 --max-wait "${max_wait}"
  simnode_pod_create pod-b
  simnode_agent_stop

  run simnode_pod_add pod-b
  assert_success
  run ppm_elapsed pod-b add
  assert_success
  # The bound the runtime relies on: the plugin's own deadline, plus a little for exec and libcni.
  ppm_assert_lt "${output}" "$((max_wait + 2))" "ADD seconds with the agent stopped"

  # The result is the bridge plugin's prevResult passed through: the IP it names is the one
  # that eth0 in the pod's netns has.
  local result_ip netns_ip
  result_ip="$(jq -r '.ips[0].address' <<<"$(simnode_pod_file pod-b add.out)")"
  assert_regex "${result_ip}" '^10\.244\.[0-9]+\.[0-9]+/[0-9]+$'
  netns_ip="$(simnode_pod_ip pod-b)"
  assert_equal "${result_ip%/*}" "${netns_ip}"

  run simnode_pod_file pod-b add.err
  assert_output --partial 'fail-open'
}

@test "agent down: DEL returns success at once" {
  simnode_up --limit 1 --max-wait 10
  simnode_pod_create pod-c
  simnode_pod_add pod-c
  # SIGKILL leaves the socket file behind, as after an OOM kill: the worst kind of "down" for a
  # plugin that would try to connect.
  simnode_agent_kill

  run simnode_pod_del pod-c
  assert_success
  run ppm_elapsed pod-c del
  assert_success
  ppm_assert_lt "${output}" 2 "DEL seconds with the agent down"
}

@test "agent SIGKILLed while ADDs wait: every ADD returns within maxWait plus a small margin" {
  local max_wait=10 margin=3 names=(pod-d1 pod-d2 pod-d3 pod-d4) name
  simnode_up --limit 1 --max-wait "${max_wait}"
  for name in "${names[@]}"; do simnode_pod_create "${name}"; done
  # No kubelet: nobody becomes Ready, so one pod holds the only slot and three wait.
  for name in "${names[@]}"; do simnode_pod_start "${name}" --no-ready; done

  first_returned() { (($(ppm_count_files add_done "${names[@]}") >= 1)); }
  simnode__wait_for "the first ADD to return" 8 first_returned
  sleep 1
  # Precondition, not the claim: three ADDs are still blocked when the agent dies.
  run ppm_count_files add_done "${names[@]}"
  assert_output 1
  simnode_agent_kill

  simnode_wait_pods "$((max_wait + margin + 5))" "${names[@]}"
  for name in "${names[@]}"; do
    run ppm_elapsed "${name}" add
    assert_success
    ppm_assert_lt "${output}" "$((max_wait + margin))" "ADD seconds for ${name}"
  done
}

@test "agent SIGTERM: exits 0 and removes its socket" {
  simnode_up --limit 1 --max-wait 10
  assert [ -S "${SIMNODE_SOCKET}" ]

  simnode_agent_stop
  run cat "${SIMNODE_DIR}/agent.exit"
  assert_output 0
  assert [ ! -e "${SIMNODE_SOCKET}" ]
}

@test "simnode_down leaves none of its network namespaces, processes or state behind" {
  simnode_up --limit 1 --max-wait 10
  simnode_pod_create pod-e
  simnode_pod_start pod-e --no-ready
  local dir="${SIMNODE_DIR}" id="${SIMNODE_ID}" pids
  pids="$(awk '{print $1}' "${dir}/pids" "${dir}/pgids")"

  simnode_down

  run bash -c "ip netns list | grep -c -- 'ppm-${id}-' || true"
  assert_output 0
  local pid
  for pid in ${pids}; do
    run simnode__alive "${pid}"
    assert_failure
  done
  assert [ ! -e "${dir}" ]
}
