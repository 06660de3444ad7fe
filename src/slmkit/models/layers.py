"""Building blocks of the decoder: norms, rotary embeddings, attention, MLPs, one block.

The math follows HF transformers' LlamaForCausalLM / PhiForCausalLM exactly (RMSNorm in fp32,
rotary embeddings that rotate halves of the first `rotary_dim` head dims, GELU tanh approximation)
so that weights move between the two with logits equal to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmkit.models.config import ModelConfig

# One layer's static KV cache: (keys, values), each [batch, kv_heads, max_len, head_dim].
LayerCache = tuple[Tensor, Tensor]


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (as LLaMA), scaled by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """RMSNorm or LayerNorm (with bias) of width d_model, per cfg.norm."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


# ---------------------------------------------------------------------------- rotary embeddings


def rope_tables(cfg: ModelConfig, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos and signed-sin tables [max_seq_len, rotary_dim] in fp32, in HF's half-split layout.

    The sin table has its first half negated, so that rotate_half(x) * sin == x.roll(R/2) * sin_signed.
    """
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim))
    positions = torch.arange(cfg.max_seq_len, device=device, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : dim // 2].neg_()
    return emb.cos(), sin


def apply_rotary(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Rotate the first R = cos.shape[-1] dims of x [..., D] (HF rotate_half layout).

    x * cos + rotate_half(x) * sin, where rotate_half([x1, x2]) = [-x2, x1]; cos/sin broadcast to x.
    """
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + x.roll(rot // 2, dims=-1) * sin_signed
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + x_rot.roll(rot // 2, dims=-1) * sin_signed, x_pass), dim=-1)


# ---------------------------------------------------------------------------- attention and MLP


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) self-attention with a fused QKV projection; causal unless
    the config is bidirectional."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, self.q_size + 2 * self.kv_size, bias=cfg.bias)
        self.o_proj = nn.Linear(self.q_size, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.causal = not cfg.bidirectional

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: LayerCache | None = None,
        start_pos: int | Tensor = 0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, T, d]; cos/sin [B|1, T, 1, R]. With `cache`, writes keys/values at slots
        start_pos..start_pos+T-1 and attends to slots 0..start_pos+T-1; a tensor start_pos [B] (T = 1)
        writes row b's slot start_pos[b], and `mask` [B, 1, 1, S] says which of its S slots it sees.

        `mask` is a bool [B|1, 1, T, S] "may attend" mask; None means plain causal (or, for one
        query token with a cache, everything cached so far), or everything for a bidirectional model.
        """
        B, T, _ = x.shape
        heads = self.n_heads + self.kv_heads
        qkv = self.qkv(x).view(B, T, heads + self.kv_heads, self.head_dim)
        qk = apply_rotary(qkv[:, :, :heads], cos, sin)  # queries and keys rotated together
        q = qk[:, :, : self.n_heads].transpose(1, 2)
        k = qk[:, :, self.n_heads :].transpose(1, 2)
        v = qkv[:, :, heads:].transpose(1, 2)
        if cache is not None and isinstance(start_pos, Tensor):  # one token per row, each at its own slot
            rows = torch.arange(B, device=x.device)
            cache[0][rows, :, start_pos] = k[:, :, 0]
            cache[1][rows, :, start_pos] = v[:, :, 0]
            slots = mask.shape[-1]
            k, v = cache[0][:B, :, :slots], cache[1][:B, :, :slots]
        elif cache is not None:
            end = start_pos + T
            cache[0][:, :, start_pos:end] = k
            cache[1][:, :, start_pos:end] = v
            k, v = cache[0][:, :, :end], cache[1][:, :, :end]
        is_causal = self.causal and mask is None and T > 1
        if is_causal and k.shape[2] != T:
            raise ValueError("a causal step over a cache with earlier tokens needs an explicit mask")
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.q_size))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.ffn_hidden
        self.gate_up = nn.Linear(cfg.d_model, 2 * self.hidden, bias=cfg.bias)
        self.down = nn.Linear(self.hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))), phi's MLP (HF "gelu_new")."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def make_mlp(cfg: ModelConfig) -> nn.Module:
    """SwiGLU (LLaMA) or GELU (phi) MLP, per cfg.mlp."""
    return SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)


class Block(nn.Module):
    """One transformer block: pre-norm sequential (LLaMA) or parallel attention + MLP (phi)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.parallel = cfg.parallel_block
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = None if cfg.parallel_block else make_norm(cfg)
        self.mlp = make_mlp(cfg)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: LayerCache | None = None,
        start_pos: int | Tensor = 0,
        mask: Tensor | None = None,
    ) -> Tensor:
        h = self.attn_norm(x)
        attn = self._drop(self.attn(h, cos, sin, cache, start_pos, mask))
        if self.parallel:
            return x + attn + self._drop(self.mlp(h))
        x = x + attn
        return x + self._drop(self.mlp(self.mlp_norm(x)))

    def _drop(self, x: Tensor) -> Tensor:
        """Residual dropout (skipped entirely at p=0 or in eval: no op on the decode path)."""
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x

    def output_projections(self) -> list[nn.Linear]:
        """Projections that write into the residual stream (scaled down at init)."""
        out = self.mlp.down if isinstance(self.mlp, SwiGLU) else self.mlp.fc2
        return [self.attn.o_proj, out]
