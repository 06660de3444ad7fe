"""Multiple-choice tasks scored by log-likelihood: `acc` and `acc_norm` exactly as lm-eval defines them.

acc: the choice with the highest summed log-likelihood of " " + choice after the prompt.
acc_norm: the same divided by the choice's length in characters. Ties go to the first choice.
Prompts are lm-eval's (arc: "Question: ...\\nAnswer:", mmlu: lettered choices after a subject
description, winogrande: partial scoring, the option substituted into the context).
Few-shot examples come from the task's other split: the first k (mmlu's dev, as lm-eval does) or a
fixed random sample per document (seeded by task and document, so results do not depend on order).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmError
from slmkit.eval.lm import LOGLIKELIHOOD
from slmkit.eval.tasks.base import Metric, Task, read_csv, read_jsonl, read_lines

ACC, ACC_NORM = Metric("acc"), Metric("acc_norm")
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"
HELLASWAG_ENV = "SLMKIT_HELLASWAG"

Loader = Callable[[Path, str], list[dict]]  # (data root, task name) -> normalized docs


@dataclass
class MultipleChoiceTask(Task):
    """Docs are normalized to {"id", "query", "choices", "gold"} (winogrande: "contexts", "continuation")."""

    name: str
    loader: Loader
    source: str
    fewshot_loader: Loader | None = None
    sampler: str = "random"  # "random" or "first_n"
    metrics: tuple[Metric, ...] = (ACC, ACC_NORM)
    description: str = ""
    max_fewshot: int = 25
    family: str = "multiple_choice"
    request_type: str = LOGLIKELIHOOD
    _fewshot_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.fewshot_loader is None:
            self.max_fewshot = 0

    def docs(self, root: Path) -> list[dict]:
        return self.loader(root, self.name)

    def _examples(self, doc: dict, k: int, root: Path) -> list[dict]:
        if k == 0 or self.fewshot_loader is None:
            return []
        key = str(root)
        if key not in self._fewshot_cache:
            self._fewshot_cache[key] = self.fewshot_loader(root, self.name)
        pool = [d for d in self._fewshot_cache[key] if d.get("subject") == doc.get("subject")]
        pool = [d for d in pool if d["id"] != doc["id"]]
        if self.sampler == "first_n":
            return pool[:k]
        return random.Random(f"{self.name}:{doc['id']}").sample(pool, min(k, len(pool)))

    def prefix(self, doc: dict, k: int, root: Path) -> str:
        """Description and k solved examples, each followed by the few-shot delimiter."""
        shots = "".join(f"{ex['query']}{TARGET_DELIMITER}{ex['choices'][ex['gold']]}{FEWSHOT_DELIMITER}"
                        for ex in self._examples(doc, k, root))
        return doc.get("description", self.description) + shots

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[tuple[str, str]]:
        prefix = self.prefix(doc, num_fewshot, root)
        if "contexts" in doc:  # partial scoring: one context per option, the same continuation
            return [(prefix + c, TARGET_DELIMITER + doc["continuation"]) for c in doc["contexts"]]
        return [(prefix + doc["query"], TARGET_DELIMITER + choice) for choice in doc["choices"]]

    def score(self, doc: dict, responses: list[tuple[float, bool]]) -> tuple[dict[str, float], dict[str, Any]]:
        lls = np.array([lp for lp, _ in responses])
        lengths = np.array([float(len(c)) for c in doc["choices"]])
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        values = {"acc": float(pred == doc["gold"])}
        if ACC_NORM in self.metrics:
            values["acc_norm"] = float(pred_norm == doc["gold"])
        record = {"id": doc["id"], "gold": doc["gold"], "pred": pred, "pred_norm": pred_norm,
                  "loglikelihoods": [round(float(x), 6) for x in lls]}
        return values, record

    def limit_docs(self, docs: list[dict], limit: int | None) -> list[dict]:
        """The first `limit` documents of each subject (one subject for most tasks), as lm-eval does."""
        if limit is None:
            return docs
        seen: dict[Any, int] = {}
        out = []
        for doc in docs:
            subject = doc.get("subject")
            if seen.get(subject, 0) < limit:
                seen[subject] = seen.get(subject, 0) + 1
                out.append(doc)
        return out


# ---------------------------------------------------------------------------- loaders


def _arc_like(relative: str) -> Loader:
    """ARC / OpenBookQA files: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}."""

    def load(root: Path, task: str) -> list[dict]:
        path = root / relative
        docs = []
        for item in read_jsonl(path, task):
            q = item["question"]
            labels = [c["label"] for c in q["choices"]]
            query = q["stem"] if relative.startswith("openbookqa") else f"Question: {q['stem']}\nAnswer:"
            docs.append({"id": item["id"], "query": query, "choices": [c["text"] for c in q["choices"]],
                         "gold": labels.index(item["answerKey"].lstrip())})
        return docs

    return load


def _with_labels(relative: str, labels_file: str, build: Callable[[dict, str], dict]) -> Loader:
    """Files whose labels sit in a separate .lst file, one per line (PIQA, Social IQa)."""

    def load(root: Path, task: str) -> list[dict]:
        items = read_jsonl(root / relative, task)
        labels = read_lines(root / labels_file, task)
        if len(labels) != len(items):
            raise SlmError(f"{root / labels_file}: {len(labels)} labels for {len(items)} items in {root / relative}")
        return [{"id": f"{task}-{i}", **build(item, label)} for i, (item, label) in enumerate(zip(items, labels))]

    return load


def _piqa(item: dict, label: str) -> dict:
    return {"query": f"Question: {item['goal']}\nAnswer:", "choices": [item["sol1"], item["sol2"]], "gold": int(label)}


def _siqa(item: dict, label: str) -> dict:
    return {"query": f"Q: {item['context']} {item['question']}\nA:",
            "choices": [item["answerA"], item["answerB"], item["answerC"]], "gold": int(label) - 1}


def _boolq(root: Path, task: str) -> list[dict]:
    return [{"id": f"boolq-{i}", "query": f"{item['passage']}\nQuestion: {item['question']}?\nAnswer:",
             "choices": ["no", "yes"], "gold": int(bool(item["answer"]))}
            for i, item in enumerate(read_jsonl(root / "boolq/dev.jsonl", task))]


def _winogrande(root: Path, task: str) -> list[dict]:
    docs = []
    for item in read_jsonl(root / "winogrande/dev.jsonl", task):
        sentence = item["sentence"]
        blank = sentence.index("_")
        options = [item["option1"], item["option2"]]
        docs.append({"id": item["qID"], "contexts": [sentence[:blank] + o for o in options],
                     "continuation": sentence[blank + 1:].strip(), "choices": options,
                     "gold": {"1": 0, "2": 1}[item["answer"]]})
    return docs


def _hellaswag_text(text: str) -> str:
    """lm-eval's preprocess: WikiHow artifacts out ("[title]" -> ". ", other [brackets] removed)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_path(root: Path) -> Path:
    """$SLMKIT_HELLASWAG, else DATA_ROOT/hellaswag/hellaswag_val.jsonl."""
    return Path(os.environ.get(HELLASWAG_ENV) or root / "hellaswag" / "hellaswag_val.jsonl")


def _hellaswag(root: Path, task: str) -> list[dict]:
    path = hellaswag_path(root)
    hint = (f"HellaSwag is not shipped (too large): download hellaswag_val.jsonl from "
            f"https://github.com/rowanz/hellaswag/tree/master/data and pass --hellaswag FILE (or set {HELLASWAG_ENV})")
    docs = []
    for i, item in enumerate(read_jsonl(path, task, hint)):
        ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()
        docs.append({"id": str(item.get("ind", i)), "query": _hellaswag_text(item["activity_label"] + ": " + ctx),
                     "choices": [_hellaswag_text(e) for e in item["endings"]], "gold": int(item["label"])})
    return docs


# ---------------------------------------------------------------------------- MMLU

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistoric_history "
    "professional_accounting professional_law professional_medicine professional_psychology public_relations "
    "security_studies sociology us_foreign_policy virology world_religions"
).replace("prehistoric_history", "prehistory").split()


def _mmlu(split: str, subjects: tuple[str, ...]) -> Loader:
    def load(root: Path, task: str) -> list[dict]:
        docs = []
        for subject in subjects:
            path = root / "mmlu" / split / f"{subject}_{split}.csv"
            for i, row in enumerate(read_csv(path, task)):
                if len(row) != 6 or row[5] not in "ABCD":
                    raise SlmError(f"{path}: row {i + 1} needs 6 columns (question, A-D, answer letter)")
                question, *choices, answer = row
                query = (f"{question.strip()}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\n"
                         f"D. {choices[3]}\nAnswer:")
                docs.append({"id": f"{subject}-{split}-{i}", "subject": subject, "query": query,
                             "choices": ["A", "B", "C", "D"], "gold": "ABCD".index(answer),
                             "description": "The following are multiple choice questions (with answers) about "
                                            f"{' '.join(subject.split('_'))}.\n\n"})
        return docs

    return load


def mmlu_task(name: str, subjects: tuple[str, ...]) -> MultipleChoiceTask:
    return MultipleChoiceTask(name, _mmlu("test", subjects), "mmlu/test", fewshot_loader=_mmlu("dev", subjects),
                              sampler="first_n", metrics=(ACC,), max_fewshot=5)


def choice_tasks() -> dict[str, Callable[[], Task]]:
    """Task name -> factory, for the registry."""
    tasks: dict[str, Callable[[], Task]] = {
        "arc_easy": lambda: MultipleChoiceTask("arc_easy", _arc_like("arc/ARC-Easy-Test.jsonl"), "arc/ARC-Easy-Test",
                                               fewshot_loader=_arc_like("arc/ARC-Easy-Dev.jsonl")),
        "arc_challenge": lambda: MultipleChoiceTask(
            "arc_challenge", _arc_like("arc/ARC-Challenge-Test.jsonl"), "arc/ARC-Challenge-Test",
            fewshot_loader=_arc_like("arc/ARC-Challenge-Dev.jsonl")),
        "piqa": lambda: MultipleChoiceTask("piqa", _with_labels("piqa/valid.jsonl", "piqa/valid-labels.lst", _piqa),
                                           "piqa/valid"),
        "winogrande": lambda: MultipleChoiceTask("winogrande", _winogrande, "winogrande/dev", metrics=(ACC,)),
        "boolq": lambda: MultipleChoiceTask("boolq", _boolq, "boolq/dev", metrics=(ACC,)),
        "openbookqa": lambda: MultipleChoiceTask("openbookqa", _arc_like("openbookqa/test.jsonl"), "openbookqa/test",
                                                 fewshot_loader=_arc_like("openbookqa/dev.jsonl")),
        "siqa": lambda: MultipleChoiceTask(
            "siqa", _with_labels("socialiqa/dev.jsonl", "socialiqa/dev-labels.lst", _siqa), "socialiqa/dev",
            metrics=(ACC,)),
        "hellaswag": lambda: MultipleChoiceTask("hellaswag", _hellaswag, "hellaswag_val.jsonl (user-given)"),
        "mmlu": lambda: mmlu_task("mmlu", tuple(MMLU_SUBJECTS)),
    }
    for subject in MMLU_SUBJECTS:
        tasks[f"mmlu_{subject}"] = lambda s=subject: mmlu_task(f"mmlu_{s}", (s,))
    return tasks
