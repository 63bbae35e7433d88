#!/usr/bin/env bash
# Builds the release binaries for x86_64-unknown-linux-musl and checks that they are static.
#
# The plugin is copied into /opt/cni/bin on nodes of any distribution, and the agent runs from a
# scratch image, so neither may depend on a dynamic loader: an ELF with a PT_INTERP program header
# would fail to exec there with a confusing "no such file or directory".
#
# Usage: scripts/build.sh [--quiet]     (prints "path size" for each binary)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="x86_64-unknown-linux-musl"
binaries=(pod-pacemaker pod-pacemaker-agent)
quiet=0
[[ "${1:-}" == "--quiet" || "${1:-}" == "-q" ]] && quiet=1

# Cargo lives outside the default PATH of a non-login root shell on these machines.
cargo_bin="${HOME:-/root}/.cargo/bin"
if [[ -d "${cargo_bin}" && ":${PATH}:" != *":${cargo_bin}:"* ]]; then
  export PATH="${cargo_bin}:${PATH}"
fi

cd "${repo_root}"
if [[ "${quiet}" -eq 1 ]]; then
  cargo build --quiet --release --target "${target}" --bins
else
  cargo build --release --target "${target}" --bins
fi

# Cargo honours CARGO_TARGET_DIR; follow it so the paths printed are the ones that were built.
out_dir="${CARGO_TARGET_DIR:-${repo_root}/target}/${target}/release"

# has_pt_interp FILE: reads the ELF64 program headers with od (no readelf needed) and succeeds
# when one of them is PT_INTERP (type 3), i.e. the binary needs a dynamic loader.
has_pt_interp() {
  local file="$1" phoff phentsize phnum i type
  # ELF magic, 64-bit class, little endian: anything else is not what cargo should have made.
  if [[ "$(od -An -tx1 -N6 "${file}" | tr -d ' \n')" != "7f454c460201" ]]; then
    echo "build: ${file} is not a little-endian ELF64 file" >&2
    return 2
  fi
  phoff="$(od -An -tu8 -j32 -N8 "${file}" | tr -d ' ')"
  phentsize="$(od -An -tu2 -j54 -N2 "${file}" | tr -d ' ')"
  phnum="$(od -An -tu2 -j56 -N2 "${file}" | tr -d ' ')"
  for ((i = 0; i < phnum; i++)); do
    type="$(od -An -tu4 -j"$((phoff + i * phentsize))" -N4 "${file}" | tr -d ' ')"
    if [[ "${type}" -eq 3 ]]; then
      return 0
    fi
  done
  return 1
}

status=0
for bin in "${binaries[@]}"; do
  path="${out_dir}/${bin}"
  if [[ ! -x "${path}" ]]; then
    echo "build: ${path} was not built" >&2
    status=1
    continue
  fi
  # Two independent opinions: our own reading of the program headers, and file(1)'s wording.
  interp_rc=0
  has_pt_interp "${path}" || interp_rc=$?
  file_out="$(file -b "${path}")"
  if [[ "${interp_rc}" -eq 0 ]]; then
    echo "build: ${path} has a PT_INTERP header (dynamically linked): ${file_out}" >&2
    status=1
    continue
  elif [[ "${interp_rc}" -ne 1 ]]; then
    status=1
    continue
  fi
  if [[ "${file_out}" != *"statically linked"* && "${file_out}" != *"static-pie linked"* ]]; then
    echo "build: file(1) does not call ${path} static: ${file_out}" >&2
    status=1
    continue
  fi
  size="$(stat -c %s "${path}")"
  if [[ "${quiet}" -eq 0 ]]; then
    printf '%s %s bytes (%s KiB), static\n' "${path}" "${size}" "$((size / 1024))"
  fi
done
exit "${status}"
