"""The README's table of paper settings on TPU slices: `python -m metajax.aot` for each (config,
slice), collected into one markdown table.

    python benchmarks/aot_paper_settings.py [--slices v5e-16,v5p-8,v6e-8] [--out table.md]

Needs libtpu (`pip install -e '.[aot]'`); compiles on this CPU, about a minute per program.
Each row is a config as shipped; where a program does not fit, the last column is the setting
`metajax.aot` suggests, confirmed by its compile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [  # (label, config, programs, extra aot arguments)
    ("RaM SFT, Llama-3.2-3B (batch 16, seq 2048)", "ram_llama3.2-3b_gsm8k.yaml", "sft_step", []),
    ("RaM rollouts, Llama-3.2-3B (64 prompts x K=3, 512 new)", "ram_llama3.2-3b_gsm8k.yaml", "rollouts", []),
    ("RaM SFT, Llama-3.1-8B (batch 16, seq 2048)", "ram_llama3.1-8b_gsm8k.yaml", "sft_step", []),
    ("RaM rollouts, Llama-3.1-8B (64 prompts x K=3, 512 new)", "ram_llama3.1-8b_gsm8k.yaml", "rollouts", []),
    ("RARL step, Qwen2.5-1.5B-Instruct (16 x G=8, 512 + 1024 tokens)", "roi_qwen2.5-1.5b-instruct_medium_512.yaml",
     "rarl_policy_gradient_step", ["--prompt-len", "512"]),
    ("RARL rollouts, Qwen2.5-1.5B-Instruct (16 x G=8, 1024 new)", "roi_qwen2.5-1.5b-instruct_medium_512.yaml",
     "rarl_rollouts", ["--prompt-len", "512"]),
    # Without remat, to show where it is needed and what metajax.aot suggests instead.
    ("RaM SFT, Llama-3.2-3B, remat none", "ram_llama3.2-3b_gsm8k.yaml", "sft_step", ["--set", "model.remat=none"]),
    ("RaM SFT, Llama-3.1-8B, remat none", "ram_llama3.1-8b_gsm8k.yaml", "sft_step", ["--set", "model.remat=none"]),
    ("RARL step, Qwen2.5-1.5B-Instruct, remat none", "roi_qwen2.5-1.5b-instruct_medium_512.yaml",
     "rarl_policy_gradient_step", ["--prompt-len", "512", "--set", "model.remat=none"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="v5e-16,v5p-8,v6e-8")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--select", help="only the settings whose label contains this")
    args = parser.parse_args()
    rows = ["| setting | slice | mesh (data, fsdp, tensor) | remat | peak GiB / device | fits | a setting that fits |",
            "|---|---|---|---|---|---|---|"]
    for label, config, program, extra in SETTINGS:
        if args.select and args.select not in label:
            continue
        for target in args.slices.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "aot.json"
                command = [sys.executable, "-m", "metajax.aot", "--config", str(ROOT / "configs" / config),
                           "--topology", target, "--programs", program, "--json", str(out), *extra]
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
                if done.returncode not in (0, 1) or not out.exists():
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
                (result,) = json.loads(out.read_text())
            remat = re.search(r"remat (\w+)", result["what"])
            suggestion = re.search(r"suggested: (.*?) \(mesh.*compiled peak ([\d.]+) GiB", done.stdout)
            fix = f"`{suggestion.group(1)}` ({suggestion.group(2)} GiB)" if suggestion else (
                "" if result["fits"] else "none on this slice")
            peak = f"{result['peak_gib']:.2f} of {result['hbm_gib']:g}" if result["error"] is None else (
                f"OOM (est. {result['estimate_gib']:.0f})")
            mesh = result["mesh"]
            rows.append(f"| {label} | {target} | {mesh['data']}, {mesh['fsdp']}, {mesh['tensor']} | "
                        f"{remat.group(1) if remat else '-'} | {peak} | {'yes' if result['fits'] else 'no'} | {fix} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
