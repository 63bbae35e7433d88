#!/usr/bin/env bats
# The agent's API client under faults, against the fake API server (tests/fake-apiserver). Each
# test starts its own server and agent (limit 2, silence bound 3 s, bookmarks every second), breaks
# something, and checks the four things issue #5 asks of every fault:
#
#   1. the agent recovers within a bound (generous upper bounds, never speed targets);
#   2. its view of the node's pods (--pod-cache-file) converges to the server's;
#   3. the process never exits;
#   4. no slot is leaked or counted twice: the pod that should free a slot frees it exactly once,
#      the waiter behind it gets it, and the agent's STATUS lists exactly the expected holders.
#
# Needs Go (to build the fake), curl, jq and perl; no root, no network namespace.

bats_require_minimum_version 1.5.0

setup_file() {
  load helpers/kube
  kube_build_tools
}

setup() {
  load helpers/kube
  KUBE_DIR=""
}

teardown() {
  kube_teardown
}

# A fault is over when the waiter c has the slot a gave back, and the view has converged.
assert_recovered() {
  kube_wait_for "c to get the slot a freed" "${1:-30}" kube_granted c
  kube_wait_converged 20
  assert_equal "$(kube_releases a)" 1
  assert_equal "$(kube_releases b)" 0
  kube_agent_alive
  kube_assert_holders b c
}

@test "410 after compaction while the watch was stalled: relist derives the deletion, frees its slot once" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  # The agent hears nothing while a goes away and b changes; then the history is compacted, so
  # the agent's resourceVersion is gone for good.
  kube_api POST '/fake/stall-watches?seconds=600' >/dev/null
  kube_delete a
  kube_api PATCH "/api/v1/namespaces/${KUBE_NS}/pods/b" '{"metadata":{"labels":{"x":"y"}}}' \
    application/merge-patch+json >/dev/null
  kube_api POST /fake/compact >/dev/null

  assert_recovered 30
  run grep -E 'watch silent|expired \(410\), relisting' "${KUBE_DIR}/agent.log"
  assert_output --partial 'expired (410), relisting'
  run grep -E 'resynced .* 1 gone' "${KUBE_DIR}/agent.log"
  assert_success
  run grep -E "release pod=${KUBE_NS}/a .*reason=deleted" "${KUBE_DIR}/agent.log"
  assert_success
  assert_equal "$(kube_lists)" 2
}

@test "dropped connections: the watch resumes from its resourceVersion, replays the gap, no relist" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  # The watch breaks mid-stream and the next two attempts are cut off before an answer; a turns
  # Ready meanwhile.
  kube_api POST '/fake/drop-requests?count=2&path=/api/v1/pods' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_ready a

  assert_recovered 30
  run grep -E "release pod=${KUBE_NS}/a .*reason=ready" "${KUBE_DIR}/agent.log"
  assert_success
  assert_equal "$(kube_lists)" 1
  run grep -c 'watching pods failed, watching again' "${KUBE_DIR}/agent.log"
  ((output >= 1))
}

@test "stalled watch (half-open): dropped after the silence bound, resumed from its version" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  kube_api POST '/fake/stall-watches?seconds=600' >/dev/null
  kube_ready a

  assert_recovered 30
  run grep -c "watch silent for ${KUBE_SILENCE_S}s" "${KUBE_DIR}/agent.log"
  ((output >= 1))
  assert_equal "$(kube_lists)" 1
}

@test "429 and 503 with Retry-After, then a 500: the agent waits as told, backs off, recovers" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  kube_api POST '/fake/fail?code=429&count=2&path=/api/v1/pods' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_ready a
  kube_wait_for "the 429s to be served" 20 fail_count_is 0
  kube_api POST '/fake/fail?code=503&count=1&path=/api/v1/pods' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_wait_for "the 503 to be served" 20 fail_count_is 0
  kube_api POST '/fake/fail?code=500&count=1&path=/api/v1/pods' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null

  assert_recovered 60
  # Every retry after a Retry-After: 1 waited at least that long.
  run grep -E 'HTTP status (429|503).*Retry-After 1s' "${KUBE_DIR}/agent.log"
  assert_equal "${#lines[@]}" 3
  local line delay
  for line in "${lines[@]}"; do
    delay="$(sed -E 's/.* in ([0-9.]+)s: .*/\1/' <<<"${line}")"
    awk -v d="${delay}" 'BEGIN { exit !(d >= 1.0) }' || fail "retried after ${delay}s: ${line}"
  done
  run grep -cE 'HTTP status 500' "${KUBE_DIR}/agent.log"
  assert_output 1
}

fail_count_is() {
  [[ "$(kube_state | jq -r '.fail.count')" == "$1" ]]
}

@test "token rotated and the old one refused at once: 401, token re-read, recovery once the file has the new one" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  # The server now accepts only a token the agent's file does not hold yet.
  kube_api POST '/fake/rotate-token?grace=0' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_ready a
  kube_wait_for "two refused requests" 30 unauthorized_at_least 2
  run grep -c "refuses the agent's token (401)" "${KUBE_DIR}/agent.log"
  ((output >= 1))

  # The kubelet writes the new token; the agent picks it up without a restart.
  kube_set_agent_token "${KUBE_DIR}/api/token"
  assert_recovered 45
}

unauthorized_at_least() {
  (($(kube_api_requests 'GET /api/v1/pods\?.* -> 401') >= $1))
}

@test "token file rotated before the old token expires: the next request uses the new token, no 401" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  kube_api POST '/fake/rotate-token?grace=600' >/dev/null
  kube_set_agent_token "${KUBE_DIR}/api/token"
  kube_api POST /fake/drop-watches >/dev/null
  kube_ready a

  assert_recovered 30
  assert_equal "$(kube_api_requests ' -> 401')" 0
  # The requests after the rotation carried the new token, not the still-valid old one.
  local rotated
  rotated="$(grep -n 'POST /fake/rotate-token' "${KUBE_DIR}/api.log" | cut -d: -f1)"
  run bash -c "tail -n +${rotated} '${KUBE_DIR}/api.log' | grep -c 'GET /api/v1/pods.*previous token'"
  assert_output 0
}

@test "API server restart with state kept: the agent reconnects, relists on 410, a deletion made while it was down frees the slot" {
  kube_fake_start --keep-state
  local port="${KUBE_API_ADDR##*:}"
  kube_agent_start
  kube_hold_two

  # Down: SIGTERM ends every watch; a is deleted in the saved state, as if another client had
  # deleted it just before the restart, and the resourceVersion moves on.
  kube_fake_stop
  jq --arg ns "${KUBE_NS}" '
      .objects["v1/pods"] |= map(select(.metadata.name != "a" or .metadata.namespace != $ns))
      | .resourceVersion = ((.resourceVersion | tonumber) + 5 | tostring)' \
    "${KUBE_DIR}/api/store.json" >"${KUBE_DIR}/store.new"
  mv "${KUBE_DIR}/store.new" "${KUBE_DIR}/api/store.json"
  sleep 2
  run kube_agent_alive
  assert_success

  # Up again on the same port, same CA.
  kube_fake_start --keep-state --listen "127.0.0.1:${port}"
  assert_recovered 45
  run grep -E "release pod=${KUBE_NS}/a .*reason=deleted" "${KUBE_DIR}/agent.log"
  assert_success
  run grep -c 'expired (410), relisting' "${KUBE_DIR}/agent.log"
  ((output >= 1))
}

@test "API server frozen (SIGSTOP) past the silence bound: no exit, no wedge, converges after SIGCONT" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  kill -STOP "${KUBE_FAKE_PID}"
  kube_wait_for "the agent to notice the silence" 20 \
    grep -q "watch silent for ${KUBE_SILENCE_S}s" "${KUBE_DIR}/agent.log"
  sleep 2
  kill -CONT "${KUBE_FAKE_PID}"
  kube_ready a

  assert_recovered 60
}

@test "a pod that does not decode is left out of the view; the stream and the agent go on" {
  kube_fake_start
  kube_agent_start
  kube_hold_two

  # A real API server validates types; the fake does not, which lets us send what no model expects.
  kube_pod bad-1 '{"spec":{"priority":"high"}}' >/dev/null
  kube_ready a
  assert_recovered 30
  run grep -c 'does not decode' "${KUBE_DIR}/agent.log"
  ((output >= 1))
  run jq -e 'any(.pods[]; .name == "bad-1")' "${KUBE_DIR}/pods.json"
  assert_failure

  # A relist skips it too, with one warning for the page: the agent falls behind a compaction.
  kube_api POST '/fake/stall-watches?seconds=600' >/dev/null
  kube_pod d >/dev/null
  kube_api POST /fake/compact >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_wait_for "a relist" 30 grep -q 'left out 1 pods' "${KUBE_DIR}/agent.log"
  kube_wait_converged 20
  kube_agent_alive
}

@test "a node with 600 pods is listed in pages of 500 and every pod is in the view" {
  kube_fake_start
  local list="${BATS_TEST_TMPDIR}/pods.json"
  jq -cn --arg node "${KUBE_NODE}" --arg ns "${KUBE_NS}" '{apiVersion:"v1",kind:"List",items:
    [range(600) | {apiVersion:"v1",kind:"Pod",metadata:{name:"p-\(.)",namespace:$ns},
      spec:{nodeName:$node,containers:[{name:"c",image:"pause"}]}}]}' >"${list}"
  kubectl --kubeconfig "${KUBE_DIR}/api/kubeconfig" --cache-dir "${KUBE_DIR}/kube-cache" \
    --request-timeout 30s create --validate=false -f "${list}" >/dev/null
  kube_agent_start

  kube_wait_converged 20
  assert_equal "$(jq '.pods | length' "${KUBE_DIR}/pods.json")" 600
  assert_equal "$(kube_api_requests 'GET /api/v1/pods\?.*continue=.* -> 200')" 1
  run grep -E 'synced 600 pods of node kube-node' "${KUBE_DIR}/agent.log"
  assert_success
}

@test "--kubeconfig alone is enough: server, CA and token come from the fake's kubeconfig" {
  kube_fake_start
  local uid
  uid="$(kube_pod a)"
  kube_agent_start --kubeconfig "${KUBE_DIR}/api/kubeconfig"
  kube_wait_converged 20
  kube_wait_slot a "${uid}"
  kube_wait_for "a slot for a" 10 kube_granted a
  kube_assert_holders a
  run grep -F "token from token in ${KUBE_DIR}/api/kubeconfig" "${KUBE_DIR}/agent.log"
  assert_success
}

@test "the bearer token never appears in the agent's log, even at trace level and after a 401" {
  kube_fake_start
  kube_pod a >/dev/null
  kube_agent_start --log-level trace
  kube_wait_converged 20
  kube_api POST '/fake/fail?code=401&count=1&path=/api/v1/pods' >/dev/null
  kube_api POST /fake/drop-watches >/dev/null
  kube_wait_for "the watch to come back" 30 kube_watch_open
  # The log is not empty of HTTP detail: ureq shows each request, its headers redacted.
  run grep -c 'HEADERS ARE REDACTED' "${KUBE_DIR}/agent.log"
  ((output >= 1))
  run grep -ci 'bearer' "${KUBE_DIR}/agent.log"
  assert_output 0
  run grep -cF "$(cat "${KUBE_DIR}/api/token")" "${KUBE_DIR}/agent.log"
  assert_output 0
}

@test "API server back with a new CA (CA rotation): the agent reads the changed CA file and recovers" {
  local port uid
  kube_fake_start --keep-state
  port="${KUBE_API_ADDR##*:}"
  kube_agent_start
  uid="$(kube_pod a)"
  kube_wait_for "pod a in the agent's view" 10 kube__in_view "${uid}"

  # The same cluster comes back with a new CA (its key removed, so the fake makes a new one and
  # writes it over the agent's --ca-file, as the kubelet updates a projected ca.crt). Until the
  # agent reads that file again, every handshake fails.
  kube_fake_stop
  rm -f "${KUBE_DIR}/api/ca.key"
  kube_fake_start --keep-state --listen "127.0.0.1:${port}"
  uid="$(kube_pod n)"
  kube_wait_for "pod n in the agent's view" 90 kube__in_view "${uid}"
  kube_wait_converged 20
  run grep -E 'the CA file .* changed: new connections trust the new CA' "${KUBE_DIR}/agent.log"
  assert_success
  kube_agent_alive
}
