"""One GRPO training-step timing with Google's Tunix, as the peer of metajax's benchmarks/grpo_step.py.

Runs in its own venv (it must not import metajax):
    python3.11 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7
    /work/tunix-venv/bin/python benchmarks/tunix_grpo_step.py --model-dir DIR --prompts P.json
pip resolved (pip freeze; CPU only, no torch pulled in): google-tunix==0.1.7, jax==0.10.2,
jaxlib==0.10.2, flax==0.12.8, optax==0.2.8, qwix==0.1.8, transformers==5.12.1, safetensors==0.7.0

Prints ONE JSON line on stdout (everything else goes to stderr):
    {"tunix_version", "jax_version", "step_seconds", "median_step_seconds",
     "rollout_seconds", "update_seconds", "notes", ...}; the warm-up (compile) step(s) are dropped.

What Tunix 0.1.7 does in a step (read from site-packages/tunix):
  (a) Old per-token log-probs. GRPOLearner._generate_and_compute_advantage
      (tunix/rl/grpo/grpo_learner.py) only calls RLCluster.get_old_per_token_logps when
      num_iterations > 1. With num_iterations=1 (here) old_per_token_logps is None and
      grpo_loss_fn (tunix/rl/algo_core.py) uses jax.lax.stop_gradient(per_token_logps) of the
      training forward pass itself: there is NO separate old-logprob forward pass, ratio == 1.
      The training pass, common.compute_per_token_logps (tunix/rl/common.py), divides the logits
      by the rollout temperature (GRPOLearner.__init__ copies RolloutConfig.temperature into
      algo_config.temperature). The sampler's own log-probs (Sampler(return_logprobs=True)) are
      never used by GRPOLearner. (For num_iterations > 1 the old pass,
      VanillaRollout.get_per_token_logps in tunix/rl/rollout/vanilla_rollout.py, calls
      compute_per_token_logps WITHOUT temperature, i.e. at T=1.)
  (b) top-p / top-k only act in sampling (generate/sampler.py: sample_top_p, which skips the
      sort entirely when top_p >= 1 and top_k is None); compute_per_token_logps is a full-vocab
      log_softmax(logits / T), so top-p/top-k never enter the loss log-probs.
  (c) No prompt-KV sharing: RLLearner._prepare_data (tunix/rl/rl_learner.py) np.repeat's every
      prompt G times ([B] -> [B*G]) before RLCluster.generate, so the Sampler prefills each prompt
      G times, into a static KV cache of RolloutConfig.kv_cache_size slots per sequence
      (sampler._init_cache), sized here to prompt length + max new tokens.
  Completions: Sampler.__call__ cuts each row at its first EOS, EOS excluded, so the EOS token is
  never scored in the loss; GRPOLearner then right-pads every row to max_new_tokens, so the training
  pass is always [B*G, prompt_len + max_new_tokens] whatever the EOS stops.
  RoPE: Tunix 0.1.7's llama3 Attention.block calls apply_rope() without config.rope_theta (it
  always uses the default 1e6); main() rebinds apply_rope to the checkpoint's rope_theta.
  Reference model: only queried when beta != 0 (GRPOLearner checks algo_config.beta), so with
  beta=0 we pass reference=None and there is no reference pass.
  Prompts: Sampler.__call__ takes strings (input_strings) and tokenizes them itself; there is no
  token-id entry point. Instead of a real tokenizer we hand Tunix a minimal one (its
  TokenizerAdapter accepts any object with encode/decode/bos_id/eos_id/pad_id) whose "text" is
  the space-separated token ids, so the exact token ids from --prompts reach the model, no BOS
  is added, and decoding costs nothing. Completions reach the reward fn as such id strings.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

# CPU, float32, one device: set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from importlib.metadata import version  # noqa: E402
from tunix.models.llama3 import model as llama3_model  # noqa: E402
from tunix.models.llama3 import params as llama3_params  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class IdTokenizer:
    """"Text" is the space-separated token ids: lets pre-tokenized prompts through Tunix's
    string-only Sampler unchanged (tunix/generate/tokenizer_adapter.py, TokenizerType.NONE)."""

    def __init__(self, pad_id, eos_id):
        self._pad, self._eos = pad_id, eos_id

    def encode(self, text, **kw):
        return [int(t) for t in text.split()]

    def decode(self, ids, **kw):
        return " ".join(str(int(t)) for t in ids)

    def bos_id(self):
        return None  # falsy: Sampler.tokenize then prepends nothing (prompts carry their own BOS)

    def eos_id(self):
        return self._eos

    def pad_id(self):
        return self._pad


def cheap_reward(prompts, completions, **kw):
    """TRL-style signature, negligible cost. Completions are id strings, so len() counts characters:
    it varies within a group even when every completion has N tokens, keeping advantages (and so
    the gradient) non-zero."""
    return [float(len(c) % 3) for c in completions]


def tunix_config(hf):
    """Tunix Llama-3 ModelConfig from an HF LlamaForCausalLM config.json (transformers 4.x
    `rope_theta`/`rope_scaling` keys or 5.x `rope_parameters`)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise SystemExit("rope scaling is not supported (Tunix's llama3 has none)")
    rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    return llama3_model.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        rope_theta=rope_theta,
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="HF checkpoint: config.json + *.safetensors")
    ap.add_argument("--prompts", required=True, help="JSON list of lists of token ids")
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="total steps, warm-up included")
    # Step 2 still pays a one-off tiny jit compile in Tunix's rollout path (~50 ms on CPU): for
    # tiny models, where a step is of that order, use --warmup-steps 2.
    ap.add_argument("--warmup-steps", type=int, default=1, help="leading steps left out of the stats")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--micro-prompts", type=int, default=None,
                    help="prompts per gradient-accumulation micro-batch (default: all in one)")
    ap.add_argument("--pad-id", type=int, default=None, help="default: config.json pad_token_id, else 0")
    ap.add_argument("--eos-id", type=int, default=None, help="default: config.json eos_token_id(s), else 1")
    ap.add_argument("--tokenizer-dir", default=None,
                    help="accepted for CLI compatibility; unused (prompts go in as token ids)")
    args = ap.parse_args()
    if args.steps <= args.warmup_steps:
        raise SystemExit("--steps must exceed --warmup-steps")

    with open(os.path.join(args.model_dir, "config.json")) as f:
        hf = json.load(f)
    as_list = lambda v, default: [default] if v is None else (v if isinstance(v, list) else [v])  # noqa: E731
    pad_id = args.pad_id if args.pad_id is not None else as_list(hf.get("pad_token_id"), 0)[0]
    # Every EOS id of config.json stops a row (Llama-3 instruct has several), unless --eos-id given.
    eos_ids = [args.eos_id] if args.eos_id is not None else as_list(hf.get("eos_token_id"), 1)
    with open(args.prompts) as f:
        prompt_ids = json.load(f)
    prompts = np.array([" ".join(str(int(t)) for t in p) for p in prompt_ids])
    max_prompt_len = max(len(p) for p in prompt_ids)

    # One device; the axis names are the ones Tunix's llama3 ShardingConfig refers to.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    cfg = tunix_config(hf)
    # Tunix 0.1.7's llama3 Attention.block calls apply_rope() without rope_theta, so every Llama
    # runs with the default base 1e6 whatever config.rope_theta says. Bind the checkpoint's base
    # (same FLOPs) so the logits, hence the sampled completions and their EOS stops, match the HF
    # model. The module global is looked up at trace time, so rebinding it is enough.
    llama3_model.apply_rope = functools.partial(llama3_model.apply_rope, rope_theta=cfg.rope_theta)
    t = time.perf_counter()
    model = llama3_params.create_model_from_safe_tensors(args.model_dir, cfg, mesh=mesh, dtype=jnp.float32)
    log(f"loaded model in {time.perf_counter() - t:.1f}s: {cfg}")

    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=args.max_new_tokens,
        max_prompt_length=max_prompt_len,  # left-padded to this; avoids recompiles
        # Static cache: every decode step attends over all kv_cache_size slots, so keep it tight.
        kv_cache_size=max_prompt_len + args.max_new_tokens,
        temperature=args.temperature,
        top_p=1.0, top_k=None,  # plain categorical sampling (no sort), like the metajax side
        eos_tokens=eos_ids,
    )
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(1e-6),
        eval_every_n_steps=10**9,  # no eval
        max_steps=args.steps,
        # One mini-batch of all B prompts (x G completions), i.e. one optimizer update per step,
        # accumulated over micro-batches of --micro-prompts prompts. Rollout micro-batches would
        # default to the training ones; keep the whole batch in one generate call instead.
        mini_batch_size=len(prompts),
        train_micro_batch_size=args.micro_prompts or len(prompts),
        rollout_micro_batch_size=len(prompts),
        compute_logps_micro_batch_size=args.micro_prompts or len(prompts),
    )
    # Actor and rollout on the same mesh: Tunix shares the weights (no weight sync, no async rollout).
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                      rl_cluster_lib.Role.ROLLOUT: mesh},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=training_config,
        rollout_config=rollout_config,
    )
    cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=IdTokenizer(pad_id, eos_ids[0]),
                                       cluster_config=cluster_config)
    algo_config = grpo_learner.GRPOConfig(num_generations=args.num_generations, num_iterations=1,
                                          beta=0.0, epsilon=0.2)
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo_config, reward_fns=[cheap_reward])

    # Timing hooks, wrapping (not replacing) RLCluster methods on this instance. The sampler returns
    # host arrays and PeftTrainer.train waits for all in-flight steps, so both calls are synchronous.
    rollout_s, update_s, gen_lens = [], [], []

    def timed(fn, out, after=None):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            r = fn(*a, **kw)
            if after:
                after(r)
            out.append(time.perf_counter() - t0)
            return r
        return wrapper

    cluster.generate = timed(cluster.generate, rollout_s,
                             after=lambda r: gen_lens.append(float(np.mean([len(x) for x in r.tokens]))))
    cluster.update_actor = timed(cluster.update_actor, update_s,
                                 after=lambda r: jax.block_until_ready(nnx.state(cluster.actor_trainer.model)))

    # Step i starts when Tunix pulls batch i from this iterator (RLLearner.train pulls one batch per
    # global step, after the previous step's update has returned).
    step_starts = []

    def batches():
        for _ in range(args.steps):
            step_starts.append(time.perf_counter())
            yield {"prompts": prompts}  # an np array, so _prepare_data's np.repeat gives [B*G]

    log(f"{len(prompts)} prompts x G={args.num_generations}, up to {args.max_new_tokens} new tokens")
    t = time.perf_counter()
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # keep stdout for the one JSON line
    try:
        learner.train(batches())
    finally:
        sys.stdout = real_stdout
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    t_end = time.perf_counter()
    log(f"train() of {args.steps} steps took {t_end - t:.1f}s")

    bounds = step_starts + [t_end]
    steps = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if len(steps) != args.steps or len(rollout_s) != args.steps:
        log(f"warning: saw {len(steps)} step starts and {len(rollout_s)} rollouts for {args.steps} steps")
    log(f"all steps (incl. warm-up): {[round(s, 4) for s in steps]}")
    w = args.warmup_steps
    result = {
        "framework": "tunix",
        "tunix_version": version("google-tunix"),
        "jax_version": jax.__version__,
        "flax_version": version("flax"),
        "num_prompts": len(prompt_ids),
        "num_generations": args.num_generations,
        "max_new_tokens": args.max_new_tokens,
        "step_seconds": steps[w:],
        "median_step_seconds": statistics.median(steps[w:]),
        "rollout_seconds": rollout_s[w:],
        "update_seconds": update_s[w:],
        "mean_completion_tokens": gen_lens[w:],
        "warmup_step_seconds": steps[:w],
        "notes": ("vanilla rollout (tunix Sampler, static KV cache of prompt+new tokens, each prompt "
                  "repeated G times, early stop only when all rows hit EOS); num_iterations=1 so no "
                  "old-logprob pass (ratio=stop_gradient of the training pass); apply_rope rebound to the "
                  "checkpoint's rope_theta (tunix 0.1.7 hardcodes 1e6); beta=0 so no reference "
                  "pass; one adamw update over B*G; rollout RNG seed is fixed (PRNGKey(0)) every step; "
                  "step = rollout + rewards/advantages + fwd/bwd/update + Tunix bookkeeping"),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
