#!/usr/bin/env bash
# Installs everything the build and the simulated-node tests need, and nothing twice.
#
# Unattended by design: CI runs it as root with no terminal and no standard input, and a fresh
# machine has none of the Debian packages below. When everything is already there it only asks
# dpkg and rustup what they have, so it takes a second or two and never touches the network.
#
# Usage: scripts/install-deps.sh [--quiet]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quiet=0
for arg in "$@"; do
  case "${arg}" in
    --quiet | -q) quiet=1 ;;
    -h | --help)
      sed -n '2,8p' "$0"
      exit 0
      ;;
    *)
      echo "install-deps: unknown argument: ${arg}" >&2
      exit 2
      ;;
  esac
done

say() {
  if [[ "${quiet}" -eq 0 ]]; then
    echo "install-deps: $*"
  fi
}

# Cargo and Go live outside the default PATH of a non-login root shell on these machines; CI's
# environment may not have them either, so add them when they exist rather than failing later.
for dir in "${HOME:-/root}/.cargo/bin" /usr/local/go/bin; do
  if [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]]; then
    PATH="${dir}:${PATH}"
  fi
done
export PATH

if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-deps: must run as root (apt-get install, ip netns)" >&2
  exit 1
fi

# --- Debian packages ------------------------------------------------------------------------
# What each one is for:
#   bats bats-assert bats-support   tests/bats
#   containernetworking-plugins     /usr/lib/cni/{bridge,host-local,loopback} for the sim node
#   iproute2                        ip netns
#   openssl curl jq                 talking to the fake API server, reading CNI results
#   file binutils                   scripts/build.sh checks that the release binaries are static
#   procps util-linux coreutils     ps/kill, setsid, sha256sum (kubelet warm-up)
#   ca-certificates                 cargo and go fetching from their registries
#   musl-tools                      musl-gcc: ring (under ureq/rustls) compiles C and assembly, and
#                                   the cc crate looks for x86_64-linux-musl-gcc or musl-gcc when
#                                   building for the musl target; without either the release build
#                                   fails in ring's build script
packages=(
  bats bats-assert bats-support containernetworking-plugins iproute2 openssl curl jq
  file binutils procps util-linux coreutils ca-certificates musl-tools
)

missing=()
for pkg in "${packages[@]}"; do
  # dpkg-query exits non-zero for unknown packages; "install ok installed" is the only good state.
  status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
  if [[ "${status}" != "install ok installed" ]]; then
    missing+=("${pkg}")
  fi
done

if [[ "${#missing[@]}" -gt 0 ]]; then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists on a fresh machine may be empty or stale, so update only when installing.
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" </dev/null
else
  say "Debian packages present"
fi

# --- Rust toolchain -------------------------------------------------------------------------
# rust-toolchain.toml pins the compiler and lists the musl target and components; rustup installs
# them on first use, but doing it here makes the first cargo call fast and its failure obvious.
if ! command -v rustup >/dev/null 2>&1; then
  echo "install-deps: rustup not found; install the Rust toolchain manager first" >&2
  exit 1
fi
cd "${repo_root}"
# 'rustup toolchain install' with no name installs the toolchain named by rust-toolchain.toml.
if ! rustup run "$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)" rustc --version \
  >/dev/null 2>&1; then
  say "installing the pinned Rust toolchain"
  rustup toolchain install </dev/null
fi
if ! rustup target list --installed | grep -qx 'x86_64-unknown-linux-musl'; then
  say "adding target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl </dev/null
fi
installed_components="$(rustup component list --installed)"
for component in rustfmt clippy; do
  if ! grep -q "^${component}" <<<"${installed_components}"; then
    say "adding component ${component}"
    rustup component add "${component}" </dev/null
  fi
done
say "Rust toolchain ready: $(rustc --version)"

# --- Test tools (Go) ------------------------------------------------------------------------
# fake-apiserver and cnidriver are built by their own script; it is somebody else's file and it
# may not exist yet on an early checkout, which is not an error here.
if [[ -f "${repo_root}/scripts/build-test-tools.sh" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "install-deps: go not found; the test tools need Go" >&2
    exit 1
  fi
  say "building test tools"
  if [[ "${quiet}" -eq 1 ]]; then
    bash "${repo_root}/scripts/build-test-tools.sh" >/dev/null
  else
    bash "${repo_root}/scripts/build-test-tools.sh"
  fi
else
  say "scripts/build-test-tools.sh not present yet; skipping test tools"
fi
