"""The codefusion-* eval tasks: top-k scoring, seen/unseen, CF execution match, diversity, beam search,
`slm eval` options and errors, --compare with a CodeFusion folder, and the intermediate-steps picture."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from eval_utils import make_tiny_checkpoint
from slmkit.cli import main
from slmkit.data.nl2code import benchmark_path, load_pairs
from slmkit.errors import SlmError
from slmkit.eval.code_metrics import seen_in_train
from slmkit.eval.decoder_lm import DecoderLM, load_decoder_lm
from slmkit.eval.harness import EvalOptions, evaluate
from slmkit.eval.lm import CANDIDATES, CandidateRequest, Candidates, LanguageModel
from slmkit.eval.results import markdown_table
from slmkit.eval.tasks import CandidateSettings, get_tasks

T = 20  # diffusion steps of the tiny CodeFusion folder


pytestmark = pytest.mark.usefixtures("one_thread")


class FixedCandidates(LanguageModel):
    """Answers the i-th candidates request (the i-th document) with `answer(i)` = (texts, counts), best first."""

    capabilities = frozenset({CANDIDATES})

    def __init__(self, answer: Callable[[int], tuple[list[str], list[int]]]) -> None:
        self.answer, self.name, self.seen = answer, "fixed", []

    max_length = 64
    loglikelihood = loglikelihood_rolling = generate = None  # type: ignore[assignment]

    def candidates(self, requests, progress=None):
        out = []
        for request in requests:
            texts, counts = self.answer(len(self.seen))
            self.seen.append(request)
            out.append(Candidates(texts, [-float(i) for i in range(len(texts))], counts))
            if progress is not None:
                progress(1)
        return out


def _run(lm: LanguageModel, task: str, datasets: Path, limit: int, **settings) -> tuple[dict, list[dict]]:
    results, samples = evaluate(lm, get_tasks([task], limit=limit, candidates=CandidateSettings(**settings)),
                                EvalOptions(datasets, limit=limit, progress=False))
    return results["tasks"][task], samples


def _gold(language: str) -> list[str]:
    """Gold programs of the dev split, in document order."""
    return [p.code for p in load_pairs(benchmark_path(language), "test")]


def _values(entry: dict) -> dict[str, float]:
    return {name: m["value"] for name, m in entry["metrics"].items()}


# ---------------------------------------------------------------------------- scoring with fixed candidates


def test_codefusion_eval_gold_second_counts_for_top3_not_top1(datasets):
    gold = _gold("Bash")
    lm = FixedCandidates(lambda i: (["ls -l", gold[i], "pwd"], [2, 2, 1]))
    entry, samples = _run(lm, "codefusion-bash", datasets, limit=4)
    values = _values(entry)
    assert (values["top1"], values["top3"], values["top5"]) == (0.0, 1.0, 1.0)
    assert entry["n"] == 4 and entry["seconds_per_query"] >= 0
    assert [r.k for r in lm.seen] == [5] * 4 and lm.seen[0].prompt.endswith("<|assistant|>")
    record = samples[0]
    assert record["gold"] == gold[0]
    assert [c["match"] for c in record["candidates"]] == [False, True, False]
    assert [c["count"] for c in record["candidates"]] == [2, 2, 1]
    assert record["request"]["k"] == 5 and record["request"]["method"] == "sample"


def test_codefusion_eval_bash_seen_and_unseen_subsets(datasets):
    path = benchmark_path("Bash")
    test, train = load_pairs(path, "test"), load_pairs(path, "train")
    seen = seen_in_train([{"Code": p.code} for p in test], [{"Code": p.code} for p in train])
    limit = seen.index(True) + 3
    lm = FixedCandidates(lambda i: ([test[i].code] if seen[i] else ["echo nothing"], [5]))
    entry, samples = _run(lm, "codefusion-bash", datasets, limit=limit)
    values = _values(entry)
    n_seen = sum(seen[:limit])
    assert (entry["n_seen"], entry["n_unseen"]) == (n_seen, limit - n_seen)
    assert values["top1_seen"] == 1.0 and values["top1_unseen"] == 0.0
    assert values["top1"] == pytest.approx(n_seen / limit)
    assert entry["metric_n"]["top1_seen"] == n_seen
    assert [r["seen_in_train"] for r in samples] == seen[:limit]
    table = markdown_table([{"model": {"name": "fixed"}, "tasks": {"codefusion-bash": entry}}])
    assert f"| codefusion-bash | top1_seen | {n_seen} | 1.0000" in table


def test_codefusion_eval_python_exact_match_and_chrf(datasets):
    gold = _gold("Python")

    def answer(i: int) -> tuple[list[str], list[int]]:
        code = gold[i]
        return ["x", code.replace("'", '"') + "  # same program", code[: len(code) // 2]], [1, 1, 1]

    entry, samples = _run(FixedCandidates(answer), "codefusion-python", datasets, limit=3)
    values = _values(entry)
    assert (values["top1"], values["top3"]) == (0.0, 1.0)
    assert values["chrf_top1"] < values["chrf_top3"] == values["chrf_top5"]
    record = samples[0]
    assert [c["match"] for c in record["candidates"]] == [False, True, False]
    assert values["chrf_top3"] == pytest.approx(sum(max(c["chrf"] for c in r["candidates"]) for r in samples) / 3)


def test_codefusion_eval_cf_execution_and_exact_match(datasets):
    """Execution-scored items accept an equivalent rule (NOT(NOT(gold))); items with a header-only table
    or a visual rule need the normalized text."""
    gold = _gold("CF")
    lm = FixedCandidates(lambda i: ([f"NOT({gold[i]})", f"NOT(NOT({gold[i]}))", gold[i].replace("(", " ( ")],
                                    [1, 1, 1]))
    entry, samples = _run(lm, "codefusion-cf", datasets, limit=8)
    want = {"execution": [False, True, True], "exact": [False, False, True]}
    for record in samples:
        assert [c["match"] for c in record["candidates"]] == want[record["scored_by"]], record["gold"]
    assert entry["n_execution"] + entry["n_exact"] == 8 and entry["n_exact"] >= 1
    assert entry["n_execution"] == sum(r["scored_by"] == "execution" for r in samples)
    values = _values(entry)
    assert values["top1"] == 0.0 and values["top3"] == 1.0
    assert values["top1"] <= values["top3"] <= values["top5"]


def test_codefusion_eval_diversity_over_draws(datasets):
    lm = FixedCandidates(lambda i: (["a", "b"], [3, 2]))
    entry, _ = _run(lm, "codefusion-bash", datasets, limit=2)
    values = _values(entry)
    assert values["distinct_fraction"] == pytest.approx(2 / 5)
    assert values["pairwise_edit_distance"] == pytest.approx(6 / 10)  # a-b pairs out of C(5, 2)
    same, _ = _run(FixedCandidates(lambda i: (["only"], [5])), "codefusion-bash", datasets, limit=2)
    assert _values(same)["distinct_fraction"] == pytest.approx(0.2)
    assert _values(same)["pairwise_edit_distance"] == 0.0


def test_codefusion_eval_fewer_candidates_than_k(datasets):
    """top-5 with two candidates uses both; no candidate at all scores 0."""
    gold = _gold("Bash")
    entry, _ = _run(FixedCandidates(lambda i: (["pwd", gold[i]], [4, 1])), "codefusion-bash",
                    datasets, limit=2)
    assert _values(entry)["top5"] == 1.0
    empty, _ = _run(FixedCandidates(lambda i: ([], [])), "codefusion-bash", datasets, limit=2)
    assert _values(empty)["top5"] == 0.0


def test_codefusion_eval_task_missing_data_is_skipped(tmp_path):
    lm = FixedCandidates(lambda i: (["x"], [1]))
    results, _ = evaluate(lm, get_tasks(["codefusion-python"]), EvalOptions(tmp_path, progress=False))
    assert "not found" in results["tasks"]["codefusion-python"]["skipped"]


# ---------------------------------------------------------------------------- decoders: beam search


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cf-eval") / "tiny-ar")


@pytest.fixture(scope="module")
def tiny_cf(tmp_path_factory, tiny_decoder) -> Path:
    from slmkit.interop.folder import save_codefusion_folder
    from slmkit.models.codefusion import build_codefusion
    from slmkit.models.codefusion_config import get_codefusion_preset
    from slmkit.tokenizer import load_tokenizer

    tokenizer_file = tiny_decoder / "tokenizer.json"
    cfg = get_codefusion_preset("codefusion-tiny").replace(
        vocab_size=load_tokenizer(tokenizer_file).get_vocab_size(), code_len=16, max_utterance_len=64,
        diffusion_steps=T)
    torch.manual_seed(0)
    return save_codefusion_folder(build_codefusion(cfg), tmp_path_factory.mktemp("cf-eval") / "tiny-cf",
                                  tokenizer_file=tokenizer_file)


def test_codefusion_eval_decoder_beam_search_matches_transformers(tiny_decoder):
    from transformers import AutoModelForCausalLM

    lm = load_decoder_lm(tiny_decoder, device="cpu")
    prompt = "find all text files<|assistant|>"
    [result] = lm.candidates([CandidateRequest(prompt, "find all text files", k=3, method="beam", max_new_tokens=6)])
    assert sum(result.counts) == 3 and result.scores == sorted(result.scores, reverse=True)
    ids = torch.tensor([lm.encode(prompt)])
    hf = AutoModelForCausalLM.from_pretrained(tiny_decoder).eval()
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=3, num_return_sequences=3, do_sample=False,
                      max_new_tokens=6, eos_token_id=lm.eos_ids, pad_token_id=hf.config.pad_token_id)
    best = out[0, ids.shape[1]:].tolist()
    cut = next((i for i, t in enumerate(best) if t in lm.eos_ids), len(best))
    assert result.texts[0] == lm.tokenizer.decode(best[:cut], skip_special_tokens=True)
    [one] = lm.candidates([CandidateRequest(prompt, "", k=1, method="beam", max_new_tokens=4)])
    assert len(one.texts) == 1 and one.scores[0] <= 0
    [sampled] = lm.candidates([CandidateRequest(prompt, "", k=4, max_new_tokens=4)])
    assert sum(sampled.counts) == 4

    bare = DecoderLM(lm.model, lm.tokenizer, name="bare", eos_ids=lm.eos_ids)
    with pytest.raises(SlmError, match="without one"):
        bare.candidates([CandidateRequest(prompt, "", k=2, method="beam")])


# ---------------------------------------------------------------------------- slm eval


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *map(str, argv), "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("options, message", [
    (["--num-candidates", "0"], "--num-candidates must be >= 1"),
    (["--candidate-method", "beam"], "--candidate-method beam is for decoders"),
    (["--steps", str(T + 1)], f"T={T}"),
    (["--intermediate-every", "0"], "--intermediate-every must be >= 1"),
])
def test_codefusion_eval_cli_refuses_bad_options_on_codefusion(capsys, tiny_cf, options, message):
    code, _, err = _cli(capsys, tiny_cf, "--tasks", "codefusion-bash", "--limit", "1", *options)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("options, flag", [(["--steps", "5"], "--steps"), (["--clamp"], "--clamp"),
                                           (["--intermediate-every", "2"], "--intermediate-every")])
def test_codefusion_eval_cli_refuses_diffusion_options_on_a_decoder(capsys, tiny_decoder, options, flag):
    code, _, err = _cli(capsys, tiny_decoder, "--tasks", "codefusion-bash", *options)
    assert code == 2 and len(err.strip().splitlines()) == 1
    owners = "CodeFusion" if flag == "--clamp" else "CodeFusion and masked-diffusion"
    assert f"{flag} is a {owners} option; {tiny_decoder} is a decoder checkpoint" in err


def test_codefusion_eval_cli_malformed_item_names_file_and_id(capsys, tmp_path, tiny_cf):
    bench = tmp_path / "codefusion" / "benchmarks"
    bench.mkdir(parents=True)
    items = [{"ID": 1, "NL Utterance": "list files", "Code": "ls"}, {"ID": 77, "NL Utterance": "no code here"}]
    (bench / "BashBenchmarks.json").write_text(json.dumps({"train": items[:1], "test": items}), encoding="utf-8")
    code, _, err = _cli(capsys, tiny_cf, "--tasks", "codefusion-bash", "--data-root", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "BashBenchmarks.json" in err and "77" in err and "'Code'" in err


def test_codefusion_eval_cli_compare_table_and_steps_picture(capsys, tmp_path, tiny_cf, tiny_decoder):
    """A CodeFusion folder against a decoder in one table (top-k, diversity, params, FLOPs, seconds per
    query); --intermediate-every writes FILE.steps.png and the curve into the results JSON; a saved
    results JSON compares the same way."""
    (tiny_decoder / "trainer_state.json").write_text(json.dumps({"step": 3, "train_flops": 1.5e12}))
    try:
        out = tmp_path / "cf.json"
        code, table, err = _cli(capsys, tiny_cf, "--tasks", "codefusion-bash", "--limit", "3", "--compare",
                                tiny_decoder, "--out", out, "--intermediate-every", "5", "--max-new-tokens", "16")
        assert code == 0, err
        lines = table.strip().splitlines()
        assert lines[0] == "| task | metric | n | tiny-cf | tiny-ar | chance |"
        rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in lines[2:]}
        for metric in ("top1", "top3", "top5", "distinct_fraction", "pairwise_edit_distance", "seconds_per_query"):
            assert ("codefusion-bash", metric) in rows
        assert "| model | train_flops | - | n/a | 1.5e+12 | - |" in table
        results = json.loads(out.read_text())
        assert results["model"]["params"] > 0 and results["model"]["train_flops"] is None
        entry = results["tasks"]["codefusion-bash"]
        curve = entry["intermediate_curve"]
        assert curve["step"] == [5, 10, 15, 20] and curve["edit_distance"][-1] == 0.0
        assert all(0 <= d <= 1 for d in curve["edit_distance"])
        assert (tmp_path / "cf.steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "tiny-ar" in (tmp_path / "cf.md").read_text()
        assert results["settings"]["candidates"]["intermediate_every"] == 5

        code, again, err = _cli(capsys, tiny_decoder, "--tasks", "codefusion-bash", "--limit", "3", "--compare", out,
                                "--candidate-method", "beam", "--max-new-tokens", "8", "--num-candidates", "2")
        assert code == 0, err
        assert "| model | train_flops | - | 1.5e+12 | n/a | - |" in again
        assert "| model | params |" in again
    finally:
        (tiny_decoder / "trainer_state.json").unlink()


def test_codefusion_eval_other_tasks_keep_their_table(tmp_path):
    """No model rows for tasks that are not codefusion-*."""
    entry = {"n": 2, "metrics": {"acc": {"value": 0.5, "stderr": 0.1}}}
    table = markdown_table([{"model": {"name": "m", "params": 3}, "tasks": {"arc_easy": entry}}])
    assert table.splitlines()[2:] == ["| arc_easy | acc | 2 | 0.5000 ± 0.1000 | - |"]


def test_codefusion_eval_load_lm_picks_the_model_by_folder(tiny_cf, tiny_decoder):
    from slmkit.eval.codefusion_lm import CodeFusionLM
    from slmkit.eval.harness import load_lm, train_flops

    cf = load_lm(tiny_cf, device="cpu", steps=5, clamp=True)
    assert isinstance(cf, CodeFusionLM) and (cf.steps, cf.clamp) == (5, True)
    decoder = load_lm(tiny_decoder, device="cpu")
    assert isinstance(decoder, DecoderLM) and decoder.folder == tiny_decoder
    assert train_flops(tiny_cf) is None
