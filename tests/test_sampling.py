"""The budgeted KV-cache sampler against independent references.

References: transformers' `generate(do_sample=False)` and forward pass on the conftest's tiny random
checkpoints (greedy tokens, log-probs, the softmax that sampling must follow), a phase-by-phase
re-statement of the FREE / FORCING / ANSWER rules on top of transformers' greedy continuations,
hand-built logits for `filter_logits`, and exact binomial bounds for sampled frequencies.

Compilation dominates the run time (about 5 CPU seconds per program), so most llama calls share
two shapes: the four PROMPTS (one prompt bucket, one prompt-length bucket) with MAX_NEW new tokens
(one cache bucket), with one sample each and nothing forced, or with three samples each, FORCED and
two stop tokens.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from metajax.batching import bucket, length_bucket
from metajax.models import ModelConfig, init_params, load_hf, make_mesh
from metajax.host import to_host
from metajax.sampling import StopReason, compile_counts, filter_logits, lower_generate
from metajax.sampling.draw import FILTER_CANDIDATES
from metajax.sampling import generate as generate_on_device


def generate(*args, **kwargs):
    """`metajax.sampling.generate` with its outputs read on the host, as these tests compare them."""
    samples = generate_on_device(*args, **kwargs)
    return dataclasses.replace(samples, **to_host({f.name: getattr(samples, f.name)
                                                   for f in dataclasses.fields(samples)}))

# Lengths 3, 7, 14 and 21: one prompt-length bucket, and a batch that needs left padding.
PROMPTS = [[1, 5, 9], [1, 17, 33, 4, 8, 60, 61], [1, *range(10, 23)], [1, *range(40, 60)]]
MAX_NEW = 40
FORCED = [11, 12]  # two tokens, e.g. "</thought>" "[Assistant]"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The reference passes are tiny; on a busy 2-core machine torch's thread hand-offs cost more
    than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Oracle:
    """transformers' model as the reference: greedy continuations (memoised) and log-probs."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self._greedy: dict[tuple[int, ...], list[int]] = {}

    def greedy(self, seq, k: int) -> list[int]:
        """The first k tokens of `generate(do_sample=False)` after `seq` (no end-of-sequence stop)."""
        known = self._greedy.get(tuple(seq), [])
        if len(known) < k:
            out = self.checkpoint.model.generate(
                torch.tensor([list(seq)]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                max_new_tokens=k, do_sample=False, eos_token_id=None, pad_token_id=0)
            known = out[0, len(seq):].tolist()
            assert len(known) == k
            self._greedy[tuple(seq)] = known
        return known[:k]

    def logprobs(self, prompt, continuation, temperature: float = 1.0) -> np.ndarray:
        """float64[len(continuation)]: log p(token | everything before it) under softmax(logits / T)."""
        seq = np.array([list(prompt) + list(continuation)])
        logits = self.checkpoint.logits(seq)[0, len(prompt) - 1:-1].astype(np.float64) / temperature
        logp = logits - _logsumexp(logits)
        return logp[np.arange(len(continuation)), continuation]

    def next_token_logits(self, prompt) -> np.ndarray:
        return self.checkpoint.logits(np.array([list(prompt)]))[0, -1].astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Expected:
    tokens: list[int]
    forced: list[bool]
    budget_tokens: int
    stop_reason: StopReason


def expected_greedy_rows(oracle, prompts, budgets, *, n_samples=1, max_new=MAX_NEW, stops=(), forced=(),
                         allowance=0) -> list[Expected]:
    """What greedy generation must return for each row (`budgets` one per row), from the sampler's
    documented rules applied to transformers' greedy continuations."""
    rows = []
    for row, budget in enumerate(budgets):
        prompt = prompts[row // n_samples]
        free = oracle.greedy(prompt, min(budget, max_new))
        stop_at = next((i for i, t in enumerate(free) if t in stops), None)
        if stop_at is not None:
            rows.append(Expected(free[:stop_at + 1], [False] * (stop_at + 1), stop_at + 1, StopReason.STOP_TOKEN))
            continue
        tokens, mask = list(free) + list(forced), [False] * len(free) + [True] * len(forced)
        if forced and allowance:
            answer = oracle.greedy(prompt + tokens, allowance)
            end = next((i + 1 for i, t in enumerate(answer) if t in stops), allowance)
            tokens, mask = tokens + answer[:end], mask + [False] * end
        reason = StopReason.BUDGET if budget < max_new else StopReason.MAX_LENGTH
        rows.append(Expected(tokens, mask, len(free), reason))
    return rows


def assert_rows(samples, expected: list[Expected], pad_id=0):
    assert len(samples.lengths) == len(expected)
    for i, e in enumerate(expected):
        n = len(e.tokens)
        assert samples.token_lists()[i] == e.tokens, f"row {i}"
        assert samples.lengths[i] == n, f"row {i}"
        assert samples.budget_tokens[i] == e.budget_tokens, f"row {i}"
        assert samples.stop_reason[i] == e.stop_reason, f"row {i}"
        assert samples.forced[i, :n].tolist() == e.forced, f"row {i}"
        assert (samples.tokens[i, n:] == pad_id).all() and not samples.forced[i, n:].any(), f"row {i}"
        assert (samples.logprobs[i, n:] == 0).all(), f"row {i}"


def assert_logprobs_match(oracle, samples, prompts, *, n_samples):
    """Every row's log-probs equal transformers' log-softmax at its tokens and its temperature (1 for
    greedy rows), forced ones included."""
    for i, tokens in enumerate(samples.token_lists()):
        ours = samples.logprobs[i, :len(tokens)]
        reference = oracle.logprobs(prompts[i // n_samples], tokens, float(samples.temperature[i]))
        np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0, err_msg=f"row {i}")


def _logsumexp(x):
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _softmax(x):
    return np.exp(x - _logsumexp(x))


def _first_token_not_in(candidates, avoid):
    return next(t for t in candidates if t not in avoid)


# ----------------------------------------------------------------------------------------------
# Models, loaded once per module.


@pytest.fixture(scope="module")
def llama(hf_checkpoint):
    checkpoint = hf_checkpoint("llama3")
    params, cfg = load_hf(checkpoint.path)
    return params, cfg, Oracle(checkpoint)


@pytest.fixture(scope="module")
def llama_greedy(llama):
    """The one-device fp32 greedy run over PROMPTS, shared by the mesh and bf16 comparisons."""
    params, cfg, _ = llama
    return generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0)


# ----------------------------------------------------------------------------------------------
# Greedy parity with transformers.


@pytest.mark.parametrize("name,n_samples", [("llama3", 1), ("qwen2", 1), ("qwen3", 3)])
def test_greedy_matches_transformers_generate(hf_checkpoint, llama, llama_greedy, name, n_samples):
    """qwen2 has q/k/v biases, qwen3 q/k norms and head_dim 24 != 64 / 4 heads; the conftest
    perturbs norms and biases so each one matters. qwen3's three greedy samples per prompt share
    one prompt cache and must all equal transformers' output."""
    if name == "llama3":
        _, _, oracle = llama
        samples = llama_greedy
    else:
        checkpoint = hf_checkpoint(name)
        params, cfg = load_hf(checkpoint.path)
        oracle = Oracle(checkpoint)
        samples = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0, n_samples=n_samples)

    reference = [oracle.greedy(p, MAX_NEW) for p in PROMPTS]
    assert samples.token_lists() == [r for r in reference for _ in range(n_samples)]
    assert samples.prompt_index.tolist() == [i for i in range(len(PROMPTS)) for _ in range(n_samples)]
    assert (samples.stop_reason == StopReason.MAX_LENGTH).all()
    assert (samples.budget_tokens == MAX_NEW).all() and not samples.forced.any()
    assert len({t for r in reference for t in r}) >= 8  # not a degenerate repeat of one token
    assert_logprobs_match(oracle, samples, PROMPTS, n_samples=n_samples)


# ----------------------------------------------------------------------------------------------
# Budgets, stop tokens, forced endings.


def test_budgets_per_prompt_end_rows_exactly(llama):
    params, cfg, oracle = llama
    budgets = [0, 5, MAX_NEW, 100]  # nothing, BUDGET, and two kinds of MAX_LENGTH
    samples = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, budgets=budgets, temperature=0.0)

    assert samples.lengths.tolist() == samples.budget_tokens.tolist() == [0, 5, MAX_NEW, MAX_NEW]
    assert samples.stop_reason.tolist() == [StopReason.BUDGET, StopReason.BUDGET, StopReason.MAX_LENGTH,
                                            StopReason.MAX_LENGTH]
    assert_rows(samples, expected_greedy_rows(oracle, PROMPTS, budgets))


def test_stop_token_ends_rows(llama):
    params, cfg, oracle = llama
    reference = [oracle.greedy(p, MAX_NEW) for p in PROMPTS]
    # A token that prompt 0 generates at position >= 3 but prompt 3 does not generate first: row 0
    # (budget 30) ends on it, row 3 (budget 1) runs out of budget.
    stop = _first_token_not_in(reference[0][3:], {reference[3][0]})
    budgets = [30, 20, 35, 1]
    samples = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, budgets=budgets, temperature=0.0,
                       stop_tokens=[stop], pad_id=7)

    expected = expected_greedy_rows(oracle, PROMPTS, budgets, stops={stop})
    assert expected[0].stop_reason == StopReason.STOP_TOKEN and expected[3].stop_reason == StopReason.BUDGET
    assert_rows(samples, expected, pad_id=7)
    assert samples.token_lists()[0][-1] == stop  # the stop token is part of the output


def shared(params, cfg, stops, **kwargs):
    """Three samples per prompt, FORCED, and two stop tokens: one compiled program for all callers."""
    assert len(stops) == 2
    return generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, n_samples=3, forced_ending=FORCED,
                    stop_tokens=stops, **kwargs)


@pytest.mark.parametrize("per", ["prompt", "row"])
def test_budgets_forced_endings_and_stops_with_shared_prompts(llama, per):
    """Rows sharing a prompt's cache still obey their own budgets; a row cut off by its budget (or
    by max_new_tokens) gets FORCED, then up to `allowance` answer tokens ending at a stop token."""
    params, cfg, oracle = llama
    allowance = 5
    if per == "prompt":
        budgets = [MAX_NEW, 6, 0, 100]
        row_budgets = np.repeat(budgets, 3)
    else:
        budgets = row_budgets = np.array([MAX_NEW, 2, 0, 6, 6, 1, 0, 3, 9, 100, 39, 17])
    # Stops: one that prompt 0 generates freely (its rows end in FREE, nothing forced), and one that
    # the answer after prompt 1's budget-6 row produces (that ANSWER ends before the allowance).
    reference = [oracle.greedy(p, MAX_NEW) for p in PROMPTS]
    answer = oracle.greedy(PROMPTS[1] + reference[1][:6] + FORCED, allowance)
    answer_stop = _first_token_not_in(answer[1:allowance - 1], set(reference[1][:6]))
    free_stop = _first_token_not_in(reference[0][2:], set(reference[1][:6] + answer))
    stops = [free_stop, answer_stop]
    samples = shared(params, cfg, stops, budgets=budgets, temperature=0.0, answer_allowance=allowance)

    expected = expected_greedy_rows(oracle, PROMPTS, row_budgets, n_samples=3, stops=set(stops), forced=FORCED,
                                    allowance=allowance)
    assert expected[0].stop_reason == StopReason.STOP_TOKEN and True not in expected[0].forced
    row = 4 if per == "prompt" else 3  # prompt 1 with budget 6
    assert expected[row].stop_reason == StopReason.BUDGET and expected[row].tokens[-1] in stops
    assert len(expected[row].tokens) < 6 + len(FORCED) + allowance
    assert expected[6].tokens[:2] == FORCED  # budget 0: only the forced ending and the answer
    assert_rows(samples, expected)
    assert_logprobs_match(oracle, samples, PROMPTS, n_samples=3)


# ----------------------------------------------------------------------------------------------
# Log-probabilities and randomness.


def test_sampled_and_forced_logprobs_match_forward(llama):
    """Per prompt one greedy and two tempered chains (RaM's rollout mix), with top-k filtering, which
    must not change the reported (tempered, unfiltered) log-probs; small budgets force FORCED."""
    params, cfg, oracle = llama
    samples = shared(params, cfg, [2, 3], budgets=[3, 0, 8, 12], temperature=[0.0, 1.0, 0.7], top_k=20,
                     answer_allowance=4, rng=jax.random.key(3))

    assert_logprobs_match(oracle, samples, PROMPTS, n_samples=3)
    np.testing.assert_array_equal(samples.temperature, np.tile(np.float32([1.0, 1.0, 0.7]), 4))
    free = samples.budget_tokens[9]  # prompt 3's greedy row: budget 12 unless it met a stop token
    assert free > 0 and samples.token_lists()[9][:free] == oracle.greedy(PROMPTS[3], free)
    assert len({tuple(t) for t in samples.token_lists()[9:]}) == 3  # the tempered chains differ
    for i in range(len(samples.lengths)):
        start = samples.budget_tokens[i]
        if samples.stop_reason[i] != StopReason.STOP_TOKEN:
            assert samples.tokens[i, start:start + 2].tolist() == FORCED
            assert np.flatnonzero(samples.forced[i]).tolist() == [start, start + 1]
    assert samples.forced.sum() >= 2 * 10  # at most two rows may stop before their forced ending


def test_same_key_same_samples_other_key_other_samples(llama):
    params, cfg, _ = llama

    def run(seed):
        return shared(params, cfg, [2, 3], temperature=1.0, rng=jax.random.key(seed))

    first, again, other = run(0), run(0), run(1)
    for name in ("tokens", "lengths", "logprobs", "forced", "stop_reason"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert sum(a != b for a, b in zip(first.token_lists(), other.token_lists())) >= 10  # of 12 rows
    # The three samples of a prompt are independent draws, not copies.
    assert all(first.token_lists()[3 * p] != first.token_lists()[3 * p + 1] for p in range(len(PROMPTS)))


# ----------------------------------------------------------------------------------------------
# Sampling follows the tempered, filtered softmax.

N_DRAWS = 4096
# Family-wise false-alarm rate of the statistical checks (Bonferroni over the vocabulary).
ALPHA = 1e-6


def assert_frequencies_follow(counts, probs):
    """Each token's count lies in its exact binomial (N, p) interval at level ALPHA / vocab, tokens
    with p = 0 never appear, and a chi-square test over bins with >= 5 expected draws passes at ALPHA."""
    draws, vocab = counts.sum(), len(counts)
    assert (counts[probs == 0] == 0).all(), "a filtered-out token was sampled"
    live = probs > 0
    low = stats.binom.ppf(ALPHA / (2 * vocab), draws, probs[live])
    high = stats.binom.isf(ALPHA / (2 * vocab), draws, probs[live])
    outside = np.flatnonzero((counts[live] < low) | (counts[live] > high))
    assert outside.size == 0, (f"tokens {np.flatnonzero(live)[outside]}: counts {counts[live][outside]}, "
                               f"expected {draws * probs[live][outside]}")
    assert _chi_square_pvalue(counts, probs) > ALPHA


def _chi_square_pvalue(counts, probs):
    """Pearson's test, with the bins expected to hold < 5 draws merged into one."""
    if counts[probs == 0].any():
        return 0.0
    expected = counts.sum() * probs
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    keep = expected > 0
    return stats.chisquare(observed[keep], expected[keep]).pvalue


def _filtered_probs(logits, temperature, top_k=0, top_p=1.0):
    """float64 reference of temperature, then top-k, then nucleus filtering (as transformers does).

    Returns the filtered distribution and how close any cumulative mass comes to `top_p` (inf for
    top_p = 1): below float32 resolution the nucleus is ambiguous.
    """
    probs = _softmax(logits / temperature)
    order = np.argsort(-probs)
    keep = np.zeros(len(probs), bool)
    keep[order[:top_k or len(probs)]] = True
    renormed = np.where(keep, probs, 0) / probs[keep].sum()
    cumulative = np.cumsum(renormed[order])
    keep[order[cumulative - renormed[order] >= top_p]] = False
    gap = np.abs(cumulative[:-1] - top_p).min() if top_p < 1 else np.inf
    return np.where(keep, probs, 0) / probs[keep].sum(), gap


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (6, 1.0), (0, 0.6), (10, 0.8)])
def test_sampled_tokens_follow_the_softmax(llama, top_k, top_p):
    """N_DRAWS samples of one prompt's first token: half at temperature 1, half at 0.5, in one call."""
    params, cfg, oracle = llama
    prompt = PROMPTS[1]
    temperatures = np.repeat([1.0, 0.5], N_DRAWS // 2)
    samples = generate(params, cfg, [prompt], max_new_tokens=1, n_samples=N_DRAWS, temperature=temperatures,
                       top_k=top_k, top_p=top_p, rng=jax.random.key(11))
    assert (samples.lengths == 1).all()

    logits = oracle.next_token_logits(prompt)
    draws = {}
    for t, half in ((1.0, slice(0, N_DRAWS // 2)), (0.5, slice(N_DRAWS // 2, None))):
        draws[t] = np.bincount(samples.tokens[half, 0], minlength=cfg.vocab_size)
        probs, gap = _filtered_probs(logits, t, top_k, top_p)
        assert gap > 1e-4, "nucleus boundary too close to call in float32"
        assert (probs > 0).sum() >= 3, "the distribution must not be (nearly) deterministic"
        assert_frequencies_follow(draws[t], probs)
    # The check has power: the temperature-0.5 draws are rejected as temperature-1 draws.
    assert _chi_square_pvalue(draws[0.5], _filtered_probs(logits, 1.0, top_k, top_p)[0]) < ALPHA


# ----------------------------------------------------------------------------------------------
# filter_logits on crafted logits.


# One compiled program per vocabulary size rather than one per primitive.
_filter_logits = jax.jit(filter_logits)


def _kept(logits, top_p=1.0, top_k=0) -> list[int]:
    out = np.asarray(_filter_logits(jnp.asarray(logits, jnp.float32), top_p, top_k))
    kept = np.isfinite(out)
    np.testing.assert_array_equal(out[kept], np.asarray(logits, np.float32)[kept])  # survivors unchanged
    return np.flatnonzero(kept).tolist()


# Probabilities 1/2, 1/4, 1/8, 1/16, 1/16: cumulative masses 0.5, 0.75, 0.875, 0.9375, 1 exactly.
DYADIC = np.log([0.5, 0.25, 0.125, 0.0625, 0.0625])


@pytest.mark.parametrize("logits,top_p,top_k,kept", [
    ([0.0, 2.0, 1.0, -1.0], 1.0, 2, [1, 2]),
    ([3.0, 1.0, 1.0, 0.0, -1.0], 1.0, 2, [0, 1, 2]),  # a tie at the k-th value keeps both
    ([3.0, 1.0, 1.0, 0.0], 1.0, 10, [0, 1, 2, 3]),  # top_k beyond the vocabulary keeps everything
    ([0.0, 2.0, 1.0, -1.0], 1.0, 1, [1]),
    (DYADIC, 0.5, 0, [0]),  # the nucleus boundary exactly at a cumulative mass
    (DYADIC, 0.75, 0, [0, 1]),
    (DYADIC, 0.875, 0, [0, 1, 2]),
    (DYADIC, 0.76, 0, [0, 1, 2]),
    (DYADIC, 0.9, 0, [0, 1, 2, 3, 4]),  # the two 1/16 tokens tie at the cut-off
    (DYADIC[::-1], 0.75, 0, [3, 4]),  # order in the vocabulary does not matter
    (np.log([0.4, 0.3, 0.2, 0.1]), 0.5, 0, [0, 1]),
    (np.log([0.4, 0.3, 0.2, 0.1]), 0.5, 2, [0]),  # top-p applies to the top-k renormalised mass 4/7
    ([0.0, 5.0, 1.0, 2.0], 1e-6, 0, [1]),  # the most likely token always survives
    ([5.0, 1.0, 5.0, 2.0], 1e-6, 0, [0, 2]),  # ... with its ties
    ([0.0, -np.inf, 1.0, -np.inf], 0.9, 0, [0, 2]),  # already-masked tokens stay masked
    ([0.0, 0.0, 0.0, 0.0], 0.3, 0, [0, 1, 2, 3]),
])
def test_filter_logits_keeps_the_right_tokens(logits, top_p, top_k, kept):
    assert _kept(logits, top_p, top_k) == kept


def test_filter_logits_top_p_one_keeps_everything():
    """float32 cumulative mass reaches 1 before the smallest tokens; top_p = 1 must still keep them."""
    logits = np.array([0.0, -20.0, -40.0, -80.0, 3.0])
    assert _kept(logits, 1.0, 0) == [0, 1, 2, 3, 4]
    assert _kept(logits, 1.0, 5) == [0, 1, 2, 3, 4]


def test_filter_logits_matches_a_reference_on_random_rows():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(64, 24))
    for top_k, top_p in [(0, 0.3), (5, 1.0), (8, 0.9), (3, 0.5), (30, 0.95)]:
        out = np.asarray(_filter_logits(jnp.asarray(logits, jnp.float32), top_p, top_k))
        checked = 0
        for row, got in zip(logits, out):
            reference, gap = _filtered_probs(row, 1.0, top_k, top_p)
            if gap < 1e-5:
                continue
            np.testing.assert_array_equal(np.isfinite(got), reference > 0)
            assert np.isfinite(got[row.argmax()])
            checked += 1
        assert checked >= 60


@pytest.mark.parametrize("scales,top_k,top_p", [
    ((8.0,), 0, 0.9),  # peaked rows: every nucleus inside the candidates
    ((0.5,), 0, 0.9),  # flat rows: nuclei of hundreds of tokens, found by bisection
    ((8.0, 0.5), 0, 0.9),  # one flat row sends the whole batch to the bisection
    ((0.5, 8.0), 0, 0.3),
    ((0.5,), 100, 0.95),  # a top-k within the candidates decides without a sort
    ((0.5, 8.0), FILTER_CANDIDATES + 44, 0.8),  # a top-k beyond them sorts
])
def test_filter_logits_beyond_the_candidates_matches_the_reference(scales, top_k, top_p):
    """A vocabulary larger than FILTER_CANDIDATES: the top-k shortcut, the bisection and the full sort
    agree with the float64 reference, whichever decides."""
    rng = np.random.default_rng(1)
    vocab = 8 * FILTER_CANDIDATES
    logits = np.concatenate([rng.normal(scale=scale, size=(8, vocab)) for scale in scales])
    sizes = [(reference > 0).sum() for reference, _ in (_filtered_probs(row, 1.0, top_k, top_p) for row in logits)]
    if 0.5 in scales and top_k == 0:
        assert max(sizes) > FILTER_CANDIDATES  # the case reaches the fallback
    out = np.asarray(_filter_logits(jnp.asarray(logits, jnp.float32), top_p, top_k))
    for row, got in zip(logits, out):
        reference, gap = _filtered_probs(row, 1.0, top_k, top_p)
        assert gap > 1e-6
        np.testing.assert_array_equal(np.isfinite(got), reference > 0)


def test_filter_logits_bisection_handles_ties_negative_and_masked_logits():
    """Flat rows (the bisection decides) of logits on a 0.25 grid, so values tie, mostly negative, with
    masked (-inf) tokens: the kept set is the float64 reference's, ties at the cut-off kept together."""
    rng = np.random.default_rng(2)
    vocab = 8 * FILTER_CANDIDATES
    logits = np.round(rng.normal(scale=0.6, size=(16, vocab)) * 4) / 4 - 3.0
    logits[:, ::7] = -np.inf
    for top_p in (0.5, 0.9):
        out = np.asarray(_filter_logits(jnp.asarray(logits, jnp.float32), top_p, 0))
        for row, got in zip(logits, out):
            reference, gap = _filtered_probs(row, 1.0, 0, top_p)
            assert gap > 1e-6 and (reference > 0).sum() > FILTER_CANDIDATES
            # The reference breaks ties by sort order; filter_logits keeps every tie of the cut-off.
            np.testing.assert_array_equal(np.isfinite(got), row >= row[reference > 0].min())


# ----------------------------------------------------------------------------------------------
# Compilation: one program per shape bucket, whatever the traced settings.


@functools.cache
def _fresh_tiny_model():
    """A config no other test uses, so every bucket below compiles exactly once."""
    cfg = ModelConfig.of("llama", vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=128)
    return init_params(cfg, jax.random.key(0), std=0.2), cfg


def test_compilations_are_bounded_by_shape_buckets():
    params, cfg = _fresh_tiny_model()
    rng = np.random.default_rng(0)
    calls = []
    for num_prompts in range(1, 21):
        # Longest prompts of 3..16 tokens for up to 4 prompts, 17..32 up to 16, 33..60 beyond: six
        # (prompt bucket, length bucket) pairs, each compiled once however its calls vary.
        longest = (3 + 13 * (num_prompts - 1) // 3 if num_prompts <= 4 else
                   17 + 15 * (num_prompts - 5) // 11 if num_prompts <= 16 else 33 + 9 * (num_prompts - 17))
        lengths = rng.integers(3, longest + 1, size=num_prompts)
        lengths[0] = longest
        calls.append(dict(
            prompts=[rng.integers(1, cfg.vocab_size, size=n).tolist() for n in lengths],
            n_samples=2 if num_prompts in (3, 4) else 1, max_new_tokens=int(rng.integers(2, 9)),
            forced_ending=rng.integers(1, cfg.vocab_size, size=int(rng.integers(3, 5))).tolist(),
            answer_allowance=int(rng.integers(0, 4)), stop_tokens=[int(rng.integers(1, cfg.vocab_size))]))
    # width = max_new_tokens + forced (3..4) + allowance (0..3) <= 15: a single cache bucket.
    buckets = {(bucket(len(c["prompts"]), minimum=1), bucket(max(map(len, c["prompts"]))),
                bucket(c["max_new_tokens"] + len(c["forced_ending"]) + c["answer_allowance"]), c["n_samples"])
               for c in calls}
    assert len({b[2] for b in buckets}) == 1 and len(buckets) == 6

    before = sum(compile_counts.values())
    for call in calls:
        budgets = rng.integers(0, 10, size=len(call["prompts"]))
        generate(params, cfg, budgets=budgets, temperature=0.0, **call)
    assert sum(compile_counts.values()) - before == len(buckets)

    # Same shapes, every traced setting changed: no new program.
    before = sum(compile_counts.values())
    for i, call in enumerate(calls):
        changed = dict(call, max_new_tokens=call["max_new_tokens"] % 8 + 1,
                       forced_ending=[t % 40 + 1 for t in call["forced_ending"][::-1]],
                       stop_tokens=[(call["stop_tokens"][0] + 5) % 40 + 1])
        budgets = rng.integers(0, 20, size=len(call["prompts"]) * call["n_samples"])
        generate(params, cfg, budgets=budgets, temperature=[0.0, 1.3][: call["n_samples"]][::-1],
                 top_p=0.5 + 0.05 * (i % 10), top_k=i % 4, rng=jax.random.key(i), **changed)
    assert sum(compile_counts.values()) - before == 0


def test_cpu_decode_loop_copies_no_cache_per_step():
    """The generated cache is written in place each step: no copy of a layer's cache buffer inside the
    compiled decode loop (XLA:CPU made two a step while the write was unordered with the attention's
    read of it; see `decode_step`). Outside the loop, the cache's two initialisations may copy."""
    cfg = ModelConfig.of("llama", vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=128)
    params = init_params(cfg, jax.random.key(0))
    hlo = lower_generate(params, cfg, num_prompts=4, prompt_len=8, max_new_tokens=24).compile().as_text()
    cache_len = length_bucket(24)  # as `generate` sizes the generated cache
    key_shape, value_shape = f"f32[4,1,1,16,{cache_len}]", f"f32[4,1,1,{cache_len},16]"
    loop_side, entry = hlo.split("\nENTRY ", 1)
    assert key_shape in entry, "the cache shape guess is wrong: the test would check nothing"
    copies = [line for line in loop_side.splitlines()
              if " copy(" in line and (key_shape in line or value_shape in line)]
    assert copies == [], copies


def test_forced_ending_and_stop_set_sizes_do_not_recompile():
    """Their lengths are not shape buckets: 1, 2, 3, 5 forced tokens or 1..3 stop tokens share one
    program (widths 4 + len + 2 stay in the cache bucket of 16)."""
    params, cfg = _fresh_tiny_model()
    kwargs = dict(max_new_tokens=4, temperature=0.0, answer_allowance=2, budgets=[1])
    generate(params, cfg, [[1, 2, 3]], forced_ending=[5, 6, 7], **kwargs)
    before = sum(compile_counts.values())
    for forced, stops in (([5], [9]), ([5, 6], [9, 10]), ([5, 6, 7, 8, 9], [9, 10, 11])):
        samples = generate(params, cfg, [[1, 2, 3]], forced_ending=forced, stop_tokens=stops, **kwargs)
        assert samples.forced[0].sum() == len(forced) or samples.stop_reason[0] == StopReason.STOP_TOKEN
    assert sum(compile_counts.values()) - before == 0


# ----------------------------------------------------------------------------------------------
# Sharded generation and a bf16 cache.


@pytest.mark.parametrize("shape", [(2, 2, 2), (8, 1, 1)], ids=["data2-fsdp2-tensor2", "data8"])
def test_mesh_gives_the_one_device_greedy_tokens(hf_checkpoint, llama_greedy, shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices: XLA_FLAGS must be set before jax is imported (conftest.py)")
    mesh = make_mesh(shape, devices=jax.devices()[:8])
    params, cfg = load_hf(hf_checkpoint("llama3").path, mesh=mesh)
    assert len(params["layers"]["wq"].sharding.device_set) == 8

    on_device = generate_on_device(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0, mesh=mesh)
    # The rows stay device arrays, split over the batch, until a host read gathers them.
    assert isinstance(on_device.tokens, jax.Array) and on_device.tokens.sharding.mesh == mesh
    assert len(on_device.tokens.sharding.device_set) == 8
    samples = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0, mesh=mesh)

    assert samples.token_lists() == llama_greedy.token_lists()
    np.testing.assert_allclose(samples.logprobs, llama_greedy.logprobs, atol=1e-4, rtol=0)


def test_bfloat16_cache_agrees_with_float32_while_the_margin_is_clear(llama, llama_greedy):
    """bf16 keeps 8 significant bits: each cached key and value is rounded by at most 2^-9 relative,
    which for these O(1) activations moves a logit by a few 1e-3 (bounded by `shift`, checked on
    the log-probs). A greedy choice can only flip where fp32's top-2 margin is under 2 * shift, so the
    tokens must agree up to each row's first such close call; after it trajectories may part."""
    shift = 0.01
    params, cfg, oracle = llama
    bf16 = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0, cache_dtype=jnp.bfloat16)

    agreed = []
    for i, (prompt, tokens) in enumerate(zip(PROMPTS, llama_greedy.token_lists())):
        logits = oracle.checkpoint.logits(np.array([prompt + tokens]))[0, len(prompt) - 1:-1]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        close = np.flatnonzero(top2[:, 1] - top2[:, 0] < 2 * shift)
        clear = close[0] if close.size else MAX_NEW
        assert bf16.token_lists()[i][:clear] == tokens[:clear], f"row {i}"
        np.testing.assert_allclose(bf16.logprobs[i, :clear], llama_greedy.logprobs[i, :clear], atol=shift,
                                   rtol=0, err_msg=f"row {i}")
        agreed.append(clear)
    assert sum(agreed) >= 12, "too few clear-margin steps for the comparison to mean anything"
    # The bf16 cache was really used: its log-probs differ from fp32's.
    assert np.abs(bf16.logprobs - llama_greedy.logprobs).max() > 1e-4


def test_bfloat16_compute_over_float32_params_is_sampling_with_the_cast_params(llama):
    """`compute_dtype` casts inside the program: the same tokens and log-probs as handing the sampler
    a bf16 copy, and the fp32 master params are left as they were."""
    params, cfg, _ = llama
    cast = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    master = generate(params, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0, compute_dtype=jnp.bfloat16)
    copy = generate(cast, cfg, PROMPTS, max_new_tokens=MAX_NEW, temperature=0.0)
    assert master.token_lists() == copy.token_lists()
    np.testing.assert_array_equal(master.logprobs, copy.logprobs)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


# ----------------------------------------------------------------------------------------------
# Bad input: a clear ValueError before anything is traced.

# n_samples=5 is used by no other test, so a check that ran after tracing would bump compile_counts.
_BAD_INPUTS = [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[]), "no prompts"),
    (dict(prompts=[[1] * 120]), "longer than the cache"),
    (dict(budgets=[3, -1, 2, 2]), "budgets must be >= 0"),
    (dict(budgets=[3, 2, 2]), "budgets has shape"),
    (dict(budgets=np.ones((4, 5), int)), "budgets has shape"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=[0.0, 1.0]), "temperature has shape"),
    (dict(temperature=1.0, rng=None), "rng"),
    (dict(prompts=[[1, 2, 160]]), "outside the vocabulary"),
    (dict(prompts=[[1, -3]]), "outside the vocabulary"),
    (dict(forced_ending=[3, 163]), "forced_ending id 163 is outside the vocabulary"),
    (dict(stop_tokens=[-1]), "stop_tokens id -1 is outside the vocabulary"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(n_samples=0), "n_samples"),
    (dict(answer_allowance=-1), "answer_allowance"),
]


@pytest.mark.parametrize("bad,message", _BAD_INPUTS, ids=[m for _, m in _BAD_INPUTS])
def test_bad_input_is_rejected_before_compiling(llama, bad, message):
    params, cfg, _ = llama
    kwargs = dict(prompts=PROMPTS, max_new_tokens=MAX_NEW, n_samples=5, temperature=0.0) | bad
    before = compile_counts.copy()
    with pytest.raises(ValueError, match=message):
        generate(params, cfg, kwargs.pop("prompts"), **kwargs)
    assert compile_counts == before
