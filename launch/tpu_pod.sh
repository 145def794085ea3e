#!/usr/bin/env bash
# Runs one metajax command on every worker of a Cloud TPU VM pod slice: JAX's multi-controller runtime
# makes them one program over one global mesh (`jax.distributed.initialize()` finds its peers itself
# on TPU VMs).
#
# Usage: launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG [--set key=value ...]
#   TPU_NAME, ZONE: an existing TPU VM (e.g. a v5p-64 slice), created with `gcloud compute tpus tpu-vm create`.
#   The repository is copied to ~/metajax on each worker and installed with tpu_setup.sh.
#   --dry-run prints the three gcloud commands instead of running them.
#   run_dir must be a directory every worker reads and writes (a shared mount: NFS, Filestore, or a
#   bucket through gcsfuse): the workers save and restore orbax checkpoints there together, and
#   process 0 writes the results.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 3 ]; then
  echo "usage: $0 [--dry-run] TPU_NAME ZONE CONFIG [--set key=value ...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; config="$3"; shift 3
repo="$(cd "$(dirname "$0")/.." && pwd)"
run_args="$(printf '%q ' --config "$config" "$@")"
commands=(
  "gcloud compute tpus tpu-vm scp --recurse --zone $(printf %q "$zone") --worker=all $(printf %q "$repo") $(printf %q "$tpu"):~/metajax"
  "gcloud compute tpus tpu-vm ssh $(printf %q "$tpu") --zone $(printf %q "$zone") --worker=all --command $(printf %q "bash ~/metajax/tpu_setup.sh ~/metajax")"
  "gcloud compute tpus tpu-vm ssh $(printf %q "$tpu") --zone $(printf %q "$zone") --worker=all --command $(printf %q "cd ~/metajax && python3 -m metajax.main --distributed ${run_args% }")"
)
for command in "${commands[@]}"; do
  if [ "$dry_run" = 1 ]; then echo "$command"; else eval "$command"; fi
done
