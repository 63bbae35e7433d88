#!/usr/bin/env bats
# The fake API server (tests/fake-apiserver) against the real kubectl and curl: the behaviour the
# simulated node and the agent rely on. One server for the whole file, started in a temporary
# directory on 127.0.0.1; each test works in a namespace of its own so that tests do not see
# each other's pods. Needs Go (to build), kubectl, curl and jq; does not need root.

bats_require_minimum_version 1.5.0

setup_file() {
  local repo_root
  repo_root="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
  if [[ -d /usr/local/go/bin && ":${PATH}:" != *":/usr/local/go/bin:"* ]]; then
    PATH="/usr/local/go/bin:${PATH}"
  fi
  bash "${repo_root}/scripts/build-test-tools.sh" >/dev/null

  FAKE_DIR="$(mktemp -d /tmp/ppm-fakeapi.XXXXXX)"
  # 3>&- : bats reads its TAP stream from fd 3 and waits for every holder to close it.
  "${TEST_TOOLS_DIR:-${CARGO_TARGET_DIR:-${repo_root}/target}/test-tools}/fake-apiserver" \
    --dir "${FAKE_DIR}" --log-requests --bookmark-interval 1s \
    >"${FAKE_DIR}/server.log" 2>&1 3>&- </dev/null &
  FAKE_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s "${FAKE_DIR}/addr" ]] && break
    kill -0 "${FAKE_PID}" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s "${FAKE_DIR}/addr" ]]; then
    cat "${FAKE_DIR}/server.log" >&2
    echo "fake-apiserver did not start" >&2
    return 1
  fi
  FAKE_ADDR="$(cat "${FAKE_DIR}/addr")"
  export FAKE_DIR FAKE_PID FAKE_ADDR
}

teardown_file() {
  if [[ -n "${FAKE_PID:-}" ]]; then
    kill "${FAKE_PID}" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 "${FAKE_PID}" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "${FAKE_PID}" 2>/dev/null || true
  fi
  if [[ -n "${FAKE_DIR:-}" && -d "${FAKE_DIR}" ]]; then
    rm -rf "${FAKE_DIR}"
  fi
}

setup() {
  load '/usr/lib/bats/bats-support/load'
  load '/usr/lib/bats/bats-assert/load'
}

teardown() {
  # Background helpers a test started (watchers) are ended by their recorded pids.
  local pid
  for pid in ${BG_PIDS:-}; do
    kill "${pid}" 2>/dev/null || true
  done
  if [[ -n "${BATS_TEST_COMPLETED:-}" ]]; then
    return 0
  fi
  echo "# fake-apiserver log (last 40 lines):" >&3
  tail -n 40 "${FAKE_DIR}/server.log" | sed 's/^/#   /' >&3
}

# --- helpers ----------------------------------------------------------------------------------

k() {
  kubectl --kubeconfig "${FAKE_DIR}/kubeconfig" --cache-dir "${FAKE_DIR}/kube-cache" \
    --request-timeout 10s "$@"
}

# api METHOD PATH [BODY [CONTENT-TYPE]]: one authenticated request; prints the body.
api() {
  local args=(-sS --noproxy '*' --max-time 10 --cacert "${FAKE_DIR}/ca.crt"
    -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")" -X "$1")
  if [[ $# -ge 3 ]]; then
    args+=(-H "Content-Type: ${4:-application/json}" --data-binary "$3")
  fi
  curl "${args[@]}" "https://${FAKE_ADDR}$2"
}

# api_code METHOD PATH [curl args...]: prints only the HTTP status code.
api_code() {
  local method="$1" path="$2"
  shift 2
  curl -sS --noproxy '*' --max-time 10 --cacert "${FAKE_DIR}/ca.crt" -o /dev/null \
    -w '%{http_code}' -X "${method}" "$@" "https://${FAKE_ADDR}${path}"
}

# make_pod NS NAME [NODE]: creates a pod through the API and prints its resourceVersion.
make_pod() {
  local body
  body="$(jq -cn --arg ns "$1" --arg name "$2" --arg node "${3:-node-a}" \
    '{apiVersion:"v1",kind:"Pod",metadata:{name:$name,namespace:$ns,labels:{app:"web"}},
      spec:{nodeName:$node,containers:[{name:"c",image:"pause"}]}}')"
  api POST "/api/v1/namespaces/$1/pods" "${body}" | jq -er '.metadata.resourceVersion'
}

current_rv() {
  api GET /fake/state | jq -r '.resourceVersion'
}

# wait_for_watch NS: until the server holds an open pod watch in namespace NS.
wait_for_watch() {
  local i
  for ((i = 0; i < 100; i++)); do
    if api GET /fake/state | jq -e --arg ns "$1" 'any(.watches[]; .namespace == $ns)' >/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "no watch in namespace $1 appeared" >&2
  return 1
}

# wait_for_grep PATTERN FILE: until FILE has a line matching PATTERN (10 s).
wait_for_grep() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qsE "$1" "$2" && return 0
    sleep 0.1
  done
  echo "'$1' never appeared in $2:" >&2
  cat "$2" >&2
  return 1
}

# --- tests ------------------------------------------------------------------------------------

@test "kubectl get pods: empty namespace, then the pod made by kubectl create -f" {
  run k get pods -n t-get
  assert_success
  assert_output --partial "No resources found in t-get namespace."

  run k create --validate=false -n t-get -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels: {app: web}
spec:
  nodeName: node-a
  containers:
  - {name: c, image: pause}
EOF
  assert_success
  assert_output "pod/web-1 created"

  run k get pods -n t-get -o name
  assert_success
  assert_output "pod/web-1"

  # What the server fills in on create.
  run k get pod web-1 -n t-get -o jsonpath='{.status.phase} {.metadata.namespace} {.metadata.uid}'
  assert_success
  assert_output --regexp '^Pending t-get [0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
}

@test "kubectl get pods -w prints a MODIFIED event after a status patch" {
  make_pod t-watch web-1 >/dev/null
  local out="${BATS_TEST_TMPDIR}/watch.out"
  timeout 20 kubectl --kubeconfig "${FAKE_DIR}/kubeconfig" --cache-dir "${FAKE_DIR}/kube-cache" \
    get pods -n t-watch -w --output-watch-events >"${out}" 2>&1 3>&- </dev/null &
  BG_PIDS="$!"
  wait_for_watch t-watch
  wait_for_grep '^ADDED +web-1' "${out}"
  run grep -c MODIFIED "${out}"
  assert_output 0

  api PATCH /api/v1/namespaces/t-watch/pods/web-1/status \
    '{"status":{"phase":"Running"}}' application/merge-patch+json >/dev/null
  wait_for_grep '^MODIFIED +web-1' "${out}"
}

@test "kubectl patch --subresource=status --type=merge sets the Ready condition" {
  make_pod t-status web-1 >/dev/null
  run k patch pod web-1 -n t-status --subresource=status --type=merge \
    -p '{"status":{"conditions":[{"type":"Ready","status":"True"}]}}'
  assert_success
  assert_output "pod/web-1 patched"

  run k get pod web-1 -n t-status -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
  assert_success
  assert_output "True"
  # The status patch leaves the rest of the status alone.
  run k get pod web-1 -n t-status -o jsonpath='{.status.phase}'
  assert_output "Pending"
}

@test "strategic merge patch of one condition keeps the other conditions" {
  make_pod t-smp web-1 >/dev/null
  api PATCH /api/v1/namespaces/t-smp/pods/web-1/status \
    '{"status":{"conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"False"}]}}' \
    application/merge-patch+json >/dev/null

  # kubectl's default patch type is strategic.
  run k patch pod web-1 -n t-smp --subresource=status \
    -p '{"status":{"conditions":[{"type":"Ready","status":"True"}]}}'
  assert_success

  run k get pod web-1 -n t-smp -o json
  assert_success
  run jq -c '[.status.conditions[] | [.type, .status]]' <<<"${output}"
  assert_output '[["PodScheduled","True"],["Ready","True"]]'

  # A merge patch, by contrast, replaces the list.
  run k patch pod web-1 -n t-smp --subresource=status --type=merge \
    -p '{"status":{"conditions":[{"type":"Ready","status":"False"}]}}'
  assert_success
  run k get pod web-1 -n t-smp -o jsonpath='{.status.conditions[*].type}'
  assert_output "Ready"
}

@test "kubectl delete pod succeeds and the pod is gone" {
  make_pod t-del web-1 >/dev/null
  run k delete pod web-1 -n t-del
  assert_success
  assert_output 'pod "web-1" deleted'

  run k get pod web-1 -n t-del
  assert_failure
  assert_output --partial 'pods "web-1" not found'
  run api GET /api/v1/namespaces/t-del/pods/web-1
  assert_output --partial '"reason":"NotFound"'
  run api_code GET /api/v1/namespaces/t-del/pods/web-1 -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")"
  assert_output 404
}

@test "401 Unauthorized Status without a token and with a wrong token" {
  run curl -sS --noproxy '*' --max-time 10 --cacert "${FAKE_DIR}/ca.crt" "https://${FAKE_ADDR}/api/v1/pods"
  assert_success
  run jq -c '[.kind, .apiVersion, .status, .reason, .code]' <<<"${output}"
  assert_output '["Status","v1","Failure","Unauthorized",401]'

  run api_code GET /api/v1/pods
  assert_output 401
  run api_code GET /api/v1/pods -H "Authorization: Bearer wrong-token"
  assert_output 401
  run api_code GET /api/v1/pods -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")"
  assert_output 200
  # Health checks need no token.
  run api_code GET /healthz
  assert_output 200
}

@test "watch from a resourceVersion older than /fake/compact gets one 410 Expired ERROR event" {
  local rv
  rv="$(make_pod t-compact web-1)"
  api PATCH /api/v1/namespaces/t-compact/pods/web-1 '{"metadata":{"labels":{"x":"y"}}}' \
    application/merge-patch+json >/dev/null
  run api POST /fake/compact
  assert_success

  # HTTP 200, then a single ERROR line, then the end of the stream (well before --max-time).
  run curl -sS -N --noproxy '*' --max-time 8 --cacert "${FAKE_DIR}/ca.crt" \
    -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")" -w '\n%{http_code}' \
    "https://${FAKE_ADDR}/api/v1/namespaces/t-compact/pods?watch=true&resourceVersion=${rv}"
  assert_success
  assert_equal "${#lines[@]}" 2
  assert_equal "${lines[1]}" 200
  run jq -c '[.type, .object.kind, .object.code, .object.reason]' <<<"${lines[0]}"
  assert_output '["ERROR","Status",410,"Expired"]'

  # From the compaction point on, watching works.
  run api GET "/api/v1/namespaces/t-compact/pods?watch=true&resourceVersion=$(current_rv)&timeoutSeconds=1"
  assert_success
  assert_output ""
}

@test "watch replay from resourceVersion N shows only the later events, in order" {
  make_pod t-replay a >/dev/null
  local n
  n="$(make_pod t-replay b)"
  make_pod t-replay c >/dev/null
  api PATCH /api/v1/namespaces/t-replay/pods/a '{"metadata":{"labels":{"x":"y"}}}' \
    application/merge-patch+json >/dev/null
  api DELETE /api/v1/namespaces/t-replay/pods/b >/dev/null

  run api GET "/api/v1/namespaces/t-replay/pods?watch=true&resourceVersion=${n}&timeoutSeconds=1"
  assert_success
  run jq -rs 'map("\(.type) \(.object.metadata.name)") | join(",")' <<<"${output}"
  assert_output "ADDED c,MODIFIED a,DELETED b"

  # Every replayed event is newer than N, and they are in increasing order.
  run api GET "/api/v1/namespaces/t-replay/pods?watch=true&resourceVersion=${n}&timeoutSeconds=1"
  run jq -s --argjson n "${n}" '[.[].object.metadata.resourceVersion | tonumber] as $rvs
      | ($rvs | all(. > $n)) and ($rvs == ($rvs | sort))' <<<"${output}"
  assert_output true
}

@test "fieldSelector spec.nodeName returns only that node's pods" {
  make_pod t-field p1 node-a >/dev/null
  make_pod t-field p2 node-b >/dev/null
  make_pod t-field p3 node-a >/dev/null

  run api GET "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a,metadata.namespace%3Dt-field"
  assert_success
  run jq -r '[.kind, (.items | map(.metadata.name) | join(","))] | join(" ")' <<<"${output}"
  assert_output "PodList p1,p3"

  run k get pods -n t-field --field-selector spec.nodeName=node-b -o name
  assert_success
  assert_output "pod/p2"

  # An unsupported field is a 400, as on a real server.
  run api GET "/api/v1/pods?fieldSelector=spec.bogus%3Dx"
  run jq -r '.code' <<<"${output}"
  assert_output 400
}

@test "pagination with limit=1 walks every pod, one per page, at one resourceVersion" {
  local i
  for i in 1 2 3 4 5; do make_pod t-page "p${i}" >/dev/null; done

  local names=() rvs=() cont="" page
  for ((i = 0; i < 10; i++)); do
    page="$(api GET "/api/v1/namespaces/t-page/pods?limit=1${cont:+&continue=${cont}}")"
    assert_equal "$(jq '.items | length' <<<"${page}")" 1
    names+=("$(jq -r '.items[0].metadata.name' <<<"${page}")")
    rvs+=("$(jq -r '.metadata.resourceVersion' <<<"${page}")")
    cont="$(jq -r '.metadata.continue // empty' <<<"${page}")"
    [[ -n "${cont}" ]] || break
    # A pod created mid-walk is not in this list: pages share the first page's snapshot.
    [[ "${i}" -ne 1 ]] || make_pod t-page p9 >/dev/null
  done
  assert_equal "${names[*]}" "p1 p2 p3 p4 p5"
  assert_equal "$(printf '%s\n' "${rvs[@]}" | sort -u | wc -l)" 1

  # kubectl pages the same way.
  run k get pods -n t-page --chunk-size=1 -o name
  assert_success
  assert_equal "${#lines[@]}" 6
}

@test "/fake/fail makes the next requests fail with a Status and Retry-After" {
  run api POST "/fake/fail?code=503&count=2"
  assert_success
  run api_code GET /api/v1/nodes -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")"
  assert_output 503
  run curl -sS -i --noproxy '*' --max-time 10 --cacert "${FAKE_DIR}/ca.crt" \
    -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")" "https://${FAKE_ADDR}/api/v1/nodes"
  assert_output --regexp '[Rr]etry-[Aa]fter: 1'
  assert_output --partial '"reason":"ServiceUnavailable"'
  run api_code GET /api/v1/nodes -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")"
  assert_output 200
}

@test "/fake/drop-watches breaks open watches; bookmarks carry the current resourceVersion" {
  local out="${BATS_TEST_TMPDIR}/watch.out" rc_file="${BATS_TEST_TMPDIR}/watch.rc"
  (
    # Not "curl; echo $?": bats runs the test body, and so this subshell, under set -e.
    rc=0
    curl -sS -N --http1.1 --noproxy '*' --max-time 20 --cacert "${FAKE_DIR}/ca.crt" \
      -H "Authorization: Bearer $(cat "${FAKE_DIR}/token")" \
      "https://${FAKE_ADDR}/api/v1/namespaces/t-drop/pods?watch=1&allowWatchBookmarks=true" \
      >"${out}" 2>&1 || rc=$?
    echo "${rc}" >"${rc_file}"
  ) 3>&- </dev/null &
  BG_PIDS="$!"
  wait_for_watch t-drop
  wait_for_grep '"BOOKMARK"' "${out}"
  run jq -r --argjson rv "$(current_rv)" \
    'select(.type == "BOOKMARK") | .object.kind == "Pod" and (.object.metadata.resourceVersion | tonumber) <= $rv' \
    < <(grep BOOKMARK "${out}" | head -n 1)
  assert_output true

  run api POST /fake/drop-watches
  assert_success
  assert_output --partial '"dropped":'
  wait_for_grep '.' "${rc_file}"
  # curl 18: the chunked body ended without its final chunk.
  assert_equal "$(cat "${rc_file}")" 18
}
