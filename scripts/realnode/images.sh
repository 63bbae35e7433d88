#!/usr/bin/env bash
# Builds the real node's images without a registry or docker, as docker-archive tarballs
# (manifest.json + image config JSON whose rootfs.diff_ids holds the layer's sha256 + one layer
# tar), and optionally imports them into a containerd:
#
#   pause      REALNODE_PAUSE_IMAGE    tests/realnode/images/cmd/pause (containerd's sandbox_image)
#   workload   REALNODE_WORKLOAD_IMAGE tests/realnode/images/cmd/workload (CPU work, then /tmp/ready)
#   product    REALNODE_PRODUCT_IMAGE  FROM scratch: /pod-pacemaker-agent and /pod-pacemaker from
#                                      target/x86_64-unknown-linux-musl/release/, only when both exist
#                                      (the layout deploy/pod-pacemaker.yaml's command expects)
#
# Tarballs go to ${REALNODE_CACHE:-/var/cache/pod-pacemaker/realnode}/images/<name>.tar; the Go
# binaries are rebuilt each time (a second or two with a warm Go build cache) so the images never lag
# the source.
#
# Usage: scripts/realnode/images.sh [--no-build] [--import CONTAINERD_ADDRESS] [pause|workload|product]...
#   --no-build   import the tarballs already in the cache (those that exist) without rebuilding
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
# shellcheck source=scripts/realnode/versions.sh
source "${here}/versions.sh"
cache="${REALNODE_CACHE:-/var/cache/pod-pacemaker/realnode}"
out="${cache}/images"
musl_dir="${REALNODE_MUSL_DIR:-${repo_root}/target/x86_64-unknown-linux-musl/release}"
log() { echo "realnode-images: $*" >&2; }

address=""
no_build=0
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --import) address="$2"; shift ;;
    --no-build) no_build=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    pause|workload|product) names+=("$1") ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
  shift
done
[[ ${#names[@]} -gt 0 ]] || names=(pause workload product)

for dir in /usr/local/go/bin "${HOME:-/root}/go/bin"; do
  [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]] && PATH="${dir}:${PATH}"
done
export PATH
mkdir -p "${out}"
work="$(mktemp -d "${out}/.work.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# docker_archive TAG ROOTFS_DIR ENTRYPOINT_JSON ENV_JSON OUT_TAR
docker_archive() {
  local tag="$1" rootfs="$2" entrypoint="$3" env="$4" dest="$5" d layer_sha config_sha
  d="$(mktemp -d "${work}/archive.XXXXXX")"
  # A reproducible layer: sorted names, fixed mtime and owners.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "${rootfs}" -cf "${d}/layer.tar" .
  layer_sha="$(sha256 "${d}/layer.tar")"
  mkdir -p "${d}/${layer_sha}"
  mv "${d}/layer.tar" "${d}/${layer_sha}/layer.tar"
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":%s,"Env":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/realnode/images.sh"}]}' \
    "${entrypoint}" "${env}" "${layer_sha}" >"${d}/config.json"
  config_sha="$(sha256 "${d}/config.json")"
  mv "${d}/config.json" "${d}/${config_sha}.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "${config_sha}" "${tag}" "${layer_sha}" >"${d}/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "${d}" -cf "${dest}.tmp" manifest.json "${config_sha}.json" "${layer_sha}"
  mv "${dest}.tmp" "${dest}"
  log "${tag} -> ${dest} (config sha256:${config_sha})"
}

gobuild() { # gobuild PKG OUT
  (cd "${repo_root}/tests/realnode/images" &&
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$2" "$1")
}

built=()
for name in "${names[@]}"; do
  if [[ "${no_build}" -eq 1 ]]; then
    [[ -f "${out}/${name}.tar" ]] && built+=("${name}")
    continue
  fi
  root="${work}/${name}-rootfs"
  mkdir -p "${root}"
  case "${name}" in
    pause)
      gobuild ./cmd/pause "${root}/pause"
      docker_archive "${REALNODE_PAUSE_IMAGE}" "${root}" '["/pause"]' '[]' "${out}/pause.tar"
      ;;
    workload)
      mkdir -p "${root}/tmp"
      chmod 1777 "${root}/tmp"
      gobuild ./cmd/workload "${root}/workload"
      docker_archive "${REALNODE_WORKLOAD_IMAGE}" "${root}" '["/workload"]' '["WORK_SECONDS=3","READY_FILE=/tmp/ready"]' "${out}/workload.tar"
      ;;
    product)
      if [[ ! -x "${musl_dir}/pod-pacemaker" || ! -x "${musl_dir}/pod-pacemaker-agent" ]]; then
        log "skipping ${REALNODE_PRODUCT_IMAGE}: ${musl_dir}/pod-pacemaker{,-agent} not built (scripts/build.sh)"
        continue
      fi
      # deploy/pod-pacemaker.yaml runs command ["/pod-pacemaker-agent"]; deploy/README.md documents
      # both binaries at the root of the image.
      install -m 0755 "${musl_dir}/pod-pacemaker" "${musl_dir}/pod-pacemaker-agent" "${root}/"
      docker_archive "${REALNODE_PRODUCT_IMAGE}" "${root}" '["/pod-pacemaker-agent"]' '[]' "${out}/product.tar"
      ;;
  esac
  built+=("${name}")
done

if [[ -n "${address}" ]]; then
  for name in "${built[@]}"; do
    ctr --address "${address}" -n k8s.io images import "${out}/${name}.tar" >/dev/null
    log "imported ${name} into ${address}"
  done
fi
