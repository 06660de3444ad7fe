"""Natural language to code tasks of CodeFusion (Singh et al., 2023): codefusion-bash, -python, -cf.

Each document of the benchmark's "test" split (the shared copy's dev split) is one
`CandidateRequest`: k draws for the utterance, de-duplicated and ranked by the model's own score.
`topK` is 1 when any of the first K ranked distinct candidates matches the gold program (all of them
when fewer than K were given):
- Bash: template match (`code_metrics.bash_match`, an approximation of NL2Bash's typed-argument
  templates), also for the dev items whose command occurs verbatim in train (`topK_seen`) and the
  others (`topK_unseen`);
- Python: exact match after normalization (`topK`) and chrF (`chrf_topK`: the best of the first K);
- CF: execution match on the item's Data table (`cf_rules.score_item`; visual-only rules and
  header-only tables by normalized exact match).
Diversity of the k draws: `distinct_fraction` (distinct / k) and `pairwise_edit_distance` (mean
normalized edit distance over pairs of draws).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError, check_choice
from slmkit.eval.lm import CANDIDATE_METHODS, CANDIDATES, CandidateRequest, Candidates
from slmkit.eval.tasks.base import Metric, Task, need_file

TOP_KS = (1, 3, 5)
DIVERSITY = (Metric("distinct_fraction"), Metric("pairwise_edit_distance"))


@dataclass
class CandidateSettings:
    """How each utterance's candidates are drawn (`slm eval --num-candidates/--candidate-method/...`)."""

    num_candidates: int = 5
    method: str = "sample"
    max_new_tokens: int = 128
    temperature: float = 0.8  # decoder sampling
    top_p: float | None = None
    seed: int = 0
    steps: int | None = None  # diffusion options: None = the model's own
    clamp: bool = False  # CodeFusion
    intermediate_every: int | None = None
    length: int | None = None  # masked diffusion: answer positions (None = the trained length)
    block_size: int | None = None  # masked diffusion: semi-autoregressive blocks


def top_metrics(prefix: str = "", suffix: str = "") -> tuple[Metric, ...]:
    return tuple(Metric(f"{prefix}top{k}{suffix}") for k in TOP_KS)


def top_values(flags: list[bool] | list[float], prefix: str = "") -> dict[str, float]:
    """{prefix}topK for each K: any match (bools) or the best value (floats) among the first K."""
    from slmkit.eval.code_metrics import top_k

    return {f"{prefix}top{k}": float(top_k(flags, k)) for k in TOP_KS}


def intermediate_distances(intermediate: list[dict]) -> list[dict]:
    """Per recorded step: mean normalized edit distance between each draw then and its final output."""
    from slmkit.eval.code_metrics import normalized_edit_distance

    final = intermediate[-1]["texts"]
    return [{"step": s["step"], "t": s["t"],
             "edit_distance": sum(normalized_edit_distance(a.strip(), b.strip()) for a, b in zip(s["texts"], final))
             / max(1, len(final))} for s in intermediate]


def intermediate_curve(records: list[dict]) -> dict[str, list] | None:
    """The mean over documents of each step's edit distance to the final output (None without data)."""
    by_step: dict[int, list] = {}
    for record in records:
        for point in record.get("intermediate_distance") or []:
            by_step.setdefault(point["step"], [point["t"], []])[1].append(point["edit_distance"])
    if not by_step:
        return None
    steps = sorted(by_step)
    return {"step": steps, "t": [by_step[s][0] for s in steps],
            "edit_distance": [sum(by_step[s][1]) / len(by_step[s][1]) for s in steps]}


class CandidateTask(Task):
    """One CodeFusion benchmark; subclasses say how a candidate is judged against the gold program."""

    family = "nl2code"
    request_type = CANDIDATES
    language: str  # a key of data.nl2code.LANGUAGES

    def __init__(self, settings: CandidateSettings | None = None) -> None:
        from slmkit.data.nl2code import LANGUAGES

        self.settings = settings or CandidateSettings()
        check_choice(self.settings.method, CANDIDATE_METHODS, "--candidate-method")
        self.source = f"codefusion/benchmarks/{LANGUAGES[self.language]} (test split)"

    def path(self, root: Path) -> Path:
        """The benchmark file under the data root; TaskDataMissing when it is not there."""
        from slmkit.data.nl2code import BENCHMARK_FOLDER, LANGUAGES, benchmark_path

        try:
            return benchmark_path(self.language, root=root)
        except SlmError:
            return need_file(root.joinpath(*BENCHMARK_FOLDER, LANGUAGES[self.language]), self.name)

    def docs(self, root: Path) -> list[dict]:
        from slmkit.data.nl2code import load_pairs

        return [{"id": p.id, "index": i, "utterance": p.utterance, "code": p.code, **self.fields(p)}
                for i, p in enumerate(load_pairs(self.path(root), "test"))]

    def fields(self, pair: Any) -> dict:
        """What else a document keeps of its benchmark pair."""
        return {}

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[CandidateRequest]:
        from slmkit.objectives.ar_code import ar_prompt

        s = self.settings
        return [CandidateRequest(ar_prompt(doc["utterance"]), doc["utterance"], k=s.num_candidates, method=s.method,
                                 max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 seed=s.seed + s.num_candidates * doc["index"], steps=s.steps, clamp=s.clamp,
                                 intermediate_every=s.intermediate_every, length=s.length,
                                 block_size=s.block_size)]

    def judge(self, doc: dict, text: str) -> dict:
        """{"match": bool, ...} for one candidate."""
        raise NotImplementedError

    def values(self, doc: dict, judged: list[dict]) -> dict[str, float]:
        """The document's top-K values from its candidates' judgements."""
        return top_values([j["match"] for j in judged])

    def score(self, doc: dict, responses: list[Candidates]) -> tuple[dict[str, float], dict[str, Any]]:
        from slmkit.eval.code_metrics import distinct_fraction, mean_pairwise_edit_distance

        result = responses[0]
        judged = [self.judge(doc, text) for text in result.texts]
        draws = result.draws()
        values = {**self.values(doc, judged), "distinct_fraction": distinct_fraction(draws),
                  "pairwise_edit_distance": mean_pairwise_edit_distance(draws)}
        record = {"id": doc["id"], "utterance": doc["utterance"], "gold": doc["code"], **self.record_fields(doc),
                  "candidates": [{"text": t, "score": s, "count": c, **j}
                                 for t, s, c, j in zip(result.texts, result.scores, result.counts, judged)]}
        if result.intermediate:
            record["intermediate_distance"] = intermediate_distances(result.intermediate)
        return values, record

    def record_fields(self, doc: dict) -> dict:
        """What the samples file shows of a document besides id, utterance and gold."""
        return {}

    def entry_fields(self, records: list[dict]) -> dict:
        """What the task's result entry adds (counts of subsets; the intermediate-decode curve)."""
        curve = intermediate_curve(records)
        return {"intermediate_curve": curve} if curve else {}


class BashTask(CandidateTask):
    name = "codefusion-bash"
    language = "Bash"
    metrics = (*top_metrics(), *top_metrics(suffix="_seen"), *top_metrics(suffix="_unseen"), *DIVERSITY)

    def docs(self, root: Path) -> list[dict]:
        from slmkit.data.nl2code import load_pairs
        from slmkit.eval.code_metrics import seen_in_train

        docs = super().docs(root)
        train = [{"Code": p.code} for p in load_pairs(self.path(root), "train")]
        for doc, seen in zip(docs, seen_in_train([{"Code": d["code"]} for d in docs], train)):
            doc["seen"] = seen
        return docs

    def judge(self, doc: dict, text: str) -> dict:
        from slmkit.eval.code_metrics import bash_match

        return {"match": bash_match(text, doc["code"])}

    def values(self, doc: dict, judged: list[dict]) -> dict[str, float]:
        values = super().values(doc, judged)
        subset = "seen" if doc["seen"] else "unseen"
        return {**values, **{f"top{k}_{subset}": values[f"top{k}"] for k in TOP_KS}}

    def record_fields(self, doc: dict) -> dict:
        return {"seen_in_train": doc["seen"]}

    def entry_fields(self, records: list[dict]) -> dict:
        seen = sum(bool(r.get("seen_in_train")) for r in records)
        return {"n_seen": seen, "n_unseen": len(records) - seen, **super().entry_fields(records)}


class PythonTask(CandidateTask):
    name = "codefusion-python"
    language = "Python"
    metrics = (*top_metrics(), *top_metrics("chrf_"), *DIVERSITY)

    def judge(self, doc: dict, text: str) -> dict:
        from slmkit.eval.code_metrics import chrf, python_exact_match

        return {"match": python_exact_match(text, doc["code"]), "chrf": chrf(text, doc["code"])}

    def values(self, doc: dict, judged: list[dict]) -> dict[str, float]:
        return {**super().values(doc, judged), **top_values([j["chrf"] for j in judged], "chrf_")}


class CFTask(CandidateTask):
    name = "codefusion-cf"
    language = "CF"
    metrics = (*top_metrics(), *DIVERSITY)

    def fields(self, pair: Any) -> dict:
        from slmkit.eval.cf_rules import score_item

        item = {"Code": pair.code, "Data": pair.data, "Labels": pair.labels}
        return {"item": item, "scored_by": score_item(pair.code, item)["method"]}

    def judge(self, doc: dict, text: str) -> dict:
        from slmkit.eval.cf_rules import score_item

        return {"match": bool(score_item(text, doc["item"])["match"])}  # an unparsable candidate: no match

    def record_fields(self, doc: dict) -> dict:
        return {"scored_by": doc["scored_by"]}

    def entry_fields(self, records: list[dict]) -> dict:
        execution = sum(r.get("scored_by") == "execution" for r in records)
        return {"n_execution": execution, "n_exact": len(records) - execution, **super().entry_fields(records)}


def codefusion_tasks(settings: CandidateSettings) -> dict[str, Callable[[], Task]]:
    """Task name -> factory, for the registry."""
    return {cls.name: (lambda cls=cls: cls(settings)) for cls in (BashTask, PythonTask, CFTask)}

