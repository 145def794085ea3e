"""Sharded execution on 8 fake CPU devices (set up in conftest.py): the same logits as one device,
parameters really split, and the logical-axis rules and mesh shapes checked directly."""

import math

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from metajax.models import MeshConfig, decode_step, forward, init_params, load_hf, make_mesh, prefill
from metajax.models.sharding import LOGICAL_AXIS_RULES, batch_sharding, logical_to_spec

jit_forward = jax.jit(forward, static_argnums=1)

# test_models.py compiles the one-device forward for 4 x 64 tokens; a sharded batch of 8 rows splits
# over every mesh here, and the reference reuses that compilation for each half.
BATCH, SEQ = 8, 64

# The llama3 test model: 4 query heads over 2 KV heads, vocab 160, hidden 64, mlp 96.
# Expected specs per mesh (data, fsdp, tensor), written out from LOGICAL_AXIS_RULES by hand.
EXPECTED_SPECS = {
    (8, 1, 1): dict(embed=P(None, None), wq=P(None, None, None, None), wk=P(None, None, None, None),
                    w_down=P(None, None, None)),
    (1, 8, 1): dict(embed=P(None, "fsdp"), wq=P(None, "fsdp", None, None), wk=P(None, "fsdp", None, None),
                    w_down=P(None, None, "fsdp")),
    (2, 2, 2): dict(embed=P("tensor", "fsdp"), wq=P(None, "fsdp", "tensor", None),
                    wk=P(None, "fsdp", "tensor", None), w_down=P(None, "tensor", "fsdp")),
    # 2 KV heads do not split 4 ways: wk falls back to replicating its head axis.
    (1, 2, 4): dict(embed=P("tensor", "fsdp"), wq=P(None, "fsdp", "tensor", None),
                    wk=P(None, "fsdp", None, None), w_down=P(None, "tensor", "fsdp")),
}


def _leaf(params, name):
    return params[name] if name in params else params["layers"][name]


def _shard_shape(shape, spec, mesh_shape):
    return tuple(size // (1 if axis is None else mesh_shape[axis]) for size, axis in zip(shape, spec))


@pytest.fixture(scope="module")
def one_device(hf_checkpoint):
    """(params, cfg, tokens, mask, logits float32[BATCH, SEQ, vocab]) on a single device."""
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, cfg.vocab_size, (BATCH, SEQ), dtype=np.int32)
    mask = np.arange(SEQ)[None] >= rng.integers(0, SEQ // 2, (BATCH, 1))  # left padding
    halves = [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]
    logits = np.concatenate([jit_forward(params, cfg, tokens[h], attention_mask=mask[h]) for h in halves])
    return params, cfg, tokens, mask, logits


def test_eight_fake_devices_are_present():
    assert jax.device_count() == 8


@pytest.mark.parametrize("mesh_shape", list(EXPECTED_SPECS))
def test_sharded_forward_matches_one_device(hf_checkpoint, one_device, mesh_shape):
    params1, cfg, tokens, mask, expected = one_device
    mesh = make_mesh(MeshConfig(*mesh_shape))
    params, _ = load_hf(hf_checkpoint("llama3").path, mesh=mesh)

    sizes = dict(mesh.shape)
    for name, spec in EXPECTED_SPECS[mesh_shape].items():
        leaf = _leaf(params, name)
        assert leaf.sharding.spec == spec, name
        assert leaf.addressable_shards[0].data.shape == _shard_shape(leaf.shape, spec, sizes), name
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(_leaf(params1, name)))
    if mesh_shape != (8, 1, 1):
        embed = params["embed"]
        assert math.prod(embed.addressable_shards[0].data.shape) < math.prod(embed.shape)

    with jax.set_mesh(mesh):
        sharded_tokens = jax.device_put(tokens, batch_sharding(mesh, tokens.shape))
        sharded_mask = jax.device_put(mask, batch_sharding(mesh, mask.shape))
        logits = jit_forward(params, cfg, sharded_tokens, attention_mask=sharded_mask)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_init_params_on_a_mesh_is_sharded(one_device):
    _, cfg, *_ = one_device
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    params = init_params(cfg, jax.random.key(0), mesh=mesh, std=0.02)
    for name, spec in EXPECTED_SPECS[(1, 2, 4)].items():
        leaf = _leaf(params, name)
        assert leaf.sharding.spec == spec, name
        assert leaf.addressable_shards[0].data.shape == _shard_shape(leaf.shape, spec, dict(mesh.shape))
        values = np.asarray(leaf)
        # Thousands of draws: the sample std is within a few percent of 0.02.
        assert abs(values.std() - 0.02) < 0.002 and abs(values.mean()) < 0.002, name
    np.testing.assert_array_equal(np.asarray(params["layers"]["attn_norm"]), 1.0)
    assert not np.array_equal(np.asarray(params["layers"]["wk"]), np.asarray(params["layers"]["wv"]))


# ----------------------------------------------------------------------------------------------
# logical_to_spec.


@pytest.mark.parametrize("logical,shape,mesh_shape,expected", [
    (("batch", "seq"), (8, 5), dict(data=2, fsdp=2), P(("data", "fsdp"), None)),
    (("batch", "seq"), (6, 5), dict(data=2, fsdp=2), P(None, None)),  # 6 rows do not split 4 ways
    (("batch",), (6,), dict(data=2, fsdp=1), P("data")),  # a size-1 mesh axis is dropped
    (("kv_heads", "head_dim"), (3, 16), dict(tensor=2), P(None, None)),  # SmolLM2's 3 KV heads
    (("vocab", "embed"), (160, 64), dict(fsdp=2, tensor=4), P("tensor", "fsdp")),
    (("embed", None), (64, 7), dict(fsdp=2), P("fsdp", None)),
])
def test_logical_to_spec(logical, shape, mesh_shape, expected):
    assert logical_to_spec(logical, shape, mesh_shape) == expected


def test_logical_to_spec_rejects_a_mesh_axis_used_twice():
    # batch spans (data, fsdp) and embed is fsdp: an activation laid out as [batch, embed] collides.
    with pytest.raises(ValueError, match=r"map mesh axes \['fsdp'\] twice"):
        logical_to_spec(("batch", "embed"), (8, 64), dict(data=2, fsdp=2))
    rules = {**LOGICAL_AXIS_RULES, "head_dim": "tensor"}
    with pytest.raises(ValueError, match=r"map mesh axes \['tensor'\] twice"):
        logical_to_spec(("q_heads", "head_dim"), (4, 16), dict(tensor=2), rules)


def test_logical_to_spec_rejects_bad_axes():
    with pytest.raises(ValueError, match="logical axis 'heads' has no sharding rule; known: .*'q_heads'"):
        logical_to_spec(("heads",), (4,), dict(tensor=2))
    with pytest.raises(ValueError, match=r"do not match shape \(4, 4\)"):
        logical_to_spec(("embed",), (4, 4), dict(fsdp=2))


# ----------------------------------------------------------------------------------------------
# MeshConfig and make_mesh.


@pytest.mark.parametrize("config,expected", [
    (MeshConfig(), (1, 8, 1)),
    (MeshConfig(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    (MeshConfig(data=-1, fsdp=2, tensor=1), (4, 2, 1)),
    (MeshConfig(data=1, fsdp=1, tensor=-1), (1, 1, 8)),
    (MeshConfig(data=8, fsdp=1, tensor=1), (8, 1, 1)),
])
def test_mesh_config_shape(config, expected):
    assert config.shape(8) == expected


@pytest.mark.parametrize("config,message", [
    (MeshConfig(data=-1, fsdp=-1), "at most one axis may be -1"),
    (MeshConfig(data=3), "data=3 fsdp=-1 tensor=1 does not fit 8 devices"),
    (MeshConfig(data=0), "does not fit 8 devices"),
    (MeshConfig(data=-2, fsdp=1), "does not fit 8 devices"),
    (MeshConfig(data=2, fsdp=2, tensor=1), "uses 4 devices but 8 are present; set one axis to -1"),
])
def test_mesh_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        config.shape(8)


def test_make_mesh():
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert make_mesh((1, 2, 1), devices=jax.devices()[:2]).devices.size == 2
    with pytest.raises(ValueError, match=r"mesh shape \(2, 4\) does not match 8 devices"):
        make_mesh((2, 4))
    with pytest.raises(ValueError, match=r"mesh shape \(2, 2, 1\) does not match 8 devices"):
        make_mesh((2, 2, 1))


# ----------------------------------------------------------------------------------------------
# The KV cache and checkpoints across meshes.


def test_kv_cache_is_sharded_like_its_logical_axes(hf_checkpoint, one_device):
    """Prompts over data x fsdp, KV heads over tensor, in prefill and after a decode step."""
    _, cfg, tokens, mask, _ = one_device
    mesh = make_mesh(MeshConfig(2, 2, 2))
    params, _ = load_hf(hf_checkpoint("llama3").path, mesh=mesh)
    batch = ("data", "fsdp")
    with jax.set_mesh(mesh):
        prompts = jax.device_put(tokens[:, :16], batch_sharding(mesh, (BATCH, 16)))
        prompt_mask = jax.device_put(mask[:, :16] | True, batch_sharding(mesh, (BATCH, 16)))
        _, cache = jax.jit(prefill, static_argnums=1, static_argnames=("num_samples", "max_new_tokens"))(
            params, cfg, prompts, prompt_mask, num_samples=2, max_new_tokens=8)
        step = jax.jit(decode_step, static_argnums=1)
        _, cache = step(params, cfg, jax.numpy.ones((BATCH, 2), jax.numpy.int32),
                        jax.numpy.full((BATCH, 2), 16, jax.numpy.int32), cache, jax.numpy.int32(0))
    def sharded_as(x, *spec):
        return x.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(*spec)), x.ndim)

    assert sharded_as(cache.prompt_k, None, batch, "tensor", None, None)
    assert sharded_as(cache.k, None, batch, None, "tensor", None, None)
    assert sharded_as(cache.prompt_mask, batch, None)
    shard = cache.k.addressable_shards[0].data.shape
    assert shard == (cfg.num_layers, BATCH // 4, 2, cfg.num_kv_heads // 2, cfg.head_dim, 8)


def test_a_checkpoint_restores_onto_another_mesh_shape(hf_checkpoint, tmp_path):
    """Saved from a (data 2, fsdp 2, tensor 2) run, restored onto fsdp 8 and onto one device: same
    values, the new run's shardings."""
    from metajax.train import Checkpointer, OptimizerConfig, init_train_state, make_optimizer
    from metajax.models.sharding import named_sharding
    from metajax.models.transformer import abstract_params, is_param_spec, param_specs
    from metajax.train.state import abstract_train_state

    optimizer = make_optimizer(OptimizerConfig())
    saved_mesh = make_mesh(MeshConfig(2, 2, 2))
    params, cfg = load_hf(hf_checkpoint("llama3").path, mesh=saved_mesh)
    state = init_train_state(params, optimizer, jax.random.key(3))
    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save(1, state, force=True)
        for mesh_config in (MeshConfig(1, 8, 1), None):
            mesh = None if mesh_config is None else make_mesh(mesh_config)
            like = abstract_train_state(abstract_params(cfg, mesh=mesh), optimizer)
            if mesh is None:  # one device: every leaf on the first CPU device
                one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
                like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), like)
            restored, _ = checkpointer.restore(1, like=like)
            for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            if mesh is not None:
                wanted = jax.tree.map(lambda s: named_sharding(mesh, s.logical_axes, s.shape), param_specs(cfg),
                                      is_leaf=is_param_spec)
                for got, sharding in zip(jax.tree.leaves(restored.params), jax.tree.leaves(wanted)):
                    assert got.sharding == sharding
                assert restored.params["embed"].sharding.spec == P(None, "fsdp")
            else:
                assert all(len(x.devices()) == 1 for x in jax.tree.leaves(restored))
