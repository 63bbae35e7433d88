# shellcheck shell=bash
# simnode.sh: a simulated Kubernetes node for pod-pacemaker, as a sourced bash library.
#
#   source scripts/simnode.sh
#   simnode_install_trap                 # optional: clean up on EXIT/INT/TERM (not under bats)
#   simnode_up --limit 2 --max-wait 60   # node netns, CNI bin dir + conflist, fake API, agent
#   simnode_pod_create pod-01            # POST to the fake API, make the pod's netns
#   simnode_pod_start pod-01             # background: CNI ADD, then play kubelet (warm-up, Ready)
#   simnode_wait_pods 120 pod-01
#   simnode_max_concurrent pod-01 ...
#   simnode_down                         # kill by pid, delete netns by name, remove the state dir
#
# What is simulated, and why this way:
# - The node is a network namespace of its own (ppm-<id>-node). Every CNI ADD runs inside it, so
#   the bridge, veths and routes the reference plugins create never touch the host's network.
#   Pods are further namespaces (ppm-<id>-<pod>) whose eth0 the bridge plugin sets up.
# - The fake API server and the agent run in the host namespace and talk over 127.0.0.1 only.
#   The agent's Unix socket is a path under the state dir; path-bound Unix sockets are not scoped
#   by network namespace, so the plugin (run inside the node netns) reaches it.
# - The "kubelet" is a bash job per pod: when the pod's ADD returns it burns CPU for a while
#   (standing in for image pull and container start), then PATCHes the pod Ready through the API,
#   which is the signal the agent releases a slot on.
# - Every process is started by this library, recorded by pid (or process group) in the state
#   dir, and killed by that pid; every netns is recorded by name before it is created and deleted
#   by that name. Names carry a random id so two runs (or two engineers) never collide.
#
# This file only defines functions and defaults. It sets no shell options, because it is also
# sourced into bats, whose own error handling must not be changed; the functions check their
# own errors and return non-zero.
#
# Tunables (environment): SIMNODE_DIR (state dir; default mktemp -d under /tmp),
# SIMNODE_WARMUP_MB (kubelet warm-up size, default 128), SIMNODE_PLUGIN_BIN, SIMNODE_AGENT_BIN,
# SIMNODE_TOOLS_DIR (fake-apiserver, cnidriver), SIMNODE_CNI_PLUGINS_DIR (default /usr/lib/cni),
# SIMNODE_KEEP=1 (keep the state dir after simnode_down, for debugging).

SIMNODE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIMNODE_MUSL_DIR="${CARGO_TARGET_DIR:-${SIMNODE_REPO_ROOT}/target}/x86_64-unknown-linux-musl/release"
: "${SIMNODE_PLUGIN_BIN:=${SIMNODE_MUSL_DIR}/pod-pacemaker}"
: "${SIMNODE_AGENT_BIN:=${SIMNODE_MUSL_DIR}/pod-pacemaker-agent}"
: "${SIMNODE_TOOLS_DIR:=${CARGO_TARGET_DIR:-${SIMNODE_REPO_ROOT}/target}/test-tools}"
: "${SIMNODE_CNI_PLUGINS_DIR:=/usr/lib/cni}"
: "${SIMNODE_WARMUP_MB:=128}"
: "${SIMNODE_NAMESPACE:=default}"

# --- small helpers ----------------------------------------------------------------------------

simnode_log() {
  echo "simnode: $*" >&2
}

simnode_now() {
  date +%s.%N
}

# simnode__hex N: N random bytes as lowercase hex.
simnode__hex() {
  od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# simnode__record FILE LINE: append one line to a state file. Small O_APPEND writes from parallel
# pod jobs do not interleave.
simnode__record() {
  printf '%s\n' "$2" >>"${SIMNODE_DIR}/$1"
}

simnode__require_up() {
  if [[ -z "${SIMNODE_DIR:-}" || ! -f "${SIMNODE_DIR}/.simnode-state" ]]; then
    simnode_log "no simulated node is up (call simnode_up first)"
    return 1
  fi
}

simnode__pod_dir() {
  printf '%s/pods/%s' "${SIMNODE_DIR}" "$1"
}

# simnode__wait_for DESCRIPTION TIMEOUT_S COMMAND...: polls COMMAND every 0.1 s until it
# succeeds; fails after TIMEOUT_S seconds, or at once when COMMAND returns 2 ("will never
# succeed", e.g. the process it waits for has exited).
simnode__wait_for() {
  local what="$1" timeout="$2" deadline rc
  shift 2
  deadline=$((SECONDS + timeout))
  while :; do
    rc=0
    "$@" || rc=$?
    if ((rc == 0)); then
      return 0
    elif ((rc == 2)); then
      simnode_log "gave up waiting for ${what}"
      return 1
    elif ((SECONDS >= deadline)); then
      simnode_log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 0.1
  done
}

# simnode__alive PID: the process exists and is not a zombie (an exited child that nobody has
# reaped yet still answers kill -0).
simnode__alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  # The state is the first field after the parenthesised command name.
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# --- the fake API server ---------------------------------------------------------------------

# simnode_api METHOD PATH [BODY [CONTENT_TYPE]]: one request to the fake API server; prints the
# response body, fails on an HTTP error. The token goes in a header file, not on the command line,
# and --noproxy makes sure a proxy from the environment never carries this traffic off loopback.
simnode_api() {
  local method="$1" path="$2" body="${3:-}" ctype="${4:-application/json}"
  local args=(
    --silent --show-error --fail-with-body --noproxy '*' --max-time 10
    --cacert "${SIMNODE_DIR}/api/ca.crt" -H "@${SIMNODE_DIR}/api-auth.header"
    -X "${method}"
  )
  if [[ -n "${body}" ]]; then
    args+=(-H "Content-Type: ${ctype}" --data-binary "${body}")
  fi
  curl "${args[@]}" "https://${SIMNODE_API_ADDR}${path}"
}

simnode__api_start() {
  local bin="${SIMNODE_TOOLS_DIR}/fake-apiserver" pid
  mkdir -p "${SIMNODE_DIR}/api"
  # 3>&- : bats reads its TAP stream from fd 3 and waits for every holder to close it.
  "${bin}" --dir "${SIMNODE_DIR}/api" --listen 127.0.0.1:0 \
    >"${SIMNODE_DIR}/api.log" 2>&1 3>&- </dev/null &
  pid=$!
  simnode__record pids "${pid} fake-apiserver"
  SIMNODE_API_PID="${pid}"
  if ! simnode__wait_for "the fake API server's addr file" 15 \
    simnode__api_ready "${pid}"; then
    simnode_log "fake-apiserver log:"
    sed 's/^/  | /' "${SIMNODE_DIR}/api.log" >&2
    return 1
  fi
  SIMNODE_API_ADDR="$(cat "${SIMNODE_DIR}/api/addr")"
  case "${SIMNODE_API_ADDR}" in
    127.0.0.1:[0-9]*) ;;
    *)
      # The rules of this workplace: the fake API listens on loopback, nowhere else.
      simnode_log "fake API server address '${SIMNODE_API_ADDR}' is not on 127.0.0.1; refusing"
      return 1
      ;;
  esac
  printf 'Authorization: Bearer %s\n' "$(cat "${SIMNODE_DIR}/api/token")" \
    >"${SIMNODE_DIR}/api-auth.header"
  chmod 600 "${SIMNODE_DIR}/api-auth.header"
}

simnode__api_ready() {
  if ! simnode__alive "$1"; then
    simnode_log "fake-apiserver (pid $1) exited"
    return 2
  fi
  [[ -s "${SIMNODE_DIR}/api/addr" && -s "${SIMNODE_DIR}/api/token" && -s "${SIMNODE_DIR}/api/ca.crt" ]]
}

# --- the agent -------------------------------------------------------------------------------

# simnode_agent_start: starts pod-pacemaker-agent against the fake API server and waits until
# its socket exists (the agent creates it only once it has listed pods and is ready).
simnode_agent_start() {
  simnode__require_up || return 1
  local pid args
  rm -f "${SIMNODE_SOCKET}" 2>/dev/null
  args=(
    --node-name "${SIMNODE_NODE_NAME}" --socket "${SIMNODE_SOCKET}"
    --max-concurrent "${SIMNODE_LIMIT}"
    --api-server "https://${SIMNODE_API_ADDR}"
    --token-file "${SIMNODE_DIR}/api/token" --ca-file "${SIMNODE_DIR}/api/ca.crt"
    --log-level info
  )
  if [[ -n "${SIMNODE_LEASE_S:-}" ]]; then
    args+=(--lease-seconds "${SIMNODE_LEASE_S}")
  fi
  # Proxy variables are dropped so that the agent's HTTP client cannot be sent off loopback.
  env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    "${SIMNODE_AGENT_BIN}" "${args[@]}" >>"${SIMNODE_DIR}/agent.log" 2>&1 3>&- </dev/null &
  pid=$!
  simnode__record pids "${pid} agent"
  SIMNODE_AGENT_PID="${pid}"
  echo "${pid}" >"${SIMNODE_DIR}/agent.pid"
  if ! simnode__wait_for "the agent's socket ${SIMNODE_SOCKET}" 20 \
    simnode__agent_ready "${pid}"; then
    simnode_log "agent log:"
    sed 's/^/  | /' "${SIMNODE_DIR}/agent.log" >&2
    return 1
  fi
}

simnode__agent_ready() {
  if ! simnode__alive "$1"; then
    simnode_log "agent (pid $1) exited"
    return 2
  fi
  [[ -S "${SIMNODE_SOCKET}" ]]
}

# simnode_agent_stop: SIGTERM, as at a rollout; waits up to 10 s for the exit.
simnode_agent_stop() {
  simnode__agent_signal TERM
}

# simnode_agent_kill: SIGKILL, as at an OOM kill; the socket file stays behind.
simnode_agent_kill() {
  simnode__agent_signal KILL
}

simnode__agent_signal() {
  local sig="$1" pid="${SIMNODE_AGENT_PID:-}"
  if [[ -z "${pid}" ]] || ! simnode__alive "${pid}"; then
    return 0
  fi
  kill "-${sig}" "${pid}" 2>/dev/null || true
  if ! simnode__wait_for "the agent (pid ${pid}) to exit on SIG${sig}" 10 \
    simnode__dead "${pid}"; then
    kill -KILL "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
    return 1
  fi
  # Reap it (it is our child unless another shell started it), and keep its exit status for
  # whoever wants to check that SIGTERM gave a clean exit.
  local rc=0
  wait "${pid}" 2>/dev/null || rc=$?
  echo "${rc}" >"${SIMNODE_DIR}/agent.exit"
  return 0
}

simnode__dead() {
  ! simnode__alive "$1"
}

# --- bring-up and teardown --------------------------------------------------------------------

# simnode_up [--limit N] [--max-wait S] [--lease S]: brings up a node; sets SIMNODE_* variables.
simnode_up() {
  local limit=2 max_wait=120 lease=""
  while (($#)); do
    case "$1" in
      --limit) limit="$2"; shift 2 ;;
      --max-wait) max_wait="$2"; shift 2 ;;
      --lease) lease="$2"; shift 2 ;;
      *) simnode_log "simnode_up: unknown argument $1"; return 2 ;;
    esac
  done
  if [[ "$(id -u)" -ne 0 ]]; then
    simnode_log "must run as root (ip netns)"
    return 1
  fi
  local need
  for need in "${SIMNODE_PLUGIN_BIN}" "${SIMNODE_AGENT_BIN}" \
    "${SIMNODE_TOOLS_DIR}/fake-apiserver" "${SIMNODE_TOOLS_DIR}/cnidriver" \
    "${SIMNODE_CNI_PLUGINS_DIR}/bridge" "${SIMNODE_CNI_PLUGINS_DIR}/host-local" \
    "${SIMNODE_CNI_PLUGINS_DIR}/loopback"; do
    if [[ ! -x "${need}" ]]; then
      simnode_log "missing executable ${need} (run scripts/install-deps.sh and scripts/build.sh)"
      return 1
    fi
  done

  if [[ -n "${SIMNODE_DIR:-}" ]]; then
    mkdir -p "${SIMNODE_DIR}" || return 1
  else
    SIMNODE_DIR="$(mktemp -d /tmp/ppm-sim.XXXXXX)" || return 1
  fi
  SIMNODE_DIR="$(cd "${SIMNODE_DIR}" && pwd)"
  # The marker says "simnode_down may delete this directory"; it is never written anywhere else.
  : >"${SIMNODE_DIR}/.simnode-state"
  : >"${SIMNODE_DIR}/pids"
  : >"${SIMNODE_DIR}/pgids"
  : >"${SIMNODE_DIR}/netns"
  mkdir -p "${SIMNODE_DIR}/pods" "${SIMNODE_DIR}/cni/bin" "${SIMNODE_DIR}/cni/cache" \
    "${SIMNODE_DIR}/cni/ipam"

  SIMNODE_ID="$(simnode__hex 3)"
  SIMNODE_NODE_NS="ppm-${SIMNODE_ID}-node"
  SIMNODE_NODE_NAME="simnode-${SIMNODE_ID}"
  SIMNODE_SOCKET="${SIMNODE_DIR}/agent.sock"
  SIMNODE_CONFLIST="${SIMNODE_DIR}/cni/pacemaker.conflist"
  SIMNODE_LIMIT="${limit}"
  SIMNODE_MAX_WAIT_S="${max_wait}"
  SIMNODE_LEASE_S="${lease}"
  SIMNODE_AGENT_PID=""
  # shellcheck disable=SC2034 # kept for callers that want to signal the API server themselves
  SIMNODE_API_PID=""

  # The node's network namespace. Recorded before creation so a half-made one is still deleted.
  simnode__record netns "${SIMNODE_NODE_NS}"
  ip netns add "${SIMNODE_NODE_NS}" || return 1
  ip -n "${SIMNODE_NODE_NS}" link set lo up || return 1

  # CNI bin dir: Debian's reference plugins by symlink; our plugin by copy, so that a rebuild
  # during a run cannot swap the binary under a running ADD.
  local plugin
  for plugin in bridge host-local loopback; do
    ln -s "${SIMNODE_CNI_PLUGINS_DIR}/${plugin}" "${SIMNODE_DIR}/cni/bin/${plugin}" || return 1
  done
  cp "${SIMNODE_PLUGIN_BIN}" "${SIMNODE_DIR}/cni/bin/pod-pacemaker" || return 1

  # The conflist: unique network and bridge names (a bridge name is at most 15 bytes), host-local
  # state kept under the state dir instead of /var/lib/cni/networks.
  jq --arg name "ppm-${SIMNODE_ID}" --arg bridge "ppm${SIMNODE_ID}" \
    --arg ipam "${SIMNODE_DIR}/cni/ipam" --arg sock "${SIMNODE_SOCKET}" \
    --argjson maxwait "${max_wait}" '
      .name = $name
      | .plugins[0].bridge = $bridge
      | .plugins[0].ipam.dataDir = $ipam
      | .plugins[1].daemonSocketPath = $sock
      | .plugins[1].maxWaitTimeInSeconds = $maxwait
    ' "${SIMNODE_REPO_ROOT}/tests/sim/conflist.json.tmpl" >"${SIMNODE_CONFLIST}" || return 1

  simnode__api_start || return 1
  simnode_agent_start || return 1

  # For a human poking at a run: `source $SIMNODE_DIR/simnode.env` restores the variables.
  declare -p SIMNODE_DIR SIMNODE_ID SIMNODE_NODE_NS SIMNODE_NODE_NAME SIMNODE_SOCKET \
    SIMNODE_CONFLIST SIMNODE_LIMIT SIMNODE_MAX_WAIT_S SIMNODE_API_ADDR >"${SIMNODE_DIR}/simnode.env"
  simnode_log "node ${SIMNODE_NODE_NAME} up: netns ${SIMNODE_NODE_NS}, API ${SIMNODE_API_ADDR}," \
    "limit ${SIMNODE_LIMIT}, state ${SIMNODE_DIR}"
}

# simnode_down: idempotent teardown of everything simnode_up and the pod functions started.
simnode_down() {
  if [[ -z "${SIMNODE_DIR:-}" || ! -f "${SIMNODE_DIR}/.simnode-state" ]]; then
    return 0
  fi
  local pid pgid ns rest deadline

  # The agent first, gently: waiting plugins see it go and fail open instead of hanging on.
  simnode_agent_stop 2>/dev/null || true

  # Process groups (each CNI driver with its plugins), then plain pids (pod jobs, servers).
  # Every kill may find its target gone already, hence the '|| true' (this also runs under
  # set -e, in scripts and in bats).
  while read -r pgid; do
    if [[ -n "${pgid}" ]]; then kill -TERM -- "-${pgid}" 2>/dev/null || true; fi
  done <"${SIMNODE_DIR}/pgids"
  while read -r pid rest; do
    if [[ -n "${pid}" ]]; then kill -TERM "${pid}" 2>/dev/null || true; fi
  done <"${SIMNODE_DIR}/pids"
  deadline=$((SECONDS + 3))
  while ((SECONDS < deadline)); do
    if ! simnode__any_alive; then
      break
    fi
    sleep 0.1
  done
  while read -r pgid; do
    if [[ -n "${pgid}" ]]; then kill -KILL -- "-${pgid}" 2>/dev/null || true; fi
  done <"${SIMNODE_DIR}/pgids"
  while read -r pid rest; do
    if [[ -n "${pid}" ]]; then
      kill -KILL "${pid}" 2>/dev/null || true
      wait "${pid}" 2>/dev/null || true
    fi
  done <"${SIMNODE_DIR}/pids"

  # Stragglers: a CNI driver whose job was killed before it recorded the driver's process group
  # finishes its ADD later and writes its result cache into a state dir that is gone. Every such
  # process names this node's random state dir on its command line; kill those by their pids.
  local stray _
  for _ in 1 2 3 4 5; do
    stray="$(pgrep -f -- "${SIMNODE_DIR}/" | grep -vx -e "$$" -e "${BASHPID}" || true)"
    [[ -z "${stray}" ]] && break
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL ${stray} 2>/dev/null || true
    sleep 0.1
  done

  # Network namespaces, pods first and the node last, each by the name it was recorded under.
  # Deleting a pod netns removes its eth0 and the veth peer; deleting the node netns removes
  # the bridge.
  tac "${SIMNODE_DIR}/netns" | while read -r ns; do
    if [[ -n "${ns}" && -e "/var/run/netns/${ns}" ]]; then
      ip netns delete "${ns}" || simnode_log "could not delete netns ${ns}"
    fi
  done

  if [[ "${SIMNODE_KEEP:-0}" == 1 ]]; then
    simnode_log "kept state dir ${SIMNODE_DIR}"
    rm -f "${SIMNODE_DIR}/.simnode-state"
  else
    rm -rf "${SIMNODE_DIR}"
  fi
  unset SIMNODE_DIR SIMNODE_ID SIMNODE_NODE_NS SIMNODE_NODE_NAME SIMNODE_SOCKET \
    SIMNODE_CONFLIST SIMNODE_API_ADDR SIMNODE_AGENT_PID SIMNODE_API_PID
  return 0
}

# simnode__any_alive: succeeds while any recorded pid or process group still exists.
simnode__any_alive() {
  local pid pgid rest
  while read -r pid rest; do
    if [[ -n "${pid}" ]] && simnode__alive "${pid}"; then return 0; fi
  done <"${SIMNODE_DIR}/pids"
  while read -r pgid; do
    if [[ -n "${pgid}" ]] && kill -0 -- "-${pgid}" 2>/dev/null; then return 0; fi
  done <"${SIMNODE_DIR}/pgids"
  return 1
}

# simnode_install_trap: tear down on exit and on INT/TERM. Not for bats, which owns its traps
# (use teardown() there).
simnode_install_trap() {
  trap 'simnode_down' EXIT
  trap 'simnode_down; trap - EXIT; exit 130' INT
  trap 'simnode_down; trap - EXIT; exit 143' TERM
}

# --- pods ------------------------------------------------------------------------------------

# simnode_pod_create NAME: creates the pod in the API (bound to this node, as the scheduler
# would) and its network namespace; remembers its UID and a sandbox id.
simnode_pod_create() {
  simnode__require_up || return 1
  local name="$1" dir body reply uid
  dir="$(simnode__pod_dir "${name}")"
  mkdir -p "${dir}" || return 1
  body="$(jq -cn --arg name "${name}" --arg ns "${SIMNODE_NAMESPACE}" \
    --arg node "${SIMNODE_NODE_NAME}" '{
      apiVersion: "v1", kind: "Pod",
      metadata: {name: $name, namespace: $ns, labels: {app: "simnode"}},
      spec: {nodeName: $node, containers: [{name: "app", image: "registry.invalid/simnode/app:1"}]},
      status: {phase: "Pending"}
    }')"
  if ! reply="$(simnode_api POST "/api/v1/namespaces/${SIMNODE_NAMESPACE}/pods" "${body}")"; then
    simnode_log "creating pod ${name} failed: ${reply}"
    return 1
  fi
  uid="$(jq -r '.metadata.uid // empty' <<<"${reply}")"
  if [[ -z "${uid}" ]]; then
    simnode_log "the API returned no uid for pod ${name}: ${reply}"
    return 1
  fi
  echo "${uid}" >"${dir}/uid"
  # A containerd sandbox id is 64 hex digits.
  simnode__hex 32 >"${dir}/sandbox"
  echo "ppm-${SIMNODE_ID}-${name}" >"${dir}/netns"
  simnode__record netns "ppm-${SIMNODE_ID}-${name}"
  ip netns add "ppm-${SIMNODE_ID}-${name}" || return 1
}

# simnode__cni VERB NAME: runs cnidriver VERB for the pod inside the node netns, with CNI_ARGS as
# containerd builds them; stdout/stderr/exit code/timestamps go to the pod's dir as VERB.*.
# setsid puts the driver and the plugins it execs in a process group of their own, which
# simnode_down can kill as a whole.
simnode__cni() {
  local verb="$1" name="$2" dir sandbox uid netns pid rc
  dir="$(simnode__pod_dir "${name}")"
  sandbox="$(cat "${dir}/sandbox")" || return 1
  uid="$(cat "${dir}/uid")" || return 1
  netns="$(cat "${dir}/netns")" || return 1
  simnode_now >"${dir}/${verb}_start"
  setsid -w ip netns exec "${SIMNODE_NODE_NS}" "${SIMNODE_TOOLS_DIR}/cnidriver" "${verb}" \
    --conflist "${SIMNODE_CONFLIST}" --bin-dir "${SIMNODE_DIR}/cni/bin" \
    --netns "/var/run/netns/${netns}" --container-id "${sandbox}" --ifname eth0 \
    --args "IgnoreUnknown=1;K8S_POD_NAMESPACE=${SIMNODE_NAMESPACE};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${sandbox};K8S_POD_UID=${uid}" \
    --capability-args '{"io.kubernetes.cri.pod-annotations":{}}' \
    --cache-dir "${SIMNODE_DIR}/cni/cache" \
    >"${dir}/${verb}.out" 2>"${dir}/${verb}.err" 3>&- </dev/null &
  pid=$!
  simnode__record pgids "${pid}"
  rc=0
  wait "${pid}" || rc=$?
  simnode_now >"${dir}/${verb}_done"
  echo "${rc}" >"${dir}/${verb}.rc"
  return "${rc}"
}

# simnode_pod_add NAME: CNI ADD; on success also stores the pod's IPv4 from the result.
simnode_pod_add() {
  local name="$1" dir rc=0
  dir="$(simnode__pod_dir "${name}")"
  simnode__cni add "${name}" || rc=$?
  if ((rc == 0)); then
    jq -r '[.ips[]?.address | select(test("^[0-9.]+/"))][0] // empty | sub("/.*"; "")' \
      "${dir}/add.out" >"${dir}/ip" 2>/dev/null || true
  fi
  return "${rc}"
}

# simnode_pod_del NAME: CNI DEL.
simnode_pod_del() {
  simnode__cni del "$1"
}

# simnode_kubelet_ready NAME: what the kubelet and the containers do after the sandbox has its
# network: a CPU-heavy warm-up (SIMNODE_WARMUP_MB of sha256), then the status update that makes
# the pod Ready. Timestamps: warm_done = the moment the Ready PATCH is sent (the API cannot show
# the pod Ready before it), ready = the moment the API acknowledged it.
simnode_kubelet_ready() {
  local name="$1" dir ip now body
  dir="$(simnode__pod_dir "${name}")"
  head -c "${SIMNODE_WARMUP_MB}M" /dev/zero | sha256sum >/dev/null
  ip="$(cat "${dir}/ip" 2>/dev/null)"
  now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  body="$(jq -cn --arg ip "${ip}" --arg now "${now}" '{
    status: ({
      phase: "Running",
      conditions: [
        {type: "Initialized", status: "True", lastTransitionTime: $now},
        {type: "ContainersReady", status: "True", lastTransitionTime: $now},
        {type: "Ready", status: "True", lastTransitionTime: $now},
        {type: "PodScheduled", status: "True", lastTransitionTime: $now}
      ],
      containerStatuses: [{name: "app", ready: true, started: true, restartCount: 0,
        image: "registry.invalid/simnode/app:1", imageID: "", state: {running: {startedAt: $now}}}],
      startTime: $now
    } + (if $ip == "" then {} else {podIP: $ip, podIPs: [{ip: $ip}]} end))
  }')"
  simnode_now >"${dir}/warm_done"
  if ! simnode_api PATCH "/api/v1/namespaces/${SIMNODE_NAMESPACE}/pods/${name}/status" \
    "${body}" application/merge-patch+json >"${dir}/ready.reply" 2>&1; then
    simnode_log "Ready PATCH for ${name} failed: $(cat "${dir}/ready.reply")"
    return 1
  fi
  simnode_now >"${dir}/ready"
}

# simnode_pod_lifecycle NAME [--no-ready]: ADD, then (unless --no-ready) play kubelet.
simnode_pod_lifecycle() {
  local name="$1" mode="${2:-}"
  simnode_pod_add "${name}" || return $?
  if [[ "${mode}" != "--no-ready" ]]; then
    simnode_kubelet_ready "${name}"
  fi
}

# simnode_pod_start NAME [--no-ready]: simnode_pod_lifecycle as a background job; its pid is
# recorded so simnode_down can kill it and simnode_wait_pods can wait for it.
simnode_pod_start() {
  simnode__require_up || return 1
  local name="$1" dir pid
  dir="$(simnode__pod_dir "${name}")"
  rm -f "${dir}/job.rc"
  (
    rc=0
    simnode_pod_lifecycle "$@" || rc=$?
    echo "${rc}" >"${dir}/job.rc"
    exit "${rc}"
  ) >>"${dir}/job.log" 2>&1 3>&- </dev/null &
  pid=$!
  echo "${pid}" >"${dir}/job.pid"
  simnode__record pids "${pid} pod-job ${name}"
}

# simnode_wait_pods TIMEOUT_S NAME...: waits until every named pod's job has finished; fails
# (and names the stragglers) after TIMEOUT_S.
simnode_wait_pods() {
  local timeout="$1" deadline name pending
  shift
  deadline=$((SECONDS + timeout))
  while :; do
    pending=()
    for name in "$@"; do
      [[ -f "$(simnode__pod_dir "${name}")/job.rc" ]] || pending+=("${name}")
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      simnode_log "after ${timeout}s still running: ${pending[*]}"
      return 1
    fi
    sleep 0.1
  done
}

# simnode_pod_file NAME FILE: prints a per-pod state file (add_start, add_done, add.rc, ip, ...).
simnode_pod_file() {
  cat "$(simnode__pod_dir "$1")/$2" 2>/dev/null
}

# simnode_pod_ip NAME: prints the IPv4 address on eth0 inside the pod's netns; fails if none.
simnode_pod_ip() {
  local ns addr
  ns="$(simnode_pod_file "$1" netns)" || return 1
  addr="$(ip -n "${ns}" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | head -n1)"
  [[ -n "${addr}" ]] || return 1
  echo "${addr%%/*}"
}

# simnode_pod_api_ready NAME: succeeds when the API has the pod with condition Ready=True.
simnode_pod_api_ready() {
  local pod
  pod="$(simnode_api GET "/api/v1/namespaces/${SIMNODE_NAMESPACE}/pods/$1")" || return 1
  jq -e 'any(.status.conditions[]?; .type == "Ready" and .status == "True")' \
    <<<"${pod}" >/dev/null
}

# simnode_node_pods_ready: prints "name ready" for every pod on this node, listed the way the
# agent lists them (fieldSelector spec.nodeName).
simnode_node_pods_ready() {
  simnode_api GET "/api/v1/pods?fieldSelector=spec.nodeName%3D${SIMNODE_NODE_NAME}" |
    jq -r '.items[] | "\(.metadata.name) \(any(.status.conditions[]?;
      .type == "Ready" and .status == "True"))"'
}

# --- analysis --------------------------------------------------------------------------------

# simnode_max_concurrent NAME...: the largest number of pods that were at once between their
# ADD returning (add_done) and becoming Ready (warm_done: the Ready PATCH leaves; the agent
# cannot release before it). A pod whose ADD succeeded but that never became Ready stays counted
# to the end. At equal times a release is counted before a grant.
simnode_max_concurrent() {
  local name dir
  for name in "$@"; do
    dir="$(simnode__pod_dir "${name}")"
    [[ "$(cat "${dir}/add.rc" 2>/dev/null)" == 0 ]] || continue
    printf '%s 1\n' "$(cat "${dir}/add_done")"
    if [[ -s "${dir}/warm_done" ]]; then
      printf '%s -1\n' "$(cat "${dir}/warm_done")"
    fi
  done | sort -k1,1g -k2,2n |
    awk 'BEGIN { n = 0; max = 0 } { n += $2; if (n > max) max = n } END { print max }'
}

# simnode_fail_open_count NAME...: pods whose plugin stderr (from ADD) mentions fail-open.
simnode_fail_open_count() {
  local name count=0
  for name in "$@"; do
    if grep -q 'fail-open' "$(simnode__pod_dir "${name}")/add.err" 2>/dev/null; then
      count=$((count + 1))
    fi
  done
  echo "${count}"
}

# simnode_timeline T0 NAME...: one line per pod with times in seconds relative to T0
# ("-" for what did not happen).
simnode_timeline() {
  local t0="$1" name dir
  shift
  printf '%-10s %9s %9s %9s %9s  %s\n' pod add_start add_done warm_done ready ip
  for name in "$@"; do
    dir="$(simnode__pod_dir "${name}")"
    awk -v t0="${t0}" -v pod="${name}" -v ip="$(cat "${dir}/ip" 2>/dev/null)" \
      -v a="$(cat "${dir}/add_start" 2>/dev/null)" -v b="$(cat "${dir}/add_done" 2>/dev/null)" \
      -v c="$(cat "${dir}/warm_done" 2>/dev/null)" -v d="$(cat "${dir}/ready" 2>/dev/null)" '
      function rel(t) { return t == "" ? "-" : sprintf("%.3f", t - t0) }
      BEGIN { printf "%-10s %9s %9s %9s %9s  %s\n", pod, rel(a), rel(b), rel(c), rel(d),
              ip == "" ? "-" : ip }'
  done
}
