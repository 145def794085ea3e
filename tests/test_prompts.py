"""Prompt templates (golden strings) and span-exact tokenisation (tokenizers trained in-test)."""

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from metajax.data.example import Example
from metajax.data.formats import ROI_EXAM, TOY_EXAM
from metajax.data.prompts import (
    Dialogue,
    PromptConfig,
    Turn,
    UnknownPromptStyle,
    render_chat,
    render_prompt,
    render_text,
)
from metajax.data.token_spans import (
    TokenBoundaryError,
    as_prompt_tokenizer,
    encode_prompt,
    encode_ram,
    ram_pieces,
    ram_scoring_pair,
)

SHOT = Example(id="s1", question="What is 2+3?", answer="5", answer_type="numeric", dataset="toy",
               rationale="2+3=5")
SHOT_NO_THOUGHT = Example(id="s2", question="Is 7 odd?", answer="yes", answer_type="yes_no",
                          dataset="toy")
Q = Example(id="q1", question="What is 12*3?", answer="36", answer_type="numeric", dataset="toy")
MC = Example(id="m1", question="Which is a mammal?", answer="B", answer_type="choice",
             dataset="arc", choices=("Trout", "Whale", "Frog"))

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<s>", "<|im_start|>", "<|im_end|>", "<unk>"]

# Adversarial (question, thought, answer) triples: answers with leading spaces and digits, thoughts
# without a trailing space or with extra spaces and newlines, unicode on every side of the seams.
CASES = [
    ("What is 12*3?", "12*3=36", "36"),
    ("What is 12*3?", None, " 36"),
    ("Sum 1..9?", "1+2+...+9 = 45.", "45"),
    ("Sum 1..9?  ", "  spaced out  ", "  45  "),
    ("Café ∑ 😀?", "naïve ∑ → 😀", "😀 ∑"),
    ("Q?\n", "line one\nline two\n", "1234567"),
    ("[Assistant] trick", "</thought> inside", "[User] -3.5"),
    ("x", "", "0"),
]


def _sample_text():
    lines = []
    for i in range(60):
        lines.append(f"[User] What is {i}+{i * 7}? Think.\n<thought> {i}+{i * 7}={i * 8} </thought>\n"
                     f"[Assistant] {i * 8}\n[User] Is {i} odd?\n[Assistant] {'yes' if i % 2 else 'no'}\n"
                     f"Café ∑ 😀 naïve → {i}.\n")
    return lines


# Llama-3 / Qwen2 pre-tokenizer regex: unlike GPT-2's, it glues punctuation to following newlines
# (">\n", "?\n"), so it probes the seams the templates rely on.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_bpe(pre_tokenizer):
    """Byte-level BPE with a few hundred merges, BOS via TemplateProcessing and trimmed offsets."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sample_text(), trainer)
    assert tok.get_vocab_size() > 256 + 200  # a few hundred merges were learned
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]),
    ])
    return tok


@pytest.fixture(scope="module")
def bpe():
    return _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))


@pytest.fixture(scope="module", params=["gpt2_regex", "llama3_regex"])
def any_bpe(request, bpe):
    if request.param == "gpt2_regex":
        return bpe
    return _train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))


@pytest.fixture(scope="module")
def chars():
    """One token per character (no BOS)."""
    alphabet = sorted(set("".join(_sample_text()) + "".join(
        c for case in CASES for part in case if part for c in part) + "[]<>/ *.?\n"))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(alphabet)} | {"<unk>": len(alphabet)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tok


@pytest.fixture(scope="module")
def chat_tok(bpe):
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()), bos_token="<s>",
                                   eos_token="<|im_end|>", unk_token="<unk>", chat_template=CHATML)


# ------------------------------------------------------------------------------ golden renderings


def test_ram_text_format_with_fewshot():
    got = render_prompt(PromptConfig(style="ram"), Q, fewshot=(SHOT, SHOT_NO_THOUGHT))
    assert got == ("[User] What is 2+3?\n<thought> 2+3=5 </thought>\n[Assistant] 5\n"
                   "[User] Is 7 odd?\n[Assistant] yes\n"
                   "[User] What is 12*3?\n")


def test_direct_drops_thoughts_and_forces_the_answer():
    got = render_prompt(PromptConfig(style="direct"), Q, fewshot=(SHOT,))
    assert got == "[User] What is 2+3?\n[Assistant] 5\n[User] What is 12*3?\n[Assistant]"


def test_cot_needs_rationales():
    got = render_prompt(PromptConfig(style="cot"), Q, fewshot=(SHOT,))
    assert got == "[User] What is 2+3?\n<thought> 2+3=5 </thought>\n[Assistant] 5\n[User] What is 12*3?\n"
    with pytest.raises(ValueError, match="rationale.*s2"):
        render_prompt(PromptConfig(style="cot"), Q, fewshot=(SHOT_NO_THOUGHT,))


def test_star_hint_on_question_and_shots():
    got = render_prompt(PromptConfig(style="star_hint"), Q, fewshot=(SHOT,))
    assert got == ("[User] What is 2+3?\n(The correct answer is 5)\n<thought> 2+3=5 </thought>\n"
                   "[Assistant] 5\n[User] What is 12*3?\n(The correct answer is 36)\n")
    got = render_prompt(PromptConfig(style="star_hint", hint_in_fewshot=False), Q, fewshot=(SHOT,))
    assert got.startswith("[User] What is 2+3?\n<thought>")
    with pytest.raises(ValueError, match="needs an Example"):
        render_prompt(PromptConfig(style="star_hint"), "What is 12*3?")


def test_multiple_choice_renders_lettered_choices():
    assert render_prompt(PromptConfig(style="ram"), MC) == (
        "[User] Which is a mammal?\nA. Trout\nB. Whale\nC. Frog\n")


def test_plan_and_solve_and_least_to_most():
    assert render_prompt(PromptConfig(style="plan_and_solve"), Q) == (
        "[User] What is 12*3?\nLet's first understand the problem and devise a plan to solve the "
        "problem. Then, let's carry out the plan and solve the problem step by step. "
        "Put the final answer in \\boxed{}.\n")
    assert render_prompt(PromptConfig(style="least_to_most"), Q) == (
        "[User] What is 12*3?\nLet's break this problem down into simpler subproblems. First list "
        "the subproblems, then solve them one at a time, using the answers to earlier subproblems "
        "in later ones. Put the final answer in \\boxed{}.\n")


def test_roi_exam_prompt_and_response():
    cfg = PromptConfig(style="roi_exam", exam_budget=1024, level_bounds=(16, 32, 64))
    assert render_prompt(cfg, [Q, MC]) == (
        "[User] Answer the 2 questions below in order. All your answers share a budget of 1024 "
        "tokens; generation stops when the budget is spent.\n"
        "Start each answer with your predicted cost, <predicted_level>Level-k</predicted_level>: "
        "Level-0 (up to 16 tokens), Level-1 (up to 32 tokens), Level-2 (up to 64 tokens). Then "
        "solve the question and put its final answer in \\boxed{}. To skip a question, answer "
        "<predicted_level>Level-3</predicted_level> \\boxed{NA}.\n\n"
        "Question 1: What is 12*3?\n\n"
        "Question 2: Which is a mammal?\nA. Trout\nB. Whale\nC. Frog\n[Assistant]")
    assert ROI_EXAM.response([(1, "12*3=36, \\boxed{36}"), (3, None)], skip_level=3) == (
        "<predicted_level>Level-1</predicted_level> 12*3=36, \\boxed{36}\n\n"
        "<predicted_level>Level-3</predicted_level> \\boxed{NA}")
    with pytest.raises(ValueError, match="skip level"):
        ROI_EXAM.answer(3, "\\boxed{1}", skip_level=3)
    with pytest.raises(ValueError, match="outside 0..3"):
        ROI_EXAM.answer(4, None, skip_level=3)
    with pytest.raises(ValueError, match="no few-shot"):
        render_prompt(cfg, [Q], fewshot=(SHOT,))


def test_toy_exam_prompt_and_response():
    cfg = PromptConfig(style="toy_exam", exam_budget=150, level_bounds=(20, 60, 100))
    assert render_prompt(cfg, ["3+4=?", "1+2+3=?"]) == "[User] Exam, 150 tokens: P3+4=? Q1+2+3=?\n"
    # Each answer restates its question after its label and the budget, then announces its level.
    assert TOY_EXAM.response([(0, "[Assistant] 7\n"), (3, None)], skip_level=3, questions=["3+4=?", "1+2+3=?"],
                             budget=150) == "P3+4=? 150 <L0> [Assistant] 7\nQ1+2+3=? 150 <L3> [Assistant] NA\n"
    with pytest.raises(ValueError, match="2 answers but 1 question"):
        TOY_EXAM.response([(0, "[Assistant] 7\n"), (3, None)], skip_level=3, questions=["3+4=?"], budget=150)
    with pytest.raises(ValueError, match="restates the exam's budget"):
        TOY_EXAM.tag(0, 1, "3+4=?")
    # A tag without its restatement still reads; a label or "<" inside a restatement ends it.
    matches = list(TOY_EXAM.level_pattern.finditer("P3+4=? 150 <L0> x <L2> <L> <Lx> R5+6+7=? <L1> y S1<2 <L0> "
                                                   "TQ1=? 90 <L2>"))
    assert [(int(m.group(1)), m.group(0)) for m in matches] == [
        (0, "P3+4=? 150 <L0>"), (2, "<L2>"), (1, "R5+6+7=? <L1>"), (0, "<L0>"), (2, "Q1=? 90 <L2>")]
    # Ten labels, each used nowhere else in the toy's texts: an eleventh question is refused.
    assert TOY_EXAM.label(1) == "P" and TOY_EXAM.label(10) == "Z" and ROI_EXAM.label(12) == ""
    with pytest.raises(ValueError, match="question 11 has no label"):
        render_prompt(cfg, ["1+1=?"] * 11)
    with pytest.raises(ValueError, match="no few-shot"):
        render_prompt(cfg, ["3+4=?"], fewshot=(SHOT,))


def test_config_and_registry_errors():
    with pytest.raises(UnknownPromptStyle, match="'chain'.*least_to_most"):
        PromptConfig(style="chain")
    with pytest.raises(ValueError, match="strictly increasing"):
        PromptConfig(level_bounds=(512, 256))
    with pytest.raises(ValueError, match="one question, got 2"):
        render_prompt(PromptConfig(style="ram"), [Q, MC])
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(PromptConfig(chat=True), Q)


def test_chat_rendering(chat_tok):
    cfg = PromptConfig(style="ram", chat=True, system_prompt="Be brief.")
    assert render_prompt(cfg, Q, fewshot=(SHOT,), tokenizer=chat_tok) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n<thought> 2+3=5 </thought>\n5<|im_end|>\n"
        "<|im_start|>user\nWhat is 12*3?<|im_end|>\n"
        "<|im_start|>assistant\n")
    closed = Dialogue((Turn("hi", None, "yo"),))
    assert render_chat(chat_tok, closed) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert render_text(closed) == "[User] hi\n[Assistant] yo\n"


# ------------------------------------------------------------------------------------------ spans


def _expected_pieces(question, thought, answer):
    prompt = f"[User] {question}\n"
    thought_block = f"<thought> {thought} </thought>\n" if thought else ""
    return prompt, thought_block, f"[Assistant] {answer}\n", f" {answer}\n"


@pytest.mark.parametrize("case", CASES)
def test_bpe_spans_are_exact(any_bpe, case):
    bpe = any_bpe
    question, thought, answer = case
    prompt, thought_block, answer_block, target = _expected_pieces(question, thought, answer)
    enc = encode_ram(bpe, question, thought, answer)
    # The reference: the raw tokenizer (with its BOS post-processor) on the hand-written full text.
    assert enc.tokens == bpe.encode(prompt + thought_block + answer_block).ids
    assert enc.tokens[0] == bpe.token_to_id("<s>")
    (t0, t1), (a0, a1), (y0, y1) = enc.thought_span, enc.answer_span, enc.target_span
    assert (t0, t1 == a0, a1) == (enc.prompt_len, True, len(enc.tokens))
    assert bpe.decode(enc.tokens[1:enc.prompt_len]) == prompt
    assert bpe.decode(enc.tokens[t0:t1]) == thought_block
    assert bpe.decode(enc.tokens[a0:a1]) == answer_block
    assert bpe.decode(enc.tokens[y0:y1]) == target
    p, z, y = ram_pieces(bpe, question, thought, answer)
    assert p + z + y == enc.tokens and len(z) == t1 - t0


@pytest.mark.parametrize("case", CASES)
def test_char_spans_match_character_counts(chars, case):
    question, thought, answer = case
    prompt, thought_block, answer_block, target = _expected_pieces(question, thought, answer)
    enc = encode_ram(chars, question, thought, answer, fewshot=(SHOT,))
    shot = "[User] What is 2+3?\n<thought> 2+3=5 </thought>\n[Assistant] 5\n"
    n_prompt, n_thought = len(shot + prompt), len(thought_block)
    n_total = n_prompt + n_thought + len(answer_block)
    assert len(enc.tokens) == n_total  # one token per character, no BOS
    assert enc.prompt_len == n_prompt
    assert enc.thought_span == (n_prompt, n_prompt + n_thought)
    assert enc.answer_span == (n_prompt + n_thought, n_total)
    assert enc.target_span == (n_total - len(target), n_total)


def test_fewshot_spans_and_prompt_consistency(bpe):
    """The prompt inside x+z+y is token for token the prompt the sampler was given."""
    tok = as_prompt_tokenizer(bpe)
    cfg = PromptConfig(style="ram")
    enc = encode_ram(tok, Q, "12*3 = 36", "36", fewshot=(SHOT, SHOT_NO_THOUGHT))
    assert enc.tokens[:enc.prompt_len] == encode_prompt(tok, cfg, Q, fewshot=(SHOT, SHOT_NO_THOUGHT))
    assert bpe.decode(enc.tokens[enc.prompt_len:]) == "<thought> 12*3 = 36 </thought>\n[Assistant] 36\n"


def test_scoring_pair_masks_the_answer_only(bpe):
    with_thought, direct = ram_scoring_pair(bpe, Q, "12*3=36", "36")
    enc = encode_ram(bpe, Q, "12*3=36", "36")
    assert with_thought.tokens == enc.tokens
    targets = [[t for t, m in zip(s.tokens, s.target_mask) if m] for s in (with_thought, direct)]
    assert targets[0] == targets[1]
    assert bpe.decode(targets[0]) == " 36\n"
    # The masked tokens are a contiguous suffix in both sequences.
    for seq, target in zip((with_thought, direct), targets):
        assert seq.tokens[len(seq.tokens) - len(target):] == target
        assert sum(seq.target_mask) == len(target) and seq.target_mask[-1]
    assert bpe.decode(direct.tokens[1:]) == "[User] What is 12*3?\n[Assistant] 36\n"


def test_merging_tokenizer_raises_at_the_seam():
    """A BPE without pre-tokenizer learns tokens across "</thought>\\n[Assistant]"."""
    text = "</thought>\n[Assistant] 7\n" * 40
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>"], show_progress=False, initial_alphabet=list(set(text))))
    assert any("\n[" in piece for piece in tok.get_vocab())  # precondition: a cross-seam token
    with pytest.raises(TokenBoundaryError, match="between the thought block and the answer marker"):
        encode_ram(tok, "q", "t", "7")


def test_chat_spans(chat_tok):
    cfg = PromptConfig(chat=True)
    for thought in ("12*3=36", None):
        enc = encode_ram(chat_tok, Q, thought, "36", fewshot=(SHOT,), cfg=cfg)
        full = chat_tok.apply_chat_template(
            [{"role": "user", "content": "What is 2+3?"},
             {"role": "assistant", "content": "<thought> 2+3=5 </thought>\n5"},
             {"role": "user", "content": "What is 12*3?"},
             {"role": "assistant", "content": (f"<thought> {thought} </thought>\n" if thought else "") + "36"}],
            tokenize=False)
        assert enc.tokens == chat_tok(full, add_special_tokens=False)["input_ids"]
        dec = lambda a, b: chat_tok.decode(enc.tokens[a:b], skip_special_tokens=False)
        assert dec(0, enc.prompt_len).endswith("What is 12*3?<|im_end|>\n<|im_start|>assistant\n")
        assert dec(*enc.thought_span) == (f"<thought> {thought} </thought>\n" if thought else "")
        assert enc.target_span == enc.answer_span
        assert dec(*enc.answer_span) == "36<|im_end|>\n"
        assert chat_tok.convert_ids_to_tokens(enc.tokens[enc.answer_span[1] - 2]) == "<|im_end|>"


def test_chat_template_that_rewrites_content_is_rejected(bpe):
    trimming = CHATML.replace("message['content']", "(message['content'] | trim)")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()),
                                  eos_token="<|im_end|>", chat_template=trimming)
    with pytest.raises(ValueError, match="verbatim content"):
        encode_ram(tok, Q, None, "36 ", cfg=PromptConfig(chat=True))


def test_wrapping_rejects_slow_tokenizers():
    with pytest.raises(TypeError, match="fast tokenizer"):
        as_prompt_tokenizer(object())


def test_straddle_hidden_by_trimmed_offsets_is_caught(bpe):
    """A generation prompt ending in a space makes " 36" straddle the seam; the BPE's ByteLevel
    post-processor trims that space out of the token's offsets, which must not hide the straddle."""
    spaced = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(bpe.to_str()), chat_template=spaced)
    assert bpe.encode("x: 36", add_special_tokens=False).offsets[-1] == (3, 5)  # trimmed " 36"
    with pytest.raises(TokenBoundaryError, match="between the prompt and the thought block"):
        encode_ram(tok, Q, None, "36", cfg=PromptConfig(chat=True))


# Llama-3's own template (Llama-3.1-Instruct, trimmed of its tool-calling branches): the template
# writes BOS, each turn ends with <|eot_id|>, and message content is trimmed.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|end_of_text|>"]


@pytest.fixture(scope="module")
def llama3_tok():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_sample_text(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=LLAMA3_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", chat_template=LLAMA3_TEMPLATE)


def test_chat_spans_llama3(llama3_tok):
    # Inside Llama-3's template the scored answer is exactly the gold answer and the end of turn,
    # and BOS comes once, from the template (the text format's tokenizer BOS is not added again).
    cfg = PromptConfig(chat=True, system_prompt="Answer briefly.")
    for thought in ("12*3=36", None):
        enc = encode_ram(llama3_tok, Q, thought, "36", fewshot=(SHOT,), cfg=cfg)
        full = llama3_tok.apply_chat_template(
            [{"role": "system", "content": "Answer briefly."},
             {"role": "user", "content": "What is 2+3?"},
             {"role": "assistant", "content": "<thought> 2+3=5 </thought>\n5"},
             {"role": "user", "content": "What is 12*3?"},
             {"role": "assistant", "content": (f"<thought> {thought} </thought>\n" if thought else "") + "36"}],
            tokenize=False)
        assert enc.tokens == llama3_tok(full, add_special_tokens=False)["input_ids"]
        bos = llama3_tok.convert_tokens_to_ids("<|begin_of_text|>")
        assert enc.tokens[0] == bos and enc.tokens.count(bos) == 1
        dec = lambda a, b: llama3_tok.decode(enc.tokens[a:b], skip_special_tokens=False)
        assert dec(0, enc.prompt_len).endswith("What is 12*3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        assert dec(*enc.thought_span) == (f"<thought> {thought} </thought>\n" if thought else "")
        assert dec(*enc.target_span) == "36<|eot_id|>"
        with_z, without_z = ram_scoring_pair(llama3_tok, Q, thought or "x", "36", fewshot=(SHOT,), cfg=cfg)
        target = lambda s: [t for t, m in zip(s.tokens, s.target_mask) if m]
        assert target(with_z) == target(without_z) == enc.tokens[enc.target_span[0]:enc.target_span[1]]
        # The generation prompt the policy samples from is the scored sequence's prompt x.
        assert encode_prompt(llama3_tok, PromptConfig(chat=True, system_prompt="Answer briefly."), Q,
                             fewshot=(SHOT,)) == enc.tokens[:enc.prompt_len]


def test_policy_chat_settings(llama3_tok, bpe):
    from types import SimpleNamespace

    from metajax.sampling.policy import Policy
    eos = llama3_tok.convert_tokens_to_ids("<|end_of_text|>")
    eot = llama3_tok.convert_tokens_to_ids("<|eot_id|>")
    cfg = SimpleNamespace(eos_token_ids=(eos,), pad_token_id=None)
    chat = Policy.of(None, cfg, llama3_tok, chat="auto", system_prompt="Be brief.")
    assert chat.prompt.chat and chat.prompt.system_prompt == "Be brief."
    assert chat.stop_ids == (eos, eot)  # the end of turn stops a completion too
    ids = chat.prompt_ids(Q, (SHOT,))
    assert ids == encode_prompt(llama3_tok, PromptConfig(chat=True, system_prompt="Be brief."), Q, (SHOT,))
    assert "Be brief." in llama3_tok.decode(ids) and chat.opening("direct") == []
    assert llama3_tok.decode(chat.opening("cot")) == "<thought>"
    hinted = llama3_tok.decode(chat.prompt_ids(Q, style="star_hint"))
    assert "(The correct answer is 36)" in hinted

    text = Policy.of(None, cfg, llama3_tok, chat=False)
    assert not text.prompt.chat and text.stop_ids == (eos,)
    assert text.prompt_ids(Q) == encode_prompt(llama3_tok, PromptConfig(), Q)
    assert Policy.of(None, cfg, bpe, chat="auto").prompt.chat is False  # no template: the text format
    with pytest.raises(ValueError, match="no chat template"):
        Policy.of(None, cfg, bpe, chat=True)
    with pytest.raises(ValueError, match="system_prompt needs chat"):
        Policy.of(None, cfg, bpe, chat="auto", system_prompt="Be brief.")
