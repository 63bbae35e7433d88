#!/usr/bin/env bash
# Benchmark group "kube" (run through scripts/bench.sh):
#
#   agent_rss_mib   the agent's peak resident memory (VmHWM, MiB) while it watches a node with 250
#                   pods and steady churn. Target < 10 (issue #5).
#
# Setup: the fake API server (tests/fake-apiserver) on 127.0.0.1 with 250 pods on one node, each
# shaped like a real Deployment pod (three containers with env and probes, labels, an owner, a
# 3 KiB last-applied-configuration annotation, container statuses), then the release agent
# (musl, as shipped) against it. Churn: one curl process sends status patches (Ready flips,
# restarts) at a steady rate, and every tenth change deletes a pod and creates it again under a
# new UID, so the node keeps 250 pods while the agent sees adds, updates and deletes; halfway
# through, the history is compacted and the watch dropped, so the agent also relists all 250
# (the list is the largest transient allocation). "info" lines give the steady VmRSS at the end
# and what the agent saw.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"

PODS=250
CHURN_SECONDS=30
RATE_PER_SECOND=50
NODE=bench-node
NS=bench
agent_bin="${CARGO_TARGET_DIR:-${repo_root}/target}/x86_64-unknown-linux-musl/release/pod-pacemaker-agent"
tools_dir="${TEST_TOOLS_DIR:-${CARGO_TARGET_DIR:-${repo_root}/target}/test-tools}"

for dir in "${HOME:-/root}/.cargo/bin" /usr/local/go/bin; do
  [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]] && PATH="${dir}:${PATH}"
done
bash scripts/build-test-tools.sh >/dev/null
[[ -x "${agent_bin}" ]] || { echo "bench kube: ${agent_bin} missing (scripts/build.sh)" >&2; exit 1; }

work="$(mktemp -d /tmp/ppm-bench-kube.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "${pid}" 2>/dev/null || true; done
  rm -rf "${work}"
}
trap cleanup EXIT

# 1. The fake API server.
"${tools_dir}/fake-apiserver" --dir "${work}/api" --listen 127.0.0.1:0 >"${work}/api.log" 2>&1 </dev/null &
pids+=("$!")
for _ in $(seq 100); do [[ -s "${work}/api/addr" ]] && break; sleep 0.1; done
addr="$(cat "${work}/api/addr")"
[[ "${addr}" == 127.0.0.1:* ]] || { echo "bench kube: fake API server did not start" >&2; exit 1; }
printf 'Authorization: Bearer %s\n' "$(cat "${work}/api/token")" >"${work}/auth.header"
chmod 600 "${work}/auth.header"

# 2. 250 realistic pods, created with kubectl in one go.
pod_json() { # NAME: one pod object, as JSON on one line
  jq -cn --arg name "$1" --arg node "${NODE}" --arg ns "${NS}" --arg blob "$(head -c 2300 /dev/zero | tr '\0' 'x')" '
    def container($n): {name: $n, image: "registry.example/\($n):1.2.3",
      env: [range(8) | {name: "ENV_\(.)", value: "value-\(.)"}],
      resources: {requests: {cpu: "100m", memory: "128Mi"}, limits: {memory: "256Mi"}},
      readinessProbe: {httpGet: {path: "/ready", port: 8080}, periodSeconds: 5}};
    {apiVersion: "v1", kind: "Pod",
     metadata: {name: $name, namespace: $ns,
       labels: {app: "shop", "pod-template-hash": "7d9f8c6b5", tier: "backend"},
       annotations: {"kubectl.kubernetes.io/last-applied-configuration": $blob,
         "prometheus.io/scrape": "true"},
       ownerReferences: [{apiVersion: "apps/v1", kind: "ReplicaSet", name: "shop-7d9f8c6b5",
         uid: "00000000-0000-4000-8000-000000000001", controller: true}]},
     spec: {nodeName: $node, priority: 0, containers: [container("app"), container("proxy"),
       container("logs")]}}'
}
{
  echo '{"apiVersion":"v1","kind":"List","items":['
  for ((i = 0; i < PODS; i++)); do
    ((i == 0)) || echo ','
    pod_json "p-${i}"
  done
  echo ']}'
} >"${work}/pods.json"
kubectl --kubeconfig "${work}/api/kubeconfig" --cache-dir "${work}/kube-cache" \
  --request-timeout 30s create --validate=false -f "${work}/pods.json" >/dev/null

# 3. The agent, as shipped (release, musl), default log level.
env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
  "${agent_bin}" --node-name "${NODE}" --socket "${work}/agent.sock" --max-concurrent 2 \
  --api-server "https://${addr}" --token-file "${work}/api/token" --ca-file "${work}/api/ca.crt" \
  --pod-cache-file "${work}/view.json" >"${work}/agent.log" 2>&1 </dev/null &
agent_pid=$!
pids+=("${agent_pid}")
for _ in $(seq 200); do [[ -S "${work}/agent.sock" ]] && break; sleep 0.1; done
[[ -S "${work}/agent.sock" ]] || { cat "${work}/agent.log" >&2; echo "bench kube: agent not ready" >&2; exit 1; }

# 4. Churn: a curl config with one request per change, sent at a steady rate by one process.
changes=$((CHURN_SECONDS * RATE_PER_SECOND))
# The bodies are templates quoted once for the config file (JSON escapes are curl config escapes).
pod_tpl="$(jq -Rn --arg b "$(pod_json __NAME__)" '$b')"
patch_tpl="$(jq -Rn --arg b "$(jq -cn '{status: {phase: "Running", podIP: "10.244.0.__IP__",
    conditions: [{type: "Ready", status: "__READY__"}, {type: "ContainersReady", status: "True"}],
    containerStatuses: [("app", "proxy", "logs") | {name: ., ready: true, started: true,
      restartCount: 0, containerID: "containerd://__ID__", state: {running: {}}}]}}')" '$b')"
request() { # METHOD PATH [QUOTED-BODY [CONTENT-TYPE]]
  # "next" separates requests; one after the last would leave an empty request behind.
  [[ -z "${first_done:-}" ]] || echo next
  first_done=1
  printf 'url = "https://%s%s"\nrequest = "%s"\nheader = "@%s"\ncacert = "%s"\noutput = "/dev/null"\nsilent\nnoproxy = "*"\n' \
    "${addr}" "$2" "$1" "${work}/auth.header" "${work}/api/ca.crt"
  if [[ $# -ge 3 ]]; then
    printf 'header = "Content-Type: %s"\ndata = %s\n' "${4:-application/json}" "$3"
  fi
}
first_done=""
{
  for ((i = 0; i < changes; i++)); do
    name="p-$((i * 7 % PODS))"
    if ((i % 10 == 9)); then
      request DELETE "/api/v1/namespaces/${NS}/pods/${name}"
      request POST "/api/v1/namespaces/${NS}/pods" "${pod_tpl//__NAME__/${name}}"
    else
      body="${patch_tpl//__IP__/$((i % 250))}"
      body="${body//__ID__/${i}}"
      if ((i % 2 == 0)); then body="${body//__READY__/True}"; else body="${body//__READY__/False}"; fi
      request PATCH "/api/v1/namespaces/${NS}/pods/${name}/status" "${body}" \
        application/merge-patch+json
    fi
  done
} >"${work}/churn.curl"
# Roughly RATE changes a second (a delete+create pair counts as two requests).
curl --rate "$((RATE_PER_SECOND * 11 / 10))/s" -K "${work}/churn.curl" 2>"${work}/churn.err" &
churn_pid=$!
pids+=("${churn_pid}")

control() { # ENDPOINT: a /fake/ control request
  curl -sS --noproxy '*' --max-time 10 --cacert "${work}/api/ca.crt" -H "@${work}/auth.header" \
    -X POST "https://${addr}/fake/$1" >/dev/null
}
rss_kib() { awk -v k="$1" '$1 == k ":" { print $2 }' "/proc/${agent_pid}/status"; }
max_rss=0
relisted=0
start=${SECONDS}
while kill -0 "${churn_pid}" 2>/dev/null; do
  rss="$(rss_kib VmRSS)"
  ((rss > max_rss)) && max_rss="${rss}"
  if ((relisted == 0 && SECONDS - start >= CHURN_SECONDS / 2)); then
    # Hold the watch back while changes go on, forget the history, break the watch: the agent
    # resumes from a compacted version, gets 410 and lists all 250 pods again.
    control stall-watches?seconds=600
    sleep 1
    control compact
    control drop-watches
    relisted=1
  fi
  sleep 0.5
done
wait "${churn_pid}" || { cat "${work}/churn.err" >&2; echo "bench kube: churn failed" >&2; exit 1; }
sleep 2

kill -0 "${agent_pid}" 2>/dev/null || { tail -n 20 "${work}/agent.log" >&2; echo "bench kube: the agent exited" >&2; exit 1; }
hwm="$(rss_kib VmHWM)"
end_rss="$(rss_kib VmRSS)"
((end_rss > max_rss)) && max_rss="${end_rss}"
resynced="$(grep -c 'resynced ' "${work}/agent.log" || true)"
server_view="$(curl -sS --noproxy '*' --max-time 10 --cacert "${work}/api/ca.crt" -H "@${work}/auth.header" \
  "https://${addr}/api/v1/namespaces/${NS}/pods" | jq -c '[.items[] | [.metadata.uid, .metadata.resourceVersion]] | sort')"
agent_view="$(jq -c '[.pods[] | [.uid, .resourceVersion]] | sort' "${work}/view.json")"
converged=no
# The view file is written at most once a second while events stream, and otherwise at the next
# bookmark (every 5 s here): give it that long.
for _ in $(seq 30); do
  agent_view="$(jq -c '[.pods[] | [.uid, .resourceVersion]] | sort' "${work}/view.json")"
  [[ "${server_view}" == "${agent_view}" ]] && { converged=yes; break; }
  sleep 0.5
done
echo "info agent VmRSS at the end $(awk -v k="${end_rss}" 'BEGIN { printf "%.1f", k / 1024 }') MiB, highest sampled $(awk -v k="${max_rss}" 'BEGIN { printf "%.1f", k / 1024 }') MiB; ${PODS} pods, ${changes} changes in ${CHURN_SECONDS}s, ${resynced} relist(s), view matches the server: ${converged}"
awk -v k="${hwm}" 'BEGIN { printf "figure agent_rss_mib %.1f MiB target < 10\n", k / 1024 }'
