"""CodeFusion (Singh et al. 2023): an encoder-conditioned diffusion model over code embeddings.

    utterance ids --L--> encoder (bidirectional, padding mask) --------------------> E
    code ids y --L--> x0 --q_sample(t)--> x_t --denoiser(x_t + pos + temb(t); E)--> x0_hat
    x0_hat --decoder(self + cross attention to E)--> D (final hidden states) --head--> logits

Built from slmkit.models.layers (norms, MLPs, rotary Attention, Block); cross-attention and the
bidirectional use of Attention (always an explicit "may attend" mask, never the causal default)
live here.

Design choices (a trainer / sampler integration should know them):
- L is ONE embedding table shared by the encoder input and the code embeddings x0 = L(y); it is
  initialised N(0, embed_init_std=1) so x0 is on the scale of the Gaussian noise. The LM head is a
  separate Linear(d_model, vocab) (not tied to L).
- Schedule: alpha_bar(t) = 1 - sqrt(t/T + s) evaluated directly for integer t in {0, ..., T-1}
  (strictly decreasing, inside (0, 1); alpha_bar(0) = 1 - sqrt(s) = 0.99 at s = 1e-4). Training
  samples t uniformly from {0..T-1}.
- The denoiser predicts x0. Its input is x_t + a learned absolute code-position embedding + an MLP
  of the sinusoidal timestep embedding; its self-attention is bidirectional over all code_len
  positions (no padding mask: at sampling time the length is unknown and padding is generated).
- D(x0_hat) := the decoder's final hidden states after its final norm (the head's input).
- Loss = mse + decoder_mse + nll, with mse = mean over dims of (x0_hat - x0)^2 and decoder_mse =
  mean over dims of (D - x0)^2 (per-position means, not sums over d, so no term dominates with d),
  nll = cross-entropy of head(D) against y; all three averaged over the code positions counted:
  code_mask positions, or all code_len positions when `loss_on_padding` (default True) so that the
  model learns to emit pad_id after the code (how a sample's length is decided).
- Sampler: strided grid of `steps` timesteps from T-1 down to 0 and the deterministic DDIM (eta=0)
  x0-prediction update x_{t'} = sqrt(ab_t') x0_hat + sqrt(1 - ab_t') eps_hat with
  eps_hat = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t); the same rule for steps = T (every step).
  Tokens = argmax of head(D(x0_hat)) at t = 0; score = their mean log-probability over code_len
  positions (padding included; the model's own confidence, no reference involved).
- `unconditional` rows (pretraining) replace the encoder output by N(0, 1) noise with no padding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmkit.errors import SlmError
from slmkit.models.codefusion_config import (  # noqa: F401  (re-exported)
    CODEFUSION_PRESETS,
    CodeFusionConfig,
    get_codefusion_preset,
)
from slmkit.models.config import ModelConfig
from slmkit.models.layers import Block, make_norm, rope_tables


# ---------------------------------------------------------------------------- layers


class CrossAttention(nn.Module):
    """Multi-head attention from x [B, T, d] to a memory [B, S, d] (no rotary), key padding mask."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        """memory_mask: bool [B, 1, 1, S] "may attend" (every row must allow at least one key)."""
        B, T, d = x.shape
        S = memory.shape[1]
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(memory).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=memory_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))


class CrossBlock(Block):
    """Pre-norm block: bidirectional self-attention, cross-attention to the encoding, MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.cross_norm = make_norm(cfg)
        self.cross_attn = CrossAttention(cfg)

    def forward(  # type: ignore[override]
        self, x: Tensor, cos: Tensor, sin: Tensor, self_mask: Tensor, memory: Tensor, memory_mask: Tensor
    ) -> Tensor:
        x = x + self._drop(self.attn(self.attn_norm(x), cos, sin, mask=self_mask))
        x = x + self._drop(self.cross_attn(self.cross_norm(x), memory, memory_mask))
        return x + self._drop(self.mlp(self.mlp_norm(x)))

    def output_projections(self) -> list[nn.Linear]:
        return [*super().output_projections(), self.cross_attn.o_proj]


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] (fp32) of integer timesteps t [B] (as in DDPM / GENIE)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _key_mask(mask: Tensor) -> Tensor:
    """[B, S] 0/1 padding mask -> bool [B, 1, 1, S]; an all-padding row may attend everywhere (no NaN)."""
    keep = mask.bool()
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


# ---------------------------------------------------------------------------- the model


class CodeFusion(nn.Module):
    """Encoder + denoiser + decoder over a shared embedding table; see the module docstring."""

    def __init__(self, config: CodeFusionConfig) -> None:
        super().__init__()
        self.config = config.validate()
        bc = config.block_config()
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)  # L, shared by utterances and code
        self.encoder = nn.ModuleList(Block(bc) for _ in range(config.encoder_layers))
        self.encoder_norm = make_norm(bc)
        self.code_pos = nn.Embedding(config.code_len, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.denoiser = nn.ModuleList(CrossBlock(bc) for _ in range(config.denoiser_layers))
        self.denoiser_norm = make_norm(bc)
        self.denoiser_out = nn.Linear(d, d)
        self.decoder = nn.ModuleList(CrossBlock(bc) for _ in range(config.decoder_layers))
        self.decoder_norm = make_norm(bc)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        cos, sin = rope_tables(bc, device=self.embed.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ------------------------------------------------------------------ setup

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) linears (residual outputs scaled by 1/sqrt(2 * layers)), N(0, embed_init_std)
        for L, unit norms; recomputes the rotary tables. Deterministic given `seed`."""
        if seed is not None:
            torch.manual_seed(seed)
        cfg = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, cfg.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, cfg.init_std)
            elif hasattr(module, "reset_parameters") and module is not self:
                module.reset_parameters()
        nn.init.normal_(self.embed.weight, 0.0, cfg.embed_init_std)
        nn.init.normal_(self.code_pos.weight, 0.0, cfg.embed_init_std)  # positions must survive the noise
        for stack in (self.encoder, self.denoiser, self.decoder):
            for block in stack:
                for proj in block.output_projections():
                    nn.init.normal_(proj.weight, 0.0, cfg.init_std / math.sqrt(2 * len(stack)))
        self.reset_rope()

    def reset_rope(self) -> None:
        """Recompute the (non-persistent) rotary tables, e.g. after loading onto an empty model."""
        cos, sin = rope_tables(self.config.block_config(), device=self.rope_cos.device)
        self.rope_cos, self.rope_sin = cos, sin

    @property
    def layers(self) -> list[nn.Module]:
        """Every transformer block (FSDP shards each one)."""
        return [*self.encoder, *self.denoiser, *self.decoder]

    def set_activation_checkpointing(self, enabled: bool) -> None:
        if enabled:
            raise SlmError("train.activation_checkpointing is not supported for CodeFusion models; set it to false")

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding drops the shared table L. Quantized layers report `weight_count`."""
        n = sum(p.numel() for p in self.parameters()) + sum(getattr(m, "weight_count", 0) for m in self.modules())
        return n - self.embed.weight.numel() if non_embedding else n

    # ------------------------------------------------------------------ schedule

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar(t) = 1 - sqrt(t/T + s) in fp32, for integer t in [0, T-1]."""
        cfg = self.config
        return 1.0 - torch.sqrt(t.float() / cfg.diffusion_steps + cfg.schedule_offset)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(alpha_bar(t)) x0 + sqrt(1 - alpha_bar(t)) noise; x0 [B, L, d], t [B]."""
        if noise is None:
            noise = torch.randn_like(x0)
        ab = self.alpha_bar(t).view(-1, *([1] * (x0.dim() - 1)))
        return (ab.sqrt() * x0.float() + (1.0 - ab).sqrt() * noise.float()).to(x0.dtype)

    # ------------------------------------------------------------------ parts

    def _rope(self, n: int) -> tuple[Tensor, Tensor]:
        return self.rope_cos[:n][None, :, None], self.rope_sin[:n][None, :, None]

    def encode(self, utterance_ids: Tensor, utterance_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encoder states E [B, S, d] and the bool key mask [B, 1, 1, S] for cross-attention."""
        B, S = utterance_ids.shape
        if utterance_mask is None:
            utterance_mask = torch.ones_like(utterance_ids)
        mask = _key_mask(utterance_mask)
        cos, sin = self._rope(S)
        x = self.embed(utterance_ids)
        for block in self.encoder:
            x = block(x, cos, sin, mask=mask)
        return self.encoder_norm(x), mask

    def noise_encoding(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Encoder output replaced by N(0, 1) noise (unconditional pretraining)."""
        return torch.randn(like.shape, device=like.device, dtype=like.dtype, generator=generator)

    def _code_mask_all(self, x: Tensor) -> Tensor:
        return torch.ones(1, 1, 1, x.shape[1], dtype=torch.bool, device=x.device)

    def denoise(self, x_t: Tensor, t: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """x0_hat [B, L, d] from x_t [B, L, d] at timesteps t [B], conditioned on the encoding."""
        L = x_t.shape[1]
        temb = self.time_mlp(timestep_features(t, self.config.d_model).to(x_t.dtype))
        x = x_t + self.code_pos.weight[:L][None] + temb[:, None]
        cos, sin = self._rope(L)
        self_mask = self._code_mask_all(x)
        for block in self.denoiser:
            x = block(x, cos, sin, self_mask, memory, memory_mask)
        return self.denoiser_out(self.denoiser_norm(x))

    def decode_hidden(self, x0_hat: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """D(x0_hat): the decoder's final (normed) hidden states [B, L, d]; logits = lm_head(D)."""
        L = x0_hat.shape[1]
        x = x0_hat + self.code_pos.weight[:L][None]
        cos, sin = self._rope(L)
        self_mask = self._code_mask_all(x)
        for block in self.decoder:
            x = block(x, cos, sin, self_mask, memory, memory_mask)
        return self.decoder_norm(x)

    def _memory(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        memory, memory_mask = self.encode(batch["utterance_ids"], batch.get("utterance_mask"))
        uncond = batch.get("unconditional")
        if uncond is None or uncond is False:
            return memory, memory_mask
        B = memory.shape[0]
        flag = torch.as_tensor(uncond, device=memory.device).bool().reshape(-1).expand(B)[:, None, None]
        memory = torch.where(flag, self.noise_encoding(memory), memory)
        memory_mask = memory_mask | flag[:, None]
        return memory, memory_mask

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The training loss (see `forward`), called through the module so that wrappers' hooks run
        (FSDP2 gathers the root's parameters in its pre-forward hook)."""
        return self(batch)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:  # type: ignore[override]
        """GENIE-style loss: mse(x0_hat, x0) + mse(D(x0_hat), x0) + nll(y | D(x0_hat)).

        batch: utterance_ids [B, S], utterance_mask [B, S], code_ids [B, code_len], code_mask [B, code_len],
        optional unconditional (bool or bool [B]). Any utterance/code pair works (e.g. hidden-span
        batches: utterance = the snippet with a span replaced by mask_id, code = the snippet).
        """
        code_ids = batch["code_ids"]
        B, L = code_ids.shape
        if L > self.config.code_len:
            raise SlmError(f"code of {L} tokens exceeds codefusion.code_len {self.config.code_len}")
        memory, memory_mask = self._memory(batch)
        x0 = self.embed(code_ids)
        t = torch.randint(0, self.config.diffusion_steps, (B,), device=code_ids.device)
        x_t = self.q_sample(x0, t, torch.randn_like(x0))
        x0_hat = self.denoise(x_t, t, memory, memory_mask)
        hidden = self.decode_hidden(x0_hat, memory, memory_mask)
        logits = self.lm_head(hidden)
        if self.config.loss_on_padding or batch.get("code_mask") is None:
            weight = torch.ones(B, L, device=code_ids.device)
        else:
            weight = batch["code_mask"].float()
        denom = weight.sum().clamp(min=1.0)
        mse = (((x0_hat.float() - x0.float()) ** 2).mean(-1) * weight).sum() / denom
        decoder_mse = (((hidden.float() - x0.float()) ** 2).mean(-1) * weight).sum() / denom
        nll_tok = F.cross_entropy(logits.float().flatten(0, 1), code_ids.flatten(), reduction="none").view(B, L)
        nll = (nll_tok * weight).sum() / denom
        return {"loss": mse + decoder_mse + nll, "mse": mse, "decoder_mse": decoder_mse, "nll": nll}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def nearest_embedding(self, x: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
        """Ids [...,] of the rows of L nearest (L2) to each vector x [..., d], computed in row chunks."""
        E = self.embed.weight.float()
        flat = x.reshape(-1, x.shape[-1]).float()
        e_sq = (E * E).sum(-1)
        rows = max(1, chunk_elems // E.shape[0])
        ids = [
            (e_sq[None] - 2.0 * part @ E.T).argmin(-1)  # ||x||^2 is constant per row
            for part in flat.split(rows)
        ]
        return torch.cat(ids).view(x.shape[:-1])

    def timestep_grid(self, steps: int) -> list[int]:
        """`steps` distinct timesteps from T-1 down to 0 (evenly strided; every step when steps = T)."""
        T = self.config.diffusion_steps
        if steps == 1:
            return [T - 1]
        grid = [round((T - 1) * (steps - 1 - i) / (steps - 1)) for i in range(steps)]
        return sorted(set(grid), reverse=True)

    @torch.no_grad()
    def sample(
        self,
        utterance_ids: Tensor,
        utterance_mask: Tensor | None = None,
        num_candidates: int = 1,
        steps: int | None = None,
        clamp: bool = False,
        generator: torch.Generator | None = None,
        return_intermediate_every: int | None = None,
    ) -> dict[str, Any]:
        """N = num_candidates noise draws per query, denoised in one batch by the DDIM (eta=0) rule on a
        strided grid of `steps` (default T) timesteps. Returns tokens [B, N, code_len] (argmax of the
        decoder at the final x0_hat), scores [B, N] (their mean log-probability under the model) and
        intermediate: [{"step", "t", "tokens" [B, N, code_len]}] every `return_intermediate_every` steps.
        `generator` must live on the model's device."""
        cfg = self.config
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise SlmError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
        steps = cfg.diffusion_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= cfg.diffusion_steps:
            raise SlmError(f"steps must be an integer in [1, {cfg.diffusion_steps}], got {steps!r}")
        if return_intermediate_every is not None and (
            not isinstance(return_intermediate_every, int) or return_intermediate_every < 1
        ):
            raise SlmError(f"return_intermediate_every must be an integer >= 1 or None, got {return_intermediate_every!r}")
        if utterance_ids.dim() != 2 or utterance_ids.shape[0] < 1 or utterance_ids.shape[1] < 1:
            raise SlmError(f"utterance_ids must be a non-empty [batch, length] tensor, got shape {tuple(utterance_ids.shape)}")
        if utterance_ids.shape[1] > cfg.max_utterance_len:
            raise SlmError(
                f"utterance of {utterance_ids.shape[1]} tokens exceeds codefusion.max_utterance_len {cfg.max_utterance_len}"
            )
        if utterance_mask is not None and utterance_mask.shape != utterance_ids.shape:
            raise SlmError(
                f"utterance_mask shape {tuple(utterance_mask.shape)} differs from utterance_ids {tuple(utterance_ids.shape)}"
            )
        if utterance_ids.numel() and (int(utterance_ids.min()) < 0 or int(utterance_ids.max()) >= cfg.vocab_size):
            raise SlmError(f"utterance_ids must be in [0, {cfg.vocab_size})")
        was_training = self.training
        self.eval()
        try:
            return self._sample(utterance_ids, utterance_mask, num_candidates, steps, clamp, generator,
                                return_intermediate_every)
        finally:
            self.train(was_training)

    def _sample(self, utterance_ids, utterance_mask, N, steps, clamp, generator, every) -> dict[str, Any]:
        cfg = self.config
        B = utterance_ids.shape[0]
        memory, memory_mask = self.encode(utterance_ids, utterance_mask)
        memory = memory.repeat_interleave(N, dim=0)
        memory_mask = memory_mask.repeat_interleave(N, dim=0)
        w = self.embed.weight
        x = torch.randn(B * N, cfg.code_len, cfg.d_model, device=w.device, dtype=w.dtype, generator=generator)
        grid = self.timestep_grid(steps)
        intermediate: list[dict[str, Any]] = []
        x0_hat = x
        for i, t_now in enumerate(grid):
            t = torch.full((B * N,), t_now, device=w.device, dtype=torch.long)
            x0_hat = self.denoise(x, t, memory, memory_mask)
            if clamp:
                x0_hat = self.embed(self.nearest_embedding(x0_hat))
            if every is not None and (i + 1) % every == 0 and i + 1 < len(grid):
                tokens, _ = self._read_out(x0_hat, memory, memory_mask)
                intermediate.append({"step": i + 1, "t": t_now, "tokens": tokens.view(B, N, -1)})
            if i + 1 < len(grid):
                ab = self.alpha_bar(t[:1]).item()
                ab_next = self.alpha_bar(torch.tensor([grid[i + 1]])).item()
                eps = (x.float() - math.sqrt(ab) * x0_hat.float()) / math.sqrt(1.0 - ab)
                x = (math.sqrt(ab_next) * x0_hat.float() + math.sqrt(1.0 - ab_next) * eps).to(w.dtype)
        tokens, scores = self._read_out(x0_hat, memory, memory_mask)
        if every is not None:
            intermediate.append({"step": len(grid), "t": grid[-1], "tokens": tokens.view(B, N, -1)})
        return {"tokens": tokens.view(B, N, -1), "scores": scores.view(B, N), "intermediate": intermediate}

    def _read_out(self, x0_hat: Tensor, memory: Tensor, memory_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Argmax tokens [B, L] of the decoder and their mean log-probability [B]."""
        logp = self.lm_head(self.decode_hidden(x0_hat, memory, memory_mask)).float().log_softmax(-1)
        best, tokens = logp.max(-1)
        return tokens, best.mean(-1)


def codefusion_forward_flops(cfg: CodeFusionConfig, utterance_len: int, training: bool = False) -> float:
    """Matmul FLOPs of one training-loss forward pass on one example (x3 with `training`): encoder over
    `utterance_len` tokens, denoiser and decoder over code_len tokens (self + cross attention, MLP),
    the denoiser's output projection and the LM head. Counted as 2 FLOPs per multiply-add, like
    torch.utils.flop_counter (which the tests compare it with)."""
    d, f, S, L, V = cfg.d_model, cfg.ffn_hidden, utterance_len, cfg.code_len, cfg.vocab_size
    mlp = 2 * (2 if cfg.mlp == "gelu" else 3) * d * f  # per token
    self_attn = lambda n: 2 * 4 * d * d + 2 * 2 * n * d  # noqa: E731  (per token: projections + scores)
    encoder = cfg.encoder_layers * S * (self_attn(S) + mlp)
    cross = L * (2 * 2 * d * d + 2 * 2 * S * d) + S * 2 * 2 * d * d  # q/o per code token, scores, k/v of memory
    block = L * (self_attn(L) + mlp) + cross
    forward = encoder + (cfg.denoiser_layers + cfg.decoder_layers) * block + L * (2 * d * d + 2 * d * V)
    forward += 2 * (d * 4 * d + 4 * d * d)  # timestep MLP
    return float(3 * forward if training else forward)


PAPER_PARAMS = 75_000_000  # what the CodeFusion paper reports for its model


def codefusion_summary(cfg: CodeFusionConfig, utterance_len: int | None = None) -> dict[str, Any]:
    """Exact parameter counts (meta device), per part, and FLOPs per example: `slm model info`."""
    with torch.device("meta"):
        model = CodeFusion(cfg)
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    utterance_len = utterance_len or cfg.max_utterance_len
    return {
        "kind": "codefusion",
        "params": model.num_params(),
        "paper_params": PAPER_PARAMS,
        "params_by_part": {
            "embedding L": count(model.embed),
            "encoder": count(model.encoder, model.encoder_norm),
            "denoiser": count(model.denoiser, model.denoiser_norm, model.denoiser_out, model.time_mlp, model.code_pos),
            "decoder": count(model.decoder, model.decoder_norm),
            "lm head": count(model.lm_head),
        },
        "utterance_len": utterance_len,
        "flops_per_example_forward": codefusion_forward_flops(cfg, utterance_len),
        "flops_per_example_training": codefusion_forward_flops(cfg, utterance_len, training=True),
        "config": cfg.to_dict(),
    }


def build_codefusion(
    cfg: CodeFusionConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> CodeFusion:
    """A CodeFusion with initialised weights (uninitialised on the meta device) on `device` in `dtype`."""
    with torch.device(device or "cpu"):
        model = CodeFusion(cfg)
    if torch.device(device or "cpu").type != "meta":
        model.init_weights()
    if dtype is not None:
        model.to(dtype=dtype)
    return model
