"""Run tasks against one `LanguageModel`: limit, build requests, batch them across documents, score,
aggregate (value and standard error per metric), and keep every document's prediction.

A task whose data file is missing is skipped with its one-line reason; the others still run.
`load_lm` picks the LanguageModel of a model folder (CodeFusion or decoder).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.eval.lm import CANDIDATES, GENERATE, LOGLIKELIHOOD, ROLLING, CandidateRequest, LanguageModel
from slmkit.eval.tasks import Task, TaskDataMissing


@dataclass
class EvalOptions:
    """Settings shared by every task of one run."""

    data_root: Path
    limit: int | None = None
    num_fewshot: int | None = None  # None: each task's default
    progress: bool = True


def _call(lm: LanguageModel, request_type: str, requests: list, bar: Any) -> list:
    method = {LOGLIKELIHOOD: lm.loglikelihood, ROLLING: lm.loglikelihood_rolling, GENERATE: lm.generate,
              CANDIDATES: lm.candidates}
    return method[request_type](requests, progress=bar.update)


def run_task(lm: LanguageModel, task: Task, options: EvalOptions) -> tuple[dict[str, Any], list[dict]]:
    """(result entry, per-document records) for one task."""
    from slmkit.progress import progress_bar

    start = time.perf_counter()
    k = task.default_fewshot if options.num_fewshot is None else options.num_fewshot
    if task.request_type not in lm.capabilities:
        return {"task": task.name, "skipped": f"{lm.name} cannot answer {task.request_type} requests"}, []
    docs = task.docs(options.data_root)
    docs = task.limit_docs(docs, options.limit)
    per_doc = [task.requests(doc, k, options.data_root) for doc in docs]
    flat = [r for reqs in per_doc for r in reqs]
    with progress_bar(len(flat), f"{task.name}", unit="req", enabled=options.progress, leave=False) as bar:
        called = time.perf_counter()
        responses = _call(lm, task.request_type, flat, bar)
        model_seconds = time.perf_counter() - called
    grouped, at = [], 0
    for reqs in per_doc:
        grouped.append(responses[at: at + len(reqs)])
        at += len(reqs)
    scored = task.score_all(docs, grouped)
    values: dict[str, list[float]] = {}
    records = []
    for (doc_values, record), reqs in zip(scored, per_doc):
        for name, value in doc_values.items():
            values.setdefault(name, []).append(value)
        records.append({"task": task.name, **record, "request": _shown(reqs[0]), "metrics": doc_values})
    aggregated = task.aggregate(values, records) if docs else {}
    metrics = {m.name: {"value": aggregated[m.name][0], "stderr": aggregated[m.name][1],
                        "higher_is_better": m.higher_is_better} for m in task.metrics if m.name in aggregated}
    entry = {"task": task.name, "family": task.family, "source": task.source, "n": len(docs), "num_fewshot": k,
             "metrics": metrics, "seconds": round(time.perf_counter() - start, 2)}
    if docs and all("choices" in doc for doc in docs):  # what guessing uniformly at random scores
        entry["chance"] = sum(1 / len(doc["choices"]) for doc in docs) / len(docs)
    if task.request_type == CANDIDATES:  # wall time of the model's calls per document; subset counts
        entry["seconds_per_query"] = model_seconds / len(docs) if docs else None
        subsets = {name: len(vals) for name, vals in values.items() if len(vals) != len(docs)}
        if subsets:
            entry["metric_n"] = subsets  # metrics over part of the documents (e.g. top1_seen)
        entry.update(task.entry_fields(records))
    return entry, records


def _shown(request: Any) -> Any:
    """A request as the samples file shows it (the prompt and what was scored)."""
    if isinstance(request, tuple):
        return {"context": request[0], "continuation": request[1]}
    if isinstance(request, CandidateRequest):
        return {"prompt": request.prompt, "source": request.source, "k": request.k, "method": request.method,
                "seed": request.seed}
    if hasattr(request, "prompt"):
        return {"prompt": request.prompt, "until": list(request.until)}
    return {"text": request[:200]}


def evaluate(lm: LanguageModel, tasks: list[Task], options: EvalOptions) -> tuple[dict[str, Any], list[dict]]:
    """({"model", "tasks": {name: entry}, "settings"}, all per-document records) for the tasks in order."""
    for task in tasks:  # refuse bad settings before anything runs
        task.check_fewshot(task.default_fewshot if options.num_fewshot is None else options.num_fewshot)
    results: dict[str, Any] = {}
    samples: list[dict] = []
    for task in tasks:
        try:
            entry, records = run_task(lm, task, options)
        except TaskDataMissing as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            entry, records = {"task": task.name, "skipped": str(exc)}, []
        results[task.name] = entry
        samples += records
        if options.progress and "metrics" in entry:
            shown = ", ".join(f"{m} {v['value']:.4f}" for m, v in entry["metrics"].items())
            print(f"{task.name}: {shown} (n={entry['n']}, {entry['seconds']:.1f} s)", file=sys.stderr)
    settings = {"limit": options.limit, "num_fewshot": options.num_fewshot, "data_root": str(options.data_root)}
    return {"model": lm.describe(), "tasks": results, "settings": settings}, samples


def load_lm(folder: Path, device: str | None = None, batch_size: int = 16, precision: str = "fp32",
            name: str | None = None, steps: int | None = None, clamp: bool = False, length: int | None = None,
            block_size: int | None = None) -> LanguageModel:
    """The LanguageModel of a model folder: CodeFusionLM (with its sampling `steps`/`clamp`),
    MaskedDiffusionLM (`steps`, `length`, `block_size`) or DecoderLM."""
    from slmkit.interop.folder import check_model_folder

    kind = check_model_folder(folder)
    if kind == "codefusion":
        from slmkit.eval.codefusion_lm import load_codefusion_lm

        return load_codefusion_lm(folder, device, batch_size, precision, name, steps, clamp)
    if kind == "masked-diffusion":
        from slmkit.eval.masked_lm import load_masked_lm

        return load_masked_lm(folder, device, batch_size, precision, name, steps, length, block_size)
    from slmkit.eval.decoder_lm import load_decoder_lm

    return load_decoder_lm(folder, device, batch_size, precision, name)


def train_flops(folder: Path) -> float | None:
    """Training FLOPs so far from a checkpoint's trainer_state.json; None for other model folders."""
    from slmkit.pipeline.rundir import STATE_FILE
    from slmkit.train.checkpoint import read_trainer_state

    if not (Path(folder) / STATE_FILE).is_file():
        return None
    value = read_trainer_state(folder).get("train_flops")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
