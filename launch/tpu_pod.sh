#!/usr/bin/env bash
# Runs one metajax command on every worker of a Cloud TPU VM pod slice: JAX's multi-controller runtime
# makes them one program over one global mesh (`jax.distributed.initialize()` finds its peers itself
# on TPU VMs).
#
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [--set key=value ...]
#   TPU_NAME, ZONE: an existing TPU VM (e.g. a v5p-64 slice), created with `gcloud compute tpus tpu-vm create`.
#   The repository is copied to ~/metajax on each worker and installed with tpu_setup.sh.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [--set key=value ...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; config="$3"; shift 3
repo="$(cd "$(dirname "$0")/.." && pwd)"
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$repo" "$tpu":~/metajax
ssh_all "bash ~/metajax/tpu_setup.sh ~/metajax"
ssh_all "cd ~/metajax && python3 -m metajax.main --distributed --config $config $*"
