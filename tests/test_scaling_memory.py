"""The training-memory estimate (scaling/memory.py) against what torch really saves and allocates.

Three levels: the per-block activation formula against the bytes autograd saves (saved_tensors_hooks,
distinct storages); the whole-step peak against the tensor allocator's live bytes (profiler memory
events, in process); and the acceptance test, the estimate against the peak RSS of real training
steps of a ~19M-parameter model in a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.models.accounting import count_params
from slmkit.models.config import ModelConfig
from slmkit.models.decoder import build_model
from slmkit.scaling.memory import (
    STRATEGIES,
    block_activation_bytes_per_token,
    block_params,
    block_weight_copy_bytes,
    head_activation_bytes_per_token,
    memory_table,
    root_params,
    total_params,
    training_memory,
)
from slmkit.train.optim import PRESETS, build_optimizer

LLAMA = dict(family="llama", norm="rmsnorm", mlp="swiglu", parallel_block=False, rotary_fraction=1.0, bias=False)
PHI = dict(family="phi", norm="layernorm", mlp="gelu", parallel_block=True, rotary_fraction=0.5, bias=True,
           lm_head_bias=True, norm_eps=1e-5)


def tiny(family: str, **changes) -> ModelConfig:
    """A tiny llama- or phi-style config."""
    style = LLAMA if family == "llama" else PHI
    shape = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    return ModelConfig(**{**style, **shape, **changes}).validate()


def autocast_for(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


# ---------------------------------------------------------------------------- saved activations


def saved_bytes(cfg: ModelConfig, precision: str, batch: int, seq: int) -> dict[str, int]:
    """Bytes of distinct storages autograd saves in one forward, per block ("L0", ...) and for the rest
    ("head": final norm, LM head and loss; "embed": the embedding's indices). Parameters and buffers
    (rotary tables) are excluded; a storage saved twice, or through views, counts once."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    where = ["embed"]
    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(lambda module, args, i=i: where.__setitem__(0, f"L{i}"))
        layer.register_forward_hook(lambda module, args, out: where.__setitem__(0, "head"))
    seen: set[int] = set()
    totals: dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in owned and ptr not in seen:
            seen.add(ptr)
            totals[where[0]] += storage.nbytes()
        return t

    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(precision):
        loss = model.loss({"input_ids": ids, "labels": ids.clone()})
    loss.backward()
    return dict(totals)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", [
    ("llama", {}), ("phi", {}), ("llama", {"n_kv_heads": 2, "d_ff": 320}), ("phi", {"n_kv_heads": 1}),
    ("llama", {"parallel_block": True, "norm": "layernorm"}), ("phi", {"parallel_block": False, "mlp": "swiglu"}),
], ids=["llama", "phi", "llama-gqa", "phi-mqa", "llama-parallel", "phi-sequential"])
def test_block_formula_equals_bytes_autograd_saves(config, precision):
    family, changes = config
    cfg = tiny(family, **changes)
    batch, seq = 2, 48
    got = saved_bytes(cfg, precision, batch, seq)
    tokens = batch * seq
    block = block_activation_bytes_per_token(cfg, precision) * tokens + block_weight_copy_bytes(cfg, precision)
    head_copy = 0 if precision == "fp32" else 2 * cfg.vocab_size * cfg.d_model
    head = head_activation_bytes_per_token(cfg, precision) * tokens + head_copy
    for name in ("L0", "L1"):
        assert got[name] == pytest.approx(block, rel=0.05), (name, got, block)
    assert got["head"] + got["embed"] == pytest.approx(head, rel=0.05), (got, head)


def test_published_per_token_counts():
    """The closed forms quoted in the module docstring (K = H)."""
    llama, phi = tiny("llama", d_model=256, n_heads=8, d_ff=704), tiny("phi", d_model=256, n_heads=8)
    d, H = 256, 8
    f = llama.ffn_hidden
    assert block_activation_bytes_per_token(llama, "fp32") == 48 * d + 16 * f + 4 * H + 8
    assert block_activation_bytes_per_token(llama, "bf16") == 32 * d + 8 * f + 4 * H + 8
    f = phi.ffn_hidden
    assert block_activation_bytes_per_token(phi, "fp32") == 32 * d + 8 * f + 4 * H + 8
    assert block_activation_bytes_per_token(phi, "bf16") == 20 * d + 4 * f + 4 * H + 8


@pytest.mark.parametrize("changes", [
    {}, {"tie_embeddings": True}, {"n_kv_heads": 2}, {"bias": True, "lm_head_bias": True},
    {"family": "phi"}, {"family": "phi", "n_kv_heads": 1, "tie_embeddings": True, "lm_head_bias": False},
])
def test_param_arithmetic_matches_count_params(changes):
    family = changes.pop("family", "llama")
    cfg = tiny(family, **changes)
    assert total_params(cfg) == count_params(cfg)


# ---------------------------------------------------------------------------- tensor-level peak


def allocator_peak(cfg: ModelConfig, precision: str, checkpointing: bool, batch: int, seq: int) -> int:
    """Peak live tensor bytes of a steady-state training step (the second: AdamW state exists), from
    the profiler's memory events, plus the parameters and optimizer state alive when it starts."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    model.set_activation_checkpointing(checkpointing)
    optimizer = build_optimizer(model, PRESETS["llama"])
    batch_ = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq))}
    batch_["labels"] = batch_["input_ids"].clone()

    def step() -> None:
        with autocast_for(precision):
            loss = model.loss(batch_)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    resident = sum(p.nbytes for p in model.parameters())
    resident += sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))
    return resident + peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ac", "ac"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family,vocab", [("llama", 2048), ("phi", 2048), ("llama", 256)],
                         ids=["llama", "phi", "llama-small-vocab"])
def test_estimate_matches_allocator_peak(family, vocab, precision, checkpointing):
    """Within 10% of the live tensor bytes: exact where the loss backward is the peak, a few percent
    over where a block's backward is (its gradient buffers are bounded, not traced)."""
    cfg = tiny(family, vocab_size=vocab, d_model=128, n_layers=3, max_seq_len=128)
    measured = allocator_peak(cfg, precision, checkpointing, batch=4, seq=128)
    est = training_memory(cfg, seq_len=128, micro_batch=4, precision=precision,
                          activation_checkpointing=checkpointing)
    assert est["total"] == pytest.approx(measured, rel=0.10), (est, measured)


# ---------------------------------------------------------------------------- acceptance: real peak RSS

RSS_SCRIPT = textwrap.dedent('''
    """Peak RSS of a real training step per case, each measured from the RSS just before the model
    is built; /proc/self/clear_refs (5) resets the high-water mark (VmHWM) between cases."""
    import contextlib, gc, json, os, sys
    import torch
    from slmkit.models.config import ModelConfig
    from slmkit.models.decoder import build_model
    from slmkit.train.optim import PRESETS, build_optimizer

    def train(cfg, batch, seq, precision, checkpointing):
        model = build_model(cfg)
        model.train()
        model.set_activation_checkpointing(checkpointing)
        optimizer = build_optimizer(model, PRESETS["llama"])  # as the trainer: fused AdamW, fp32 state
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        # a cheap first step creates the AdamW moments, so the full-size step is a steady-state one
        for b, s in ((1, 8), (batch, seq)):
            ids = torch.randint(0, cfg.vocab_size, (b, s))
            with autocast:
                loss = model.loss({"input_ids": ids, "labels": ids.clone()})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def high_water():
        # VmHWM: this address space's peak RSS, which clear_refs resets. Not ru_maxrss: that also keeps
        # the peak of the forking parent (pytest, GBs into a full run) carried over the exec.
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    spec = json.loads(sys.argv[1])
    cfg = ModelConfig(**spec["model"]).validate()
    small = cfg.replace(vocab_size=256, d_model=64, n_layers=1, n_heads=4)
    for precision, checkpointing in spec["cases"]:  # load kernels, thread pools, lazy modules first
        train(small, 2, 16, precision, checkpointing)
    out = []
    for precision, checkpointing in spec["cases"]:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss()
        train(cfg, spec["batch"], spec["seq"], precision, checkpointing)
        peak = high_water() - before
        out.append([precision, checkpointing, peak])
    print(json.dumps(out))
''')

RSS_MODEL = dict(LLAMA, vocab_size=16000, d_model=384, n_layers=4, n_heads=6, max_seq_len=256)
RSS_BATCH, RSS_SEQ = 4, 256
RSS_CASES = [(p, ac) for p in ("fp32", "bf16") for ac in (False, True)]


@pytest.fixture(scope="module")
def measured_rss() -> dict[tuple[str, bool], int]:
    """Peak RSS above the pre-model baseline of each case, in one fresh process.

    glibc serves every allocation above 64 KiB with mmap and unmaps it on free, so RSS follows the
    live tensors (no heap that keeps freed memory); a warm-up run with a tiny model loads kernels
    and thread pools before the baseline is taken."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    spec = {"model": RSS_MODEL, "batch": RSS_BATCH, "seq": RSS_SEQ, "cases": RSS_CASES}
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(p, ac): peak for p, ac, peak in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("precision,checkpointing", RSS_CASES, ids=[f"{p}-{'ac' if ac else 'no-ac'}"
                                                                    for p, ac in RSS_CASES])
def test_estimate_within_20_percent_of_real_peak_rss(measured_rss, precision, checkpointing):
    """The key acceptance test: the estimate for a tiny model (~19M params) is within 20% of the
    measured peak of a real training step on CPU (ddp, world size 1)."""
    cfg = ModelConfig(**RSS_MODEL)
    est = training_memory(cfg, seq_len=RSS_SEQ, micro_batch=RSS_BATCH, world_size=1, strategy="ddp",
                          activation_checkpointing=checkpointing, precision=precision)
    measured = measured_rss[(precision, checkpointing)]
    assert est["total"] == pytest.approx(measured, rel=0.20), (est["total"], measured, est)


# ---------------------------------------------------------------------------- sharding arithmetic


def test_zero2_and_fsdp_shard_what_they_should():
    cfg = tiny("llama", vocab_size=1000, d_model=128, n_layers=4)
    n = 4 * total_params(cfg)
    ddp = training_memory(cfg, seq_len=64, micro_batch=2, world_size=8, strategy="ddp")
    zero2 = training_memory(cfg, seq_len=64, micro_batch=2, world_size=8, strategy="zero2")
    fsdp = training_memory(cfg, seq_len=64, micro_batch=2, world_size=8, strategy="fsdp")
    assert (ddp["weights"], ddp["grads"], ddp["optimizer"]) == (n, n, 2 * n)
    assert ddp["comm_buffers"] == n  # DDP's gradient buckets
    assert (zero2["weights"], zero2["grads"], zero2["optimizer"]) == (n, n // 8, 2 * n // 8)
    assert zero2["gathered"] == n // 8  # FSDP2's fp32 shards beside the unsharded replica
    assert (fsdp["weights"], fsdp["grads"], fsdp["optimizer"]) == (n // 8, n // 8, 2 * n // 8)
    assert fsdp["gathered"] == 4 * (root_params(cfg) + 2 * block_params(cfg))
    for row in (zero2, fsdp):  # activations are per micro-batch, the same on every device
        assert row["activations"] == ddp["activations"]
    assert ddp["total"] > zero2["total"] > fsdp["total"]
    one = training_memory(cfg, seq_len=64, micro_batch=2, world_size=1, strategy="ddp")
    assert one["comm_buffers"] == 0 and one["total"] == ddp["total"] - n


def test_sharded_totals_shrink_with_world_size():
    cfg = tiny("phi", vocab_size=1000, d_model=128, n_layers=8)
    for strategy in ("zero2", "fsdp"):
        totals = [training_memory(cfg, seq_len=32, micro_batch=1, world_size=w, strategy=strategy)["total"]
                  for w in (1, 2, 4, 8)]
        assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1]


def test_activation_checkpointing_and_micro_batch():
    cfg = tiny("llama", vocab_size=1000, d_model=128, n_layers=6)
    plain = training_memory(cfg, seq_len=128, micro_batch=4)
    ac = training_memory(cfg, seq_len=128, micro_batch=4, activation_checkpointing=True)
    double = training_memory(cfg, seq_len=128, micro_batch=8)
    assert ac["activations"] < plain["activations"] and ac["total"] < plain["total"]
    assert double["activations"] > plain["activations"] and double["weights"] == plain["weights"]
    assert training_memory(cfg, seq_len=128, micro_batch=4, precision="fp32")["activations"] > plain["activations"]


def test_memory_table_has_six_rows():
    rows = memory_table(tiny("llama"), seq_len=64, micro_batch=2, world_size=4)
    assert [(r["strategy"], r["activation_checkpointing"]) for r in rows] == [
        (s, ac) for s in STRATEGIES for ac in (False, True)]
    for row in rows:
        assert row["total"] > 0 and row["world_size"] == 4 and isinstance(row["peak_phase"], str)


def test_memory_module_does_not_import_torch():
    code = ("import sys; import slmkit.scaling.memory as m; from slmkit.models.config import ModelConfig; "
            "m.training_memory(ModelConfig(), seq_len=2048, micro_batch=1); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,words", [
    ({"strategy": "zer2"}, ["strategy", "did you mean 'zero2'"]),
    ({"strategy": "fdsp"}, ["strategy", "did you mean 'fsdp'"]),
    ({"world_size": 0}, ["world_size", ">= 1"]),
    ({"micro_batch": 0}, ["micro_batch", ">= 1"]),
    ({"seq_len": -1}, ["seq_len", ">= 1"]),
    ({"precision": "bf61"}, ["precision", "did you mean 'bf16'"]),
])
def test_bad_input_raises_slm_error(kwargs, words):
    args = {"seq_len": 64, "micro_batch": 2, **kwargs}
    with pytest.raises(SlmError) as info:
        training_memory(tiny("llama"), **args)
    for word in words:
        assert word in str(info.value)
