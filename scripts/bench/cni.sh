#!/usr/bin/env bash
# Benchmark group "cni" (run through scripts/bench.sh):
#
#   plugin_add_ratio  median wall time of a CNI ADD through real libcni (cnidriver) of the chain
#                     bridge + host-local + pod-pacemaker with a free slot from the real agent,
#                     divided by the same chain ending in a passthrough plugin that only echoes
#                     prevResult (cni/examples/passthrough.rs). Both run alternately in one
#                     simulated node, so machine speed and load cancel out. Target <= 1.5.
#   plugin_size_kib   size of the static, stripped release plugin. Target < 1024.
#
# Environment: BENCH_CNI_ROUNDS (default 40) ADDs per variant.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"
rounds="${BENCH_CNI_ROUNDS:-40}"

cargo build --quiet --release --target x86_64-unknown-linux-musl -p pod-pacemaker \
  --example passthrough
passthrough="target/x86_64-unknown-linux-musl/release/examples/passthrough"

# shellcheck source=scripts/simnode.sh
source scripts/simnode.sh
simnode_install_trap
simnode_up --limit 1000 --max-wait 60 >&2

cp "${passthrough}" "${SIMNODE_DIR}/cni/bin/ppm-passthrough"
paced="${SIMNODE_CONFLIST}"
baseline="${SIMNODE_DIR}/cni/passthrough.conflist"
jq '.plugins[1] = {type: "ppm-passthrough"}' "${paced}" >"${baseline}"

# time_add CONFLIST POD: milliseconds of one ADD (then a DEL, not timed).
time_add() {
  local start end
  SIMNODE_CONFLIST="$1"
  start="$(date +%s%N)"
  simnode__cni add "$2" || return 1
  end="$(date +%s%N)"
  # Count the grants: a fail-open ADD would measure the wrong path.
  if grep -q 'start slot granted' "$(simnode__pod_dir "$2")/add.err"; then
    echo "$2" >>"${SIMNODE_DIR}/granted"
  fi
  simnode__cni del "$2" || return 1
  echo $(((end - start) / 1000))
}

: >"${SIMNODE_DIR}/paced.us"
: >"${SIMNODE_DIR}/baseline.us"
: >"${SIMNODE_DIR}/granted"
for ((i = 1; i <= rounds; i++)); do
  pod="bench-$i"
  simnode_pod_create "${pod}" >&2
  # Alternate which variant goes first, so neither always gets the warmer cache.
  if ((i % 2)); then
    time_add "${paced}" "${pod}" >>"${SIMNODE_DIR}/paced.us"
    time_add "${baseline}" "${pod}" >>"${SIMNODE_DIR}/baseline.us"
  else
    time_add "${baseline}" "${pod}" >>"${SIMNODE_DIR}/baseline.us"
    time_add "${paced}" "${pod}" >>"${SIMNODE_DIR}/paced.us"
  fi
done
granted="$(wc -l <"${SIMNODE_DIR}/granted")"
if [[ "${granted}" -ne "${rounds}" ]]; then
  echo "bench cni: expected ${rounds} granted ADDs, saw ${granted}" >&2
  exit 1
fi

median() {
  sort -n "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
paced_us="$(median "${SIMNODE_DIR}/paced.us")"
baseline_us="$(median "${SIMNODE_DIR}/baseline.us")"
echo "# median ADD: pod-pacemaker ${paced_us} us, passthrough ${baseline_us} us, ${rounds} rounds" >&2
simnode_down >&2

size_bytes="$(stat -c %s target/x86_64-unknown-linux-musl/release/pod-pacemaker)"
awk -v p="${paced_us}" -v b="${baseline_us}" \
  'BEGIN { printf "figure plugin_add_ratio %.2f x target <= 1.5\n", p / b }'
awk -v s="${size_bytes}" 'BEGIN { printf "figure plugin_size_kib %d KiB target < 1024\n", s / 1024 }'
