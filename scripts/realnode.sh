#!/usr/bin/env bash
# A real single-node Kubernetes on this machine: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd + runc and the kubelet, all inside a network namespace of their own.
#
# Usage:
#   scripts/realnode.sh up [--with-pacemaker --limit N]   build or reuse binaries, start, wait for Ready
#   scripts/realnode.sh down                              stop everything by pid, leave the host as it was
#   scripts/realnode.sh status                            what runs, node and pods (exit 0 = up)
#   scripts/realnode.sh pacemaker on --limit N | off      chain our plugin and run the agent on a
#                                                         running node, or take both out again
#   scripts/realnode.sh kubectl ARGS...                   kubectl against the node (runs in its netns)
#   scripts/realnode.sh exec CMD ARGS...                  any command inside the node's netns
#   scripts/realnode.sh env                               print shell variables describing the node
#
# Environment (defaults in brackets):
#   REALNODE_DIR      state directory: pki, configs, data, logs, pids [/var/lib/pod-pacemaker-realnode]
#   REALNODE_CACHE    binary and image cache [/var/cache/pod-pacemaker/realnode]
#   REALNODE_NETNS    name of the node's network namespace [ppmr-node]
#   REALNODE_NODE     node name [ppm-realnode]
#   REALNODE_UP_TIMEOUT  seconds to wait for the node to be Ready [180]
#
# Isolation (see docs/testing.md, "The real node"):
#   * network: every component runs in netns REALNODE_NETNS. The API server listens on 127.0.0.1
#     of that netns only; the node address 10.244.76.1/32 sits on that netns' lo; pods hang off
#     bridge ppmr0 (10.244.77.0/24, ipMasq false) inside it. The host's interfaces, routes and
#     iptables are never touched; no route leads out of the netns, so image pulls fail at once.
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
export REALNODE_CACHE="${CACHE}"

NODE_IP="10.244.76.1"
POD_CIDR="10.244.77.0/24"
POD_GW="10.244.77.1"
BRIDGE="ppmr0"
SERVICE_CIDR="10.96.0.0/24"
SERVICE_IP="10.96.0.1"
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

kc() { in_node "$(bin kubectl)" --kubeconfig "${STATE}/admin.kubeconfig" "$@"; }

# start NAME CMD...: start a component in the node's namespaces, log to logs/NAME.log, record its pid.
start() {
  local name="$1"
  shift
  nohup nsenter -t "$(holder_pid)" --net --mount -- "$@" >"${STATE}/logs/${name}.log" 2>&1 </dev/null &
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
    exec sleep infinity" >"${STATE}/logs/holder.log" 2>&1 </dev/null &
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
    --bind-address=127.0.0.1 --secure-port="${API_PORT}" --advertise-address="${NODE_IP}" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --client-ca-file="${pki}/ca.crt" \
    --tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key" \
    --kubelet-client-certificate="${pki}/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${pki}/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${pki}/sa.pub" --service-account-signing-key-file="${pki}/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
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
  # Our plugin joins the chain once the agent serves its socket; containerd re-reads the conf dir.
  if [[ "${with_pacemaker}" -eq 1 ]]; then
    start_pacemaker "${limit}"
  fi
  awk -v a="${t0}" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f\n", b-a}' >"${STATE}/up-seconds"
  log "up in $(cat "${STATE}/up-seconds")s: kubectl via '$0 kubectl ...' or 'ip netns exec ${NETNS} kubectl --kubeconfig ${STATE}/admin.kubeconfig ...'"
}

node_ready() {
  [[ "$(kc get node "${NODE}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

# --- our product in the chain ------------------------------------------------------------------
start_pacemaker() {
  local limit="$1" rel="${REALNODE_MUSL_DIR:-${repo_root}/target/x86_64-unknown-linux-musl/release}"
  [[ -x "${rel}/pod-pacemaker" && -x "${rel}/pod-pacemaker-agent" ]] ||
    die "--with-pacemaker needs ${rel}/pod-pacemaker and pod-pacemaker-agent (scripts/build.sh)"
  ln -sfn "${rel}/pod-pacemaker" "${STATE}/cni/bin/pod-pacemaker"
  # The agent's identity: a ServiceAccount with just what it needs, and a bound token.
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: pod-pacemaker}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: pod-pacemaker-agent, namespace: pod-pacemaker}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pod-pacemaker-agent}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [nodes], verbs: [get, patch]}
- {apiGroups: [""], resources: [events], verbs: [create]}
- {apiGroups: [events.k8s.io], resources: [events], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: pod-pacemaker-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pod-pacemaker-agent}
subjects:
- {kind: ServiceAccount, name: pod-pacemaker-agent, namespace: pod-pacemaker}
EOF
  (umask 077 && kc -n pod-pacemaker create token pod-pacemaker-agent --duration=24h >"${STATE}/agent.token")
  start agent "${rel}/pod-pacemaker-agent" --node-name "${NODE}" --socket "${STATE}/ppm.sock" \
    --max-concurrent "${limit}" --api-server "https://127.0.0.1:${API_PORT}" \
    --token-file "${STATE}/agent.token" --ca-file "${STATE}/pki/ca.crt"
  wait_for "agent socket" 20 test -S "${STATE}/ppm.sock"
  write_conflist "{\"type\": \"pod-pacemaker\", \"daemonSocketPath\": \"${STATE}/ppm.sock\", \"maxWaitTimeInSeconds\": 120, \"capabilities\": {\"io.kubernetes.cri.pod-annotations\": true}}"
  echo "${limit}" >"${STATE}/pacemaker-limit"
}

# --- down --------------------------------------------------------------------------------------
stop_pacemaker() {
  write_conflist ""
  kill_pid_of agent
  rm -f "${STATE}/cni/bin/pod-pacemaker" "${STATE}/pacemaker-limit" "${STATE}/ppm.sock"
  log "pod-pacemaker out of the chain, agent stopped"
}

cmd_pacemaker() {
  if [[ ! -e "${STATE}/${MARKER}" ]] || ! alive kubelet; then die "the real node is not up"; fi
  case "${1:-}" in
    on)
      shift
      local limit=2
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --limit) limit="$2"; shift ;;
          *) die "pacemaker on: unknown argument $1" ;;
        esac
        shift
      done
      if alive agent; then stop_pacemaker; fi
      start_pacemaker "${limit}"
      ;;
    off) stop_pacemaker ;;
    *) die "usage: pacemaker on [--limit N] | off" ;;
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
    if tr '\0' ' ' <"${f}" 2>/dev/null | grep -qE "^[^ ]*containerd-shim[^ ]* .*-address ${STATE}/containerd/containerd.sock( |$)"; then
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
EOF
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down ;;
  status) shift; cmd_status ;;
  pacemaker) shift; cmd_pacemaker "$@" ;;
  kubectl) shift; kc "$@" ;;
  exec) shift; in_node "$@" ;;
  env) cmd_env ;;
  -h|--help|help|"") sed -n '2,33p' "$0" ;;
  *) die "unknown command: $1 (up|down|status|pacemaker|kubectl|exec|env)" ;;
esac
