"""Typed recipe schema, YAML loading, dotted `key=value` overrides and validation.

A recipe is a YAML mapping whose sections mirror the dataclasses below. Every key is checked:
an unknown key names itself and the closest valid key; a wrong type names key, value and type.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slmkit.errors import SlmError
from slmkit.models.config import ModelConfig
from slmkit.tokenizer import DEFAULT_SPECIAL_TOKENS


@dataclass
class SourceConfig:
    """One named data source. Which options apply depends on `type` (see slmkit.data.sources)."""

    name: str = ""
    type: str = ""
    weight: float = 1.0  # sampling proportion in the mixture (normalised over sources)
    path: str | None = None  # file, folder or glob; None = the source's default location
    field: str | None = None  # jsonl: the field holding the text
    template: str | None = None  # jsonl: "{question}\n{answer}" over fields
    split: str = "train"  # codefusion: train | test
    language: str | None = None  # codefusion: Bash | Python | CF
    max_docs: int | None = None  # keep only the first N documents (after sorting)


@dataclass
class TokenizerConfig:
    vocab_size: int = 8192
    min_frequency: int = 2
    special_tokens: list[str] = field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))
    max_train_bytes: int = 100_000_000  # cap on text fed to the BPE trainer
    path: str | None = None  # use this tokenizer.json instead of training one


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 256  # length of a training block
    val_fraction: float = 0.02  # share of documents (by hash) held out for validation
    mixture_tokens: int | None = None  # size of the train mixture; None = all unique train tokens
    shard_tokens: int = 64_000_000  # tokens per shard file
    dedup: bool = True  # drop exact-duplicate documents
    workers: int = 0  # tokenizer processes; 0 = all cores
    seed: int = 1234  # mixture sampling and shuffling


@dataclass
class ModelRecipe:
    """A preset name plus any ModelConfig field to override (`model.n_layers=4`)."""

    preset: str = "tiny-llama"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    max_steps: int | str = 1000  # or "auto": as many as fit train.max_minutes (train/budget.py)
    max_minutes: float | None = None  # training-time budget of the whole run (resumes included)
    batch_size: int = 16  # micro-batch per process, in blocks of data.seq_len
    grad_accum: int = 1
    optimizer: str = "llama"  # preset: llama | phi-1_5
    lr: float | None = None  # None = the optimizer preset's value
    min_lr_ratio: float | None = None
    betas: list[float] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    schedule: str | None = None  # cosine | constant | linear | wsd
    warmup_steps: int | None = None
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "none"  # none | ddp | fsdp
    reshard_after_forward: bool = True  # fsdp: False keeps params unsharded after forward (ZeRO-2)
    device: str = "auto"  # auto | cpu | cuda
    save_every: int = 200
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    eval_tasks: list[str] = field(default_factory=list)  # benchmark tasks scored every eval_every steps
    eval_tasks_limit: int = 20  # documents per task for those in-training scores
    keep_last: int = 3
    seed: int = 1337
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    init_from: str | None = None  # checkpoint / HF folder to start from (fine-tuning)


@dataclass
class SFTConfig:
    """Supervised fine-tuning data (task: sft). Loss only on response tokens."""

    path: str | None = None  # jsonl with prompt/response pairs or chat messages
    val_path: str | None = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    template: str = "qa"  # qa ("Question: ... Answer:") | chat ("Alice: ... Bob:") | code


@dataclass
class CodeConfig:
    """Natural language to code (task: codefusion | ar-code | masked-diffusion): the data of both stages.

    Stage 1 (`pretrain_steps` optimizer steps) trains on code alone: the documents of `data.sources`
    other than type `codefusion`, each cut into pieces of at most `code_len` tokens. Stage 2 (the rest
    of train.max_steps) trains on the (utterance, code) pairs of `benchmark`'s train split.
    """

    language: str | None = None  # Bash | Python | CF: which benchmark file and eval task (required)
    benchmark: str | None = None  # a CodeFusion benchmark JSON; None = the shared datasets' file for language
    utterance_len: int = 64  # utterance tokens kept (longer ones are cut)
    code_len: int = 64  # code tokens (CodeFusion's fixed output length; longer code is cut)
    pretrain_steps: int = 0  # stage-1 steps on code only; 0 = no pretraining (an ablation)
    cpd: bool = True  # codefusion: continuous paragraph denoising rows in stage 1 (False = unconditional only)
    cpd_fraction: float = 0.5  # codefusion: share of stage-1 rows that are hidden-span rows
    span_fraction: float = 0.3  # codefusion: share of a snippet's tokens hidden from the encoder


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 0
    device: str | None = None  # None = train.device


@dataclass
class EvalConfig:
    """The eval stage (`slm eval`). Unset values fall back to the train section's."""

    batches: int | None = None  # validation batches to score; None = train.eval_batches
    batch_size: int | None = None  # None = train.batch_size
    device: str | None = None  # None = train.device
    tasks: list[str] = field(default_factory=lambda: ["ppl:val"])  # `slm eval --tasks` names
    limit: int | None = None  # first N documents per benchmark task
    num_fewshot: int | None = None  # None = each task's default


@dataclass
class Recipe:
    name: str = "run"
    task: str = "pretrain"  # pretrain | sft | codefusion | ar-code | masked-diffusion
    stages: list[str] | None = None  # None = every stage of the task's objective
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelRecipe = field(default_factory=ModelRecipe)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


MAX_RECIPE_VALUES = 100_000  # a recipe is a few hundred values; more means YAML aliases gone wild


# --------------------------------------------------------------------------- key listing


def valid_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (sections and leaves), e.g. 'train.max_steps'."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if cls is ModelRecipe and f.name == "overrides":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, key + "."))
    if cls is ModelRecipe:
        from slmkit.models.codefusion_config import CodeFusionConfig

        names = dict.fromkeys(f.name for c in (ModelConfig, CodeFusionConfig) for f in dataclasses.fields(c))
        keys.extend(f"{prefix}{name}" for name in names)
    return keys


def _unknown_key_error(key: str, candidates: list[str]) -> SlmError:
    leaf = key.rsplit(".", 1)[-1]
    all_keys = valid_keys()
    best = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not best:  # maybe the key lives in another section (data.vocab_size -> tokenizer.vocab_size)
        by_leaf: dict[str, str] = {}
        for k in all_keys:  # first section wins: tokenizer.vocab_size before model.vocab_size
            by_leaf.setdefault(k.rsplit(".", 1)[-1], k)
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        best = [by_leaf[leaf_match[0]]] if leaf_match else difflib.get_close_matches(key, all_keys, n=1, cutoff=0.4)
    hint = f"; did you mean {best[0]!r}?" if best else ""
    return SlmError(f"unknown recipe key {key!r}{hint}")


# --------------------------------------------------------------------------- type coercion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 3, 6, 6


def _show(value: Any) -> str:
    """A bounded repr for error messages (a huge or deeply aliased value must not be expanded)."""
    return _SHORT.repr(value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to type `tp`, raising SlmError naming key, value and type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except SlmError as exc:
                errors.append(exc)
        raise SlmError(f"recipe key {key!r}: value {_show(value)} is not of type {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SlmError(f"recipe key {key!r}: expected a mapping, got {_show(value)}")
        return build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise SlmError(f"recipe key {key!r}: value {value!r} is not of type list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise SlmError(f"recipe key {key!r}: value {value!r} is not of type dict")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise SlmError(f"recipe key {key!r}: {_show(value)} is not a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise SlmError(f"recipe key {key!r}: value {_show(value)} is not of type {_type_name(tp)}")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, validating every key and value."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    if cls is ModelRecipe:
        preset = _coerce(data.get("preset", ModelRecipe.preset), str, prefix + "preset")
        config_cls = model_config_class(preset)
        model_fields = {f.name: f for f in dataclasses.fields(config_cls)}
        model_hints = typing.get_type_hints(config_cls)
        overrides = dict(data.get("overrides") or {})
        for key, value in data.items():
            if key in ("preset", "overrides"):
                continue
            overrides[key] = value
        for key, value in list(overrides.items()):
            if key not in model_fields:
                raise _unknown_key_error(prefix + key, [prefix + k for k in [*model_fields, "preset"]])
            overrides[key] = _coerce(value, model_hints[key], prefix + key)
        return ModelRecipe(preset=preset, overrides=overrides)
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise _unknown_key_error(prefix + str(key), [prefix + n for n in names])
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def model_config_class(preset: str) -> type:
    """The config dataclass a `model.preset` describes: CodeFusionConfig or the decoder's ModelConfig."""
    from slmkit.models.codefusion_config import CodeFusionConfig, is_codefusion_preset

    return CodeFusionConfig if is_codefusion_preset(preset) else ModelConfig


def model_overrides(changes: dict[str, Any]) -> dict[str, Any]:
    """Model field overrides (`n_layers=4`) type-checked like recipe keys, for commands that take them alone."""
    return build(ModelRecipe, changes).overrides


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse 'a.b.c=value' into (['a','b','c'], value); the value is read as YAML."""
    if "=" not in text:
        raise SlmError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise SlmError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Apply one dotted override to a raw recipe mapping (list items by index: data.sources.0.weight)."""
    parts, value = parse_override(text)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise SlmError(f"override {text!r}: {'.'.join(parts[: i + 1])!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, parts)
        node[idx] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, parts: list[str]) -> int:
    try:
        idx = int(part)
    except ValueError:
        names = [item.get("name") for item in node if isinstance(item, dict)]
        if part in names:
            return names.index(part)
        raise SlmError(f"override key {'.'.join(parts)!r}: {part!r} is not a list index or source name") from None
    if not -len(node) <= idx < len(node):
        raise SlmError(f"override key {'.'.join(parts)!r}: index {idx} out of range (list has {len(node)} items)")
    return idx


# --------------------------------------------------------------------------- loading / saving


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML file into a mapping, with clear errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SlmError(f"{path}: not UTF-8 text (byte {exc.start}); a recipe is a UTF-8 YAML file") from None
    except OSError as exc:
        raise SlmError(f"cannot read recipe {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SlmError(f"{path}{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SlmError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def _at_least(section: Any, prefix: str, minimum: int | float, *keys: str, optional: bool = False) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is None and optional:
            continue
        if value is None or value < minimum:
            raise SlmError(f"recipe key '{prefix}.{key}' must be >= {minimum}, got {value}")


def _check_seed(value: int, key: str) -> None:
    if not 0 <= value < 2**63:
        raise SlmError(f"recipe key {key!r} must be in [0, 2**63), got {value}")


def _check_data(recipe: Recipe) -> None:
    from slmkit.data.sources import check_source

    seen = set()
    for i, src in enumerate(recipe.data.sources):
        if not src.name:
            src.name = src.type or f"source{i}"
        if src.name in seen:
            raise SlmError(f"recipe key 'data.sources': duplicate source name {src.name!r}")
        seen.add(src.name)
        if not src.type:
            raise SlmError(f"recipe key 'data.sources[{i}].type' is required")
        if not src.weight > 0:
            raise SlmError(f"recipe key 'data.sources[{i}].weight': weight must be > 0, got {src.weight}")
        check_source(src, f"recipe key 'data.sources[{i}]' (source {src.name!r})")
    data = recipe.data
    if data.seq_len < 2:
        raise SlmError(f"recipe key 'data.seq_len' must be >= 2, got {data.seq_len}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise SlmError(f"recipe key 'data.val_fraction' must be in [0, 1), got {data.val_fraction}")
    _at_least(data, "data", 1, "shard_tokens")
    _at_least(data, "data", 1, "mixture_tokens", optional=True)
    _at_least(data, "data", 0, "workers")
    _check_seed(data.seed, "data.seed")
    tok = recipe.tokenizer
    if tok.vocab_size < 256 + len(tok.special_tokens):
        need = 256 + len(tok.special_tokens)
        raise SlmError(
            f"recipe key 'tokenizer.vocab_size': {tok.vocab_size} is too small for 256 byte "
            f"tokens plus {len(tok.special_tokens)} special tokens (need >= {need})"
        )
    if not tok.special_tokens or len(set(tok.special_tokens)) != len(tok.special_tokens) or not all(tok.special_tokens):
        raise SlmError("recipe key 'tokenizer.special_tokens' must be a non-empty list of distinct, non-empty tokens")
    _at_least(tok, "tokenizer", 0, "min_frequency")
    _at_least(tok, "tokenizer", 1, "max_train_bytes")


def check_context(max_seq_len: int, rows: int, what: str = "recipe key 'data.seq_len'") -> None:
    """Training rows of `rows` tokens fit the decoder's context."""
    if max_seq_len < rows:
        raise SlmError(f"{what} ({rows}) exceeds the model context model.max_seq_len ({max_seq_len}); "
                       "lower one or raise the other")


def check_decoder_model(recipe: Recipe, rows: int | None = None, what: str = "recipe key 'data.seq_len'") -> None:
    """The decoder preset, its overrides, and training rows (default data.seq_len) within its context."""
    from slmkit.models.presets import resolve_model_config

    cfg = resolve_model_config(recipe.model)  # preset name, field names and values
    if not recipe.train.init_from:
        check_context(cfg.max_seq_len, recipe.data.seq_len if rows is None else rows, what)


def _check_train(recipe: Recipe) -> None:
    from slmkit.device import PARALLEL_MODES, PRECISIONS, check_device_name
    from slmkit.errors import check_choice
    from slmkit.train.optim import resolve_optim_settings

    tc = recipe.train
    resolve_optim_settings(tc)  # optimizer preset, schedule and their numbers
    check_choice(tc.precision, PRECISIONS, "recipe key 'train.precision'")
    check_choice(tc.parallel, PARALLEL_MODES, "recipe key 'train.parallel'")
    check_device_name(tc.device, "recipe key 'train.device'")
    from slmkit.train.budget import check_max_steps

    check_max_steps(tc.max_steps, tc.max_minutes)
    _at_least(tc, "train", 1, "batch_size", "grad_accum")
    _at_least(tc, "train", 0, "save_every", "log_every", "eval_every", "eval_batches", "keep_last", "max_bad_steps")
    _at_least(tc, "train", 1, "eval_tasks_limit")
    _check_task_list(tc.eval_tasks, "train.eval_tasks", allow_empty=True, allow_run_validation=False)
    if tc.max_minutes is not None and not tc.max_minutes > 0:
        raise SlmError(f"recipe key 'train.max_minutes' must be > 0 (or null for no limit), got {tc.max_minutes}")
    _check_seed(tc.seed, "train.seed")


def _check_eval_and_sample(recipe: Recipe) -> None:
    from slmkit.device import check_device_name
    from slmkit.generate.sampling import SamplingConfig

    ev, sample = recipe.eval, recipe.sample
    _at_least(ev, "eval", 1, "batches", "batch_size", "limit", optional=True)
    _check_eval_tasks(ev)
    for key, value in (("eval.device", ev.device), ("sample.device", sample.device)):
        if value is not None:
            check_device_name(value, f"recipe key {key!r}")
    _at_least(sample, "sample", 1, "max_new_tokens")
    names = {key: f"recipe key 'sample.{key}'" for key in ("temperature", "top_k", "top_p")}
    SamplingConfig(sample.temperature, sample.top_k, sample.top_p).validate(names)
    _check_seed(sample.seed, "sample.seed")


def _check_task_list(tasks: Any, key: str, num_fewshot: Any = None, allow_empty: bool = False,
                     allow_run_validation: bool = True) -> None:
    """A list of known eval task names (did-you-mean on a typo), few-shot count in range."""
    from slmkit.eval.tasks import RUN_VALIDATION, get_tasks

    if not isinstance(tasks, list) or (not tasks and not allow_empty) or not all(isinstance(t, str) for t in tasks):
        raise SlmError(f"recipe key {key!r} must be a {'' if allow_empty else 'non-empty '}list of task names, "
                       f"got {tasks!r:.60}")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)):
        raise SlmError(f"recipe key 'eval.num_fewshot' must be an integer, got {num_fewshot!r:.40}")
    if RUN_VALIDATION in tasks and not allow_run_validation:
        raise SlmError(f"recipe key {key!r}: {RUN_VALIDATION} is already scored during training (train.eval_batches)")
    try:
        for task in get_tasks(tasks):
            if num_fewshot is not None:
                task.check_fewshot(num_fewshot)
    except SlmError as exc:
        raise SlmError(f"recipe key {key!r}: {exc}") from None


def _check_eval_tasks(ev: EvalConfig) -> None:
    _check_task_list(ev.tasks, "eval.tasks", ev.num_fewshot)


def validate(recipe: Recipe) -> Recipe:
    """Every value checked when the recipe loads, before any stage runs or anything is written:
    enumerated keys (task, stages, precision, parallel, devices, optimizer, schedule, templates,
    source types, model preset) against their registries, numbers against their ranges."""
    from slmkit.objectives import get_objective
    from slmkit.pipeline.stages import check_stages

    objective = get_objective(recipe.task, recipe)
    if recipe.stages is None:
        recipe.stages = list(objective.stages)
    check_stages(recipe)
    _check_data(recipe)
    objective.check_model(recipe)
    _check_train(recipe)
    _check_eval_and_sample(recipe)
    objective.check(recipe)
    return recipe


def _check_size(data: Any, where: str) -> None:
    """Refuse mappings that expand (through YAML aliases) to more than MAX_RECIPE_VALUES values."""
    count = 0
    stack = [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_RECIPE_VALUES:
            raise SlmError(f"{where}: the recipe expands to more than {MAX_RECIPE_VALUES:,} values "
                           "(YAML anchors and aliases nested too deep?); write the values out")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, override, type-check and validate a recipe."""
    data = load_raw(path)
    _check_size(data, str(path))
    for text in overrides:
        apply_override(data, text)
    _check_size(data, "overrides")
    return validate(build(Recipe, data))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build and validate a recipe from an in-memory mapping (tests, saved recipe.yaml)."""
    _check_size(data, "recipe")
    return validate(build(Recipe, data))


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain data (model overrides flattened into the model section)."""
    data = dataclasses.asdict(recipe)
    model = data.pop("model")
    data["model"] = {"preset": model["preset"], **model["overrides"]}
    return data


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of the fully resolved recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
