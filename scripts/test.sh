#!/usr/bin/env bash
# test.sh: everything CI checks, in the order a failure is cheapest to find.
#
#   install-deps -> cargo fmt --check -> clippy (host and musl) -> cargo test -> release build
#   (static check) -> real node binaries (cached) -> bats tests/bats/
#
# Needs root (apt-get, network namespaces). Stops at the first failing step with a non-zero exit.
# The last line summarises the bats run as "N passed, N failed".
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

# Cargo and Go are outside the default PATH of a non-login root shell on these machines.
for dir in "${HOME:-/root}/.cargo/bin" /usr/local/go/bin; do
  if [[ -d "${dir}" && ":${PATH}:" != *":${dir}:"* ]]; then
    PATH="${dir}:${PATH}"
  fi
done
export PATH

step() {
  printf '\n==== %s ====\n' "$*"
}

step "install dependencies"
bash scripts/install-deps.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo clippy --all-targets --target x86_64-unknown-linux-musl -- -D warnings"
cargo clippy --all-targets --target x86_64-unknown-linux-musl -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "go vet and go test of the Go test helpers"
for module in tests/fake-apiserver tests/cnidriver; do
  (cd "${module}" && GOTOOLCHAIN=local go vet ./... && GOTOOLCHAIN=local go test ./...)
done

step "release build (scripts/build.sh)"
bash scripts/build.sh

step "real node binaries (scripts/realnode/build.sh)"
# etcd, the Kubernetes binaries and crictl built once into /var/cache/pod-pacemaker/realnode (about
# 8 minutes cold, a second when cached), so that tests/bats/realnode.bats runs instead of skipping.
bash scripts/realnode/build.sh

step "bats tests/bats/"
# Bats prints TAP; it is kept in a file as well so the results can be counted. pipefail makes
# the pipeline carry bats' exit status.
tap="$(mktemp /tmp/ppm-bats-tap.XXXXXX)"
bats_rc=0
bats --tap tests/bats/ </dev/null 2>&1 | tee "${tap}" || bats_rc=$?
skipped="$(grep -cE '^ok .* # skip' "${tap}" || true)"
passed="$(($(grep -cE '^ok ' "${tap}" || true) - skipped))"
failed="$(grep -cE '^not ok ' "${tap}" || true)"
rm -f "${tap}"
if [[ "${bats_rc}" -ne 0 && "${failed}" -eq 0 ]]; then
  # bats itself failed (a syntax error, a crash in setup_file): count that as a failure so the
  # summary never says all is well when the exit code says otherwise.
  failed=1
fi
echo
if [[ "${skipped}" -gt 0 ]]; then
  echo "${passed} passed, ${failed} failed, ${skipped} skipped"
else
  echo "${passed} passed, ${failed} failed"
fi
exit "${bats_rc}"
