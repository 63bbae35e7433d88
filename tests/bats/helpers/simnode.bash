# shellcheck shell=bash
# Shared by the bats files: Debian's bats-support and bats-assert, the simnode library, and a
# few measurements. Load it with `load helpers/simnode` from setup().

# Debian installs the bats libraries under /usr/lib/bats; ask dpkg where, so that a layout change
# in a later package shows up as a clear failure here rather than a missing function later.
ppm__bats_lib_dir() {
  local dir
  dir="$(dpkg -L "$1" 2>/dev/null | grep '/load\.bash$' | head -n1)"
  if [[ -z "${dir}" ]]; then
    dir="/usr/lib/bats/$1/load.bash"
  fi
  dirname "${dir}"
}
load "$(ppm__bats_lib_dir bats-support)/load"
load "$(ppm__bats_lib_dir bats-assert)/load"

PPM_REPO_ROOT="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
# shellcheck source=scripts/simnode.sh
source "${PPM_REPO_ROOT}/scripts/simnode.sh"

# ppm_elapsed NAME VERB: seconds from VERB_start to VERB_done for a pod (e.g. add, del).
ppm_elapsed() {
  awk -v a="$(simnode_pod_file "$1" "$2_start")" -v b="$(simnode_pod_file "$1" "$2_done")" \
    'BEGIN { if (a == "" || b == "") exit 1; printf "%.3f\n", b - a }'
}

# ppm_assert_lt VALUE BOUND WHAT: fails with a readable message unless VALUE < BOUND (decimals).
ppm_assert_lt() {
  if ! awk -v v="$1" -v b="$2" 'BEGIN { exit !(v + 0 < b + 0) }'; then
    fail "$3: ${1} is not below ${2}"
  fi
}

# ppm_count_files NAME_FILE POD...: how many of the pods have the given state file.
ppm_count_files() {
  local file="$1" pod n=0
  shift
  for pod in "$@"; do
    if [[ -e "$(simnode__pod_dir "${pod}")/${file}" ]]; then n=$((n + 1)); fi
  done
  echo "${n}"
}

# ppm_teardown: dumps what helps to understand a failure (bats shows it only for failed tests),
# then removes the node.
ppm_teardown() {
  if [[ -n "${SIMNODE_DIR:-}" && -d "${SIMNODE_DIR}" ]]; then
    local f
    echo "# --- agent log (tail)" >&2
    tail -n 40 "${SIMNODE_DIR}/agent.log" >&2 2>/dev/null || true
    for f in "${SIMNODE_DIR}"/pods/*/add.err "${SIMNODE_DIR}"/pods/*/del.err; do
      if [[ -s "${f}" ]]; then
        echo "# --- ${f#"${SIMNODE_DIR}"/}" >&2
        tail -n 10 "${f}" >&2
      fi
    done
  fi
  simnode_down
}
