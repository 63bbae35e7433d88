#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the Go test helpers into target/test-tools/ (or ${CARGO_TARGET_DIR}/test-tools, the same
# place scripts/simnode.sh looks):
#
#   fake-apiserver  tests/fake-apiserver  (standard library only)
#   cnidriver       tests/cnidriver       (libcni, fetched through the Go module proxy)
#   cni-plugins-<v> the reference bridge, host-local and loopback plugins at a pinned version, from
#                   the Go module proxy: Debian's 1.1.1 speak CNI only up to 1.0.0, and the
#                   conformance tests need 1.1.0 (STATUS, GC) too
#
# Static binaries (CGO_ENABLED=0). A binary newer than every source of its module (*.go, go.mod,
# go.sum) and than this script is left alone, so running this again is cheap. Safe to run
# unattended as root with no terminal; prints one line per tool.
#
# Environment: TEST_TOOLS_DIR overrides the output directory.

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${TEST_TOOLS_DIR:-${CARGO_TARGET_DIR:-${repo_root}/target}/test-tools}"
script="${repo_root}/scripts/build-test-tools.sh"

say() {
  echo "build-test-tools: $*"
}

if ! command -v go >/dev/null 2>&1; then
  echo "build-test-tools: go not found in PATH" >&2
  exit 1
fi

# The go command needs a home for its build and module caches; a bare CI environment may not set
# HOME.
if [[ -z "${HOME:-}" ]]; then
  HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
  export HOME
fi
export CGO_ENABLED=0
# Build with the installed toolchain; never download another one.
export GOTOOLCHAIN=local

mkdir -p "${out_dir}"

# up_to_date BIN SRC_DIR: true when BIN exists and nothing it is built from is newer.
up_to_date() {
  local bin="$1" src="$2"
  [[ -x "${bin}" ]] || return 1
  [[ "${script}" -nt "${bin}" ]] && return 1
  [[ -z "$(find "${src}" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
    -newer "${bin}" -print -quit)" ]]
}

# build NAME SRC_DIR: builds the module in SRC_DIR into OUT_DIR/NAME, through a temporary file
# so a failed or interrupted build never leaves a half-written binary behind.
build() {
  local name="$1" src="${repo_root}/$2" bin="${out_dir}/$1"
  if up_to_date "${bin}" "${src}"; then
    say "${name} is up to date (${bin})"
    return 0
  fi
  # The binary gets the time the build started, so that a source saved while go was building
  # still counts as newer next time.
  touch "${bin}.stamp.$$"
  (
    cd "${src}"
    go build -mod=readonly -trimpath -buildvcs=false -ldflags='-s -w' \
      -o "${bin}.tmp.$$" . </dev/null
  ) || {
    rm -f "${bin}.tmp.$$" "${bin}.stamp.$$"
    echo "build-test-tools: building ${name} failed" >&2
    return 1
  }
  touch -r "${bin}.stamp.$$" "${bin}.tmp.$$"
  rm -f "${bin}.stamp.$$"
  mv -f "${bin}.tmp.$$" "${bin}"
  say "built ${name} (${bin})"
}

build fake-apiserver tests/fake-apiserver
build cnidriver tests/cnidriver

# build_reference_plugins: the reference plugins at one pinned version; skipped when present.
reference_plugins_version="v1.10.0"
build_reference_plugins() {
  local dir="${out_dir}/cni-plugins-${reference_plugins_version}" plugins=(
    github.com/containernetworking/plugins/plugins/main/bridge
    github.com/containernetworking/plugins/plugins/ipam/host-local
    github.com/containernetworking/plugins/plugins/main/loopback
  )
  if [[ -x "${dir}/bridge" && -x "${dir}/host-local" && -x "${dir}/loopback" ]]; then
    say "reference CNI plugins ${reference_plugins_version} are up to date (${dir})"
    return 0
  fi
  local staging="${dir}.tmp.$$"
  rm -rf "${staging}"
  mkdir -p "${staging}"
  if ! GOBIN="${staging}" go install -trimpath -ldflags='-s -w' \
    "${plugins[@]/%/@${reference_plugins_version}}" </dev/null; then
    rm -rf "${staging}"
    echo "build-test-tools: building the reference CNI plugins failed" >&2
    return 1
  fi
  rm -rf "${dir}"
  mv "${staging}" "${dir}"
  say "built reference CNI plugins ${reference_plugins_version} (${dir})"
}

build_reference_plugins
