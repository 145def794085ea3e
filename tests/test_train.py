"""SFT loss, step, optimizer and batching against independent references (optax, numpy, the
transformers linear schedule formula)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from metajax.batching import bucket
from metajax.models import ModelConfig, abstract_params, forward, init_params, make_mesh
from metajax.train import (MetricsWriter, NonFiniteError, OptimizerConfig, SFTLoss, check_finite, init_train_state,
                           make_optimizer, make_schedule, make_train_step, num_sft_batches, read_metrics, sft_batches,
                           sft_loss_terms)

CFG = ModelConfig.of("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), std=0.1)


def _sequences(n=4, seed=0, lengths=(10, 13, 7, 9, 12, 5, 8, 11)):
    """(tokens, loss_mask) pairs: a 3-token prompt, then targets."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, CFG.vocab_size, lengths[i % len(lengths)]).tolist(),
             [False] * 3 + [True] * (lengths[i % len(lengths)] - 3)) for i in range(n)]


def _batch(n=4, seed=0):
    return next(sft_batches(_sequences(n, seed), batch_size=n, seed=0, epoch=0))


SGD = optax.sgd(1.0)


def _sgd_step(**step_kwargs):
    """The SFT step with plain SGD (cached by `make_train_step`: one compile per setting)."""
    return make_train_step(CFG, SGD, SFTLoss(), **step_kwargs)


def _gradient(params, batch, **step_kwargs):
    """The step's gradient, read off one SGD update with learning rate 1, and its metrics."""
    state = init_train_state(params, SGD, jax.random.PRNGKey(0))
    new_state, metrics = _sgd_step(**step_kwargs)(state, batch)
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), params, new_state.params), metrics


def _max_abs_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


# ----------------------------------------------------------------------------------------------
# Loss and step


def test_sft_loss_terms_match_optax_cross_entropy_on_masked_positions(params):
    batch = _batch()
    loss_mask = batch["loss_mask"].copy()
    loss_mask[:, 0] = True  # position 0 has no context: must be ignored
    loss_sum, count = sft_loss_terms(params, CFG, batch["tokens"], loss_mask,
                                     attention_mask=batch["attention_mask"])

    logits = forward(params, CFG, batch["tokens"], attention_mask=batch["attention_mask"])
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["tokens"][:, 1:]))
    targets = batch["loss_mask"][:, 1:]
    assert count == targets.sum() == sum(len(m) - 3 for _, m in _sequences())
    np.testing.assert_allclose(loss_sum, ce[targets].sum(dtype=np.float64), rtol=1e-5)


def test_loss_falls_when_memorising_and_lr_follows_the_linear_schedule(params):
    optim = OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.1)
    optimizer, schedule = make_optimizer(optim), make_schedule(optim, total_steps=50)
    state = init_train_state(params, optimizer, jax.random.PRNGKey(1))
    step, batch = make_train_step(CFG, optimizer, SFTLoss()), _batch()
    losses, lrs = [], []
    for n in range(50):
        state, metrics = step(state, batch, schedule(n))
        losses.append(float(metrics["loss"]))
        lrs.append(float(metrics["lr"]))
    assert int(state.step) == 50
    assert losses[0] > 3.5 and losses[-1] < 0.3 * losses[0], losses[::10]
    np.testing.assert_allclose(lrs, [_hf_linear_lr(s, peak=1e-2, warmup=5, total=50) for s in range(50)],
                               rtol=1e-5, atol=1e-12)
    assert float(params["embed"][0, 0]) == float(params["embed"][0, 0])  # caller's params survive donation


def test_grad_accumulation_equals_one_big_batch(params):
    batch = _batch()
    counts = batch["loss_mask"].sum(axis=1)
    # Micro-batches of rows (0, 2) and (1, 3): unequal target counts, so a mean of means would differ.
    assert counts[0::2].sum() != counts[1::2].sum()
    grads, metrics = _gradient(params, batch)
    grads_accum, metrics_accum = _gradient(params, batch, grad_accum=2)
    assert _max_abs_diff(grads, grads_accum) <= 1e-6
    np.testing.assert_allclose(metrics_accum["loss"], metrics["loss"], rtol=1e-6)
    assert metrics_accum["num_targets"] == metrics["num_targets"] == counts.sum()
    with pytest.raises(ValueError, match="grad_accum=3"):
        _sgd_step(grad_accum=3)(init_train_state(params, SGD, jax.random.PRNGKey(0)), batch)


def test_grad_is_that_of_the_mean_loss_and_norm_is_reported(params):
    batch = _batch()
    grads, metrics = _gradient(params, batch)

    def mean_loss(p):
        loss_sum, count = sft_loss_terms(p, CFG, batch["tokens"], batch["loss_mask"],
                                         attention_mask=batch["attention_mask"])
        return loss_sum / count

    want = jax.jit(jax.grad(mean_loss))(params)
    assert _max_abs_diff(grads, want) <= 1e-6
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(want), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], mean_loss(params), rtol=1e-6)


@pytest.mark.parametrize("remat", ["save_dots", "full", True])
def test_remat_gives_the_same_gradient(params, remat):
    batch = _batch()
    grads, _ = _gradient(params, batch)
    grads_remat, _ = _gradient(params, batch, remat=remat)
    assert _max_abs_diff(grads, grads_remat) <= 1e-6


def test_remat_policies_trade_memory_in_order():
    """Compiled ahead of time from abstract shapes: each stronger policy keeps fewer activations."""
    cfg = ModelConfig.of("llama", vocab_size=512, hidden_size=128, intermediate_size=512, num_layers=4,
                         num_heads=4, num_kv_heads=2)
    params = abstract_params(cfg)
    state = jax.eval_shape(lambda p: init_train_state(p, SGD, jax.random.PRNGKey(0)), params)
    batch = {"tokens": jax.ShapeDtypeStruct((8, 256), jnp.int32), "loss_mask": jax.ShapeDtypeStruct((8, 256), bool),
             "attention_mask": jax.ShapeDtypeStruct((8, 256), bool)}
    temp = {remat: make_train_step(cfg, SGD, SFTLoss(), remat=remat).lower(state, batch).compile()
            .memory_analysis().temp_size_in_bytes for remat in ("none", "save_dots", "full")}
    assert temp["none"] > 1.5 * temp["save_dots"] and temp["save_dots"] > temp["full"], temp


def test_unknown_remat_policy_is_named():
    with pytest.raises(ValueError, match="remat='dots'.*full.*none.*save_dots"):
        _sgd_step(remat="dots")


def test_bf16_compute_keeps_fp32_master_params_and_stays_close(params):
    batch = _batch()
    state = init_train_state(params, SGD, jax.random.PRNGKey(0))
    new_state, metrics16 = _sgd_step(compute_dtype=jnp.bfloat16)(state, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
    grads16 = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), params, new_state.params)

    grads, metrics32 = _gradient(params, batch)
    np.testing.assert_allclose(metrics16["loss"], metrics32["loss"], rtol=1e-2)
    assert metrics16["loss"] != metrics32["loss"]  # bf16 really ran
    rel = float(optax.tree.norm(jax.tree.map(np.subtract, grads16, grads)) / optax.tree.norm(grads))
    assert 0 < rel < 0.05


def test_mesh_step_matches_one_device(params):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices: tests/conftest.py sets them up")
    mesh = make_mesh((2, 2, 2))
    sharded = init_params(CFG, jax.random.PRNGKey(0), std=0.1, mesh=mesh)
    batch = _batch()
    grads, metrics = _gradient(params, batch)

    state = init_train_state(sharded, SGD, jax.random.PRNGKey(0))
    new_state, metrics_mesh = _sgd_step(mesh=mesh)(state, batch)
    np.testing.assert_allclose(metrics_mesh["loss"], metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_mesh["grad_norm"], metrics["grad_norm"], rtol=1e-5)
    grads_mesh = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), params, new_state.params)
    assert _max_abs_diff(grads, grads_mesh) <= 1e-6
    for new, old in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(sharded)):
        assert new.sharding.is_equivalent_to(old.sharding, old.ndim), (new.sharding, old.sharding)
    assert sharded["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)  # really split

    adam_state = init_train_state(sharded, make_optimizer(OptimizerConfig()), jax.random.PRNGKey(0))
    mu = optax.tree_utils.tree_get(adam_state.opt_state, "mu")
    assert mu["layers"]["w_up"].sharding.is_equivalent_to(sharded["layers"]["w_up"].sharding, 3)


def test_one_step_serves_every_schedule_length(params):
    """RaM's rounds differ in length; the step takes the rate as an argument, so it compiles once."""
    optim = OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, schedule="constant")
    first = make_train_step(CFG, make_optimizer(optim), SFTLoss())
    assert make_train_step(CFG, make_optimizer(optim), SFTLoss()) is first
    state = init_train_state(params, make_optimizer(optim), jax.random.PRNGKey(0))
    state, metrics = first(state, _batch(), 0.25)
    assert float(metrics["lr"]) == 0.25


def test_nonfinite_steps_stop_the_run_or_are_skipped(params):
    batch = _batch()
    poisoned = jax.tree.map(lambda x: x, params)
    poisoned["final_norm"] = poisoned["final_norm"].at[0].set(jnp.nan)
    optim = OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, schedule="constant")
    optimizer = make_optimizer(optim)
    stop = make_train_step(CFG, optimizer, SFTLoss())
    _, metrics = stop(init_train_state(poisoned, optimizer, jax.random.PRNGKey(0)), batch, 0.01)
    record = {k: float(v) for k, v in metrics.items()}
    assert record["nonfinite"] == 1.0
    with pytest.raises(NonFiniteError, match="sft step 7: the loss or gradient is NaN"):
        check_finite(record, stage="sft", step=7, skip_nonfinite=False)
    check_finite(record, stage="sft", step=7, skip_nonfinite=True)

    skip = make_train_step(CFG, optimizer, SFTLoss(), skip_nonfinite=True)
    state = init_train_state(poisoned, optimizer, jax.random.PRNGKey(0))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, metrics = skip(state, batch, 0.01)
    assert float(metrics["nonfinite"]) == 1.0 and int(state.step) == 1
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    same = jax.tree.map(lambda a, b: np.array_equal(a, b, equal_nan=True), before[0], after[0])
    assert all(jax.tree.leaves(same))  # params untouched by the skipped update


# ----------------------------------------------------------------------------------------------
# Optimizer


def _hf_linear_lr(step, *, peak, warmup, total):
    """transformers' get_linear_schedule_with_warmup."""
    if step < warmup:
        return peak * step / max(1, warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def test_linear_schedule_matches_transformers_formula():
    schedule = make_schedule(OptimizerConfig(learning_rate=1e-6), total_steps=250)  # ceil(2.5) = 3 warm-up
    for step in (0, 1, 2, 3, 4, 100, 249, 250):
        np.testing.assert_allclose(schedule(step), _hf_linear_lr(step, peak=1e-6, warmup=3, total=250),
                                   rtol=1e-6, atol=1e-15)


def test_a_one_update_run_trains_at_the_peak_rate():
    # ceil(0.05 * 1) = 1 warm-up update would be the whole run, at lr 0.
    for kind in ("linear", "constant", "cosine"):
        schedule = make_schedule(OptimizerConfig(learning_rate=1e-5, schedule=kind, warmup_fraction=0.05), 1)
        assert float(schedule(0)) == pytest.approx(1e-5)
    two = make_schedule(OptimizerConfig(learning_rate=1e-5, warmup_fraction=0.05), 2)
    assert [float(two(s)) for s in (0, 1)] == pytest.approx([0.0, 1e-5])


def test_constant_and_cosine_schedules():
    constant = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="constant", warmup_fraction=0.0), 10)
    assert [float(constant(s)) for s in (0, 5, 10)] == [2.0, 2.0, 2.0]
    cosine = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="cosine", warmup_fraction=0.2), 10)
    want = [1.0, 2.0, 1.0 + np.cos(np.pi * 2 / 8), 1.0, 0.0]
    np.testing.assert_allclose([cosine(s) for s in (1, 2, 4, 6, 10)], want, rtol=1e-6, atol=1e-7)


def test_clipping_bounds_the_gradient_that_adam_sees():
    """Clip-then-Adam on [huge, small] gradients equals plain Adam on the clipped gradients."""
    params = {"w": jnp.zeros(3)}
    grads = [{"w": jnp.array([600.0, -800.0, 0.0])}, {"w": jnp.array([0.1, 0.3, -0.2])}]  # norms 1000, 0.37

    def updates(optimizer, grads):
        state, out = optimizer.init(params), []
        for g in grads:
            u, state = optimizer.update(g, state, params)
            out.append(np.asarray(u["w"]))
        return out

    clipped = updates(make_optimizer(OptimizerConfig(learning_rate=0.1, schedule="constant",
                                                     warmup_fraction=0.0, max_grad_norm=1.0)), grads)
    want = updates(optax.adam(0.1), [{"w": grads[0]["w"] / 1000.0}, grads[1]])
    np.testing.assert_allclose(clipped, want, rtol=1e-5)
    unclipped = updates(make_optimizer(OptimizerConfig(learning_rate=0.1, schedule="constant",
                                                       warmup_fraction=0.0, max_grad_norm=None)), grads)
    assert np.abs(unclipped[1] - want[1]).max() > 1e-2  # so the clip is what made them agree


@pytest.mark.parametrize("bad, match", [(dict(schedule="exp"), "schedule"), (dict(warmup_fraction=1.5), "warmup"),
                                        (dict(max_grad_norm=0.0), "max_grad_norm")])
def test_optimizer_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**bad)


# ----------------------------------------------------------------------------------------------
# Batching


def test_sft_batches_are_deterministic_bucketed_and_padded():
    sequences = _sequences(7, lengths=(3, 20, 5, 9, 17, 4, 6))

    def epoch(e, **kw):
        return list(sft_batches(sequences, batch_size=3, seed=5, epoch=e, **kw))

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert len(first) == num_sft_batches(7, 3) == 3
    for a, b in zip(first, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a["tokens"][:, :3], b["tokens"][:, :3]) for a, b in zip(first, second))

    seen = []
    for batch in first:
        lengths = batch["attention_mask"].sum(axis=1)
        assert batch["tokens"].shape == (3, bucket(lengths.max())) and batch["tokens"].dtype == np.int32
        assert not (batch["loss_mask"] & ~batch["attention_mask"]).any()
        assert (batch["tokens"][~batch["attention_mask"]] == 0).all()
        for row, n in zip(batch["tokens"], lengths):
            if n:
                seen.append(tuple(row[:n]))
    assert sorted(seen) == sorted(tuple(t) for t, _ in sequences)  # each sequence exactly once
    assert {b["tokens"].shape[1] for b in first} <= {16, 32}
    last = first[-1]  # 7 = 3 + 3 + 1: two all-masked filler rows
    assert last["attention_mask"].sum(axis=1).tolist().count(0) == 2
    assert not last["loss_mask"][last["attention_mask"].sum(axis=1) == 0].any()
    assert len(epoch(0, drop_last=True)) == 2


def test_sft_batches_reject_bad_input():
    with pytest.raises(ValueError, match="loss_mask"):
        list(sft_batches([([1, 2, 3], [False, True])], batch_size=1, seed=0, epoch=0))
    with pytest.raises(ValueError, match="empty"):
        list(sft_batches([], batch_size=1, seed=0, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        list(sft_batches(_sequences(2), batch_size=0, seed=0, epoch=0))


# ----------------------------------------------------------------------------------------------
# Metrics


def test_metrics_jsonl_lines_parse(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": jnp.float32(2.5), "lr": np.float64(1e-6), "n": 3}, stage="sft")
        writer.write(2, {"loss": float("nan")}, stage="eval")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["stage"]) for r in records] == [(1, "sft"), (2, "eval")]
    assert records[0]["metrics"] == {"loss": 2.5, "lr": 1e-6, "n": 3.0}
    assert records[1]["metrics"] == {"loss": None}
    assert records[0]["time"] <= records[1]["time"]
    assert read_metrics(tmp_path) == records

    assert {r["attempt"] for r in records} == {1}

    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "stage": "sf')  # a run killed in the middle of a line
    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # a resumed run appends, as attempt 2
        assert writer.attempt == 2
        writer.write(2, {"loss": 0.5}, stage="eval")  # redone after the resume
        writer.write(3, {"loss": 1.0}, stage="sft")
        with pytest.raises(ValueError, match="'hist'"):
            writer.write(3, {"hist": np.zeros(3)}, stage="sft")
    assert len(read_metrics(tmp_path, all_attempts=True)) == 4  # the torn line is skipped, not fatal
    latest = read_metrics(tmp_path)
    assert [(r["stage"], r["step"], r["attempt"]) for r in latest] == [("sft", 1, 1), ("eval", 2, 2), ("sft", 3, 2)]
    assert latest[1]["metrics"] == {"loss": 0.5}
    assert len(read_metrics(tmp_path)) == 3


def test_metrics_tensorboard_required_but_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="tensorboardX"):
        MetricsWriter(tmp_path, tensorboard=True)
