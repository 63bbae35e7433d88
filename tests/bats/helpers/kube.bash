# shellcheck shell=bash
# Shared by tests/bats/kube-*.bats: a fake API server and one pod-pacemaker-agent against it, both
# on 127.0.0.1, started by pid in a temporary directory and stopped by pid. No network namespace
# and no CNI: these suites test the agent's API client, so the test plays the kubelet (it writes
# pod status through the API) and the plugin (it speaks the socket protocol with perl, which is
# part of every Debian system).
#
#   kube_fake_start [fake-apiserver flags]   KUBE_DIR, KUBE_API_ADDR, KUBE_FAKE_PID
#   kube_agent_start [agent flags]           KUBE_AGENT_PID; waits for the agent's socket
#   kube_pod NAME [JSON-MERGE]               creates a pod on KUBE_NODE, prints its uid
#   kube_wait_slot NAME UID                  a plugin-side WAIT in the background
#   kube_converged                           the agent's pod view equals the server's
#   kube_assert_holders NAME...              the agent's STATUS: exactly these hold slots
#   kube_teardown                            kills what this file started, by pid
#
# Environment: KUBE_AGENT_BIN (default: the musl release build), TEST_TOOLS_DIR.

kube__lib_dir() {
  local dir
  dir="$(dpkg -L "$1" 2>/dev/null | grep '/load\.bash$' | head -n1)"
  dirname "${dir:-/usr/lib/bats/$1/load.bash}"
}
load "$(kube__lib_dir bats-support)/load"
load "$(kube__lib_dir bats-assert)/load"

KUBE_REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
: "${KUBE_AGENT_BIN:=${CARGO_TARGET_DIR:-${KUBE_REPO_ROOT}/target}/x86_64-unknown-linux-musl/release/pod-pacemaker-agent}"
: "${KUBE_TOOLS_DIR:=${TEST_TOOLS_DIR:-${CARGO_TARGET_DIR:-${KUBE_REPO_ROOT}/target}/test-tools}}"
KUBE_NODE="kube-node"
KUBE_NS="kt"
# The agent's silence bound in these tests: the fake sends a bookmark every second.
KUBE_SILENCE_S=3

# kube_build_tools: once per file, from setup_file.
kube_build_tools() {
  if [[ -d /usr/local/go/bin && ":${PATH}:" != *":/usr/local/go/bin:"* ]]; then
    PATH="/usr/local/go/bin:${PATH}"
  fi
  bash "${KUBE_REPO_ROOT}/scripts/build-test-tools.sh" >/dev/null
}

# kube_wait_for WHAT TIMEOUT_S COMMAND...: polls COMMAND every 0.2 s; fails after TIMEOUT_S.
kube_wait_for() {
  local what="$1" timeout="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${timeout}s waiting for ${what}" >&2
      return 1
    fi
    sleep 0.2
  done
}

kube__alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# --- the fake API server ------------------------------------------------------------------------

# kube_fake_start [FLAGS...]: a fake API server in a fresh KUBE_DIR (or the existing one, for a
# restart), logging every request to KUBE_DIR/api.log.
kube_fake_start() {
  if [[ -z "${KUBE_DIR:-}" ]]; then
    KUBE_DIR="$(mktemp -d /tmp/ppm-kube.XXXXXX)"
  fi
  mkdir -p "${KUBE_DIR}/api"
  rm -f "${KUBE_DIR}/api/addr"
  # 3>&- : bats reads its TAP stream from fd 3 and waits for every holder to close it.
  "${KUBE_TOOLS_DIR}/fake-apiserver" --dir "${KUBE_DIR}/api" --log-requests \
    --bookmark-interval 1s "$@" >>"${KUBE_DIR}/api.log" 2>&1 3>&- </dev/null &
  KUBE_FAKE_PID=$!
  echo "${KUBE_FAKE_PID}" >>"${KUBE_DIR}/pids"
  kube_wait_for "the fake API server" 15 kube__fake_ready || {
    cat "${KUBE_DIR}/api.log" >&2
    return 1
  }
  KUBE_API_ADDR="$(cat "${KUBE_DIR}/api/addr")"
  case "${KUBE_API_ADDR}" in
    127.0.0.1:[0-9]*) ;;
    *) echo "fake API server is not on 127.0.0.1: ${KUBE_API_ADDR}" >&2; return 1 ;;
  esac
}

kube__fake_ready() {
  kube__alive "${KUBE_FAKE_PID}" || { echo "fake-apiserver exited" >&2; return 2; }
  [[ -s "${KUBE_DIR}/api/addr" ]]
}

# kube_fake_stop: SIGTERM and wait for the exit (with --keep-state it saves its objects).
kube_fake_stop() {
  kill -TERM "${KUBE_FAKE_PID}" 2>/dev/null || true
  kube_wait_for "the fake API server to exit" 10 kube__dead "${KUBE_FAKE_PID}"
}

kube__dead() {
  ! kube__alive "$1"
}

# kube_api METHOD PATH [BODY [CONTENT-TYPE]]: one request with the server's current token; prints
# the body; fails on an HTTP error. --noproxy keeps it on loopback whatever the environment says.
kube_api() {
  local args=(--silent --show-error --fail-with-body --noproxy '*' --max-time 10
    --cacert "${KUBE_DIR}/api/ca.crt" -H "Authorization: Bearer $(cat "${KUBE_DIR}/api/token")"
    -X "$1")
  if [[ $# -ge 3 ]]; then
    args+=(-H "Content-Type: ${4:-application/json}" --data-binary "$3")
  fi
  curl "${args[@]}" "https://${KUBE_API_ADDR}$2"
}

kube_state() {
  kube_api GET /fake/state
}

# kube_pod NAME [JSON]: creates a pod of KUBE_NODE in KUBE_NS (JSON is merged into it); prints
# its uid.
kube_pod() {
  local body extra="${2:-}"
  [[ -n "${extra}" ]] || extra='{}'
  body="$(jq -cn --arg name "$1" --arg node "${KUBE_NODE}" --argjson extra "${extra}" \
    '{apiVersion:"v1",kind:"Pod",metadata:{name:$name},
      spec:{nodeName:$node,containers:[{name:"c",image:"pause"}]}} * $extra')"
  kube_api POST "/api/v1/namespaces/${KUBE_NS}/pods" "${body}" | jq -er '.metadata.uid'
}

# kube_ready NAME: the kubelet's part: the pod's Ready condition turns True.
kube_ready() {
  kube_api PATCH "/api/v1/namespaces/${KUBE_NS}/pods/$1/status" \
    '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}' \
    application/merge-patch+json >/dev/null
}

kube_delete() {
  kube_api DELETE "/api/v1/namespaces/${KUBE_NS}/pods/$1" >/dev/null
}

# kube_api_requests PATTERN: how many lines of the request log match PATTERN (extended regex).
kube_api_requests() {
  grep -cE "$1" "${KUBE_DIR}/api.log" || true
}

# kube_lists: how many pod lists (not watches) the agent has made.
kube_lists() {
  kube_api_requests 'GET /api/v1/pods\?fieldSelector=spec.nodeName%3Dkube-node&limit=500 -> 200'
}

# kube_watch_open: the agent's pod watch is open on the server.
kube_watch_open() {
  kube_state | jq -e 'any(.watches[]; .resource == "pods" and (.query | test("watch=true")))' \
    >/dev/null 2>&1
}

# --- the agent ----------------------------------------------------------------------------------

# kube_agent_start [FLAGS...]: the agent with a limit of KUBE_LIMIT (default 2), the short silence
# bound and a cache file; the API flags default to the fake's files (the token is copied to
# KUBE_DIR/agent-token, so a test can rotate the server's token without the agent seeing it at
# once). Waits for the socket.
kube_agent_start() {
  local args=(--node-name "${KUBE_NODE}" --socket "${KUBE_DIR}/agent.sock"
    --max-concurrent "${KUBE_LIMIT:-2}" --watch-silence-seconds "${KUBE_SILENCE_S}" --pod-cache-file "${KUBE_DIR}/pods.json")
  if [[ " $* " != *" --kubeconfig "* ]]; then
    [[ -e "${KUBE_DIR}/agent-token" ]] || cp "${KUBE_DIR}/api/token" "${KUBE_DIR}/agent-token"
    args+=(--api-server "https://${KUBE_API_ADDR}" --token-file "${KUBE_DIR}/agent-token"
      --ca-file "${KUBE_DIR}/api/ca.crt")
  fi
  if [[ " $* " != *" --log-level "* ]]; then
    args+=(--log-level info)
  fi
  # Proxy variables are dropped so that the agent's HTTP client never leaves loopback.
  env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    "${KUBE_AGENT_BIN}" "${args[@]}" "$@" >>"${KUBE_DIR}/agent.log" 2>&1 3>&- </dev/null &
  KUBE_AGENT_PID=$!
  echo "${KUBE_AGENT_PID}" >>"${KUBE_DIR}/pids"
  kube_wait_for "the agent's socket" 20 kube__agent_ready || {
    cat "${KUBE_DIR}/agent.log" >&2
    return 1
  }
}

kube__agent_ready() {
  kube__alive "${KUBE_AGENT_PID}" || { echo "agent exited" >&2; return 2; }
  [[ -S "${KUBE_DIR}/agent.sock" ]]
}

# kube_agent_alive: the agent has not exited (the process must survive every fault).
kube_agent_alive() {
  kube__alive "${KUBE_AGENT_PID}"
}

# kube_set_agent_token FILE: the agent's token file now holds FILE's token (atomic, like the
# kubelet's symlink swap).
kube_set_agent_token() {
  cp "$1" "${KUBE_DIR}/agent-token.new"
  mv -f "${KUBE_DIR}/agent-token.new" "${KUBE_DIR}/agent-token"
}

# --- the plugin's side: the socket protocol -----------------------------------------------------

# kube_wait_slot NAME UID: sends WAIT for pod NAME in the background, as the plugin does on ADD;
# every reply line goes to KUBE_DIR/wait-NAME.out. The connection ends at a final reply.
kube_wait_slot() {
  local out="${KUBE_DIR}/wait-$1.out"
  : >"${out}"
  perl -MIO::Socket::UNIX -e '
    my ($path, $ns, $name, $uid) = @ARGV;
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) or die "connect: $!\n";
    $| = 1;
    print $s "pod-pacemaker/1\nWAIT namespace=$ns name=$name uid=$uid timeout_ms=120000\n";
    while (my $line = <$s>) {
      print $line;
      last if $line =~ /^(GRANTED|ERROR)/;
    }
  ' "${KUBE_DIR}/agent.sock" "${KUBE_NS}" "$1" "$2" >"${out}" 2>&1 3>&- </dev/null &
  echo "$!" >>"${KUBE_DIR}/pids"
}

# kube_reply NAME: the replies to NAME's WAIT so far.
kube_reply() {
  cat "${KUBE_DIR}/wait-$1.out"
}

kube_granted() {
  grep -q '^GRANTED reason=slot' "${KUBE_DIR}/wait-$1.out"
}

kube_queued() {
  grep -q '^QUEUED ' "${KUBE_DIR}/wait-$1.out"
}

# kube_hold_two: pods a and b hold the two slots, pod c waits for one (QUEUED).
kube_hold_two() {
  local name uid
  for name in a b; do
    uid="$(kube_pod "${name}")"
    kube_wait_for "pod ${name} in the agent's view" 10 kube__in_view "${uid}"
    kube_wait_slot "${name}" "${uid}"
    kube_wait_for "a slot for ${name}" 10 kube_granted "${name}"
  done
  uid="$(kube_pod c)"
  kube_wait_for "pod c in the agent's view" 10 kube__in_view "${uid}"
  kube_wait_slot c "${uid}"
  kube_wait_for "c to queue" 10 kube_queued c
  run kube_reply c
  assert_line --partial 'QUEUED position=1 holders=2 limit=2'
}

kube__in_view() {
  [[ -s "${KUBE_DIR}/pods.json" ]] && jq -e --arg uid "$1" 'any(.pods[]; .uid == $uid)' \
    "${KUBE_DIR}/pods.json" >/dev/null 2>&1
}

# kube_releases NAME: how many times the agent released a slot of pod NAME.
kube_releases() {
  grep -cE "release pod=${KUBE_NS}/$1 " "${KUBE_DIR}/agent.log" || true
}

# kube_assert_holders NAME...: the agent's STATUS lists exactly these pods as slot holders and
# counts as many (a leaked slot or a double count shows here).
kube_assert_holders() {
  local want
  want="$(printf '%s\n' "$@" | sort | tr '\n' ' ')"
  run "${KUBE_AGENT_BIN}" --status --socket "${KUBE_DIR}/agent.sock"
  assert_success
  local got
  # shellcheck disable=SC2154 # set by bats' run
  got="$(grep '^HOLDER ' <<<"${output}" | sed -E 's/.* name=([^ ]+).*/\1/' | sort | tr '\n' ' ')"
  assert_equal "${got}" "${want}"
  assert_line --regexp "^STATUS holders=$# limit=2 "
}

# --- convergence ----------------------------------------------------------------------------------

# kube_converged: the agent's cache file lists exactly the pods the server has on the node, each at
# the server's resourceVersion.
kube_converged() {
  local server agent
  server="$(kube_api GET "/api/v1/namespaces/${KUBE_NS}/pods?fieldSelector=spec.nodeName%3D${KUBE_NODE}" |
    jq -cS '[.items[] | {uid: .metadata.uid, namespace: .metadata.namespace,
      name: .metadata.name, resourceVersion: .metadata.resourceVersion}
      | select(.name | startswith("bad-") | not)] | sort_by(.uid)')" || return 1
  agent="$(jq -cS '.pods | sort_by(.uid)' "${KUBE_DIR}/pods.json" 2>/dev/null)" || return 1
  [[ "${server}" == "${agent}" ]]
}

kube_wait_converged() {
  kube_wait_for "the agent's view to match the server" "${1:-20}" kube_converged || {
    echo "server:" >&2
    kube_api GET "/api/v1/namespaces/${KUBE_NS}/pods?fieldSelector=spec.nodeName%3D${KUBE_NODE}" |
      jq -c '[.items[] | [.metadata.name, .metadata.resourceVersion]]' >&2
    echo "agent:" >&2
    jq -c '[.pods[] | [.name, .resourceVersion]]' "${KUBE_DIR}/pods.json" >&2
    return 1
  }
}

# --- teardown -------------------------------------------------------------------------------------

# kube_teardown: on failure, show the logs; then kill everything this test started, by pid.
kube_teardown() {
  if [[ -z "${KUBE_DIR:-}" || ! -d "${KUBE_DIR}" ]]; then
    return 0
  fi
  if [[ -z "${BATS_TEST_COMPLETED:-}" ]]; then
    echo "# --- agent log (tail)" >&3
    tail -n 40 "${KUBE_DIR}/agent.log" 2>/dev/null | sed 's/^/#   /' >&3
    echo "# --- API log (tail)" >&3
    tail -n 25 "${KUBE_DIR}/api.log" 2>/dev/null | sed 's/^/#   /' >&3
  fi
  local pid
  while read -r pid; do
    [[ -n "${pid}" ]] || continue
    # SIGCONT first, in case a test left it stopped.
    kill -CONT "${pid}" 2>/dev/null
    kill -TERM "${pid}" 2>/dev/null
  done <"${KUBE_DIR}/pids"
  while read -r pid; do
    [[ -n "${pid}" ]] || continue
    kube_wait_for "pid ${pid} to exit" 5 kube__dead "${pid}" 2>/dev/null ||
      kill -KILL "${pid}" 2>/dev/null
  done <"${KUBE_DIR}/pids"
  rm -rf "${KUBE_DIR}"
  KUBE_DIR=""
}
