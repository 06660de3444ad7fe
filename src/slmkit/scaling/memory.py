"""Peak memory per device of one training step: weights, gradients, AdamW state and activations.

Pure arithmetic on a ModelConfig (no torch import), for `slm plan`. It models our trainer
(train/loop.py, train/distributed.py): fp32 parameters and gradients, AdamW with two fp32 moments
(16 bytes/param), optional bf16 autocast, FSDP2 `fully_shard` per block, activation checkpointing of
whole blocks (decoder.py), and the loss of decoder.py (`cross_entropy(logits.float())`).

Resident state (bytes per device, N = parameter count, W = world_size):

    strategy  weights   grads    optimizer  gathered (extra parameter copies)          comm_buffers
    ddp       4N        4N       8N         0                                          4N if W > 1 (DDP buckets)
    zero2     4N        4N/W     8N/W       4N/W (FSDP2's fp32 shards next to the replica)  0
    fsdp      4N/W      4N/W     8N/W       4 * (root unit + 2 largest blocks)         0

zero2 is FSDP2 with reshard_after_forward=False: every block stays unsharded from its forward to its
backward, so the weights are a full replica. fsdp assumes FSDP2's behaviour: the root unit (embedding,
final norm, LM head) is never resharded between forward and backward, and a block is all-gathered
while the next one is prefetched (two blocks at once). Parameters are gathered in fp32 (our FSDP
has no MixedPrecisionPolicy; autocast does the casting).

Activations: what autograd saves for backward, derived per block from our layers and checked
against `torch.autograd.graph.saved_tensors_hooks` (bytes of distinct storages; tests/test_scaling_memory.py).
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1)
count s*b*h*(34 + 5*a*s/h) bytes per GPT layer in fp16 with dropout; our blocks differ: no dropout,
SDPA (flash) saves only a log-sum-exp of b*H*s fp32 instead of the s*s attention matrix, the residual
stream and the norms stay fp32 under autocast, rotary q/k are saved apart from the fused qkv output
(which `v`, a view of it, keeps alive), and SwiGLU saves its fused gate/up output. Per token and
block, with e = bytes of a saved matmul activation (4 in fp32, 2 under autocast), H heads, K kv heads,
D head_dim (H*D = d without GQA), f = ffn_hidden:

    norm internals   rmsnorm: x and x*rstd in fp32 + rstd (8d + 4);  layernorm: x + mean, rstd (4d + 8)
    matmul inputs    e*d for qkv; the MLP input: e*d (sequential block), under autocast e*d (parallel,
                     its own cast of the shared norm output), 0 in fp32 (parallel: the same tensor)
    attention        e*(H+K)*D rotary q, k  +  e*(H+2K)*D qkv output (held by v)  +  e*H*D output  +  4H lse
    MLP              swiglu: e*4f (gate/up output, silu output, product);  gelu: e*2f (fc1 output, gelu output)
    under autocast   + the bf16 copies of the block's matmul weights (2 bytes/weight, per block, not per token)

so, per token and block (K = H), llama (rmsnorm, swiglu): fp32 48d + 16f + 4H + 8, bf16 32d + 8f + 4H + 8
bytes; phi (layernorm, gelu, parallel): fp32 32d + 8f + 4H + 8, bf16 20d + 4f + 4H + 8 bytes. These were
measured on CPU (torch 2.13), where F.rms_norm with a weight decomposes and saves x*rstd, and SDPA runs its
flash kernel (q, k, v, output, log-sum-exp; also with GQA). Not measured on CUDA: a fused rms_norm kernel
there would save 4d bytes less per norm in fp32 (an over-estimate of 8d per token and block).

Head: final norm internals, the LM head input (e*d), the fp32 log-probabilities that log_softmax saves
(4V per token, the term that dominates small models with big vocabularies), input ids and labels (16),
and under autocast the bf16 copy of the LM head weight (2Vd).

With activation checkpointing a block keeps only its fp32 input (4d per token); in backward one block
is recomputed at a time, so its full activations come back as a transient.

Transients (measured on CPU with the profiler's memory events, see the tests): the loss backward holds
the saved log-probs, their gradient and the logits' gradient at once, 8V fp32 bytes per token beyond
the saved log-probs (3 * 4V in all); its forward holds logits (fp32: 4V; autocast: 2V bf16 + 4V fp32 copy)
next to the log-probs. A block's backward adds gradient buffers of about 2f elements (swiglu) or 4f bytes (gelu)
per token plus its weight gradients (unsharded until the reduce-scatter under zero2/fsdp). Under
autocast with checkpointing, the autocast cache holds every block's bf16 weights until the forward
ends. The optimizer step: fused AdamW (our trainer, ddp) has no temporaries; foreach AdamW (FSDP's
DTensor parameters) makes an fp32 temporary the size of its largest parameter group, bounded here by 4N/W.

`total` is the peak over the phases of a step, not the sum of the fields: forward end, loss backward,
the first and the last block's backward, the end of backward, and the optimizer step (gradients are
only partly built while activations are alive). Not modelled: dropout masks (dropout > 0), padding
masks, the CUDA caching allocator's fragmentation, CUDA context and NCCL buffers, torch.compile.
"""

from __future__ import annotations

from slmkit.errors import SlmError, check_choice
from slmkit.models.config import ModelConfig

STRATEGIES = ("ddp", "zero2", "fsdp")
PRECISIONS = ("bf16", "fp16", "fp32")  # fp16 (CUDA, GradScaler) saves the same bytes as bf16
FP32 = 4


# ---------------------------------------------------------------------------- parameter counts


def _norm_params(cfg: ModelConfig) -> int:
    """Parameters of one norm: weight (rmsnorm) or weight and bias (layernorm)."""
    return cfg.d_model if cfg.norm == "rmsnorm" else 2 * cfg.d_model


def block_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one block's matmuls (qkv, output projection, MLP), biases excluded."""
    d, f = cfg.d_model, cfg.ffn_hidden
    attn = d * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim + cfg.n_heads * cfg.head_dim * d
    mlp = 3 * d * f if cfg.mlp == "swiglu" else 2 * d * f
    return attn + mlp


def block_params(cfg: ModelConfig) -> int:
    """All parameters of one block (matmul weights, biases, norms)."""
    d, f = cfg.d_model, cfg.ffn_hidden
    biases = 0
    if cfg.bias:
        biases = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim + d + (2 * f if cfg.mlp == "swiglu" else f) + d
    norms = (1 if cfg.parallel_block else 2) * _norm_params(cfg)
    return block_matmul_params(cfg) + biases + norms


def head_params(cfg: ModelConfig) -> int:
    """LM head weight (counted even when tied: its gradient exists) and bias, plus the final norm."""
    return cfg.vocab_size * cfg.d_model + (cfg.vocab_size if cfg.lm_head_bias else 0) + _norm_params(cfg)


def root_params(cfg: ModelConfig) -> int:
    """Parameters outside the blocks (FSDP's root unit): embedding, final norm, LM head (tied once)."""
    embed = cfg.vocab_size * cfg.d_model
    return embed + head_params(cfg) - (embed if cfg.tie_embeddings else 0)


def total_params(cfg: ModelConfig) -> int:
    """Parameter count, equal to models.accounting.count_params (tied weights once)."""
    return cfg.n_layers * block_params(cfg) + root_params(cfg)


# ---------------------------------------------------------------------------- activations


def _act_bytes(precision: str) -> int:
    """Bytes per element of a saved matmul input/output: 2 under autocast, 4 in fp32."""
    return FP32 if precision == "fp32" else 2


def _norm_saved_per_token(cfg: ModelConfig) -> int:
    """Bytes one norm saves per token besides its output: x and x*rstd + rstd, or x + mean and rstd."""
    d = cfg.d_model
    return 2 * FP32 * d + FP32 if cfg.norm == "rmsnorm" else FP32 * d + 2 * FP32


def block_activation_bytes_per_token(cfg: ModelConfig, precision: str = "bf16") -> int:
    """Bytes autograd saves per token in one block without checkpointing (the table in the module doc)."""
    e, d, f = _act_bytes(precision), cfg.d_model, cfg.ffn_hidden
    H, K, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    norms = (1 if cfg.parallel_block else 2) * _norm_saved_per_token(cfg)
    mlp_input = 0 if (cfg.parallel_block and precision == "fp32") else e * d
    matmul_inputs = e * d + mlp_input
    attention = e * (H + K) * D + e * (H + 2 * K) * D + e * H * D + FP32 * H
    mlp = e * (4 * f if cfg.mlp == "swiglu" else 2 * f)
    return norms + matmul_inputs + attention + mlp


def block_weight_copy_bytes(cfg: ModelConfig, precision: str = "bf16") -> int:
    """bf16 copies of one block's matmul weights that autocast makes and autograd saves (0 in fp32)."""
    return 0 if precision == "fp32" else 2 * block_matmul_params(cfg)


def head_activation_bytes_per_token(cfg: ModelConfig, precision: str = "bf16") -> int:
    """Bytes saved per token by the final norm, LM head and loss: norm internals, head input,
    fp32 log-probs (4V), input ids and labels (int64)."""
    return _norm_saved_per_token(cfg) + _act_bytes(precision) * cfg.d_model + FP32 * cfg.vocab_size + 16


def _block_backward_per_token(cfg: ModelConfig, precision: str) -> int:
    """Gradient buffers of one block's backward beyond its saved tensors and the incoming gradient
    (measured: swiglu 2f elements of the saved dtype, gelu 4f bytes)."""
    if cfg.mlp == "swiglu":
        return 2 * _act_bytes(precision) * cfg.ffn_hidden
    return 4 * cfg.ffn_hidden


# ---------------------------------------------------------------------------- the estimate


def _check(strategy: str, world_size: int, micro_batch: int, seq_len: int, precision: str) -> None:
    check_choice(strategy, STRATEGIES, "strategy")
    check_choice(precision, PRECISIONS, "precision")
    for name, value in (("world_size", world_size), ("micro_batch", micro_batch), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SlmError(f"{name} must be an integer >= 1, got {value!r}")


def _shard(nbytes: int, world_size: int) -> int:
    """Bytes per device of a tensor sharded over world_size (rounded up)."""
    return -(-nbytes // world_size)


def _resident(cfg: ModelConfig, strategy: str, world_size: int) -> dict[str, int]:
    """weights, grads, optimizer, gathered and comm_buffers per device (the table in the module doc)."""
    n = FP32 * total_params(cfg)
    if strategy == "ddp":
        return {"weights": n, "grads": n, "optimizer": 2 * n, "gathered": 0,
                "comm_buffers": n if world_size > 1 else 0}
    sharded = {"grads": _shard(n, world_size), "optimizer": 2 * _shard(n, world_size), "comm_buffers": 0}
    if strategy == "zero2":
        return {"weights": n, "gathered": _shard(n, world_size), **sharded}
    gathered = FP32 * (root_params(cfg) + 2 * block_params(cfg))
    return {"weights": _shard(n, world_size), "gathered": gathered, **sharded}


def _saved(cfg: ModelConfig, tokens: int, checkpointing: bool, precision: str) -> tuple[int, int, int]:
    """Saved bytes of one micro-batch: a block without checkpointing, a block as kept, and the head."""
    full = block_activation_bytes_per_token(cfg, precision) * tokens + block_weight_copy_bytes(cfg, precision)
    kept = FP32 * cfg.d_model * tokens if checkpointing else full  # checkpointing keeps the fp32 block input
    head_copy = 0 if precision == "fp32" else 2 * cfg.vocab_size * cfg.d_model
    return full, kept, head_activation_bytes_per_token(cfg, precision) * tokens + head_copy


def _transients(cfg: ModelConfig, tokens: int, strategy: str, world_size: int, checkpointing: bool,
                precision: str) -> dict[str, int]:
    """Temporaries: loss forward and backward, one block's backward (with its recompute and its
    unsharded weight gradients), the optimizer step (foreach AdamW under zero2/fsdp)."""
    full, kept, _ = _saved(cfg, tokens, checkpointing, precision)
    logits = (FP32 if precision == "fp32" else FP32 + 2) * cfg.vocab_size * tokens
    per_token = _block_backward_per_token(cfg, precision) + FP32 * cfg.d_model  # + the incoming gradient
    return {
        "loss forward": logits,  # next to the saved log-probs
        "loss backward": 2 * FP32 * cfg.vocab_size * tokens,  # d(log-probs) and d(logits)
        "block backward": full - kept + per_token * tokens + FP32 * block_params(cfg),
        "optimizer step": 0 if strategy == "ddp" else _shard(FP32 * total_params(cfg), world_size),
    }


def _phases(cfg: ModelConfig, tokens: int, strategy: str, world_size: int, checkpointing: bool,
            precision: str, grads: int) -> dict[str, int]:
    """Bytes beyond weights, optimizer, gathered and comm_buffers at each phase of the step."""
    L = cfg.n_layers
    _, kept, head = _saved(cfg, tokens, checkpointing, precision)
    temp = _transients(cfg, tokens, strategy, world_size, checkpointing, precision)
    autocast_cache = L * block_weight_copy_bytes(cfg, precision) if checkpointing else 0
    block_grads = FP32 * block_params(cfg) if strategy == "ddp" else _shard(FP32 * block_params(cfg), world_size)
    head_grads = FP32 * head_params(cfg)
    root_grads = 0 if strategy == "ddp" else FP32 * root_params(cfg)  # reduce-scattered when backward ends
    return {
        "forward": L * kept + autocast_cache + head + temp["loss forward"],
        "loss backward": L * kept + head + temp["loss backward"],
        "first block backward": L * kept + head_grads + temp["block backward"],
        "last block backward": kept + head_grads + (L - 1) * block_grads + temp["block backward"],
        "end of backward": grads + root_grads + FP32 * cfg.d_model * tokens,
        "optimizer step": grads + temp["optimizer step"],
    }


def training_memory(cfg: ModelConfig, *, seq_len: int, micro_batch: int, world_size: int = 1,
                    strategy: str = "ddp", activation_checkpointing: bool = False,
                    precision: str = "bf16") -> dict[str, int | str | bool]:
    """Peak bytes per device of one training step: weights, grads, optimizer, activations, total.

    Also gathered (extra parameter copies of FSDP2), comm_buffers (DDP buckets), transient (the
    largest temporary), peak_phase (where the peak is) and the inputs. See the module docstring.
    """
    _check(strategy, world_size, micro_batch, seq_len, precision)
    resident = _resident(cfg, strategy, world_size)
    tokens, ac = seq_len * micro_batch, activation_checkpointing
    phases = _phases(cfg, tokens, strategy, world_size, ac, precision, resident["grads"])
    _, kept, head = _saved(cfg, tokens, ac, precision)
    activations = cfg.n_layers * kept + head
    transient = max(_transients(cfg, tokens, strategy, world_size, ac, precision).values())
    peak_phase = max(phases, key=phases.__getitem__)
    base = resident["weights"] + resident["optimizer"] + resident["gathered"] + resident["comm_buffers"]
    return {
        "strategy": strategy, "world_size": world_size, "seq_len": seq_len, "micro_batch": micro_batch,
        "precision": precision, "activation_checkpointing": activation_checkpointing,
        "params": total_params(cfg), **resident, "activations": activations, "transient": transient,
        "total": base + phases[peak_phase], "peak_phase": peak_phase,
    }


def memory_table(cfg: ModelConfig, *, seq_len: int, micro_batch: int, world_size: int,
                 precision: str = "bf16") -> list[dict]:
    """training_memory for every strategy x activation checkpointing (6 rows)."""
    return [
        training_memory(cfg, seq_len=seq_len, micro_batch=micro_batch, world_size=world_size,
                        strategy=strategy, activation_checkpointing=ac, precision=precision)
        for strategy in STRATEGIES for ac in (False, True)
    ]
