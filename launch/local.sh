#!/usr/bin/env bash
# Starts N metajax processes on this machine, joined by JAX's multi-controller runtime exactly as the
# workers of a pod slice are (`--distributed`, the coordinator on 127.0.0.1, gloo collectives on CPU):
# the way to try a multi-host run, and the 2-process tests' launcher.
#
# Usage: [DEVICES_PER_PROCESS=d] [PORT=p] launch/local.sh N CONFIG [--set key=value ...]
#   DEVICES_PER_PROCESS: CPU devices each process fakes (XLA's host platform device count); default 1.
#   --dry-run as the first argument prints the commands instead of running them.
# Process i writes its output to the terminal prefixed with [i]; the script exits non-zero if any
# process does, and a Ctrl-C or the failure of one process stops them all.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: [DEVICES_PER_PROCESS=d] [PORT=p] $0 [--dry-run] N CONFIG [--set key=value ...]" >&2
  exit 2
fi
n="$1"; config="$2"; shift 2
devices="${DEVICES_PER_PROCESS:-1}"
port="${PORT:-$((20000 + RANDOM % 20000))}"
cd "$(dirname "$0")/.."
# Process i's command, built in one place for both the dry run and the launch.
process_command() {
  command=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
           "JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "JAX_NUM_PROCESSES=$n" "JAX_PROCESS_ID=$1"
           python3 -m metajax.main --distributed --config "$config" "${@:2}")
}
if [ "$dry_run" = 1 ]; then
  for ((i = 0; i < n; i++)); do
    process_command "$i" "$@"
    printf '%q' "${command[0]}"; printf ' %q' "${command[@]:1}"; echo
  done
  exit 0
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM EXIT
for ((i = 0; i < n; i++)); do
  process_command "$i" "$@"
  "${command[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done
status=0
for _ in "${pids[@]}"; do
  # The first process to fail stops the rest: they would only wait for it at the next collective.
  if ! wait -n; then status=1; kill "${pids[@]}" 2>/dev/null || true; fi
done
trap - INT TERM EXIT
exit "$status"
