"""CodeFusion and its AR baseline through the trainer: two stages, exact resume, checkpoints,
`slm generate --num-candidates`, recipes, and the bad-input errors (on the shared CodeFusion data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_utils import REPO, subprocess_env, summary, train_losses, weights

from slmkit.config import load_recipe
from slmkit.errors import SlmError
from slmkit.pipeline.rundir import RunDir

RECIPES = ["codefusion-bash", "codefusion-python", "codefusion-cf", "ar-bash", "ar-python", "ar-cf"]

TINY_CF = {
    "name": "tiny-codefusion",
    "task": "codefusion",
    "stages": ["tokenizer", "train", "eval", "report"],
    "eval": {"limit": 3},
    "tokenizer": {"vocab_size": 512, "max_train_bytes": 1_000_000},
    "data": {"sources": [
        {"name": "snippets", "type": "codefusion-pretrain", "language": "Bash"},
        {"name": "pairs", "type": "codefusion", "language": "Bash", "split": "train"},
    ]},
    "code": {"language": "Bash", "utterance_len": 16, "code_len": 16, "pretrain_steps": 4},
    "model": {"preset": "codefusion-tiny", "d_model": 64, "n_heads": 2, "ffn_hidden": 128, "diffusion_steps": 50,
              "encoder_layers": 1, "denoiser_layers": 1, "decoder_layers": 1},
    "train": {"optimizer": "llama", "lr": 0.003, "warmup_steps": 2, "max_steps": 8, "batch_size": 4,
              "precision": "fp32", "device": "cpu", "save_every": 4, "log_every": 1, "eval_every": 4,
              "eval_batches": 1, "keep_last": 3, "seed": 7},
}
TINY_AR = {**TINY_CF, "name": "tiny-ar", "task": "ar-code",
           "model": {"preset": "tiny-llama", "d_model": 64, "n_heads": 2, "n_layers": 2, "max_seq_len": 64}}


def write(folder: Path, recipe: dict, **changes) -> Path:
    data = json.loads(json.dumps(recipe))
    for key, value in changes.items():
        section, leaf = key.split("__")
        data[section][leaf] = value
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def slm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit.cli", *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout)


@pytest.fixture(scope="module")
def cf_run(tmp_path_factory) -> Path:
    """A finished 8-step tiny CodeFusion run (4 steps of each stage)."""
    folder = tmp_path_factory.mktemp("cf")
    recipe = write(folder, TINY_CF)
    result = slm("run", str(recipe), "--out", str(folder / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


# ---------------------------------------------------------------------------- data


def test_loader_switches_stage_and_resumes_exactly(cf_run):
    from slmkit.objectives import get_objective
    from slmkit.tokenizer import load_tokenizer, mask_id

    recipe = load_recipe(write(cf_run.parent, TINY_CF))
    tokenizer = load_tokenizer(cf_run / "tokenizer.json")
    objective = get_objective("codefusion")
    loader = objective.train_loader(recipe, RunDir(cf_run), tokenizer, 8, seed=3)
    first = [loader.next_batch() for _ in range(4)]
    assert loader.stage == "finetune"
    stage2 = loader.next_batch()
    hidden = torch.cat([b["utterance_ids"] for b in first]) == mask_id(tokenizer)
    uncond = torch.cat([b["unconditional"] for b in first])
    assert uncond.any() and (~uncond).any()  # both kinds of stage-1 rows
    assert (hidden.sum(1)[~uncond] == 1).all() and not hidden[uncond].any()  # one mask per hidden-span row
    assert not stage2["unconditional"].any() and stage2["code_ids"].shape == (8, 16)
    # resume: a fresh loader at the saved position yields the same batch
    state = loader.state_dict()
    again = objective.train_loader(recipe, RunDir(cf_run), tokenizer, 8, seed=3)
    again.load_state_dict(state)
    a, b = loader.next_batch(), again.next_batch()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hide_span_covers_about_thirty_percent():
    from slmkit.data.nl2code import hide_span

    rng = np.random.default_rng(0)
    ids = list(range(100, 120))
    out = hide_span(ids, 0.3, 1, rng)
    assert out.count(1) == 1 and len(out) == 20 - 6 + 1
    start = out.index(1)
    assert out[:start] == ids[:start] and out[start + 1:] == ids[start + 6:]


def test_ar_rows_score_only_the_code_and_end():
    from slmkit.objectives.ar_code import ArCodeCollate

    batch = ArCodeCollate(eos=0, pad=1, sep=4).finetune([[10, 11]], [[20, 21, 22]])
    assert batch["input_ids"].tolist() == [[10, 11, 4, 20, 21, 22]]
    assert batch["labels"].tolist() == [[-100, -100, 20, 21, 22, 0]]
    pre = ArCodeCollate(eos=0, pad=1, sep=4).pretrain([[5, 6], [7]], np.random.default_rng(0))
    assert pre["input_ids"].tolist() == [[0, 5, 6], [0, 7, 1]]
    assert pre["labels"].tolist() == [[5, 6, 0], [7, 0, -100]]


# ---------------------------------------------------------------------------- training


def test_run_scores_the_dev_split_and_reports(cf_run):
    results = json.loads((cf_run / "eval" / "tasks.json").read_text())
    entry = results["tasks"]["codefusion-bash"]
    assert entry["n"] == 3 and set(entry["metrics"]) >= {"top1", "top3", "top5", "distinct_fraction"}
    assert "codefusion-bash" in (cf_run / "report.html").read_text()


def test_both_stages_train_and_record_flops(cf_run):
    state = json.loads((RunDir(cf_run).latest_checkpoint() / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["train_flops"] > 0
    assert state["ranks"][0]["data"] == {"batches": 8, "pretrain_batches": 4}
    losses = train_losses(cf_run)
    assert len(losses) == 8 and all(np.isfinite(v) for v in losses.values())


def test_codefusion_resume_after_sigkill_is_exact(tmp_path, cf_run):
    from train_utils import assert_resume_after_sigkill_is_exact

    assert_resume_after_sigkill_is_exact(write(tmp_path, TINY_CF), cf_run, tmp_path)  # killed in stage 2


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_codefusion_trains_distributed(tmp_path, cf_run, parallel):
    """torchrun, 2 processes (gloo): both stages train, the checkpoint holds finite weights and loads.
    (Each rank draws its own timesteps and noise, so the curve is not the one-process curve.)"""
    from train_utils import slm_train

    from slmkit.train.checkpoint import load_model_from_checkpoint

    recipe = write(tmp_path, TINY_CF)
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_bytes((cf_run / "tokenizer.json").read_bytes())
    s = summary(slm_train(recipe, run, "train.batch_size=2", f"train.parallel={parallel}", nproc=2))
    assert s["steps"] == 8 and np.isfinite(s["loss"])
    state = json.loads((RunDir(run).latest_checkpoint() / "trainer_state.json").read_text())
    assert [r["data"]["batches"] for r in state["ranks"]] == [8, 8]
    model = load_model_from_checkpoint(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_round_trip(cf_run):
    from slmkit.interop.folder import check_model_folder
    from slmkit.train.checkpoint import load_model_from_checkpoint

    ckpt = RunDir(cf_run).latest_checkpoint()
    assert check_model_folder(ckpt) == "codefusion"
    model = load_model_from_checkpoint(ckpt)
    saved = weights(ckpt)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    out = model.sample(torch.tensor([[5, 6, 7]]), num_candidates=3, steps=5)
    assert out["tokens"].shape == (1, 3, 16)


def test_generate_candidates_cli(cf_run):
    result = slm("generate", str(cf_run), "--prompt", "find txt files",
                 "--num-candidates", "4", "--steps", "10", "--intermediate-every", "5", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    [entry] = json.loads(result.stdout)
    cands = entry["candidates"]
    assert 1 <= len(cands) <= 4 and sum(c["count"] for c in cands) == 4
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    assert [s["step"] for s in entry["intermediate"]] == [5, 10]


@pytest.mark.parametrize("args, message", [
    (["--num-candidates", "0"], "--num-candidates must be in [1, 256]"),
    (["--num-candidates", "1000000000"], "--num-candidates must be in [1, 256]"),
    (["--steps", "51"], "sampling steps must be in [1, T=50]"),
    (["--candidate-method", "beam"], "--candidate-method beam is for decoders"),
    (["--prompt", "word " * 40], "exceeds the encoder's 16"),
])
def test_generate_bad_input(cf_run, args, message):
    prompt = [] if "--prompt" in args else ["--prompt", "find all txt files"]
    result = slm("generate", str(cf_run), *prompt, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-1000:]
    assert len(result.stderr.strip().splitlines()[-1]) < 300


def test_decoder_refuses_codefusion_options(tmp_path):
    from eval_utils import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "dec")
    result = slm("generate", str(folder), "--prompt", "x", "--steps", "5")
    assert result.returncode == 2 and "--steps is a CodeFusion and masked-diffusion option" in result.stderr


def test_ar_code_trains_and_ranks_candidates(tmp_path, cf_run):
    recipe = write(tmp_path, TINY_AR)
    run = tmp_path / "ar"
    run.mkdir()
    (run / "tokenizer.json").write_bytes((cf_run / "tokenizer.json").read_bytes())
    s = summary(slm("train", str(recipe), "--out", str(run), "--no-progress"))
    assert s["steps"] == 8 and s["train_flops"] > 0
    result = slm("generate", str(run), "--prompt", "find all txt files", "--num-candidates", "3",
                 "--max-new-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    cands = json.loads(result.stdout)[0]["candidates"]
    assert sum(c["count"] for c in cands) == 3


# ---------------------------------------------------------------------------- recipes and bad input


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load(name):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert recipe.eval.tasks == [f"codefusion-{recipe.code.language.lower()}"]


@pytest.mark.parametrize("language", ["bash", "python", "cf"])
def test_ar_baseline_within_ten_percent_of_codefusion(language):
    from slmkit.models.accounting import count_params
    from slmkit.models.codefusion import codefusion_summary
    from slmkit.models.presets import resolve_model_config
    from slmkit.objectives.codefusion import codefusion_config

    cf = load_recipe(REPO / "recipes" / f"codefusion-{language}.yaml")
    ar = load_recipe(REPO / "recipes" / f"ar-{language}.yaml")
    n_cf = codefusion_summary(codefusion_config(cf))["params"]
    n_ar = count_params(resolve_model_config(ar.model, vocab_size=cf.tokenizer.vocab_size))
    assert abs(n_ar - n_cf) <= 0.1 * n_cf, (n_ar, n_cf)
    assert (ar.tokenizer, ar.data.sources, ar.code.pretrain_steps) == (cf.tokenizer, cf.data.sources,
                                                                       cf.code.pretrain_steps)


@pytest.mark.parametrize("changes, message", [
    ({"code__pretrain_steps": 8}, "'code.pretrain_steps' must be in [0, train.max_steps=8)"),
    ({"code__language": "bsh"}, "did you mean 'Bash'"),
    ({"model__code_len": 32}, "recipe key 'model.code_len' is set by the run"),
    ({"model__denoiser_layerz": 2}, "did you mean 'model.denoiser_layers'"),
])
def test_recipe_errors(tmp_path, changes, message):
    with pytest.raises(SlmError, match=None) as info:
        load_recipe(write(tmp_path, TINY_CF, **changes))
    assert message in str(info.value)


def test_decoder_preset_is_refused(tmp_path):
    with pytest.raises(SlmError, match="task: codefusion needs a CodeFusion preset"):
        load_recipe(write(tmp_path, {**TINY_CF, "model": {"preset": "tiny-llama"}}))


def test_ppl_val_is_refused(tmp_path):
    with pytest.raises(SlmError, match="does not apply to task: codefusion"):
        load_recipe(write(tmp_path, TINY_CF), ["eval.tasks=[ppl:val, codefusion-bash]"])


def test_malformed_benchmark_item_names_file_and_id(tmp_path, cf_run):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [{"ID": 1, "NL Utterance": "a", "Code": "ls"},
                                         {"ID": 77, "NL Utterance": "b"}], "test": []}))
    recipe = write(tmp_path, TINY_CF, code__benchmark=str(bad))
    run = tmp_path / "r"
    run.mkdir()
    (run / "tokenizer.json").write_bytes((cf_run / "tokenizer.json").read_bytes())
    result = slm("train", str(recipe), "--out", str(run), "--no-progress")
    assert result.returncode == 2
    assert f"{bad}: train item 77: missing key 'Code'" in result.stderr


def test_flops_formula_matches_the_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from slmkit.models.codefusion import build_codefusion, codefusion_forward_flops, get_codefusion_preset

    cfg = get_codefusion_preset("codefusion-tiny").replace(code_len=32)
    model = build_codefusion(cfg)
    batch = {"utterance_ids": torch.randint(0, 100, (2, 24)), "code_ids": torch.randint(0, 100, (2, 32))}
    with FlopCounterMode(display=False) as counter:
        model.loss(batch)["loss"].backward()
    counted, formula = counter.get_total_flops() / 2, codefusion_forward_flops(cfg, 24, training=True)
    # the counter sees the matmuls; the formula adds the attention scores (SDPA on CPU is not counted)
    assert counted <= formula <= 1.1 * counted


def test_quantized_codefusion_keeps_its_loss_and_generates(cf_run, tmp_path):
    out = tmp_path / "cf8"
    result = slm("quantize", str(cf_run), "--bits", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "denoising loss" in result.stdout
    report = json.loads((out / "quantization.json").read_text())
    assert report["kind"] == "codefusion" and abs(report["loss_delta_pct"]) < 5
    assert json.loads((out / "config.json").read_text())["model_type"] == "slmkit-codefusion"
    result = slm("generate", str(out), "--prompt", "list all files", "-n", "3", "--steps", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1. [" in result.stdout
    # Outside a run there is no validation split to score a CodeFusion model on.
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(RunDir(cf_run).latest_checkpoint(), bare)
    result = slm("quantize", str(bare), "--bits", "4", "--out", str(tmp_path / "cf4"))
    assert result.returncode == 2 and "--no-eval" in result.stderr and not (tmp_path / "cf4").exists()
    assert slm("quantize", str(bare), "--bits", "4", "--no-eval", "--out", str(tmp_path / "cf4")).returncode == 0


def test_slm_serve_gives_codefusion_candidates(cf_run):
    from openai import BadRequestError
    from test_serve import Server, openai_client

    from slmkit.eval.lm import CandidateRequest
    from slmkit.objectives.ar_code import ar_prompt
    from slmkit.serve.app import create_app, load_served_model

    served = load_served_model(RunDir(cf_run).latest_checkpoint(), "cf")
    srv = Server(create_app(served))
    try:
        client = openai_client(srv.port)
        reply = client.completions.create(model="cf", prompt="list all files", n=3, seed=4, temperature=0.8)
        expected = served.lm.candidates([CandidateRequest(prompt=ar_prompt("list all files"), source="list all files",
                                                          k=3, seed=4, temperature=0.8)])[0].draws()
        assert [c.text for c in reply.choices] == expected and reply.usage.prompt_tokens > 0
        with pytest.raises(BadRequestError, match="/v1/completions"):
            client.chat.completions.create(model="cf", messages=[{"role": "user", "content": "ls"}])
        with pytest.raises(BadRequestError, match="stream=false"):
            client.completions.create(model="cf", prompt="ls", stream=True)
    finally:
        srv.close()
