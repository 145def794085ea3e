"""`python -m metajax.aot`: ahead-of-time compile reports for TPU slices, compiled on this CPU by
libtpu. The compile tests are skipped, saying why, where libtpu is not installed."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

from metajax.aot.__main__ import main
from metajax.aot.estimate import Dims, flops
from metajax.aot.report import count_collectives
from metajax.aot.topologies import parse_slice
from metajax.models import ModelConfig, abstract_params
from metajax.models.logprobs import shared_prefix_logprobs, token_logprobs
from metajax.train import SFTLoss, make_train_step
from metajax.train.state import abstract_train_state

RAM_TOY = Path(__file__).resolve().parent.parent / "configs" / "ram_toy.yaml"
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install -e '.[aot]'): nothing can compile for TPU")


@needs_libtpu
def test_toy_ram_run_compiles_for_a_v5e_2x2_slice(tmp_path, capsys):
    out = tmp_path / "aot.json"
    assert main(["--config", str(RAM_TOY), "--topology", "v5e:2x2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1] == "fits: yes"
    results = {r["program"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"rollouts", "scoring", "sft_step"}
    for result in results.values():
        assert result["fits"] and 0 < result["peak_gib"] < result["hbm_gib"] == 16.0
        assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # FSDP over 4 chips gathers each layer's weights, and the gradient step reduces across chips.
    assert results["sft_step"]["collectives"]["all-gather"] > 0
    assert results["sft_step"]["collectives"]["all-reduce"] > 0


@needs_libtpu
def test_a_program_that_does_not_fit_exits_nonzero_with_a_setting_that_does(capsys):
    code = main(["--config", str(RAM_TOY), "--topology", "v5e:2x2", "--programs", "sft_step",
                 "--set", "expert_iteration.batch_size=4096"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "Ran out of memory" in printed or "RESOURCE_EXHAUSTED" in printed
    suggestion = next(line for line in printed.splitlines() if "suggested:" in line)
    assert "--set model.remat=full" in suggestion and suggestion.endswith("fits)")
    assert printed.rstrip().splitlines()[-1] == "fits: no"


def test_bad_topology_or_program_names_the_choices(capsys):
    assert main(["--topology", "v9-8"]) == 2
    assert "v5p-64" in capsys.readouterr().err


def test_slice_names_map_to_topologies():
    assert (parse_slice("v5p-64").topology_name, parse_slice("v5p-64").num_devices) == ("v5:2x4x4", 32)
    assert (parse_slice("v5e-16").topology_name, parse_slice("v5e-16").num_devices) == ("v5e:4x4", 16)
    assert (parse_slice("v6e-8").topology_name, parse_slice("v4-32").num_devices) == ("v6e:2x4", 16)
    assert parse_slice("v5e:2x2").chip.hbm_gib == 16.0


def test_collectives_are_counted_by_kind():
    hlo = """
      %all-gather.1 = bf16[8,128]{1,0} all-gather(bf16[2,128]{1,0} %p), dimensions={0}
      %ar = f32[] all-reduce-start(f32[] %x), to_apply=%sum
      %ar.done = f32[] all-reduce-done(f32[] %ar)
      %cp = f32[4]{0} collective-permute(f32[4]{0} %y), source_target_pairs={{0,1}}
      %fusion = f32[4]{0} fusion(f32[4]{0} %cp), calls=%all-gather_fused
    """
    assert count_collectives(hlo) == {"all-gather": 1, "all-reduce": 1, "collective-permute": 1}


@pytest.mark.parametrize("attention,remat", [("blockwise", "none"), ("blockwise", "full"), ("reference", "save_dots")])
def test_analytic_flops_match_the_compiler_on_one_layer(attention, remat):
    """With one layer the scan body runs once, so the compiler's count is complete: the two agree.
    At 256 tokens "blockwise" skips a quarter of the attention pairs, which the estimate must see."""
    cfg = ModelConfig.of("llama", vocab_size=1024, hidden_size=256, intermediate_size=1024, num_layers=1,
                         num_heads=4, num_kv_heads=2, attention=attention)
    sgd = optax.sgd(1.0)
    params = abstract_params(cfg)
    batch = {k: jax.ShapeDtypeStruct((4, 256), dtype)
             for k, dtype in (("tokens", jnp.int32), ("loss_mask", bool), ("attention_mask", bool))}
    step = make_train_step(cfg, sgd, SFTLoss(), remat=remat).lower(abstract_train_state(params, sgd), batch).compile()
    assert step.cost_analysis()["flops"] == pytest.approx(flops(cfg, Dims("train", 4, 256, remat=remat)), rel=0.03)
    forward = token_logprobs.lower(params, cfg, batch["tokens"]).compile()
    assert forward.cost_analysis()["flops"] == pytest.approx(flops(cfg, Dims("score", 4, 256)), rel=0.03)


def test_analytic_flops_of_shared_prefix_scoring_match_the_compiler_on_one_layer():
    """Chain scoring as RaM runs it: 4 prompts of 256 tokens, 4 continuations of 160 each (two query
    blocks, the second partial), 32 answer tokens reach the vocabulary projection."""
    cfg = ModelConfig.of("llama", vocab_size=1024, hidden_size=256, intermediate_size=1024, num_layers=1,
                         num_heads=4, num_kv_heads=2)
    prompt, prompt_mask = (jax.ShapeDtypeStruct((4, 256), dtype) for dtype in (jnp.int32, bool))
    tokens, mask = (jax.ShapeDtypeStruct((4, 4, 160), dtype) for dtype in (jnp.int32, bool))
    scoring = shared_prefix_logprobs.lower(abstract_params(cfg), cfg, prompt, prompt_mask, tokens, mask, mask,
                                           max_targets=32).compile()
    want = flops(cfg, Dims("score_shared", 4, 256, samples=4, new_tokens=32, continuation=160))
    assert scoring.cost_analysis()["flops"] == pytest.approx(want, rel=0.03)
