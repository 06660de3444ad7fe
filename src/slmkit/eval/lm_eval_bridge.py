"""Run lm-evaluation-harness's own evaluator on our local data, with our model or its `hf` backend.

Why this exists: lm-eval's evaluator is what published small-model numbers are reported with, and our
native harness (`eval.harness`) re-implements its prompts, tokenization and metrics to be fast and
offline. That claim has to be checked, not trusted: this bridge runs the *real* lm-eval on the same
local files (nothing is downloaded) so its results can be compared item by item with ours:

- `SlmkitLM`: an `lm_eval.api.model.LM` over any slmkit `LanguageModel`, registered as "slmkit"
  (`lm_eval --model slmkit --model_args pretrained=FOLDER,batch_size=8,device=cpu` once this module
  is imported), so lm-eval builds the prompts and our model answers them.
- `write_task_configs`: lm-eval task YAMLs in a folder. Each one `include`s lm-eval's installed
  task YAML (prompts, choices, targets, delimiters, filters, metrics are lm-eval's, by construction)
  and only repoints the data: `dataset_path: json` over JSON-lines files converted from our shared
  datasets into the field layout of the Hugging Face dataset lm-eval would have downloaded.
- `run_lm_eval`: lm-eval's `simple_evaluate` on those tasks with `SlmkitLM` or lm-eval's `HFLM`,
  results returned in our harness's format plus one record per document (the chosen answer,
  log-likelihoods or the generated text), so tests can compare backends document by document.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from slmkit.errors import SlmError
from slmkit.eval.lm import GENERATE, LOGLIKELIHOOD, ROLLING, GenerationRequest, LanguageModel

BACKENDS = ("slmkit", "hf")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks

# lm-eval result keys ("metric,filter") for the metric names our harness reports
_METRIC_KEYS = {"acc": "acc,none", "acc_norm": "acc_norm,none",
                "exact_match": "exact_match,strict-match", "exact_match_flexible": "exact_match,flexible-extract"}


# ---------------------------------------------------------------------------- the model class


def _batch_size(value: Any, default: int = 16) -> int:
    """lm-eval passes batch_size as an int, a digit string or "auto"/"auto:N" (-> our default)."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def generation_request(context: str, gen_kwargs: dict[str, Any] | None) -> GenerationRequest:
    """Our GenerationRequest for lm-eval's generate_until arguments (context, gen_kwargs).

    until: a string or list of stop strings; max_gen_toks (or max_new_tokens / max_tokens) else 256;
    do_sample False (or absent with temperature 0) is greedy; do_sample True without a temperature
    samples at 1.0 (Hugging Face's default); top_p and seed pass through.
    """
    kw = dict(gen_kwargs or {})
    until = kw.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    budget = next((kw[k] for k in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
                   if kw.get(k) is not None), DEFAULT_MAX_GEN_TOKS)
    temperature = float(kw.get("temperature") or 0.0)
    do_sample = kw.get("do_sample")
    if do_sample is False:
        temperature = 0.0
    elif do_sample and temperature == 0.0:
        temperature = 1.0
    top_p = kw.get("top_p")
    return GenerationRequest(context, tuple(until), int(budget), temperature=temperature,
                             top_p=float(top_p) if top_p is not None else None, n=1, seed=int(kw.get("seed", 0) or 0))


class SlmkitLM(LM):
    """lm-eval's model interface over an slmkit `LanguageModel` (a `DecoderLM` loaded from `pretrained`)."""

    def __init__(self, pretrained: str | Path | None = None, batch_size: int | str | None = 16,
                 device: str | None = "cpu", precision: str = "fp32", lm: LanguageModel | None = None,
                 **unused: Any) -> None:
        super().__init__()
        if lm is None:
            if not pretrained:
                raise SlmError("lm-eval model 'slmkit' needs model_args pretrained=FOLDER")
            from slmkit.eval.decoder_lm import load_decoder_lm

            lm = load_decoder_lm(Path(str(pretrained)), device=device or "cpu",
                                 batch_size=_batch_size(batch_size), precision=precision)
        self.lm = lm
        self._device = getattr(lm, "device", device)

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def _need(self, capability: str) -> None:
        if capability not in self.lm.capabilities:
            raise SlmError(f"model {self.lm.name} cannot answer {capability} requests")

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._need(LOGLIKELIHOOD)
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        return [(float(lp), bool(greedy)) for lp, greedy in self.lm.loglikelihood(pairs)]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        self._need(ROLLING)
        return [float(lp) for lp, _ in self.lm.loglikelihood_rolling([str(r.args[0]) for r in requests])]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        self._need(GENERATE)
        calls = [generation_request(r.args[0], r.args[1] if len(r.args) > 1 else None) for r in requests]
        outputs = [completions[0] for completions in self.lm.generate(calls)]
        for request, text in zip(requests, outputs):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def get_model_info(self) -> dict:
        return {"slmkit_model": self.lm.describe()}


try:
    register_model("slmkit")(SlmkitLM)  # lm_eval --model slmkit, simple_evaluate(model="slmkit", ...)
except ValueError:  # this module imported again (importlib.reload): the first registration stays
    pass


# ---------------------------------------------------------------------------- data -> lm-eval's field layout

Rows = list[dict]


def _jsonl(path: Path, hint: str = "") -> Rows:
    """Objects of a JSON-lines file; TaskDataMissing (an SlmError) naming it when it is not there."""
    from slmkit.eval.tasks.base import read_jsonl

    return read_jsonl(path, path.parent.name, hint)


def _lines(path: Path) -> list[str]:
    from slmkit.eval.tasks.base import read_lines

    return read_lines(path, path.parent.name)


def _arc_rows(path: Path, stem_key: str) -> Rows:
    """AI2 files -> allenai/ai2_arc (stem_key "question") or allenai/openbookqa ("question_stem")."""
    rows = []
    for item in _jsonl(path):
        q = item["question"]
        choices = {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}
        rows.append({"slmkit_id": item["id"], "id": item["id"], stem_key: q["stem"], "choices": choices,
                     "answerKey": item["answerKey"]})
    return rows


def _labelled(items_path: Path, labels_path: Path, prefix: str, build: Callable[[dict, str], dict]) -> Rows:
    items, labels = _jsonl(items_path), _lines(labels_path)
    if len(items) != len(labels):
        raise SlmError(f"{labels_path}: {len(labels)} labels for {len(items)} items in {items_path}")
    return [{"slmkit_id": f"{prefix}-{i}", **build(item, label)} for i, (item, label) in enumerate(zip(items, labels))]


def _mmlu_rows(path: Path, subject: str, split: str) -> Rows:
    """MMLU CSV -> cais/mmlu rows {question, subject, choices, answer (index)}."""
    from slmkit.eval.tasks.base import need_file

    rows = []
    with open(need_file(path, f"mmlu_{subject}"), encoding="utf-8", newline="") as f:
        for i, row in enumerate(r for r in csv.reader(f) if r):
            if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
                raise SlmError(f"{path}: row {i + 1} needs 6 columns (question, A-D, answer letter)")
            rows.append({"slmkit_id": f"{subject}-{split}-{i}", "question": row[0], "subject": subject,
                         "choices": row[1:5], "answer": "ABCD".index(row[5])})
    return rows


def _hellaswag_rows(root: Path) -> Rows:
    from slmkit.eval.tasks.choice import HELLASWAG_ENV, hellaswag_path

    items = _jsonl(hellaswag_path(root), f"HellaSwag is not shipped: set {HELLASWAG_ENV} to a hellaswag_val.jsonl")
    return [{"slmkit_id": str(item.get("ind", i)), **item} for i, item in enumerate(items)]


@dataclass(frozen=True)
class LocalTask:
    """How one task reaches lm-eval: its upstream YAML and the local files for each split it uses."""

    upstream: str  # lm-eval's YAML, relative to lm_eval/tasks
    splits: Callable[[Path], dict[str, Callable[[], Rows]]]  # data root -> split name -> rows
    fewshot_split: str | None = None  # the split our few-shot examples come from (None: 0-shot only)


def _local_tasks() -> dict[str, LocalTask]:
    arc = {
        name: LocalTask(f"arc/{name}.yaml", lambda r, f=file: {
            "test": lambda: _arc_rows(r / f"arc/{f}-Test.jsonl", "question"),
            "validation": lambda: _arc_rows(r / f"arc/{f}-Dev.jsonl", "question")}, "validation")
        for name, file in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge"))}
    tasks = {
        **arc,
        "openbookqa": LocalTask("openbookqa/openbookqa.yaml", lambda r: {
            "test": lambda: _arc_rows(r / "openbookqa/test.jsonl", "question_stem"),
            "validation": lambda: _arc_rows(r / "openbookqa/dev.jsonl", "question_stem")}, "validation"),
        "piqa": LocalTask("piqa/piqa.yaml", lambda r: {"test": lambda: _labelled(
            r / "piqa/valid.jsonl", r / "piqa/valid-labels.lst", "piqa",
            lambda it, lab: {"goal": it["goal"], "sol1": it["sol1"], "sol2": it["sol2"], "label": int(lab)})}),
        "siqa": LocalTask("siqa/siqa.yaml", lambda r: {"test": lambda: _labelled(
            r / "socialiqa/dev.jsonl", r / "socialiqa/dev-labels.lst", "siqa",
            lambda it, lab: {**{k: it[k] for k in ("context", "question", "answerA", "answerB", "answerC")},
                             "label": lab})}),
        "boolq": LocalTask("super_glue/boolq/default.yaml", lambda r: {"test": lambda: [
            {"slmkit_id": f"boolq-{i}", "question": it["question"], "passage": it["passage"], "idx": i,
             "label": int(bool(it["answer"]))} for i, it in enumerate(_jsonl(r / "boolq/dev.jsonl"))]}),
        "winogrande": LocalTask("winogrande/default.yaml", lambda r: {"test": lambda: [
            {"slmkit_id": it["qID"], **{k: it[k] for k in ("sentence", "option1", "option2", "answer")}}
            for it in _jsonl(r / "winogrande/dev.jsonl")]}),
        "hellaswag": LocalTask("hellaswag/hellaswag.yaml", lambda r: {"test": lambda: _hellaswag_rows(r)}),
        "gsm8k": LocalTask("gsm8k/gsm8k.yaml", lambda r: {
            "test": lambda: [{"slmkit_id": f"gsm8k-{i}", **it} for i, it in enumerate(_jsonl(r / "gsm8k/test.jsonl"))],
            "train": lambda: [{"slmkit_id": f"gsm8k-train-{i}", **it}
                              for i, it in enumerate(_jsonl(r / "gsm8k/train.jsonl"))]}, "train"),
    }
    from slmkit.eval.tasks.choice import MMLU_SUBJECTS

    for subject in MMLU_SUBJECTS:
        tasks[f"mmlu_{subject}"] = LocalTask(f"mmlu/default/mmlu_{subject}.yaml", lambda r, s=subject: {
            "test": lambda: _mmlu_rows(r / f"mmlu/test/{s}_test.csv", s, "test"),
            "dev": lambda: _mmlu_rows(r / f"mmlu/dev/{s}_dev.csv", s, "dev")}, "dev")
    return tasks


MMLU_GROUP_FILES = ("_mmlu.yaml", "_mmlu_humanities.yaml", "_mmlu_other.yaml", "_mmlu_social_sciences.yaml",
                    "_mmlu_stem.yaml")


def supported_tasks() -> list[str]:
    """Task names the bridge can run (our names; mmlu is lm-eval's group of its 57 subject tasks)."""
    names = [n for n in _local_tasks() if not n.startswith("mmlu_")]
    return [*names, "mmlu", "mmlu_<subject>"]


def upstream_tasks_dir() -> Path:
    """The installed lm-eval's task folder (the YAMLs ours include)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_task_configs(folder: Path, task_names: Sequence[str], data_root: Path) -> list[str]:
    """Write lm-eval task YAMLs for our task names into `folder`, over JSON-lines copies of the local data.

    Each `<task>.yaml` includes lm-eval's installed YAML and overrides only where the data comes from
    (`dataset_path: json`, `dataset_kwargs.data_files`, the splits); "mmlu" also writes lm-eval's
    group YAMLs (mmlu -> stem/other/social_sciences/humanities -> subjects). Returns the names to load.
    SlmError for a task the bridge does not know.
    """
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    local = _local_tasks()
    upstream = upstream_tasks_dir()
    wanted: list[str] = []
    for name in task_names:
        if name == "mmlu":
            wanted += [n for n in local if n.startswith("mmlu_")]
            for group_file in MMLU_GROUP_FILES:
                (folder / group_file).write_text(
                    f"include: {_yaml_str(str(upstream / 'mmlu' / 'default' / group_file))}\n", encoding="utf-8")
        elif name in local:
            wanted.append(name)
        else:
            raise SlmError(f"task {name!r} is not available through lm-eval here; supported: "
                           f"{', '.join(supported_tasks())}")
    cache = folder / "hf_cache"
    for name in dict.fromkeys(wanted):
        spec = local[name]
        files = {}
        for split, rows in spec.splits(Path(data_root)).items():
            files[split] = folder / "data" / f"{name}.{split}.jsonl"
            _write_jsonl(files[split], rows())
        lines = [f"include: {_yaml_str(str(upstream / spec.upstream))}",
                 f"task: {name}",
                 "dataset_path: json",
                 "dataset_name: null",
                 "dataset_kwargs:",
                 "  data_files:",
                 *[f"    {split}: {_yaml_str(str(path))}" for split, path in files.items()],
                 f"  cache_dir: {_yaml_str(str(cache))}",
                 "training_split: null",
                 "validation_split: null",
                 "test_split: test",
                 f"fewshot_split: {spec.fewshot_split or 'null'}"]
        (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list(task_names)


# ---------------------------------------------------------------------------- running lm-eval


def _stderr(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _choice_record(task_obj: Any, sample: dict, keep_requests: bool) -> dict:
    """Our per-document record from one lm-eval multiple-choice sample (gold as lm-eval computes it)."""
    import numpy as np

    doc = sample["doc"]
    lls = np.array([float(r[0]) for r in sample["filtered_resps"]])
    choices = task_obj.doc_to_choice(doc)
    gold = task_obj.doc_to_text(doc) if task_obj.multiple_input else task_obj.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
    lengths = np.array([float(len(c)) for c in choices])
    args = [tuple(a) for a in sample["arguments"]]
    record = {"id": doc.get("slmkit_id", sample["doc_id"]), "doc_index": sample["doc_id"], "gold": int(gold),
              "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls / lengths)),
              "loglikelihoods": [round(float(x), 6) for x in lls],
              "request": {"context": args[0][0], "continuation": args[0][1]}}
    if keep_requests:
        record["requests"] = [[a[0], a[1]] for a in args]
    return record


def _gsm8k_records(samples: list[dict], keep_requests: bool) -> list[dict]:
    """One record per document from lm-eval's per-filter samples (strict-match, flexible-extract)."""
    from slmkit.eval.tasks.generation import normalize_answer

    by_doc: dict[int, dict] = {}
    for sample in samples:
        doc = sample["doc"]
        record = by_doc.setdefault(sample["doc_id"], {
            "id": doc.get("slmkit_id", sample["doc_id"]), "doc_index": sample["doc_id"],
            "gold": normalize_answer(doc["answer"]), "completion": sample["resps"][0][0],
            "request": {"prompt": sample["arguments"][0][0], "until": list(sample["arguments"][0][1].get("until", []))},
            "metrics": {}})
        if keep_requests:
            record["requests"] = [[a[0], a[1]] for a in sample["arguments"]]
        answer = sample["filtered_resps"][0]
        if sample["filter"] == "strict-match":
            record["strict"] = answer
            record["metrics"]["exact_match"] = float(sample["exact_match"])
        elif sample["filter"] == "flexible-extract":
            record["flexible"] = answer
            record["metrics"]["exact_match_flexible"] = float(sample["exact_match"])
    return [by_doc[k] for k in sorted(by_doc)]


def _make_backend(backend_model: str, model_path: Path, batch_size: int, device: str) -> LM:
    if backend_model == "slmkit":
        return SlmkitLM(pretrained=str(model_path), batch_size=batch_size, device=device)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_path), dtype="float32", device=device, batch_size=batch_size)


def run_lm_eval(model_path: Path | str, task_names: list[str], *, limit: int | None = None,
                num_fewshot: int | None = None, batch_size: int = 8, device: str = "cpu",
                backend_model: str = "slmkit", data_root: Path | None = None,
                gen_kwargs: dict[str, Any] | None = None, lm: LM | None = None,
                keep_requests: bool = False, work_dir: Path | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on our local data, results in our harness's format.

    backend_model "slmkit" scores with `SlmkitLM` (our DecoderLM), "hf" with lm-eval's own `HFLM`
    (pretrained=FOLDER, dtype=float32); `lm` passes a ready lm-eval model instead. num_fewshot None
    uses each task's default (gsm8k: 5). gen_kwargs update generate_until tasks' generation_kwargs
    (e.g. {"max_gen_toks": 16}). Returns {"model", "tasks": {name: entry}, "settings", "samples"}:
    entries as `eval.harness.evaluate` writes them (metrics acc / acc_norm / exact_match (strict-match)
    / exact_match_flexible with value and stderr, n, seconds) and one record per document ("pred",
    "pred_norm", "loglikelihoods"; gsm8k: "completion", "strict", "flexible"), in document order.
    SlmError (one line) for an unknown task, one the bridge cannot run, or an impossible k-shot.
    """
    import tempfile

    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    from slmkit.data.paths import datasets_dir
    from slmkit.eval.tasks import get_tasks

    if backend_model not in BACKENDS:
        raise SlmError(f"backend_model {backend_model!r} is not one of {', '.join(BACKENDS)}")
    data_root = Path(data_root) if data_root is not None else datasets_dir()
    native = {t.name: t for t in get_tasks(list(dict.fromkeys(task_names)))}  # SlmError for unknown names
    local = _local_tasks()
    for name, task in native.items():
        if name != "mmlu" and name not in local:
            raise SlmError(f"task {name!r} cannot run through lm-eval here; supported: {', '.join(supported_tasks())}")
        task.check_fewshot(task.default_fewshot if num_fewshot is None else num_fewshot)
    model = lm or _make_backend(backend_model, Path(model_path), batch_size, device)
    if isinstance(model, SlmkitLM):
        needed = {t.request_type for t in native.values()}
        missing = needed - set(model.lm.capabilities)
        if missing:
            raise SlmError(f"model {model.lm.name} cannot answer {', '.join(sorted(missing))} requests")
    with tempfile.TemporaryDirectory(prefix="slmkit-lm-eval-", dir=work_dir) as tmp:
        write_task_configs(Path(tmp), list(native), data_root)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        entries: dict[str, Any] = {}
        samples: list[dict] = []
        for name, task in native.items():
            loaded = manager.load([name])
            obj = loaded["groups"][name] if name in loaded["groups"] else loaded["tasks"][name]
            start = time.perf_counter()
            out = evaluator.simple_evaluate(model=model, tasks=[obj], limit=limit, num_fewshot=num_fewshot,
                                            batch_size=batch_size, task_manager=manager, log_samples=True,
                                            gen_kwargs=gen_kwargs)
            seconds = round(time.perf_counter() - start, 2)
            entry, records = _convert(name, task, out, loaded["tasks"], keep_requests)
            entries[name] = {**entry, "seconds": seconds}
            samples += records
    settings = {"limit": limit, "num_fewshot": num_fewshot, "data_root": str(data_root),
                "backend": backend_model if lm is None else type(lm).__name__, "gen_kwargs": gen_kwargs,
                "lm_eval_version": _lm_eval_version()}
    model_info = model.lm.describe() if isinstance(model, SlmkitLM) else {"name": Path(str(model_path)).name}
    return {"model": model_info, "tasks": entries, "settings": settings, "samples": samples}


def _lm_eval_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lm_eval")


def _convert(name: str, task: Any, out: dict, task_objs: dict[str, Any],
             keep_requests: bool) -> tuple[dict[str, Any], list[dict]]:
    """(our result entry without seconds, our per-document records) from simple_evaluate's output."""
    result = out["results"][name]
    from slmkit.eval.tasks.choice import MMLU_SUBJECTS

    order = {f"mmlu_{s}": i for i, s in enumerate(MMLU_SUBJECTS)}  # our mmlu's document order
    subtasks = sorted((n for n in task_objs if n in out["samples"]), key=lambda n: order.get(n, -1))
    n = sum(int(out["n-samples"][s]["effective"]) for s in subtasks)
    k = out["configs"][subtasks[0]]["num_fewshot"] if subtasks else 0
    metrics = {}
    for metric in task.metrics:
        key = _METRIC_KEYS[metric.name]
        if key in result:
            stderr_key = key.replace(",", "_stderr,", 1)
            metrics[metric.name] = {"value": float(result[key]), "stderr": _stderr(result.get(stderr_key)),
                                    "higher_is_better": metric.higher_is_better}
    records = []
    for sub in subtasks:
        if task.family == "generation":
            per_doc = _gsm8k_records(out["samples"][sub], keep_requests)
        else:
            per_doc = []
            for sample in sorted(out["samples"][sub], key=lambda s: s["doc_id"]):
                record = _choice_record(task_objs[sub], sample, keep_requests)
                record["metrics"] = {m.name: float(sample[m.name]) for m in task.metrics if m.name in sample}
                per_doc.append(record)
        records += [{"task": name, **r} for r in per_doc]
    entry = {"task": name, "family": task.family, "source": f"{task.source} (lm-eval {_lm_eval_version()})",
             "n": n, "num_fewshot": k, "metrics": metrics}
    return entry, records
