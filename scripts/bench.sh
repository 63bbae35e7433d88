#!/usr/bin/env bash
# Benchmarks, reported as ratios against a baseline measured in the same run, so that the figures
# mean the same on a fast and a slow machine. Never used as pass/fail in tests.
#
# Usage: scripts/bench.sh [GROUP...]     (no group: all of them)
# Groups are the files scripts/bench/<group>.sh. Each prints its figures one per line as
#   figure <name> <value> <unit> target <op> <value>
# and this script adds one line per figure saying whether its target is met.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

available=()
for file in scripts/bench/*.sh; do
  [[ -e "${file}" ]] || continue
  name="$(basename "${file}" .sh)"
  available+=("${name}")
done

groups=("$@")
if [[ "${#groups[@]}" -eq 0 ]]; then
  groups=("${available[@]}")
fi

bash scripts/install-deps.sh --quiet
bash scripts/build.sh >/dev/null

misses=0
for group in "${groups[@]}"; do
  if [[ ! -f "scripts/bench/${group}.sh" ]]; then
    echo "bench: unknown group ${group} (known: ${available[*]})" >&2
    exit 2
  fi
  echo "== bench ${group}"
  out="$(bash "scripts/bench/${group}.sh")"
  echo "${out}"
  # Check each figure against its target: "figure NAME VALUE UNIT target OP LIMIT".
  while read -r word name value unit target op limit; do
    [[ "${word}" == figure && "${target}" == target ]] || continue
    if awk -v v="${value}" -v l="${limit}" -v op="${op}" 'BEGIN {
        ok = (op == "<=") ? v <= l : (op == "<") ? v < l : (op == ">=") ? v >= l : (op == ">") ? v > l : 0
        exit ok ? 0 : 1 }'; then
      echo "target met: ${name} ${value} ${unit} ${op} ${limit}"
    else
      echo "TARGET MISSED: ${name} ${value} ${unit} (target ${op} ${limit})"
      misses=$((misses + 1))
    fi
  done <<<"${out}"
done
exit $((misses > 0 ? 1 : 0))
