"""The RaM / STaR loop end to end on a tiny toy setting, with the bundled toy model."""

import dataclasses

import jax
import numpy as np
import pytest

from metajax.algorithms.expert_iteration import (ExpertIterationConfig, sample_rollouts, score_rollouts,
                                                 select_rows, training_sequences)
from metajax.config import load_config
from metajax.data.graders import split_ram_completion
from metajax.algorithms.expert_iteration import run_expert_iteration
from metajax.pipelines import TOY_MODEL_DIR, load_policy, load_questions
from metajax.models.logprobs import score_sequences
from metajax.rewards.voc import voc_reward
from metajax.train.checkpoint import Checkpointer
from metajax.train.optim import OptimizerConfig
from metajax.train import sft_batches, sft_loss_terms
from metajax.train.step import compile_counts as step_compile_counts

pytestmark = pytest.mark.skipif(not (TOY_MODEL_DIR / "config.json").is_file(), reason="toy model not built")

TINY = ExpertIterationConfig(iterations=2, questions_per_iteration=12, samples_per_question=3, temperature=1.0,
                             top_p=1.0, max_new_tokens=64, batch_size=8, epochs=3, rollout_batch_size=16)
OPTIM = OptimizerConfig(learning_rate=3e-4, schedule="constant", warmup_fraction=0.0)


@pytest.fixture(scope="module")
def setup():
    config = load_config(None, ["data.num_eval=8"])
    policy = load_policy(config)
    train = load_questions(config).train
    return policy, train[:TINY.iterations * TINY.questions_per_iteration]


@pytest.fixture(scope="module")
def scored(setup):
    policy, questions = setup
    pool = questions[:TINY.questions_per_iteration]
    rollouts = sample_rollouts(policy, pool, TINY, jax.random.key(0))
    return pool, rollouts, score_rollouts(policy, pool, rollouts, TINY)


def test_rollouts_are_graded_and_some_are_right(scored):
    pool, rollouts, _ = scored
    assert [len(g) for g in rollouts] == [TINY.samples_per_question] * len(pool)
    flat = [r for g in rollouts for r in g]
    assert any(r.correct for r in flat)
    for r in flat:
        if r.correct:  # a correct rollout states the gold answer
            assert r.answer.strip() == pool[r.question_index].answer


def test_cot_rollout_prompting_opens_a_thought_in_every_rollout(setup):
    policy, questions = setup
    pool = questions[:6]
    config = dataclasses.replace(TINY, rollout_prompting="cot", rationalize=False)
    rollouts = sample_rollouts(policy, pool, config, jax.random.key(0))
    flat = [r for g in rollouts for r in g]
    assert len(flat) == len(pool) * TINY.samples_per_question
    assert all(r.thought for r in flat), [r for r in flat if not r.thought]
    # The greedy rollout is the greedy thought: the same text as the eval's CoT prompting.
    from metajax.eval.evaluate import evaluate
    cot = evaluate(policy, pool, prompting="cot", max_new_tokens=TINY.max_new_tokens)
    assert [g[0].thought for g in rollouts] == [split_ram_completion(r.completion)[0] for r in cot]
    with pytest.raises(ValueError, match="rollout_prompting"):
        dataclasses.replace(TINY, rollout_prompting="fewshot")
    with pytest.raises(ValueError, match=r"prompting must be one of \['cot', 'direct', 'policy'\]"):
        evaluate(policy, pool, prompting="fewshot")


def test_rewards_are_voc_of_independently_scored_sequences(setup, scored):
    policy, _ = setup
    pool, _, groups = scored
    assert groups.rewards.shape == (len(pool), TINY.samples_per_question + 1)
    assert np.all(groups.rewards[:, -1] == 0.0)  # the direct candidate: U = 0, C = 0
    from metajax.data.token_spans import ram_scoring_pair
    checked = 0
    for i, group in enumerate(groups.rollouts):
        for j, r in enumerate(group):
            if r.direct or not r.thought_ids:
                continue
            # One token per character: the sampled block is exactly the encoding of its text, so
            # scoring the re-encoded text is an independent reference for the token path.
            assert r.thought_ids == tuple(policy.encode(f"<thought> {r.thought} </thought>\n"))
            with_chain, direct = ram_scoring_pair(policy.tokenizer, pool[i], r.thought, pool[i].answer)
            logp = score_sequences(policy.params, policy.cfg, [(with_chain.tokens, with_chain.target_mask),
                                                               (direct.tokens, direct.target_mask)], batch_size=2)
            expected = float(voc_reward(logp[0], logp[1], groups.chain_tokens[i, j]))
            assert groups.rewards[i, j] == pytest.approx(expected, abs=1e-4)
            assert groups.chain_tokens[i, j] == len(policy.encode(f"<thought> {r.thought} </thought>\n"))
            checked += 1
    assert checked > 0


def test_filtered_rows_all_satisfy_the_ram_filter(scored):
    _, _, groups = scored
    rows = select_rows(groups, TINY)
    assert rows
    for r in rows:
        i = r.question_index
        j = groups.rollouts[i].index(r)
        mean = groups.rewards[i][groups.valid[i]].mean()
        assert groups.correct[i].any()  # the question has a correct candidate
        assert groups.correct[i, j] or groups.rewards[i, j] >= 0
        assert groups.rewards[i, j] - mean >= -1e-6
    star = select_rows(groups, dataclasses.replace(TINY, filter="star"))
    assert star and all(r.correct for r in star)


def test_training_sequences_mask_only_thought_and_answer(setup, scored):
    policy, _ = setup
    pool, _, groups = scored
    rows = select_rows(groups, TINY)
    for (tokens, mask), r in zip(training_sequences(policy, pool, rows), rows):
        first = mask.index(True)
        assert policy.decode(tokens[:first]) == f"[User] {pool[r.question_index].question}\n"
        assert policy.decode(tokens[first:]).endswith(f"[Assistant] {pool[r.question_index].answer}\n")
        assert tokens[-1] == policy.stop_ids[0] and all(mask[first:])


def _sft_loss(policy, params, sequences):
    total, count = 0.0, 0.0
    for batch in sft_batches(sequences, batch_size=8, seed=0, epoch=0):
        s, n = sft_loss_terms(params, policy.cfg, batch["tokens"], batch["loss_mask"],
                              attention_mask=batch["attention_mask"])
        total, count = total + float(s), count + float(n)
    return total / count


def test_loop_trains_checkpoints_and_resumes_identically(setup, tmp_path):
    policy, questions = setup
    key = jax.random.key(3)
    step_compile_counts.clear()
    full = run_expert_iteration(policy, questions, TINY, OPTIM, tmp_path / "full", rng=key)
    # Both rounds share one compiled SFT step per batch shape (the rounds differ in length).
    assert step_compile_counts and all(n == 1 for n in step_compile_counts.values()), step_compile_counts

    # The SFT loss on the last iteration's kept rows falls from the base model to the trained one.
    import json
    rows = [json.loads(line) for line in (tmp_path / "full" / "rows_iter2.jsonl").read_text().splitlines()]
    by_id = {q.id: i for i, q in enumerate(questions)}
    from metajax.algorithms.expert_iteration import Rollout
    kept = [Rollout(by_id[r["id"]], tuple(policy.encode(r["thought"])), r["thought_tokens"], None, r["answer"], True)
            for r in rows]
    assert all(len(r.thought_ids) == r.num_tokens for r in kept)
    sequences = training_sequences(policy, questions, kept)
    assert _sft_loss(policy, full.params, sequences) < 0.8 * _sft_loss(policy, policy.params, sequences)

    # Checkpoints restore to identical params.
    with Checkpointer(tmp_path / "full" / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == TINY.iterations
        restored, metadata = checkpointer.restore(like=policy.params)
    assert metadata["iteration"] == TINY.iterations
    jax.tree.map(np.testing.assert_array_equal, restored, full.params)

    # Interrupt after iteration 1, rerun: the same final params as the uninterrupted run.
    class Interrupt(Exception):
        pass

    class StopAfterFirst:
        def write(self, step, metrics, *, stage):
            if stage.endswith("iteration"):
                raise Interrupt

    with pytest.raises(Interrupt):
        run_expert_iteration(policy, questions, TINY, OPTIM, tmp_path / "resumed", rng=key, metrics=StopAfterFirst())
    with Checkpointer(tmp_path / "resumed" / "checkpoints") as checkpointer:
        assert checkpointer.latest_step() == 1
    resumed = run_expert_iteration(policy, questions, TINY, OPTIM, tmp_path / "resumed", rng=key)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, full.params)


def test_too_few_questions_is_a_clear_error(setup, tmp_path):
    policy, questions = setup
    with pytest.raises(ValueError, match="needs 24 training questions"):
        run_expert_iteration(policy, questions[:5], TINY, OPTIM, tmp_path, rng=jax.random.key(0))


def test_baselines_are_few_shot_and_trained_policies_zero_shot(setup, tmp_path, monkeypatch):
    # The paper's direct and CoT baselines prompt the base model with few-shot examples; fine-tuned
    # policies answer zero-shot.
    import metajax.pipelines as pipelines
    policy, questions = setup
    shots, eval_questions = questions[:1], questions[1:3]
    seen, real_evaluate = {}, pipelines.evaluate

    def recording_evaluate(policy_, examples, *, prompting, fewshot=(), **kwargs):
        seen[prompting] = list(fewshot)
        return real_evaluate(policy_, examples, prompting=prompting, fewshot=fewshot, **kwargs)

    monkeypatch.setattr(pipelines, "evaluate", recording_evaluate)
    config = load_config(None, ["eval.methods=[direct, cot, ram]", "eval.max_new_tokens=16"])
    summaries = pipelines.evaluate_methods(config, tmp_path, eval_questions, policy, {"ram": policy}, fewshot=shots)
    assert seen == {"direct": shots, "cot": shots, "policy": []}
    assert set(summaries) == {"direct", "cot", "ram"}
    assert all((tmp_path / f"eval_{m}.jsonl").is_file() for m in summaries)
