#!/usr/bin/env bash
# Starts metajax on one node of a multi-node GPU job; run it on every node (e.g. from `srun` or your
# scheduler). JAX's multi-controller runtime joins the processes into one global mesh.
#
# Usage: COORDINATOR=host:port NUM_NODES=N NODE_RANK=i launch/gpu_multinode.sh [--dry-run] CONFIG [--set k=v ...]
# Under SLURM the three variables default to the job's own (SLURM_* variables). --dry-run prints the
# command this node would run. run_dir must be a filesystem every node shares (checkpoints are saved
# and restored by all nodes together; node 0 writes the results).
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 1 ]; then
  echo "usage: COORDINATOR=host:port NUM_NODES=N NODE_RANK=i $0 [--dry-run] CONFIG [--set key=value ...]" >&2
  exit 2
fi
config="$1"; shift
first_host="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n1 || true)"
export JAX_COORDINATOR_ADDRESS="${COORDINATOR:-${first_host:?set COORDINATOR=host:port}:12355}"
export JAX_NUM_PROCESSES="${NUM_NODES:-${SLURM_NNODES:?set NUM_NODES}}"
export JAX_PROCESS_ID="${NODE_RANK:-${SLURM_NODEID:?set NODE_RANK}}"
cd "$(dirname "$0")/.."
command=(python3 -m metajax.main --distributed --config "$config" "$@")
if [ "$dry_run" = 1 ]; then
  printf 'cd %q && JAX_COORDINATOR_ADDRESS=%q JAX_NUM_PROCESSES=%q JAX_PROCESS_ID=%q' "$PWD" \
    "$JAX_COORDINATOR_ADDRESS" "$JAX_NUM_PROCESSES" "$JAX_PROCESS_ID"
  printf ' %q' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
