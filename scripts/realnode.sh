#!/usr/bin/env bash
# A real single-node Kubernetes on this machine: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd + runc and the kubelet, all inside a network namespace of their own.
#
# Usage:
#   scripts/realnode.sh up [--with-pacemaker --limit N]   build or reuse binaries, start, wait for Ready
#   scripts/realnode.sh down                              stop everything by pid, leave the host as it was
#   scripts/realnode.sh status                            what runs, node and pods (exit 0 = up)
#   scripts/realnode.sh pacemaker on [--limit N] [--host-process]
#                                                         the product on a running node: by default
#                                                         deploy/pod-pacemaker.yaml (the DaemonSet, with
#                                                         --max-concurrent=N) and our plugin chained in
#                                                         the primary conflist; --host-process runs the
#                                                         agent as a host process instead
#   scripts/realnode.sh pacemaker off                     plugin out of the chain, DaemonSet (or agent) gone
#   scripts/realnode.sh pacemaker status                  the agent's holders and queue (agent --status)
#   scripts/realnode.sh kubectl ARGS...                   kubectl against the node (runs in its netns)
#   scripts/realnode.sh exec CMD ARGS...                  any command inside the node's netns
#   scripts/realnode.sh node-exec CMD ARGS...             ... and in the mount namespace of containerd
#                                                         and the kubelet (sees the node's /run)
#   scripts/realnode.sh env                               print shell variables describing the node
#   scripts/realnode.sh session-lock OWNER_PID [SECONDS]  hold the test-session lock while OWNER_PID
#                                                         lives; prints the holder's pid (see Locks)
#   scripts/realnode.sh session-unlock HOLDER_PID         release it early
#
# Environment (defaults in brackets):
#   REALNODE_DIR      state directory: pki, configs, data, logs, pids [/var/lib/pod-pacemaker-realnode]
#   REALNODE_CACHE    binary and image cache [/var/cache/pod-pacemaker/realnode]
#   REALNODE_NETNS    name of the node's network namespace [ppmr-node]
#   REALNODE_NODE     node name [ppm-realnode]
#   REALNODE_UP_TIMEOUT  seconds to wait for the node to be Ready [180]
#   REALNODE_LOCK     the machine's real-node lock [/run/lock/pod-pacemaker-realnode.lock]
#   REALNODE_LOCK_WAIT   seconds up/down/pacemaker/session-lock wait for a lock [600]
#
# Locks: one real node per machine (fixed netns, cgroup root, addresses). up, down and pacemaker
# hold REALNODE_LOCK (flock) while they run, so two of them never interleave; a second one waits
# up to REALNODE_LOCK_WAIT seconds. A test run also holds the session lock (REALNODE_LOCK with
# .session.lock) from its setup to its teardown, so that a second run waits for the first
# instead of finding the node half torn down; while a run holds it, up, down and pacemaker from
# anyone else refuse to run.
#
# Isolation (see docs/testing.md, "The real node"):
#   * network: every component runs in netns REALNODE_NETNS. The API server listens on every
#     address of that netns (port 6443) and on no host address; the node address 10.244.76.1/32
#     and the kubernetes Service's ClusterIP 10.96.0.1/32 sit on that netns' lo, and one DNAT rule
#     in the netns' own nat table (what kube-proxy would write for that Service) sends
#     10.96.0.1:443 to the endpoint 10.244.76.1:6443, so in-cluster clients (the agent's
#     DaemonSet pod) work unchanged. Pods hang off bridge ppmr0 (10.244.77.0/24, ipMasq false)
#     inside it. The host's interfaces, routes and iptables are never touched; no route leads out
#     of the netns, so image pulls fail at once.
#   * mounts: containerd, its shims and the kubelet share one private mount namespace (slave of
#     the host's) with a tmpfs on /run and bind mounts of state-dir folders on /var/log,
#     /var/lib/cni and /etc/resolv.conf. Their mounts never show on the host and vanish with the
#     processes.
#   * cgroups: the kubelet's cgroupRoot is /ppm-realnode (kubepods below it) in each v1 hierarchy;
#     down kills what is left in it and removes it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/.." && pwd)"
# shellcheck source=scripts/realnode/versions.sh
source "${here}/realnode/versions.sh"

STATE="${REALNODE_DIR:-/var/lib/pod-pacemaker-realnode}"
CACHE="${REALNODE_CACHE:-/var/cache/pod-pacemaker/realnode}"
NETNS="${REALNODE_NETNS:-ppmr-node}"
NODE="${REALNODE_NODE:-ppm-realnode}"
UP_TIMEOUT="${REALNODE_UP_TIMEOUT:-180}"
LOCK="${REALNODE_LOCK:-/run/lock/pod-pacemaker-realnode.lock}"
SESSION_LOCK="${LOCK%.lock}.session.lock"
LOCK_WAIT="${REALNODE_LOCK_WAIT:-600}"
DEPLOY_MANIFEST="${REALNODE_DEPLOY_MANIFEST:-${repo_root}/deploy/pod-pacemaker.yaml}"
export REALNODE_CACHE="${CACHE}"

NODE_IP="10.244.76.1"
POD_CIDR="10.244.77.0/24"
POD_GW="10.244.77.1"
BRIDGE="ppmr0"
SERVICE_CIDR="10.96.0.0/24"
SERVICE_IP="10.96.0.1"
SERVICE_PORT=443
API_PORT=6443
CGROUP_ROOT="ppm-realnode"
CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory devices freezer blkio pids systemd hugetlb net_cls net_prio perf_event rdma misc)
# On a hybrid host runc and the kubelet also create the same paths in the cgroup2 hierarchy mounted
# at /sys/fs/cgroup/unified: not made by us, but removed by down like the rest.
CGROUP_EXTRA=(unified)
MARKER=".pod-pacemaker-realnode"

T_START="$(date +%s.%N)"
log() { echo "realnode: [$(awk -v a="${T_START}" -v b="$(date +%s.%N)" 'BEGIN{printf "%5.1f", b-a}')s] $*" >&2; }
die() { log "$*"; exit 1; }

for dir in /usr/local/go/bin "${HOME:-/root}/go/bin"; do
  [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]] && PATH="${dir}:${PATH}"
done
export PATH

bin() { "${here}/realnode/build.sh" --print-path "$1"; }

# --- state-dir safety --------------------------------------------------------------------------
check_state_path() {
  case "${STATE}" in
    /|/var|/var/lib|/run|/run/*|/var/run|/var/run/*|/var/log|/var/log/*|/tmp|/etc|/etc/*|/usr|/usr/*|"")
      die "REALNODE_DIR=${STATE} is not allowed (must be a dedicated folder outside /run, /var/log, /etc)" ;;
  esac
  [[ "${STATE}" == /* ]] || die "REALNODE_DIR must be absolute: ${STATE}"
}

# A pid file holds "PID STARTTIME" (field 22 of /proc/PID/stat), so that a pid reused after a
# reboot or a crash is never mistaken for ours.
pidfile() { echo "${STATE}/pids/$1"; }
starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
record_pid() { echo "$2 $(starttime "$2")" >"$(pidfile "$1")"; }
pid_of() { awk '{print $1}' "$(pidfile "$1")" 2>/dev/null; }
# running PID [STARTTIME]: the process exists, is not a zombie (our daemons are reparented to PID 1,
# which may reap them a while after they exit) and, when given, started when we recorded.
running() {
  local st
  st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}')" || return 1
  [[ -n "${st}" && "${st}" != Z && "${st}" != X ]] || return 1
  [[ -z "${2:-}" || "$(starttime "$1")" == "$2" ]]
}
# alive NAME: the process recorded under NAME is still the one we started, and runs.
alive() {
  local p t
  read -r p t 2>/dev/null <"$(pidfile "$1")" || return 1
  [[ -n "${p}" ]] && running "${p}" "${t:-}"
}
holder_pid() { pid_of holder; }

# in_node CMD...: run a command in the node's netns (host mount namespace, so host paths work).
in_node() { nsenter --net="/run/netns/${NETNS}" -- "$@"; }

# in_node_mnt CMD...: ... and in the private mount namespace of containerd and the kubelet, where
# /run (the agent's hostPath socket directory among it) is the node's own tmpfs.
in_node_mnt() { nsenter -t "$(holder_pid)" --net --mount -- "$@"; }

kc() { in_node "$(bin kubectl)" --kubeconfig "${STATE}/admin.kubeconfig" "$@"; }

# --- locks -------------------------------------------------------------------------------------
# take_lock WHAT: hold LOCK on fd 9 until this script exits (the kernel drops it with the fd), so
# that two up/down/pacemaker commands never interleave. Waits up to LOCK_WAIT seconds.
take_lock() {
  mkdir -p "$(dirname "${LOCK}")"
  exec 9>>"${LOCK}"
  if ! flock -n 9; then
    log "waiting up to ${LOCK_WAIT}s for ${LOCK} (held by $(cat "${LOCK}.owner" 2>/dev/null || echo '?'))"
    flock -w "${LOCK_WAIT}" 9 || die "timed out after ${LOCK_WAIT}s waiting for ${LOCK}"
  fi
  echo "pid $$ (${1}) since $(date -u +%FT%TZ)" >"${LOCK}.owner"
}

# check_session: a test run that holds the session lock owns the node for its duration. up, down
# and pacemaker refuse to run beside it, unless they are that run's own (the bats library exports
# REALNODE_SESSION_HOLDER, the holder's pid, which the lock's owner file names).
check_session() {
  [[ -e "${SESSION_LOCK}" ]] || return 0
  if flock -n "${SESSION_LOCK}" true 2>/dev/null; then return 0; fi
  if [[ -n "${REALNODE_SESSION_HOLDER:-}" ]] &&
    grep -qF "(holder ${REALNODE_SESSION_HOLDER})" "${SESSION_LOCK}.owner" 2>/dev/null; then
    return 0
  fi
  die "a test run owns the real node now (${SESSION_LOCK}: $(cat "${SESSION_LOCK}.owner" 2>/dev/null || echo '?')); wait for it, or take 'session-lock' yourself"
}

# session-lock OWNER_PID [SECONDS]: a background holder takes SESSION_LOCK (waiting up to SECONDS)
# and keeps it while OWNER_PID lives; prints the holder's pid once the lock is held, exit 1 when
# it could not be had in time. `flock -o`: only the flock process holds the lock, so killing it
# (session-unlock) releases it; its child exits within a second once either is gone.
cmd_session_lock() {
  local owner="${1:-}" wait="${2:-${LOCK_WAIT}}" ready holder said=0 t0="${SECONDS}"
  if [[ ! "${owner}" =~ ^[0-9]+$ ]] || ! running "${owner}"; then
    die "session-lock: owner pid '${owner}' does not run"
  fi
  mkdir -p "$(dirname "${SESSION_LOCK}")"
  ready="$(mktemp -u "$(dirname "${SESSION_LOCK}")/.ppm-realnode-session.XXXXXX")"
  # shellcheck disable=SC2016 # expanded by that sh
  nohup flock -o -w "${wait}" "${SESSION_LOCK}" sh -c '
    echo "owner pid $2 (holder $PPID) since $(date -u +%FT%TZ)" >"$3.owner"
    : >"$1"
    while kill -0 "$2" 2>/dev/null && kill -0 "$PPID" 2>/dev/null; do sleep 1; done' \
    sh "${ready}" "${owner}" "${SESSION_LOCK}" >/dev/null 2>&1 </dev/null 3>&- 9>&- &
  holder=$!
  while running "${holder}"; do
    if [[ -e "${ready}" ]]; then
      rm -f "${ready}"
      echo "${holder}"
      return 0
    fi
    if [[ "${said}" -eq 0 && $((SECONDS - t0)) -ge 1 ]]; then
      log "waiting up to ${wait}s for ${SESSION_LOCK} (held by $(cat "${SESSION_LOCK}.owner" 2>/dev/null || echo '?'))"
      said=1
    fi
    sleep 0.2
  done
  rm -f "${ready}"
  die "could not take ${SESSION_LOCK} within ${wait}s (held by $(cat "${SESSION_LOCK}.owner" 2>/dev/null || echo '?'))"
}

cmd_session_unlock() {
  local holder="${1:-}"
  [[ "${holder}" =~ ^[0-9]+$ ]] || die "session-unlock: holder pid required"
  # Only a flock process on our lock file: never kill a pid that was reused meanwhile.
  if tr '\0' ' ' 2>/dev/null <"/proc/${holder}/cmdline" | grep -qF " ${SESSION_LOCK} "; then
    kill -TERM "${holder}" 2>/dev/null || true
  fi
}

# start NAME CMD...: start a component in the node's namespaces, log to logs/NAME.log, record its pid.
start() {
  local name="$1"
  shift
  # 3>&- 9>&-: a daemon must hold neither the lock (fd 9) nor a caller's fd 3 (bats waits for it).
  nohup nsenter -t "$(holder_pid)" --net --mount -- "$@" >"${STATE}/logs/${name}.log" 2>&1 </dev/null 3>&- 9>&- &
  record_pid "${name}" $!
  log "started ${name} (pid $!)"
}

# wait_for WHAT SECONDS CMD...: poll until CMD succeeds; on failure show the end of the logs.
wait_for() {
  local what="$1" secs="$2" deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [[ $(date +%s) -ge ${deadline} ]]; then
      log "timed out after ${secs}s waiting for ${what}"
      for f in "${STATE}"/logs/*.log; do
        echo "----- ${f} (last 15 lines)" >&2
        tail -n 15 "${f}" >&2 || true
      done
      return 1
    fi
    sleep 0.5
  done
  log "${what}: ok"
}

# --- certificates ------------------------------------------------------------------------------
gen_pki() {
  local pki="${STATE}/pki"
  mkdir -p "${pki}"
  (
    cd "${pki}"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
      -subj "/CN=pod-pacemaker-realnode-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # issue NAME SUBJECT EXTFILE-CONTENT
    issue() {
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -out "$1.crt" -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:${SERVICE_IP},IP:${NODE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=kubernetes-admin" "${client}"
    issue kubelet "/O=system:nodes/CN=system:node:${NODE}" "${client}"
    issue controller-manager "/CN=system:kube-controller-manager" "${client}"
    issue scheduler "/CN=system:kube-scheduler" "${client}"
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "${client}"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 0644 ./*.crt sa.pub
  )
}

# kubeconfig FILE USER: a kubeconfig for 127.0.0.1 with USER's client certificate embedded.
kubeconfig() {
  local pki="${STATE}/pki"
  umask 077
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: realnode
  cluster:
    server: https://127.0.0.1:${API_PORT}
    certificate-authority-data: $(base64 -w0 "${pki}/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "${pki}/$2.crt")
    client-key-data: $(base64 -w0 "${pki}/$2.key")
contexts:
- name: realnode
  context: {cluster: realnode, user: $2}
current-context: realnode
EOF
  umask 022
}

# --- configs -----------------------------------------------------------------------------------
write_configs() {
  local ctd="${STATE}/containerd"
  mkdir -p "${ctd}"/{root,state,runc,opt} "${STATE}"/cni/{bin,net.d} "${STATE}/cni-ipam" \
    "${STATE}/var-log" "${STATE}/var-lib-cni" "${STATE}/kubelet" "${STATE}/pod-logs" "${STATE}/etcd"
  chmod 0700 "${STATE}/etcd"
  printf 'nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n' >"${STATE}/resolv.conf"
  # containerd's bin_dir is a single folder: the Debian reference plugins, and ours when chained.
  local p
  for p in /usr/lib/cni/*; do ln -sfn "${p}" "${STATE}/cni/bin/$(basename "${p}")"; done

  cat >"${ctd}/config.toml" <<EOF
version = 2
root = "${ctd}/root"
state = "${ctd}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${ctd}/containerd.sock"
[ttrpc]
  address = "${ctd}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${ctd}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${REALNODE_PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  # This workplace's root has no CAP_SYS_RESOURCE, so lowering oom_score_adj is EPERM and runc
  # fails every sandbox ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied",
  # seen as "can't get final child's PID from pipe: EOF"): clamp to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${ctd}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${STATE}/cni/bin"
    conf_dir = "${STATE}/cni/net.d"
    max_conf_num = 1
EOF

  write_conflist ""

  kubeconfig "${STATE}/admin.kubeconfig" admin
  kubeconfig "${STATE}/kubelet.kubeconfig" kubelet
  kubeconfig "${STATE}/controller-manager.kubeconfig" controller-manager
  kubeconfig "${STATE}/scheduler.kubeconfig" scheduler

  cat >"${STATE}/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${STATE}/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://${ctd}/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP_ROOT}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
registerNode: true
resolvConf: ${STATE}/resolv.conf
podLogsDir: ${STATE}/pod-logs
clusterDomain: cluster.local
# No DNS server runs here: the address only keeps the kubelet from warning on every pod. Queries to
# it go nowhere (the node's netns has no route out).
clusterDNS: ["10.96.0.10"]
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
protectKernelDefaults: false
EOF
}

# write_conflist PLUGIN_JSON: the primary conflist (bridge + host-local), with PLUGIN_JSON chained
# after the bridge when it is not empty.
write_conflist() {
  local extra=""
  [[ -z "$1" ]] || extra=",
    $1"
  cat >"${STATE}/cni/net.d/10-ppm-realnode.conflist.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ppm-realnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE}/cni-ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GW}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }${extra}
  ]
}
EOF
  mv "${STATE}/cni/net.d/10-ppm-realnode.conflist.tmp" "${STATE}/cni/net.d/10-ppm-realnode.conflist"
}

# --- cgroups -----------------------------------------------------------------------------------
cgroup_dirs() { # the hierarchies that exist here, each with our root under it
  local c
  for c in "${CGROUP_CONTROLLERS[@]}" "${CGROUP_EXTRA[@]}"; do
    [[ -d "/sys/fs/cgroup/${c}" ]] && echo "/sys/fs/cgroup/${c}/${CGROUP_ROOT}"
  done
  return 0
}

make_cgroups() {
  local d
  [[ "$(stat -fc %T /sys/fs/cgroup)" != "cgroup2fs" ]] || die "this script is written for a cgroup v1 host"
  for d in $(cgroup_dirs); do
    [[ "${d}" != /sys/fs/cgroup/unified/* ]] || continue
    mkdir -p "${d}"
    if [[ "${d}" == /sys/fs/cgroup/cpuset/* ]]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"${d}/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"${d}/cpuset.mems"
    fi
  done
}

# kill_cgroup_procs: SIGKILL every process left in our cgroup subtree (containers of our pods).
kill_cgroup_procs() {
  local d
  local -a pids
  for d in $(cgroup_dirs); do
    [[ -d "${d}" ]] || continue
    mapfile -t pids < <(find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [[ ${#pids[@]} -eq 0 ]] || { log "killing leftover processes in ${d}: ${pids[*]}"; kill -9 "${pids[@]}" 2>/dev/null || true; }
  done
}

remove_cgroups() {
  local d sub
  for d in $(cgroup_dirs); do
    [[ -d "${d}" ]] || continue
    # deepest first
    while IFS= read -r sub; do rmdir "${sub}" 2>/dev/null || true; done < <(find "${d}" -depth -type d)
    [[ ! -d "${d}" ]] || log "could not remove cgroup ${d}"
  done
}

# --- up ----------------------------------------------------------------------------------------
cmd_up() {
  local with_pacemaker=0 limit=2 t0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --with-pacemaker) with_pacemaker=1 ;;
      --limit) limit="$2"; shift ;;
      *) die "up: unknown argument $1" ;;
    esac
    shift
  done
  [[ "$(id -u)" -eq 0 ]] || die "must run as root"
  check_state_path
  t0="$(date +%s.%N)"
  if [[ -e "${STATE}/${MARKER}" ]]; then
    if alive holder && alive kubelet; then
      log "already up (${STATE}); run down first"
      return 0
    fi
    log "stale state in ${STATE}: cleaning it first"
    cmd_down
  fi
  [[ ! -e "${STATE}" ]] || [[ -z "$(ls -A "${STATE}")" ]] || die "${STATE} exists and is not ours"
  ! ip netns list | grep -qw "^${NETNS}" || die "netns ${NETNS} already exists (another real node?)"
  local d
  for d in $(cgroup_dirs); do
    [[ ! -d "${d}" ]] || die "cgroup ${d} already exists (another real node? 'down' cleans a stale one)"
  done

  "${here}/realnode/build.sh" kubectl etcd kube-apiserver kube-controller-manager kube-scheduler kubelet crictl
  local c
  for c in containerd containerd-shim-runc-v2 runc ctr; do command -v "${c}" >/dev/null || die "${c} not found after install"; done
  "${here}/realnode/images.sh" >/dev/null

  mkdir -p "${STATE}"/{pids,logs}
  touch "${STATE}/${MARKER}"
  echo "${NETNS}" >"${STATE}/netns"

  gen_pki
  write_configs

  # The node's network namespace: lo up, the node address on lo, nothing leading out.
  ip netns add "${NETNS}"
  echo created >"${STATE}/netns.created"
  in_node ip link set lo up
  in_node ip addr add "${NODE_IP}/32" dev lo
  # The kubernetes Service without kube-proxy: its ClusterIP is an address of the node's netns
  # (as kube-proxy's IPVS mode binds ClusterIPs to a dummy interface), and the rule kube-proxy's
  # iptables mode would write sends SERVICE_IP:443 to the endpoint the API server publishes
  # (--advertise-address NODE_IP, port API_PORT): OUTPUT for host-network processes such as the
  # agent's DaemonSet pod, PREROUTING for pods on the bridge. The nat table is the netns' own.
  in_node ip addr add "${SERVICE_IP}/32" dev lo
  local chain
  for chain in OUTPUT PREROUTING; do
    in_node iptables -w 5 -t nat -A "${chain}" -d "${SERVICE_IP}/32" -p tcp --dport "${SERVICE_PORT}" \
      -m comment --comment "default/kubernetes:https" -j DNAT --to-destination "${NODE_IP}:${API_PORT}"
  done

  make_cgroups
  # libcni caches results under /var/lib/cni (not configurable in containerd 1.6): the private
  # mount namespace bind-mounts a state folder there, which needs the mount point to exist.
  if [[ ! -d /var/lib/cni ]]; then
    mkdir /var/lib/cni
    echo /var/lib/cni >>"${STATE}/created-paths"
  fi

  # The holder owns the private mount namespace: everything else enters it with nsenter -t.
  rm -f "${STATE}/holder.ready"
  nohup nsenter --net="/run/netns/${NETNS}" -- unshare --mount --propagation slave -- sh -c "
    set -e
    mount -t tmpfs -o mode=0755,size=256m realnode-run /run
    mkdir -p /run/lock /run/netns
    mount --bind '${STATE}/var-log' /var/log
    mount --bind '${STATE}/var-lib-cni' /var/lib/cni
    mount --bind '${STATE}/resolv.conf' /etc/resolv.conf
    touch '${STATE}/holder.ready'
    exec sleep infinity" >"${STATE}/logs/holder.log" 2>&1 </dev/null 3>&- 9>&- &
  record_pid holder $!
  wait_for "mount namespace" 10 test -e "${STATE}/holder.ready"

  local pki="${STATE}/pki"
  start etcd "$(bin etcd)" --name "${NODE}" --data-dir "${STATE}/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "${NODE}=http://127.0.0.1:2380" --unsafe-no-fsync --log-level warn
  start containerd containerd --config "${STATE}/containerd/config.toml"
  wait_for etcd 30 in_node curl -sf http://127.0.0.1:2379/health

  start kube-apiserver "$(bin kube-apiserver)" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port="${API_PORT}" --advertise-address="${NODE_IP}" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --client-ca-file="${pki}/ca.crt" \
    --tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key" \
    --kubelet-client-certificate="${pki}/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${pki}/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${pki}/sa.pub" --service-account-signing-key-file="${pki}/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --profiling=false --v=1
  wait_for "kube-apiserver /readyz" 90 kc get --raw /readyz

  start kube-controller-manager "$(bin kube-controller-manager)" \
    --kubeconfig="${STATE}/controller-manager.kubeconfig" \
    --authentication-kubeconfig="${STATE}/controller-manager.kubeconfig" \
    --authorization-kubeconfig="${STATE}/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --service-account-private-key-file="${pki}/sa.key" --root-ca-file="${pki}/ca.crt" \
    --use-service-account-credentials=true --allocate-node-cidrs=false --v=1
  start kube-scheduler "$(bin kube-scheduler)" \
    --kubeconfig="${STATE}/scheduler.kubeconfig" \
    --authentication-kubeconfig="${STATE}/scheduler.kubeconfig" \
    --authorization-kubeconfig="${STATE}/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --v=1

  wait_for containerd 30 test -S "${STATE}/containerd/containerd.sock"
  "${here}/realnode/images.sh" --no-build --import "${STATE}/containerd/containerd.sock" 2>/dev/null
  log "images imported: $(ctr --address "${STATE}/containerd/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

  start kubelet "$(bin kubelet)" --config="${STATE}/kubelet-config.yaml" \
    --kubeconfig="${STATE}/kubelet.kubeconfig" --root-dir="${STATE}/kubelet" \
    --cert-dir="${STATE}/kubelet/pki" --hostname-override="${NODE}" --node-ip="${NODE_IP}" --v=2

  wait_for "node ${NODE} Ready" "${UP_TIMEOUT}" node_ready
  wait_for "service account default/default" 60 kc -n default get serviceaccount default
  wait_for "kubernetes Service https://${SERVICE_IP}:${SERVICE_PORT} (endpoint ${NODE_IP}:${API_PORT})" 30 \
    in_node curl -sf --noproxy '*' --max-time 2 --cacert "${STATE}/pki/ca.crt" "https://${SERVICE_IP}:${SERVICE_PORT}/readyz"
  # Our plugin joins the chain once the agent serves its socket; containerd re-reads the conf dir.
  if [[ "${with_pacemaker}" -eq 1 ]]; then
    start_pacemaker_daemonset "${limit}"
  fi
  awk -v a="${t0}" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f\n", b-a}' >"${STATE}/up-seconds"
  log "up in $(cat "${STATE}/up-seconds")s: kubectl via '$0 kubectl ...' or 'ip netns exec ${NETNS} kubectl --kubeconfig ${STATE}/admin.kubeconfig ...'"
}

node_ready() {
  [[ "$(kc get node "${NODE}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

# --- our product in the chain ------------------------------------------------------------------
musl_dir() { echo "${REALNODE_MUSL_DIR:-${repo_root}/target/x86_64-unknown-linux-musl/release}"; }

need_release_binaries() {
  local rel
  rel="$(musl_dir)"
  [[ -x "${rel}/pod-pacemaker" && -x "${rel}/pod-pacemaker-agent" ]] ||
    die "pod-pacemaker needs ${rel}/pod-pacemaker and pod-pacemaker-agent (scripts/build.sh)"
}

# install_plugin: copy the plugin into the single CNI bin dir the node's containerd uses, under a
# temporary name first, so that an ADD never executes a half-written file (deploy/README.md).
install_plugin() {
  local dir="${STATE}/cni/bin"
  cp "$(musl_dir)/pod-pacemaker" "${dir}/.pod-pacemaker.tmp"
  chmod 0755 "${dir}/.pod-pacemaker.tmp"
  mv -f "${dir}/.pod-pacemaker.tmp" "${dir}/pod-pacemaker"
}

# plugin_entry SOCKET: our entry of the primary conflist, as deploy/README.md gives it.
plugin_entry() {
  printf '{"type": "pod-pacemaker", "daemonSocketPath": "%s", "maxWaitTimeInSeconds": 120, "namespaceExclusions": ["kube-system"], "successOnConnectionTimeout": true, "capabilities": {"io.kubernetes.cri.pod-annotations": true}}' "$1"
}

# The socket the DaemonSet's agent serves (its --socket argument), inside the node's mount
# namespace: the hostPath lives on the node's own /run tmpfs.
manifest_socket() { sed -n 's/^ *- *--socket=\([^ ]*\) *$/\1/p' "${DEPLOY_MANIFEST}" | head -n1; }

# start_pacemaker_daemonset LIMIT: the product as a cluster operator installs it. The image
# localhost/pod-pacemaker:dev is built from the release binaries and imported into the node's
# containerd; deploy/pod-pacemaker.yaml is applied from a copy with --max-concurrent=LIMIT; once
# the agent serves its socket and beats its heartbeat, the plugin is chained.
start_pacemaker_daemonset() {
  local limit="$1" socket manifest="${STATE}/pod-pacemaker.yaml"
  [[ "${limit}" =~ ^[0-9]+$ ]] || die "--limit must be a number: ${limit}"
  need_release_binaries
  [[ -f "${DEPLOY_MANIFEST}" ]] || die "no manifest at ${DEPLOY_MANIFEST}"
  socket="$(manifest_socket)"
  [[ "${socket}" == /* ]] || die "no '- --socket=/...' argument in ${DEPLOY_MANIFEST}"
  REALNODE_MUSL_DIR="$(musl_dir)" "${here}/realnode/images.sh" --import "${STATE}/containerd/containerd.sock" product 2>&1 |
    sed 's/^/realnode: /' >&2
  sed -E "s/--max-concurrent=[0-9]+/--max-concurrent=${limit}/" "${DEPLOY_MANIFEST}" >"${manifest}"
  grep -qE -- "--max-concurrent=${limit}\$" "${manifest}" ||
    die "could not set --max-concurrent=${limit} in a copy of ${DEPLOY_MANIFEST}"
  kc apply -f "${manifest}" >/dev/null
  echo daemonset >"${STATE}/pacemaker-mode"
  echo "${limit}" >"${STATE}/pacemaker-limit"
  echo "${socket}" >"${STATE}/pacemaker-socket"
  wait_for "DaemonSet pod-pacemaker/pod-pacemaker-agent rolled out" 90 \
    kc -n pod-pacemaker rollout status ds/pod-pacemaker-agent --timeout=5s
  wait_for "agent socket ${socket} and its heartbeat" 60 \
    in_node_mnt sh -c "test -S '${socket}' && test -e '${socket}.heartbeat'"
  install_plugin
  write_conflist "$(plugin_entry "${socket}")"
  log "pod-pacemaker on: DaemonSet (limit ${limit}), plugin chained in ${STATE}/cni/net.d/10-ppm-realnode.conflist"
}

# start_pacemaker_host LIMIT: the agent as a host process in the node's namespaces, with the
# DaemonSet's ServiceAccount and RBAC (from deploy/) and a bound token from the TokenRequest API.
start_pacemaker_host() {
  local limit="$1" rel
  need_release_binaries
  rel="$(musl_dir)"
  # Everything in the manifest but the DaemonSet: the last document.
  awk '/^kind: DaemonSet/{exit} {print}' "${DEPLOY_MANIFEST}" | sed '$d' | kc apply -f - >/dev/null
  (umask 077 && kc -n pod-pacemaker create token pod-pacemaker-agent --duration=24h >"${STATE}/agent.token")
  start agent "${rel}/pod-pacemaker-agent" --node-name "${NODE}" --socket "${STATE}/ppm.sock" \
    --max-concurrent "${limit}" --api-server "https://127.0.0.1:${API_PORT}" \
    --token-file "${STATE}/agent.token" --ca-file "${STATE}/pki/ca.crt"
  echo host-process >"${STATE}/pacemaker-mode"
  echo "${limit}" >"${STATE}/pacemaker-limit"
  echo "${STATE}/ppm.sock" >"${STATE}/pacemaker-socket"
  wait_for "agent socket" 20 test -S "${STATE}/ppm.sock"
  install_plugin
  write_conflist "$(plugin_entry "${STATE}/ppm.sock")"
  log "pod-pacemaker on: host-process agent (limit ${limit}), plugin chained"
}

stop_pacemaker() {
  local mode socket
  mode="$(cat "${STATE}/pacemaker-mode" 2>/dev/null || echo none)"
  socket="$(cat "${STATE}/pacemaker-socket" 2>/dev/null || true)"
  write_conflist ""
  case "${mode}" in
    daemonset)
      kc delete -f "${STATE}/pod-pacemaker.yaml" --ignore-not-found --wait=true --timeout=90s >/dev/null ||
        log "kubectl delete -f ${STATE}/pod-pacemaker.yaml did not finish"
      # The hostPath directory (socket, heartbeat, state file) stays on a real node; here it goes,
      # so that the next 'on' starts from nothing.
      [[ -z "${socket}" ]] || in_node_mnt rm -rf "$(dirname "${socket}")"
      ;;
    host-process) kill_pid_of agent ;;
  esac
  rm -f "${STATE}/cni/bin/pod-pacemaker" "${STATE}/pacemaker-mode" "${STATE}/pacemaker-limit" \
    "${STATE}/pacemaker-socket" "${STATE}/ppm.sock" "${STATE}/ppm.sock.heartbeat" "${STATE}/agent.token"
  log "pod-pacemaker off (was: ${mode}): plugin out of the chain, agent gone"
}

cmd_pacemaker() {
  if [[ ! -e "${STATE}/${MARKER}" ]] || ! alive kubelet; then die "the real node is not up"; fi
  case "${1:-}" in
    on)
      shift
      local limit=2 mode=daemonset
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --limit) limit="$2"; shift ;;
          --host-process) mode=host-process ;;
          *) die "pacemaker on: unknown argument $1" ;;
        esac
        shift
      done
      if [[ -f "${STATE}/pacemaker-mode" ]]; then stop_pacemaker; fi
      if [[ "${mode}" == daemonset ]]; then
        start_pacemaker_daemonset "${limit}"
      else
        start_pacemaker_host "${limit}"
      fi
      ;;
    off) stop_pacemaker ;;
    status)
      [[ -f "${STATE}/pacemaker-socket" ]] || die "pod-pacemaker is not on"
      in_node_mnt "$(musl_dir)/pod-pacemaker-agent" --status --socket "$(cat "${STATE}/pacemaker-socket")"
      ;;
    *) die "usage: pacemaker on [--limit N] [--host-process] | off | status" ;;
  esac
}

kill_pid_of() { # kill_pid_of NAME: SIGTERM the recorded pid, wait up to 10s, then SIGKILL
  local name="$1" pid t
  read -r pid t 2>/dev/null <"$(pidfile "${name}")" || return 0
  [[ -n "${pid}" ]] || return 0
  if running "${pid}" "${t:-}"; then
    kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 1 100); do running "${pid}" "${t:-}" || break; sleep 0.1; done
    if running "${pid}" "${t:-}"; then
      log "${name} (pid ${pid}) ignored SIGTERM: SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
    log "stopped ${name} (pid ${pid})"
  fi
  rm -f "$(pidfile "${name}")"
}

cmd_down() {
  [[ "$(id -u)" -eq 0 ]] || die "must run as root"
  check_state_path
  if [[ ! -e "${STATE}/${MARKER}" ]]; then
    log "nothing to do: ${STATE} holds no real node"
    return 0
  fi
  local netns
  netns="$(cat "${STATE}/netns" 2>/dev/null || echo "${NETNS}")"
  kill_pid_of agent
  kill_pid_of kubelet
  # Pods first, through the runtime: stops containers (their shims exit) and runs CNI DEL.
  if alive containerd && [[ -S "${STATE}/containerd/containerd.sock" ]]; then
    timeout 60 "$(bin crictl)" --runtime-endpoint "unix://${STATE}/containerd/containerd.sock" \
      --timeout 20s rmp --all --force >/dev/null 2>&1 || log "crictl rmp did not finish: killing what is left"
  fi
  kill_pid_of containerd
  # Containers left behind (our cgroup subtree), then their shims, which outlive containerd by
  # design. containerd 1.6 records no shim pid; a shim of ours is one whose command line names our
  # containerd's socket, which is a path under our state dir.
  kill_cgroup_procs
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    if tr '\0' ' ' 2>/dev/null <"${f}" | grep -qE "^[^ ]*containerd-shim[^ ]* .*-address ${STATE}/containerd/containerd.sock( |$)"; then
      log "killing shim pid ${pid}"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  done
  kill_pid_of kube-scheduler
  kill_pid_of kube-controller-manager
  kill_pid_of kube-apiserver
  kill_pid_of etcd
  kill_pid_of holder
  rm -f "${STATE}/holder.ready"
  sleep 0.2

  # Mounts under the state dir, as the host sees them (normally none: they live in the private
  # mount namespace, which died with its last process).
  local m
  while IFS= read -r m; do
    [[ -n "${m}" ]] || continue
    log "unmounting ${m}"
    umount -R "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || log "could not unmount ${m}"
  done < <(findmnt -rn -o TARGET | grep -F "${STATE}/" | sort -r)
  # Any other mount namespace still holding our state dir means a process escaped: report it.
  local holders
  holders="$(grep -lF "${STATE}/" /proc/[0-9]*/mountinfo 2>/dev/null | cut -d/ -f3 | sort -u | tr '\n' ' ' || true)"
  [[ -z "${holders}" ]] || log "warning: processes still see mounts under ${STATE}: ${holders}"

  remove_cgroups
  if [[ -f "${STATE}/netns.created" ]] && [[ -e "/run/netns/${netns}" ]]; then
    if ip netns delete "${netns}"; then
      log "deleted netns ${netns} (with bridge ${BRIDGE} in it)"
    else
      log "could not delete netns ${netns}"
    fi
  fi
  if [[ -f "${STATE}/created-paths" ]]; then
    while IFS= read -r f; do rmdir "${f}" 2>/dev/null || log "could not remove ${f} (not empty?)"; done <"${STATE}/created-paths"
  fi
  rm -rf --one-file-system "${STATE}"
  log "down: ${STATE} removed"
}

# --- status ------------------------------------------------------------------------------------
cmd_status() {
  check_state_path
  if [[ ! -e "${STATE}/${MARKER}" ]]; then
    echo "down (no state in ${STATE})"
    return 3
  fi
  local name rc=0
  if [[ -f "${STATE}/pacemaker-mode" ]]; then
    echo "pod-pacemaker: $(cat "${STATE}/pacemaker-mode"), limit $(cat "${STATE}/pacemaker-limit" 2>/dev/null), socket $(cat "${STATE}/pacemaker-socket" 2>/dev/null)"
  fi
  for name in holder etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet agent; do
    [[ -f "$(pidfile "${name}")" ]] || continue
    if alive "${name}"; then
      printf '%-24s running pid %s\n' "${name}" "$(pid_of "${name}")"
    else
      printf '%-24s DEAD (pid %s)\n' "${name}" "$(pid_of "${name}")"
      rc=1
    fi
  done
  if alive holder; then
    kc get nodes -o wide 2>&1 || rc=1
    kc get pods -A -o wide 2>&1 || true
  fi
  return "${rc}"
}

cmd_env() {
  cat <<EOF
REALNODE_DIR=${STATE}
REALNODE_NETNS=${NETNS}
REALNODE_NODE=${NODE}
REALNODE_KUBECONFIG=${STATE}/admin.kubeconfig
REALNODE_KUBECTL=$(bin kubectl)
REALNODE_CRICTL=$(bin crictl)
REALNODE_CONTAINERD_SOCK=${STATE}/containerd/containerd.sock
REALNODE_POD_CIDR=${POD_CIDR}
REALNODE_API=https://127.0.0.1:${API_PORT}
REALNODE_SERVICE_IP=${SERVICE_IP}
REALNODE_NODE_IP=${NODE_IP}
REALNODE_STATE_LOGS=${STATE}/logs
REALNODE_POD_LOGS=${STATE}/pod-logs
EOF
}

case "${1:-}" in
  up) shift; check_session; take_lock up; cmd_up "$@" ;;
  down) shift; check_session; take_lock down; cmd_down ;;
  status) shift; cmd_status ;;
  pacemaker)
    shift
    if [[ "${1:-}" != status ]]; then
      check_session
      take_lock "pacemaker ${1:-}"
    fi
    cmd_pacemaker "$@"
    ;;
  kubectl) shift; kc "$@" ;;
  exec) shift; in_node "$@" ;;
  node-exec) shift; in_node_mnt "$@" ;;
  env) cmd_env ;;
  session-lock) shift; cmd_session_lock "$@" ;;
  session-unlock) shift; cmd_session_unlock "$@" ;;
  -h|--help|help|"") sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d' ;;
  *) die "unknown command: $1 (up|down|status|pacemaker|kubectl|exec|node-exec|env|session-lock|session-unlock)" ;;
esac
