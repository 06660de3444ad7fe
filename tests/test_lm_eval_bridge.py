"""lm-eval bridge: lm-eval's own evaluator on our local data, with our model class and with its `hf`
backend, against our native harness, item by item on a tiny random checkpoint.

(a) native harness, (b) lm-eval + SlmkitLM, (c) lm-eval + HFLM must build byte-identical requests,
choose the same answer on every document and report the same metrics; (a) and (c) log-likelihoods
agree within 1e-4; gsm8k completions are identical.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from eval_utils import hellaswag_file, make_tiny_checkpoint  # noqa: E402

from slmkit.errors import SlmError  # noqa: E402
from slmkit.eval.harness import EvalOptions, evaluate  # noqa: E402
from slmkit.eval.lm_eval_bridge import SlmkitLM, generation_request, run_lm_eval, write_task_configs  # noqa: E402
from slmkit.eval.tasks import get_tasks  # noqa: E402

CHOICE_TASKS = ["arc_easy", "piqa", "winogrande", "boolq", "mmlu_anatomy", "siqa", "openbookqa", "hellaswag"]
LIMIT, GSM8K_LIMIT, MAX_GEN_TOKS = 10, 3, 16

# Upstream hellaswag_val.jsonl layout; WikiHow items carry [header]/[title]/[step] artifacts and an empty ctx_b.
HELLASWAG_ITEMS = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Clean and jerk",
     "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.", "ctx_b": "the lady",
     "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
     "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                 "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
     "source_id": "activitynet~v_-lJS58hyo1c"},
    {"ind": 106, "activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a stove top [title] Remove the grates and knobs. [step] Lift them off.",
     "ctx_b": "",
     "ctx": "[header] How to clean a stove top [title] Remove the grates and knobs. [step] Lift them off. ",
     "split": "val", "split_type": "zeroshot", "label": 0,
     "endings": ["[substeps] Soak them in warm soapy water  while you work.", "[title] Paint the stove red.",
                 "Throw the knobs away.", "[step] Call a plumber [title] and wait."],
     "source_id": "wikihow~12345"},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour in a bowl.", "ctx_b": "then, she",
     "ctx": "A woman mixes flour in a bowl. then, she", "split": "val", "split_type": "indomain", "label": 1,
     "endings": ["drives a car.", "adds two eggs and stirs.", "sings on a stage.", "paints the wall."],
     "source_id": "activitynet~v_abc"},
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, datasets):
    """The checkpoint, a hellaswag file (via $SLMKIT_HELLASWAG) and the data root."""
    root = tmp_path_factory.mktemp("lm_eval_bridge")
    model = make_tiny_checkpoint(root / "ckpt")
    with hellaswag_file(root / "hellaswag_val.jsonl", HELLASWAG_ITEMS):
        yield {"model": model, "data": datasets, "tmp": root}


@pytest.fixture(scope="module")
def backends(env):
    """(native DecoderLM, SlmkitLM built from a model_args string, lm-eval's HFLM), each loaded once."""
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    slm = get_model("slmkit").create_from_arg_string(f"pretrained={env['model']},batch_size=4,device=cpu")
    assert isinstance(slm, SlmkitLM)
    hf = HFLM(pretrained=str(env["model"]), dtype="float32", device="cpu", batch_size=4)
    return slm.lm, slm, hf


def _native(lm, names, env, k, limit):
    results, samples = evaluate(lm, get_tasks(names), EvalOptions(env["data"], limit=limit, num_fewshot=k,
                                                                  progress=False))
    return results, samples


@pytest.fixture(scope="module")
def choice_runs(env, backends):
    """k=0 results of the three backends on every multiple-choice task, limit 10."""
    native_lm, slm, hf = backends
    common = dict(limit=LIMIT, num_fewshot=0, batch_size=4, data_root=env["data"], keep_requests=True)
    return {"native": _native(native_lm, CHOICE_TASKS, env, 0, LIMIT),
            "slmkit": run_lm_eval(env["model"], CHOICE_TASKS, lm=slm, **common),
            "hf": run_lm_eval(env["model"], CHOICE_TASKS, backend_model="hf", lm=hf, **common)}


def _by_task(samples, name):
    return [s for s in samples if s["task"] == name]


def _check_same(task_name, native, bridged, env, k, hf_tolerance=1e-4):
    """Requests byte-identical to native ones; same answers, metrics; log-likelihoods within tolerance."""
    (native_results, native_samples), runs = native, bridged
    task = get_tasks([task_name])[0]
    docs = task.limit_docs(task.docs(env["data"]), LIMIT)
    mine = _by_task(native_samples, task_name)
    assert len(mine) == len(docs) == min(LIMIT, len(task.docs(env["data"])))
    for backend, out in runs.items():
        theirs = _by_task(out["samples"], task_name)
        assert [r["id"] for r in theirs] == [r["id"] for r in mine], backend
        for doc, a, b in zip(docs, mine, theirs):
            assert [list(r) for r in task.requests(doc, k, env["data"])] == b["requests"], (backend, doc["id"])
            assert a["gold"] == b["gold"], (backend, doc["id"])
            assert a["pred"] == b["pred"], (backend, doc["id"], a["loglikelihoods"], b["loglikelihoods"])
            if "acc_norm" in a["metrics"]:
                assert a["pred_norm"] == b["pred_norm"], (backend, doc["id"])
            tolerance = 1e-5 if backend == "slmkit" else hf_tolerance
            assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], abs=tolerance), (backend, doc["id"])
        entry, native_entry = out["tasks"][task_name], native_results["tasks"][task_name]
        assert entry["n"] == native_entry["n"] and entry["num_fewshot"] == native_entry["num_fewshot"] == k
        assert set(entry["metrics"]) == set(native_entry["metrics"]), backend
        for metric, value in native_entry["metrics"].items():
            assert entry["metrics"][metric]["value"] == pytest.approx(value["value"], abs=1e-12), (backend, metric)
            assert entry["metrics"][metric]["stderr"] == pytest.approx(value["stderr"], abs=1e-9), (backend, metric)


@pytest.mark.parametrize("name", CHOICE_TASKS)
def test_choice_tasks_match_native_zero_shot(name, choice_runs, env):
    _check_same(name, choice_runs["native"], {"slmkit": choice_runs["slmkit"], "hf": choice_runs["hf"]}, env, 0)


def test_mmlu_few_shot_matches_native(env, backends):
    """mmlu's few-shot examples are the first k of dev in both harnesses, so k>0 matches too."""
    native_lm, slm, hf = backends
    common = dict(limit=LIMIT, num_fewshot=2, batch_size=4, data_root=env["data"], keep_requests=True)
    runs = {"slmkit": run_lm_eval(env["model"], ["mmlu_anatomy"], lm=slm, **common),
            "hf": run_lm_eval(env["model"], ["mmlu_anatomy"], backend_model="hf", lm=hf, **common)}
    _check_same("mmlu_anatomy", _native(native_lm, ["mmlu_anatomy"], env, 2, LIMIT), runs, env, 2)


@pytest.fixture(scope="module")
def gsm8k_runs(env, backends):
    """gsm8k 0-shot, limit 3, 16 new tokens: native, lm-eval + SlmkitLM, lm-eval + HFLM (built by the bridge)."""
    from slmkit.eval.tasks.generation import GenerationSettings

    native_lm, slm, _ = backends
    task = get_tasks(["gsm8k"], GenerationSettings(max_new_tokens=MAX_GEN_TOKS))[0]
    native = evaluate(native_lm, [task], EvalOptions(env["data"], limit=GSM8K_LIMIT, num_fewshot=0, progress=False))
    common = dict(limit=GSM8K_LIMIT, num_fewshot=0, batch_size=4, data_root=env["data"],
                  gen_kwargs={"max_gen_toks": MAX_GEN_TOKS})  # simple_evaluate's gen_kwargs override the YAML's
    runs = {"slmkit": run_lm_eval(env["model"], ["gsm8k"], lm=slm, **common),
            "hf": run_lm_eval(env["model"], ["gsm8k"], backend_model="hf", **common)}
    return task, native, runs


def test_gsm8k_zero_shot_same_completions(gsm8k_runs, env, backends):
    """Same prompts, greedy completions (special tokens dropped, as HFLM does), extracted answers and
    exact_match across the three."""
    task, (native_results, native_samples), runs = gsm8k_runs
    docs = task.limit_docs(task.docs(env["data"]), GSM8K_LIMIT)
    assert len(docs) == len(native_samples) == GSM8K_LIMIT
    for backend, out in runs.items():
        assert len(out["samples"]) == GSM8K_LIMIT
        for doc, a, b in zip(docs, native_samples, out["samples"]):
            request = task.requests(doc, 0, env["data"])[0]
            assert b["request"] == {"prompt": request.prompt, "until": list(request.until)}, backend
            assert (a["id"], a["gold"]) == (b["id"], b["gold"]), backend
            assert a["completion"] == b["completion"], (backend, a["completion"], b["completion"])
            assert (a["strict"], a["flexible"]) == (b["strict"], b["flexible"]), backend
            assert a["metrics"] == b["metrics"], backend
        for metric in ("exact_match", "exact_match_flexible"):
            assert out["tasks"]["gsm8k"]["metrics"][metric]["value"] == \
                native_results["tasks"]["gsm8k"]["metrics"][metric]["value"], (backend, metric)


def test_gsm8k_special_tokens_identical(gsm8k_runs):
    _, (_, native_samples), runs = gsm8k_runs
    assert [s["completion"] for s in native_samples] == [s["completion"] for s in runs["hf"]["samples"]]


def test_rolling_loglikelihood_matches_hf(backends):
    from lm_eval.api.instance import Instance

    _, slm, hf = backends
    texts = ["The quick brown fox jumps over the lazy dog. " * 30, "Question: 2 + 2?\nAnswer: 4"]
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    ours, theirs = slm.loglikelihood_rolling(requests), hf.loglikelihood_rolling(requests)
    assert ours == pytest.approx([float(x) for x in theirs], abs=1e-3)


def test_generation_request_from_gen_kwargs():
    r = generation_request("Q", {"until": "\n\n", "max_new_tokens": 7, "do_sample": False, "temperature": 0.7})
    assert (r.until, r.max_new_tokens, r.temperature) == (("\n\n",), 7, 0.0)
    r = generation_request("Q", {"until": ["a", "b"], "max_gen_toks": 3, "max_new_tokens": 9, "do_sample": True})
    assert (r.until, r.max_new_tokens, r.temperature) == (("a", "b"), 3, 1.0)
    assert generation_request("Q", None).max_new_tokens == 256


def test_task_configs_include_upstream_yaml(tmp_path, datasets):
    names = write_task_configs(tmp_path, ["winogrande", "mmlu_anatomy"], datasets)
    assert names == ["winogrande", "mmlu_anatomy"]
    text = (tmp_path / "winogrande.yaml").read_text()
    assert "lm_eval/tasks/winogrande/default.yaml" in text and "dataset_path: json" in text
    first = json.loads((tmp_path / "data" / "mmlu_anatomy.test.jsonl").read_text().splitlines()[0])
    assert set(first) == {"slmkit_id", "question", "subject", "choices", "answer"}


@pytest.mark.parametrize("names, kwargs, message", [
    (["arc_easyy"], {}, "unknown task 'arc_easyy'"),
    (["humaneval"], {}, "cannot run through lm-eval"),
    (["piqa"], {"num_fewshot": 2}, "2-shot is not supported"),
    (["arc_easy"], {"backend_model": "vllm"}, "backend_model 'vllm'"),
])
def test_bad_requests_are_one_line_errors(names, kwargs, message, tmp_path, datasets):
    with pytest.raises(SlmError, match=message) as info:
        run_lm_eval(tmp_path / "no-model", names, data_root=datasets, **kwargs)
    assert "\n" not in str(info.value)


def test_mmlu_group_matches_native(env, backends):
    """The whole mmlu group (lm-eval's own group YAMLs over 57 subject tasks), one item per subject."""
    native_lm, slm, _ = backends
    native_results, native_samples = _native(native_lm, ["mmlu"], env, 0, 1)
    out = run_lm_eval(env["model"], ["mmlu"], lm=slm, limit=1, num_fewshot=0, data_root=env["data"])
    assert [(s["id"], s["pred"]) for s in out["samples"]] == [(s["id"], s["pred"]) for s in native_samples]
    assert out["tasks"]["mmlu"]["n"] == native_results["tasks"]["mmlu"]["n"] == 57
    assert out["tasks"]["mmlu"]["metrics"]["acc"]["value"] == pytest.approx(
        native_results["tasks"]["mmlu"]["metrics"]["acc"]["value"])
