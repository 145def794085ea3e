#!/usr/bin/env bash
# Every GPU check in one command, about 10 minutes on one GPU:
#   1. the parity tests (transformers, the attention implementations, sampling) on the GPU backend,
#      at full fp32 matmul precision (XLA's GPU default may round fp32 products through TF32);
#   2. a tiny GRPO run and a tiny RaM iteration on the bundled toy model;
#   3. the benchmarks' GPU reports: bf16 chain-scoring MFU of a ~1B Llama (target >= 50%) and bf16
#      decode tokens/s against the HBM roofline (target >= 60%).
# Each step's output goes to $GPU_CHECK_OUT (default gpu_check_out/) and the last lines summarise.
#
#   pip install -e ".[test]" "jax[cuda12]" && bash benchmarks/gpu_check.sh
#   GPU_CHECK_ON_CPU=1 bash benchmarks/gpu_check.sh --small   # the same steps, tiny, on CPU
#
# --hbm-gbps and --peak-tflops default to an H100 SXM (3350 GB/s, 989 bf16 TFLOP/s); set
# GPU_HBM_GBPS / GPU_PEAK_TFLOPS for another chip.
set -euo pipefail
cd "$(dirname "$0")/.."

small=""
if [[ "${1:-}" == "--small" ]]; then small="--small"; elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--small]" >&2; exit 2
fi
backend=$(python -c "import jax; print(jax.default_backend())")
if [[ "$backend" != "gpu" && -z "${GPU_CHECK_ON_CPU:-}" ]]; then
  echo "gpu_check: jax's backend here is '$backend', not gpu. Install jax with CUDA" \
       "(pip install \"jax[cuda12]\"), or set GPU_CHECK_ON_CPU=1 to run the steps on CPU." >&2
  exit 2
fi
platform=$([[ "$backend" == "gpu" ]] && echo cuda || echo cpu)
out=${GPU_CHECK_OUT:-gpu_check_out}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
summary=()

step() {  # step NAME COMMAND...: runs COMMAND, output to $out/NAME.log, and records pass or fail
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$out/$name.log" 2>&1; then summary+=("$name: ok"); else summary+=("$name: FAILED (see $out/$name.log)"); fi
  tail -n 4 "$out/$name.log"
}

# One pytest process (-n 0): two workers would each claim most of the GPU memory.
step parity env JAX_PLATFORMS="$platform" JAX_DEFAULT_MATMUL_PRECISION=highest \
  python -m pytest -q -n 0 -p no:cacheprovider tests/test_models.py tests/test_attention.py tests/test_sampling.py
step grpo python -m metajax.main --config configs/grpo_toy.yaml --set run_dir="$out/grpo" \
  --set grpo.max_steps=2 --set grpo.save_steps=2 --set data.num_eval=64 --set eval.methods=[base,grpo]
step ram python -m metajax.main --config configs/ram_toy.yaml --set run_dir="$out/ram" \
  --set expert_iteration.iterations=1 --set expert_iteration.questions_per_iteration=64 \
  --set data.num_eval=64 --set eval.methods=[base,ram]
step score_report python benchmarks/score.py --gpu-report --batch 16 --seq 1024 \
  --peak-tflops "${GPU_PEAK_TFLOPS:-989}" $small
step sample_report python benchmarks/sample.py --gpu-report --hbm-gbps "${GPU_HBM_GBPS:-3350}" $small

echo
echo "gpu_check on $backend ($(python -c "import jax; print(jax.devices()[0].device_kind)")):"
printf '  %s\n' "${summary[@]}"
[[ "${summary[*]}" != *FAILED* ]]
