#!/usr/bin/env bats
# CNI conformance of the plugin, for every CNI version it speaks, through real libcni (cnidriver)
# with the reference bridge and host-local plugins (built at a pinned version that speaks CNI
# 1.1.0) in front of it, in network namespaces of a simulated node, with the real agent granting
# slots. For each version: ADD returns the previous plugin's result (checked byte for byte by
# feeding that result to the plugin as prevResult), the pod netns gets the address, CHECK, DEL,
# a second DEL, GC and STATUS succeed. Needs root.

bats_require_minimum_version 1.5.0

setup_file() {
  local root
  root="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
  bash "${root}/scripts/build-test-tools.sh" >/dev/null
}

setup() {
  load helpers/simnode
  SIMNODE_CNI_PLUGINS_DIR="$(ls -d "${SIMNODE_TOOLS_DIR}"/cni-plugins-v* | sort -V | tail -n1)"
  simnode_up --limit 10 --max-wait 30
}

teardown() {
  ppm_teardown
}

# conform VERSION: the whole matrix row for one CNI version.
conform() {
  local version="$1" pod="pod-${1//./-}" dir
  SIMNODE_CONFLIST="${SIMNODE_DIR}/cni/v${version}.conflist"
  jq --arg v "${version}" '.cniVersion = $v' "${SIMNODE_DIR}/cni/pacemaker.conflist" \
    >"${SIMNODE_CONFLIST}"
  simnode_pod_create "${pod}"
  dir="$(simnode__pod_dir "${pod}")"

  # ADD through libcni: a result in the config's version, with an address that is on eth0.
  run simnode_pod_add "${pod}"
  assert_success
  run jq -r .cniVersion "${dir}/add.out"
  assert_output "${version}"
  run simnode_pod_ip "${pod}"
  assert_success
  local ip="${output}"
  run ip -n "$(cat "${dir}/netns")" -4 -o addr show dev eth0
  assert_output --partial "inet ${ip}/"
  run grep -c 'start slot granted' "${dir}/add.err"
  assert_output 1

  # The plugin's output is its prevResult, byte for byte, when given the result libcni printed.
  local stdin out
  stdin="$(jq -c --arg v "${version}" --arg sock "${SIMNODE_SOCKET}" \
    '{cniVersion: $v, name: "ppm", type: "pod-pacemaker", daemonSocketPath: $sock,
      prevResult: .}' "${dir}/add.out")"
  local prev
  prev="$(jq -c . "${dir}/add.out")"
  out="$(CNI_COMMAND=ADD CNI_CONTAINERID="$(cat "${dir}/sandbox")" CNI_NETNS=/var/run/netns/x \
    CNI_IFNAME=eth0 CNI_PATH=/nonexistent \
    CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod};K8S_POD_UID=$(cat "${dir}/uid")" \
    "${SIMNODE_DIR}/cni/bin/pod-pacemaker" <<<"${stdin}")"
  [[ "${out}" == "${prev}" ]] || fail "output differs from prevResult: ${out} vs ${prev}"

  # CHECK exists from 0.4.0 on (libcni refuses it for older configs), then DEL twice, GC and
  # STATUS (libcni makes these no-ops before 1.1.0).
  if [[ "${version}" != 0.3.* ]]; then
    run simnode__cni check "${pod}"
    assert_success
  fi
  run simnode__cni del "${pod}"
  assert_success
  run simnode__cni del "${pod}"
  assert_success
  run setsid -w ip netns exec "${SIMNODE_NODE_NS}" "${SIMNODE_TOOLS_DIR}/cnidriver" gc \
    --conflist "${SIMNODE_CONFLIST}" --bin-dir "${SIMNODE_DIR}/cni/bin" \
    --cache-dir "${SIMNODE_DIR}/cni/cache" --valid-attachments '[]'
  assert_success
  run setsid -w ip netns exec "${SIMNODE_NODE_NS}" "${SIMNODE_TOOLS_DIR}/cnidriver" status \
    --conflist "${SIMNODE_CONFLIST}" --bin-dir "${SIMNODE_DIR}/cni/bin"
  assert_success
}

@test "CNI 0.3.0: ADD passes prevResult through; DEL, DEL again, GC, STATUS succeed (CHECK exists from 0.4.0)" {
  conform 0.3.0
}

@test "CNI 0.3.1: ADD passes prevResult through; DEL, DEL again, GC, STATUS succeed (CHECK exists from 0.4.0)" {
  conform 0.3.1
}

@test "CNI 0.4.0: ADD passes prevResult through; CHECK, DEL, DEL again, GC, STATUS succeed" {
  conform 0.4.0
}

@test "CNI 1.0.0: ADD passes prevResult through; CHECK, DEL, DEL again, GC, STATUS succeed" {
  conform 1.0.0
}

@test "CNI 1.1.0: ADD passes prevResult through; CHECK, DEL, DEL again, GC, STATUS succeed" {
  conform 1.1.0
}

@test "STATUS and GC reach our plugin under CNI 1.1.0 and succeed without the agent" {
  SIMNODE_CONFLIST="${SIMNODE_DIR}/cni/v1.1.0.conflist"
  jq '.cniVersion = "1.1.0"' "${SIMNODE_DIR}/cni/pacemaker.conflist" >"${SIMNODE_CONFLIST}"
  simnode_agent_kill
  rm -f "${SIMNODE_SOCKET}"
  export PODPACEMAKER_LOG=debug
  run --separate-stderr setsid -w ip netns exec "${SIMNODE_NODE_NS}" \
    "${SIMNODE_TOOLS_DIR}/cnidriver" status \
    --conflist "${SIMNODE_CONFLIST}" --bin-dir "${SIMNODE_DIR}/cni/bin"
  assert_success
  [[ "${stderr}" == *"pod-pacemaker: debug: Status"* ]] || fail "STATUS did not reach us: ${stderr}"
  run --separate-stderr setsid -w ip netns exec "${SIMNODE_NODE_NS}" \
    "${SIMNODE_TOOLS_DIR}/cnidriver" gc \
    --conflist "${SIMNODE_CONFLIST}" --bin-dir "${SIMNODE_DIR}/cni/bin" \
    --cache-dir "${SIMNODE_DIR}/cni/cache" --valid-attachments '[]'
  assert_success
  [[ "${stderr}" == *"pod-pacemaker: debug: Gc"* ]] || fail "GC did not reach us: ${stderr}"
}
