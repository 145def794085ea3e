"""TRL-shaped adapters over the pure reward functions."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from metajax.rewards import correctness_reward, trl_reward_fn, voc_reward


def test_trl_reward_fn_reads_the_fields_voc_names():
    reward = trl_reward_fn(voc_reward, gamma=0.05, cost="linear")
    fields = {"logp_with_chain": [-1.0, -5.0], "logp_direct": [-3.0, -3.0], "chain_tokens": [10, 0],
              "answer": ["4", "7"]}
    got = reward(["q1", "q2"], ["c1", "c2"], **fields)
    want = voc_reward(np.array([-1.0, -5.0]), np.array([-3.0, -3.0]), np.array([10, 0]),
                      gamma=0.05, cost="linear")
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert reward.__name__ == "voc_reward"


def test_trl_reward_fn_passes_prompts_and_completions_when_named():
    reward = trl_reward_fn(lambda completions, bonus=0.0: [len(c) + bonus for c in completions], bonus=0.5)
    assert reward(["p", "p"], ["ab", "abcd"], extra=[1, 2]) == [2.5, 4.5]


def test_trl_reward_fn_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['gama'\]"):
        trl_reward_fn(voc_reward, gama=0.1)
    reward = trl_reward_fn(voc_reward)
    with pytest.raises(ValueError, match=r"needs batch field\(s\) \['chain_tokens'\]"):
        reward(["q"], ["c"], logp_with_chain=[-1.0], logp_direct=[-2.0])
    with pytest.raises(ValueError, match="returned 2 values for 1 completions"):
        reward(["q"], ["c"], logp_with_chain=[-1.0, -2.0], logp_direct=[-2.0, -2.0], chain_tokens=[1, 1])


def _grader(text, gold, answer_type):
    return text.strip().split()[-1] == gold and answer_type in ("numeric", "choice")


def test_correctness_reward_with_plain_and_chat_completions():
    reward = correctness_reward(_grader)
    completions = ["so it is 4", [{"role": "user", "content": "pick A"}, {"role": "assistant", "content": "answer: B"}], "it is 5"]
    got = reward(["q"] * 3, completions, answer=["4", "B", "6"], answer_type=["numeric", "choice", "numeric"])
    assert got == [1.0, 1.0, 0.0]
    assert correctness_reward(_grader, answer_type="math")(["q"], ["4"], answer=["4"]) == [0.0]
    assert correctness_reward(_grader, answer_field="gold")(["q"], ["4"], gold=["4"],
                                                            answer_type=["numeric"]) == [1.0]


def test_correctness_reward_errors_name_the_problem():
    reward = correctness_reward(_grader)
    with pytest.raises(ValueError, match="needs batch field 'answer_type'"):
        reward(["q"], ["4"], answer=["4"])
    with pytest.raises(ValueError, match="has 2 entries for 1 completions"):
        reward(["q"], ["4"], answer=["4", "5"], answer_type=["numeric"])
    with pytest.raises(ValueError, match="string or a list of chat messages"):
        reward(["q"], [42], answer=["4"], answer_type=["numeric"])


def test_default_grader_is_metajax_graders_imported_on_use(monkeypatch):
    calls = []
    fake = types.ModuleType("metajax.data.graders")
    fake.grade = lambda text, gold, answer_type: calls.append((text, gold, answer_type)) or True
    reward = correctness_reward()
    monkeypatch.setitem(sys.modules, "metajax.data.graders", fake)
    assert reward(["q"], ["x 3"], answer=["3"], answer_type=["numeric"]) == [1.0]
    assert calls == [("x 3", "3", "numeric")]


def test_rewards_import_alone():
    # metajax.data.formats (ROI's level bounds) is plain Python: the one part of metajax.data allowed.
    code = ("import sys, metajax.rewards; "
            "bad = [m for m in sys.modules if m.startswith(('metajax.models', 'metajax.data', 'flax', "
            "'torch', 'transformers')) and m not in ('metajax.data', 'metajax.data.formats')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
