#!/usr/bin/env bats
# The real kubectl against the fake API server, for what the agent's writes and the config CRD
# rely on: Node taints, annotations and patches, Events, the PacemakerConfig custom resource, and
# token rotation. (tests/bats/fake-apiserver.bats covers pods: get, get -w, patch, delete,
# create -f, pagination, compaction.) If kubectl accepts the fake's answers and the fake applies
# kubectl's requests as a real server would, tests against the fake mean something. One server
# for the file; each test uses its own node or namespace.

bats_require_minimum_version 1.5.0

setup_file() {
  load helpers/kube
  kube_build_tools
  KUBE_DIR=""
  kube_fake_start
  export KUBE_DIR KUBE_API_ADDR KUBE_FAKE_PID
}

teardown_file() {
  load helpers/kube
  BATS_TEST_COMPLETED=1 kube_teardown
}

setup() {
  load helpers/kube
}

teardown() {
  local pid
  for pid in ${BG_PIDS:-}; do
    kill "${pid}" 2>/dev/null || true
  done
  if [[ -z "${BATS_TEST_COMPLETED:-}" ]]; then
    echo "# --- API log (tail)" >&3
    tail -n 30 "${KUBE_DIR}/api.log" | sed 's/^/#   /' >&3
  fi
}

k() {
  kubectl --kubeconfig "${KUBE_DIR}/api/kubeconfig" --cache-dir "${KUBE_DIR}/kube-cache" \
    --request-timeout 10s "$@"
}

make_node() {
  k create --validate=false -f - <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $1
  labels: {kubernetes.io/hostname: $1}
spec:
  taints:
  - {key: node.kubernetes.io/not-ready, effect: NoSchedule}
EOF
}

wait_for_grep() {
  kube_wait_for "'$1' in $2" 10 grep -qsE "$1" "$2"
}

@test "kubectl taint adds and removes one taint by key and keeps the others" {
  make_node n-taint
  run k taint nodes n-taint pod-pacemaker=starting:NoSchedule
  assert_success
  assert_output "node/n-taint tainted"
  run k get node n-taint -o json
  run jq -c '[.spec.taints[] | "\(.key)=\(.value // "")=\(.effect)"] | sort' <<<"${output}"
  assert_output '["node.kubernetes.io/not-ready==NoSchedule","pod-pacemaker=starting=NoSchedule"]'

  run k taint nodes n-taint pod-pacemaker-
  assert_success
  assert_output "node/n-taint untainted"
  run k get node n-taint -o jsonpath='{.spec.taints[*].key}'
  assert_output "node.kubernetes.io/not-ready"
}

@test "kubectl annotate, label and patch --type=json change a node; a stale resourceVersion is a 409" {
  make_node n-meta
  run k annotate node n-meta pod-pacemaker/limit=2
  assert_success
  run k label node n-meta pacing=on
  assert_success
  run k patch node n-meta --type=json \
    -p '[{"op":"test","path":"/metadata/labels/pacing","value":"on"},
         {"op":"add","path":"/metadata/annotations/pod-pacemaker~1state","value":"ready"}]'
  assert_success
  run k get node n-meta -o json
  run jq -c '[.metadata.annotations, .metadata.labels.pacing]' <<<"${output}"
  assert_output '[{"pod-pacemaker/limit":"2","pod-pacemaker/state":"ready"},"on"]'

  # A failed JSON patch "test" changes nothing.
  run k patch node n-meta --type=json -p '[{"op":"test","path":"/metadata/labels/pacing","value":"off"}]'
  assert_failure
  # A merge patch made from an old resourceVersion conflicts, as the agent's taint edit expects.
  run k patch node n-meta --type=merge -p '{"metadata":{"resourceVersion":"1"},"spec":{"taints":null}}'
  assert_failure
  assert_output --partial "Conflict"
  run k annotate node n-meta pod-pacemaker/limit-
  assert_success
  run k get node n-meta -o jsonpath='{.metadata.annotations}'
  assert_output '{"pod-pacemaker/state":"ready"}'
}

@test "kubectl create -f an Event, get events by field selector; the same name again is AlreadyExists" {
  run k create --validate=false -n k-ev -f - <<'EOF'
apiVersion: v1
kind: Event
metadata: {name: web-0.17d0c0ffee}
involvedObject: {kind: Pod, namespace: k-ev, name: web-0, uid: u-1, apiVersion: v1}
reason: SlotGranted
message: "start slot granted (1 of 2 held)"
type: Normal
source: {component: pod-pacemaker-agent, host: n1}
firstTimestamp: "2024-05-01T10:00:00Z"
lastTimestamp: "2024-05-01T10:00:00Z"
count: 1
EOF
  assert_success
  assert_output "event/web-0.17d0c0ffee created"
  run k get events -n k-ev --field-selector involvedObject.name=web-0,reason=SlotGranted \
    -o jsonpath='{.items[*].message}'
  assert_success
  assert_output "start slot granted (1 of 2 held)"
  run k get events -n k-ev --field-selector involvedObject.name=other -o name
  assert_output ""
  # A second Event with the same name is AlreadyExists (409), which the agent retries renamed.
  run k create --validate=false -n k-ev -f - <<'EOF'
apiVersion: v1
kind: Event
metadata: {name: web-0.17d0c0ffee}
involvedObject: {kind: Pod, name: web-0}
reason: Again
EOF
  assert_failure
  assert_output --partial "AlreadyExists"
}

@test "the PacemakerConfig custom resource: create -f, get, patch, get -w, status, delete" {
  run k create --validate=false -f - <<'EOF'
apiVersion: woehrl.net/v1alpha
kind: PacemakerConfig
metadata: {name: default}
spec:
  nodeSelector: {}
  priority: 1
  throttleConfig:
    maxConcurrent: {value: 2}
EOF
  assert_success
  assert_output "pacemakerconfig.woehrl.net/default created"
  run k get pacemakerconfigs -o name
  assert_output "pacemakerconfig.woehrl.net/default"

  local out="${BATS_TEST_TMPDIR}/watch.out"
  timeout 20 kubectl --kubeconfig "${KUBE_DIR}/api/kubeconfig" --cache-dir "${KUBE_DIR}/kube-cache" \
    get pacemakerconfigs -w --output-watch-events >"${out}" 2>&1 3>&- </dev/null &
  BG_PIDS="$!"
  wait_for_grep 'ADDED +default' "${out}"

  run k patch pacemakerconfig default --type=merge \
    -p '{"spec":{"throttleConfig":{"maxConcurrent":{"value":3}}}}'
  assert_success
  wait_for_grep 'MODIFIED +default' "${out}"
  run k get pacemakerconfig default -o jsonpath='{.spec.throttleConfig.maxConcurrent.value}'
  assert_output 3

  # The status subresource is separate from the spec, as with a CRD that declares it.
  run k patch pacemakerconfig default --subresource=status --type=merge -p '{"status":{"nodes":1}}'
  assert_success
  run k get pacemakerconfig default -o jsonpath='{.status.nodes} {.spec.priority}'
  assert_output "1 1"

  run k delete pacemakerconfig default
  assert_success
  wait_for_grep 'DELETED +default' "${out}"
}

@test "kubectl get pods -w sees ADDED, MODIFIED and DELETED from kubectl itself" {
  local out="${BATS_TEST_TMPDIR}/watch.out"
  timeout 20 kubectl --kubeconfig "${KUBE_DIR}/api/kubeconfig" --cache-dir "${KUBE_DIR}/kube-cache" \
    get pods -n k-w -w --output-watch-events >"${out}" 2>&1 3>&- </dev/null &
  BG_PIDS="$!"
  kube_wait_for "the watch" 10 watching k-w
  run k run web-0 -n k-w --image=pause --restart=Never --overrides='{"spec":{"nodeName":"n1"}}'
  assert_success
  wait_for_grep 'ADDED +web-0' "${out}"
  run k label pod web-0 -n k-w ready=yes
  assert_success
  wait_for_grep 'MODIFIED +web-0' "${out}"
  run k delete pod web-0 -n k-w --wait=false
  assert_success
  wait_for_grep 'DELETED +web-0' "${out}"
}

watching() {
  kube_state | jq -e --arg ns "$1" 'any(.watches[]; .namespace == $ns)' >/dev/null
}

@test "token rotation: kubectl works with the rewritten kubeconfig; the old token only during its grace" {
  local old="${BATS_TEST_TMPDIR}/old-kubeconfig"
  cp "${KUBE_DIR}/api/kubeconfig" "${old}"
  run kube_api POST '/fake/rotate-token?grace=2'
  assert_success
  run k get nodes -o name
  assert_success
  run kubectl --kubeconfig "${old}" --request-timeout 10s get nodes -o name
  assert_success
  sleep 2.5
  run kubectl --kubeconfig "${old}" --request-timeout 10s get nodes -o name
  assert_failure
  assert_output --partial "Unauthorized"
  run k get nodes -o name
  assert_success
}
