#!/usr/bin/env bash
# Installs metajax on a Cloud TPU VM (run on every worker: launch/tpu_pod.sh does it with --worker=all).
# Usage: bash tpu_setup.sh [REPO_DIR]
set -euo pipefail
repo="${1:-$(cd "$(dirname "$0")" && pwd)}"
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e "${repo}[tpu]"
python3 -c "import jax; print(f'jax {jax.__version__}: {jax.device_count()} devices, {jax.local_device_count()} local')"
