#!/usr/bin/env bash
# Builds (once) the pinned binaries of the real node into a cache outside the repository and
# installs the Debian packages of the runtime side. Idempotent: a component whose cached binary
# exists is skipped, a Debian package already installed is not asked for again.
#
#   etcd                     go.etcd.io/etcd/server/v3 at REALNODE_ETCD_VERSION
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#                            k8s.io/kubernetes at REALNODE_K8S_VERSION (tests/realnode/build/kubernetes)
#   crictl                   sigs.k8s.io/cri-tools at REALNODE_CRICTL_VERSION
#   containerd, runc, /usr/lib/cni/*   Debian
#
# Layout: ${REALNODE_CACHE:-/var/cache/pod-pacemaker/realnode}/<component>-<version>/<component>.
# Each build writes into a temporary directory and renames it into place, so an interrupted build
# never leaves a binary that looks finished. Times go to <cache>/build-times.log.
#
# Usage: scripts/realnode/build.sh [--no-apt] [component...]
#        scripts/realnode/build.sh --print-path COMPONENT   (path of the cached binary; no build)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
# shellcheck source=scripts/realnode/versions.sh
source "${here}/versions.sh"

cache="${REALNODE_CACHE:-/var/cache/pod-pacemaker/realnode}"
k8s_components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
all_components=(etcd "${k8s_components[@]}" crictl)

version_of() {
  case "$1" in
    etcd) echo "${REALNODE_ETCD_VERSION}" ;;
    crictl) echo "${REALNODE_CRICTL_VERSION}" ;;
    kube-*|kubelet|kubectl) echo "${REALNODE_K8S_VERSION}" ;;
    *) echo "realnode-build: unknown component: $1" >&2; return 1 ;;
  esac
}
path_of() { echo "${cache}/$1-$(version_of "$1")/$1"; }

log() { echo "realnode-build: $*" >&2; }

apt_install=1
wanted=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-apt) apt_install=0 ;;
    --print-path) path_of "$2"; exit 0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) log "unknown option: $1"; exit 2 ;;
    *) version_of "$1" >/dev/null; wanted+=("$1") ;;
  esac
  shift
done
[[ ${#wanted[@]} -gt 0 ]] || wanted=("${all_components[@]}")

# --- Debian packages -------------------------------------------------------------------------
if [[ "${apt_install}" -eq 1 ]]; then
  missing=()
  for pkg in "${REALNODE_DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("${pkg}")
    fi
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    [[ "$(id -u)" -eq 0 ]] || { log "need root to apt-get install ${missing[*]}"; exit 1; }
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: containerd must not pull in docker or start anything of its own.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's containerd package enables a system containerd. The real node runs its own, with its
  # own root, state and socket, and never touches a system one that was running before.
fi

# --- Go builds -------------------------------------------------------------------------------
todo=()
for c in "${wanted[@]}"; do
  if [[ -x "$(path_of "${c}")" ]]; then
    log "cached: $(path_of "${c}")"
  else
    todo+=("${c}")
  fi
done
[[ ${#todo[@]} -gt 0 ]] || exit 0

for dir in /usr/local/go/bin "${HOME:-/root}/go/bin"; do
  [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]] && PATH="${dir}:${PATH}"
done
export PATH
command -v go >/dev/null || { log "go is not installed"; exit 1; }
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
mkdir -p "${cache}"
times_log="${cache}/build-times.log"

# install_into TMPDIR COMPONENT: move TMPDIR/COMPONENT into the cache atomically.
install_into() {
  local tmp="$1" c="$2" dest
  dest="$(dirname "$(path_of "${c}")")"
  mkdir -p "${tmp}/${c}.dir"
  mv "${tmp}/${c}" "${tmp}/${c}.dir/${c}"
  rm -rf "${dest}"
  mv "${tmp}/${c}.dir" "${dest}"
  log "built: $(path_of "${c}") ($(du -h "$(path_of "${c}")" | cut -f1))"
}

timed() { # timed LABEL cmd...: run, and append the wall time to the times log
  local label="$1" start end
  shift
  start="$(date +%s)"
  "$@"
  end="$(date +%s)"
  echo "$(date -u +%FT%TZ) ${label} $((end - start))s nproc=$(nproc) go=$(go env GOVERSION)" >>"${times_log}"
  log "${label}: $((end - start))s"
}

tmp="$(mktemp -d "${cache}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
k8s_todo=()
for c in "${todo[@]}"; do
  case "${c}" in
    etcd)
      log "building etcd ${REALNODE_ETCD_VERSION}"
      (cd "${repo_root}/tests/realnode/build/etcd" &&
        timed "etcd-${REALNODE_ETCD_VERSION}" go build -trimpath \
          -ldflags="-s -w" -o "${tmp}/etcd" go.etcd.io/etcd/server/v3)
      install_into "${tmp}" etcd
      ;;
    crictl)
      # cri-tools' go.mod has no replace directives, so `go install module@version` builds it as
      # pinned by the checksum database.
      log "building crictl ${REALNODE_CRICTL_VERSION}"
      mkdir -p "${tmp}/gobin"
      (cd "${tmp}" && GOBIN="${tmp}/gobin" GOFLAGS=-buildvcs=false timed "crictl-${REALNODE_CRICTL_VERSION}" \
        go install -trimpath \
        -ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${REALNODE_CRICTL_VERSION#v}" \
        "sigs.k8s.io/cri-tools/cmd/crictl@${REALNODE_CRICTL_VERSION}")
      mv "${tmp}/gobin/crictl" "${tmp}/crictl"
      install_into "${tmp}" crictl
      ;;
    *) k8s_todo+=("${c}") ;;
  esac
done

if [[ ${#k8s_todo[@]} -gt 0 ]]; then
  # One `go build` for all of them: they share most packages, and go parallelises across both cores.
  v="${REALNODE_K8S_VERSION}"
  minor="${v#v1.}"
  minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${v} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  pkgs=()
  for c in "${k8s_todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${c}"); done
  log "building ${k8s_todo[*]} ${v}"
  (cd "${repo_root}/tests/realnode/build/kubernetes" &&
    timed "kubernetes-${v}[${k8s_todo[*]}]" go build -trimpath -ldflags="${ldflags}" -o "${tmp}/" "${pkgs[@]}")
  for c in "${k8s_todo[@]}"; do install_into "${tmp}" "${c}"; done
fi
