"""Orbax checkpoints: exact round trips, keep-last-k, crash safety, and bit-exact resume of train_sft."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from metajax.models import ModelConfig, init_params
from metajax.train import (Checkpointer, CheckpointNotFoundError, CorruptCheckpointError, OptimizerConfig,
                           TrainState, init_train_state, make_optimizer, train_sft)

CFG = ModelConfig.of("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), std=0.1)


def _state(params, seed: int) -> TrainState:
    """An Adam state with non-trivial moments, step and rng (no model compile needed)."""
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2))
    state = init_train_state(params, optimizer, jax.random.PRNGKey(seed))

    @jax.jit
    def update(state):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(seed), p.shape), state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(params=jax.tree.map(jnp.add, state.params, updates), opt_state=opt_state,
                          step=state.step + 1, rng=state.rng)

    return update(state)


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_round_trips_params_opt_state_and_metadata(params, tmp_path):
    state = _state(params, seed=1)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, metadata={"run": {"seed": 3}, "note": "x"})
        assert ckpt.latest_step() == 7
        restored, metadata = ckpt.restore(like=state)
        assert isinstance(restored, TrainState)
        _assert_identical(restored, state)
        assert metadata == {"run": {"seed": 3}, "note": "x"}
        abstract, _ = ckpt.restore(7, like=jax.eval_shape(lambda: state))
        _assert_identical(abstract, state)
        raw, _ = ckpt.restore()  # no target: nested dicts of the same arrays
        _assert_identical(raw["params"], state.params)
        assert int(raw["step"]) == int(state.step) == 1 and np.array_equal(raw["rng"], state.rng)


def test_keeps_the_last_k_and_respects_the_save_interval(params, tmp_path):
    state = _state(params, seed=1)
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        assert [ckpt.save(s, state) for s in (2, 3, 4)] == [True, False, True]
        assert ckpt.save(5, state, force=True)
        assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
        assert sorted(os.listdir(tmp_path)) == ["4", "5"]
        with pytest.raises(CheckpointNotFoundError, match=r"step 2 .*holds steps \[4, 5\]"):
            ckpt.restore(2, like=state)


def test_missing_and_corrupt_checkpoints_name_the_path(params, tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(CheckpointNotFoundError,
                                                                   match=str(tmp_path / "empty")):
        ckpt.restore()
    state = _state(params, seed=1)
    with Checkpointer(tmp_path / "broken") as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)
        for root, _, files in os.walk(tmp_path / "broken" / "2" / "state"):
            for name in files:
                os.remove(os.path.join(root, name))
        with pytest.raises(CorruptCheckpointError, match=str(tmp_path / "broken" / "2")):
            ckpt.restore(like=state)
        _assert_identical(ckpt.restore(1, like=state)[0], state)


def test_crash_during_save_keeps_the_previous_checkpoint(params, tmp_path, monkeypatch):
    before, after = _state(params, seed=1), _state(params, seed=2)
    Checkpointer(tmp_path).save(1, before, metadata={"n": 1})

    original = ocp.handlers.StandardCheckpointHandler.async_save

    async def write_then_crash(self, *args, **kwargs):
        for f in await original(self, *args, **kwargs) or ():
            f.result()  # the arrays are on disk, in the temporary directory
        raise RuntimeError("simulated crash mid-save")

    monkeypatch.setattr(ocp.handlers.StandardCheckpointHandler, "async_save", write_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Checkpointer(tmp_path).save(2, after)
    assert any("tmp" in name for name in os.listdir(tmp_path)), os.listdir(tmp_path)  # a partial step 2
    monkeypatch.undo()

    restarted = Checkpointer(tmp_path)  # a new process after the crash
    assert restarted.latest_step() == 1
    restored, metadata = restarted.restore(like=before)
    _assert_identical(restored, before)
    assert metadata == {"n": 1}
    assert restarted.save(2, after) and restarted.latest_step() == 2
    _assert_identical(restarted.restore(like=after)[0], after)


class _Recorder:
    """A metrics sink that remembers steps and can stop the run (a crash) after a given step."""

    def __init__(self, stop_after=None):
        self.steps, self.stop_after = [], stop_after

    def write(self, step, metrics, *, stage):
        assert stage == "sft" and np.isfinite(metrics["loss"])
        self.steps.append(step)
        if step == self.stop_after:
            raise KeyboardInterrupt("stopped")


def test_interrupted_train_sft_resumes_to_the_same_params(params, tmp_path):
    rng = np.random.default_rng(0)
    sequences = [(rng.integers(1, 64, n).tolist(), [False] * 2 + [True] * (n - 2)) for n in rng.integers(5, 14, 10)]
    kwargs = dict(optim=OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.2), batch_size=4, epochs=2, seed=3,
                  save_every=2, progress=False)  # 3 batches an epoch, 6 steps

    full_params, full_history = train_sft(params, CFG, sequences, checkpointer=Checkpointer(tmp_path / "a"), **kwargs)
    assert [h["step"] for h in full_history] == [1, 2, 3, 4, 5, 6]
    assert full_history[-1]["loss"] < full_history[0]["loss"]

    ckpt = Checkpointer(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train_sft(params, CFG, sequences, checkpointer=ckpt, metrics=_Recorder(stop_after=3), **kwargs)
    assert ckpt.latest_step() == 2  # step 3 ran but was not saved: the resume redoes it
    recorder = _Recorder()
    resumed_params, resumed_history = train_sft(params, CFG, sequences, checkpointer=ckpt, metrics=recorder, **kwargs)
    assert recorder.steps == [3, 4, 5, 6]
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in full_history[2:]]
    _assert_identical(resumed_params, full_params)
    assert ckpt.latest_step() == 6
    assert not np.array_equal(full_params["embed"], params["embed"])  # it did train

    with pytest.raises(ValueError, match="different run"):
        train_sft(params, CFG, sequences, checkpointer=ckpt, **{**kwargs, "seed": 4})
