"""GRPO / Dr. GRPO on token-level rollouts, against hand-written references.

The policy-gradient tests run a tiny random Llama through the real sampler and the shared train
step; the loop tests run the bundled toy model for a few steps.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax.algorithms import grpo as grpo_module
from metajax.algorithms.chains import sampled_thought
from metajax.algorithms.completion_rewards import RewardTerm, reward_columns, total_reward
from metajax.algorithms.grpo import GRPOConfig, run_grpo
from metajax.host import to_host
from metajax.models import ModelConfig, forward, init_params
from metajax.models.logprobs import token_logprobs
from metajax.pipelines import TOY_MODEL_DIR
from metajax.sampling import Policy, rollout
from metajax.sampling import compile_counts as sampler_compile_counts
from metajax.train import OptimizerConfig, PolicyGradientLoss, init_train_state, make_train_step, read_metrics
from metajax.train.metrics import MetricsWriter
from metajax.train.step import compile_counts as step_compile_counts

CFG = ModelConfig.of("llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=128)
MAX_TOKENS = 12
PROMPTS = [[1, 5, 9, 3], [1, 17, 33], [1, 40, 41, 42, 43, 44]]


@pytest.fixture(scope="module")
def tiny():
    params = init_params(CFG, jax.random.key(0), std=0.3)
    # No tokenizer: rollouts and train steps never decode.
    policy = Policy(params=params, cfg=CFG, tokenizer=None, stop_ids=(7,), pad_id=0)
    # Per-row budgets give responses of different lengths.
    rows = rollout(policy, PROMPTS, max_new_tokens=MAX_TOKENS, n_samples=4, temperature=0.8, top_p=0.9,
                   budgets=[3, 6, 9, 12] * len(PROMPTS), opening=[11, 12], rng=jax.random.key(1))
    return policy, rows


def _batch(policy, rows, advantages):
    """The loop's batch: per-token arrays cut to the completion columns."""
    return grpo_module.policy_gradient_batch(policy, policy.params, rows, advantages, GRPOConfig())


def _full_width_batch(rows, advantages):
    return {"tokens": rows.tokens, "attention_mask": rows.attention_mask, "sampled": rows.sampled,
            "logprobs": rows.logprobs, "temperature": rows.temperature,
            "advantages": jnp.asarray(advantages, jnp.float32)}


def _reference_logprobs(params, rows):
    """Teacher-forced log-probs from the whole float32 logits tensor, at each row's temperature."""
    logits = forward(params, CFG, rows.tokens, attention_mask=rows.attention_mask)[:, :-1]
    logp = jax.nn.log_softmax(logits / rows.temperature[:, None, None])
    picked = jnp.take_along_axis(logp, rows.tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(picked, ((0, 0), (1, 0)))


def test_rollout_rows_hold_the_sampled_tokens_and_their_behaviour_logprobs(tiny):
    """The stored log-probs are what a fresh teacher-forced forward at the sampling temperature gives
    for the same tokens: the tokens trained on are the tokens sampled."""
    policy, rows = tiny
    host = to_host(rows)
    assert host.tokens.shape[0] == len(PROMPTS) * 4
    assert not (host.sampled & host.forced).any()
    # The forced opening sits just before the completion's sampled tokens, in every row.
    start = rows.completion_start
    np.testing.assert_array_equal(host.tokens[:, start:start + 2], [[11, 12]] * len(host.tokens))
    assert host.forced[:, start:start + 2].all() and not host.sampled[:, :start + 2].any()
    assert (host.sampled.sum(1) + 2 == host.lengths).all()
    np.testing.assert_array_equal(host.temperature, np.float32(0.8))
    fresh, _ = token_logprobs(policy.params, CFG, rows.tokens, attention_mask=rows.attention_mask,
                              temperature=rows.temperature)
    np.testing.assert_allclose(host.logprobs[host.sampled], np.asarray(fresh)[host.sampled], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(host.logprobs[~host.sampled], 0.0)


def test_on_policy_step_is_the_reinforce_gradient(tiny):
    """mu = 1, so the ratio is 1: the step's gradient is that of -(sum_i A_i sum_t log p_it) / (B * L)."""
    policy, rows = tiny
    advantages = np.linspace(-1.0, 1.5, len(rows)).astype(np.float32)
    sgd = optax.sgd(1.0)
    step = make_train_step(CFG, sgd, PolicyGradientLoss(kind="dr_grpo", max_tokens=MAX_TOKENS))
    state = init_train_state(policy.params, sgd, jax.random.key(0))
    new_state, metrics = step(state, _batch(policy, rows, advantages))
    grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), policy.params, new_state.params)

    def reinforce(params):
        logp = jnp.where(rows.sampled, _reference_logprobs(params, rows), 0.0)
        return -jnp.sum(advantages * jnp.sum(logp, axis=1)) / (len(rows) * MAX_TOKENS)

    want = jax.grad(reinforce)(policy.params)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(ours, ref, atol=1e-5 * scale, rtol=0)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0


def test_later_epochs_take_the_ratio_against_the_stored_logprobs(tiny):
    """Perturbing the stored behaviour log-probs moves the loss and the clip fraction exactly as
    rho = exp(logp - logp_stored) says; a loss that recomputed or detached its own log-probs as the
    old ones would see ratio 1 whatever was stored."""
    policy, rows = tiny
    advantages = np.where(np.arange(len(rows)) % 2, 1.0, -0.5).astype(np.float32)
    batch = _batch(policy, rows, advantages)
    mask = to_host(batch["sampled"])
    shift = np.where(mask, np.random.default_rng(0).uniform(-0.4, 0.4, mask.shape), 0.0)
    batch["logprobs"] = batch["logprobs"] + jnp.asarray(shift, jnp.float32)
    loss = PolicyGradientLoss(kind="dr_grpo", clip_eps=0.2, max_tokens=MAX_TOKENS)
    loss_sum, denominator, stats = loss(policy.params, CFG, batch)

    logp = np.asarray(_reference_logprobs(policy.params, rows), np.float64)[:, rows.completion_start:]
    ratio = np.exp(logp - np.asarray(batch["logprobs"], np.float64))
    adv = advantages[:, None].astype(np.float64)
    token_loss = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
    clipped = ((ratio < 0.8) & (adv < 0)) | ((ratio > 1.2) & (adv > 0))
    np.testing.assert_allclose(float(loss_sum) / float(denominator),
                               token_loss[mask].sum() / (len(rows) * MAX_TOKENS), rtol=1e-4)
    clip_fraction = stats["clip_fraction"][0] / stats["clip_fraction"][1]
    assert float(clip_fraction) == pytest.approx(clipped[mask].mean(), abs=1e-6)
    assert 0.05 < clipped[mask].mean() < 0.95  # the perturbation really moved tokens across the clip


def test_grpo_and_dr_grpo_aggregate_responses_as_the_papers_say(tiny):
    """On policy with A = 1 everywhere: Dr. GRPO's loss is -(total sampled tokens) / (B * L), GRPO's
    is -1 (each response's own tokens averaged, then the responses)."""
    policy, rows = tiny
    lengths = to_host(rows.sampled).sum(axis=1)
    assert len(set(lengths.tolist())) > 1  # responses of different lengths
    ones = np.ones(len(rows), np.float32)
    dr = PolicyGradientLoss(kind="dr_grpo", max_tokens=MAX_TOKENS)(policy.params, CFG, _batch(policy, rows, ones))
    grpo = PolicyGradientLoss(kind="grpo")(policy.params, CFG, _batch(policy, rows, ones))
    assert float(dr[0] / dr[1]) == pytest.approx(-lengths.sum() / (len(rows) * MAX_TOKENS), rel=1e-5)
    assert float(grpo[0] / grpo[1]) == pytest.approx(-1.0, rel=1e-5)


def test_kl_to_the_reference_is_zero_when_the_policy_is_the_reference(tiny):
    policy, rows = tiny
    advantages = np.linspace(-1, 1, len(rows)).astype(np.float32)
    with_ref = grpo_module.policy_gradient_batch(policy, policy.params, rows, advantages, GRPOConfig(beta=0.5))
    with_kl = PolicyGradientLoss(max_tokens=MAX_TOKENS, kl_beta=0.5)(policy.params, CFG, with_ref)
    without = PolicyGradientLoss(max_tokens=MAX_TOKENS)(policy.params, CFG, _batch(policy, rows, advantages))
    assert float(with_kl[2]["kl"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(with_kl[0]) == pytest.approx(float(without[0]), abs=1e-6)
    moved = jax.tree.map(lambda p: p * 1.05, policy.params)
    assert float(PolicyGradientLoss(max_tokens=MAX_TOKENS, kl_beta=0.5)(moved, CFG, with_ref)[2]["kl"][0]) > 1e-4


def test_the_loss_on_completion_columns_equals_the_full_width_loss(tiny):
    """The loop's batch holds only the completion columns, and the loss then projects onto the
    vocabulary there alone; loss, statistics and gradient equal those of the full-width batch."""
    policy, rows = tiny
    advantages = np.linspace(-1.0, 1.5, len(rows)).astype(np.float32)
    cut, full = _batch(policy, rows, advantages), _full_width_batch(rows, advantages)
    assert cut["sampled"].shape[1] == rows.tokens.shape[1] - rows.completion_start < full["sampled"].shape[1]
    loss = PolicyGradientLoss(kind="dr_grpo", max_tokens=MAX_TOKENS)
    terms = [jax.tree.leaves(loss(policy.params, CFG, batch)) for batch in (cut, full)]
    for ours, want in zip(*terms):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(want), atol=1e-6, rtol=1e-6)

    def grad(batch):
        return jax.grad(lambda p: loss(p, CFG, batch)[0])(policy.params)

    for ours, want in zip(jax.tree.leaves(grad(cut)), jax.tree.leaves(grad(full))):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(want), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="must share one shape"):
        loss(policy.params, CFG, cut | {"logprobs": full["logprobs"]})


# ----------------------------------------------------------------------------------------------
# The loop on the bundled toy model.

needs_toy = pytest.mark.skipif(not (TOY_MODEL_DIR / "config.json").is_file(), reason="toy model not built")
LOOP = GRPOConfig(max_steps=4, prompts_per_step=4, num_generations=4, num_iterations=2, mini_batch_size=8,
                  max_completion_length=48, rewards=(RewardTerm("voc"), RewardTerm("correctness", weight=0.5)),
                  save_steps=2)
OPTIM = OptimizerConfig(learning_rate=3e-4, schedule="constant", warmup_fraction=0.0)


@pytest.fixture(scope="module")
def toy():
    from metajax.config import load_config
    from metajax.pipelines import load_policy, load_questions
    config = load_config(None, ["data.num_eval=8"])
    train = load_questions(config).train
    return load_policy(config), train[:64]


def recording_reward(prompts, completions, **columns):
    """A user reward with TRL's signature; remembers what it was given."""
    recording_reward.calls.append((list(prompts), list(completions), columns))
    return [float(len(c)) for c in completions]


recording_reward.calls = []


@needs_toy
def test_trl_signature_rewards_get_the_batch_columns(toy):
    policy, questions = toy
    rows = rollout(policy, [[1] + policy.encode(f"[User] {q.question}\n") for q in questions[:3]], n_samples=2,
                   max_new_tokens=48, temperature=1.0, rng=jax.random.key(0))
    from metajax.sampling import completions as decode
    done = decode(policy, rows)
    columns = reward_columns(policy, questions[:3], done, voc_scorer=policy)
    terms = (RewardTerm("function", weight=2.0, function="test_grpo:recording_reward"), RewardTerm("correctness"))
    recording_reward.calls.clear()
    prompts = [policy.decode(rows.tokens[i, :rows.completion_start].tolist()) for i in range(len(done))]
    total, parts = total_reward(terms, prompts, [c.text for c in done], columns)

    (seen_prompts, seen_completions, seen), = recording_reward.calls
    assert seen_prompts == prompts and seen_completions == [c.text for c in done]
    assert seen["answer"] == [questions[i // 2].answer for i in range(6)]
    assert seen["difficulty"] == [questions[i // 2].difficulty for i in range(6)]
    assert seen["num_tokens"] == [c.num_tokens for c in done]
    assert seen["correct"] == columns["correct"] and set(seen["correct"]) <= {True, False}
    assert {"logp_with_chain", "logp_direct", "chain_tokens", "question", "answer_type", "id"} <= set(seen)
    for c, chain_tokens in zip(done, seen["chain_tokens"]):
        thought = sampled_thought(policy, c.ids)
        assert chain_tokens == (len(c.ids) if thought is None else len(thought))
    np.testing.assert_allclose(total, 2.0 * parts["recording_reward"] + parts["correctness"])
    np.testing.assert_array_equal(parts["correctness"], np.float32(columns["correct"]))


@needs_toy
def test_sampled_thought_reads_the_block_from_the_sampled_tokens(toy):
    policy, _ = toy
    block = policy.encode("<thought> 3+4 = 7 </thought>\n")
    answer = policy.encode("[Assistant] 7\n")
    assert sampled_thought(policy, block + answer + [2]) == tuple(block)
    assert sampled_thought(policy, answer) == ()
    assert sampled_thought(policy, policy.encode("<thought> 3+4 = 7 3+")) is None  # cut mid-thought


@needs_toy
def test_second_epoch_ratio_comes_from_the_rollout(toy, tmp_path, monkeypatch):
    """With one mini-batch per epoch, the first update is on policy (ratio 1) and the second sees the
    moved policy against the stored log-probs (ratio != 1)."""
    policy, questions = toy
    seen = []
    real = grpo_module.make_train_step

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(state, batch, lr=None):
            out = step(state, batch, lr)
            seen.append(float(out[1]["ratio_mean"]))
            return out
        return run

    monkeypatch.setattr(grpo_module, "make_train_step", recording)
    config = dataclasses.replace(LOOP, max_steps=1, mini_batch_size=None)
    run_grpo(policy, questions, config, dataclasses.replace(OPTIM, learning_rate=3e-3), tmp_path, progress=False)
    assert len(seen) == 2
    assert seen[0] == pytest.approx(1.0, abs=1e-6) and abs(seen[1] - 1.0) > 1e-5


@needs_toy
def test_loop_logs_metrics_resumes_bitwise_and_compiles_per_bucket(toy, tmp_path):
    policy, questions = toy
    sampler_compile_counts.clear()
    step_compile_counts.clear()
    with MetricsWriter(tmp_path / "full") as metrics:
        full = run_grpo(policy, questions, LOOP, OPTIM, tmp_path / "full", metrics=metrics, progress=False)
    records = [r for r in read_metrics(tmp_path / "full") if r["stage"] == "grpo/step"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for name in ("reward_mean", "reward_std", "accuracy", "completion_tokens_mean", "completion_tokens_max",
                 "clip_fraction", "kl", "ratio_mean", "entropy", "grad_norm", "lr", "sample_seconds",
                 "sample_tokens_per_s", "score_seconds", "update_seconds", "update_tokens_per_s", "reward/voc"):
        assert all(r["metrics"][name] is not None for r in records), name
    # Compiles: one sampler program per prompt-length bucket, one step per batch shape.
    assert sum(sampler_compile_counts.values()) == len(sampler_compile_counts) <= 2
    assert sum(step_compile_counts.values()) == len(step_compile_counts) <= 2

    class Interrupt(Exception):
        pass

    class StopAtStep3:
        def write(self, step, metrics, *, stage):
            if step == 3:
                raise Interrupt

    with pytest.raises(Interrupt):
        run_grpo(policy, questions, LOOP, OPTIM, tmp_path / "resumed", metrics=StopAtStep3(), progress=False)
    resumed = run_grpo(policy, questions, LOOP, OPTIM, tmp_path / "resumed", progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, full.params)


def test_grpo_config_rejects_bad_values():
    for bad, match in [(dict(mini_batch_size=5), "mini_batch_size"), (dict(temperature=0.0), "temperature"),
                       (dict(rewards=()), "at least one term"), (dict(num_generations=0), "num_generations"),
                       (dict(prompts_per_step=8, questions=7), "grpo.questions")]:
        with pytest.raises(ValueError, match=match):
            GRPOConfig(**bad)
    with pytest.raises(ValueError, match="package.module:name"):
        RewardTerm("function", function="nomodule")
    with pytest.raises(ValueError, match="needs `function"):
        RewardTerm("function")


def test_a_pool_of_one_tenth_puts_the_same_questions_in_the_first_and_last_tenth():
    from metajax.algorithms.grpo import _Order
    order = _Order(80, seed=3)
    steps = [order.indices(step, 8) for step in range(100)]
    first, last = sum(steps[:10], []), sum(steps[90:], [])
    assert sorted(first) == sorted(last) == list(range(80))
    assert first != last  # each pass in a new order
