"""The decoder-only transformer (LLaMA and phi families) and its static KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from slmkit.models.config import ModelConfig
from slmkit.models.layers import Block, LayerCache, make_norm, rope_tables


class KVCache:
    """Preallocated keys/values for every layer: [batch, kv_heads, max_len, head_dim] each.

    Nothing grows per token: a decoding step writes one slot per layer in place.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.max_len = max_len or cfg.max_seq_len
        if self.max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {self.max_len} exceeds the model context {cfg.max_seq_len}")
        shape = (batch_size, cfg.kv_heads, self.max_len, cfg.head_dim)
        self.layers: list[LayerCache] = [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layers)
        ]

    @property
    def batch_size(self) -> int:
        return self.layers[0][0].shape[0]


class Decoder(nn.Module):
    """Token embedding -> n_layers blocks -> final norm -> LM head. Shapes come from `config`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config, device=self.embed.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False

    # ------------------------------------------------------------------ setup

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) weights, output projections scaled by 1/sqrt(2*n_layers), zero biases,
        unit norms; recomputes the rotary tables (needed after `to_empty` from the meta device).
        Deterministic given `seed` (or the global torch seed)."""
        if seed is not None:
            torch.manual_seed(seed)
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()  # norms
        for block in self.layers:
            for proj in block.output_projections():
                nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.config.n_layers))
        self.reset_rope()

    @torch.no_grad()
    def reset_rope(self) -> None:
        """Recompute the (non-persistent) rotary tables on the model's device and dtype."""
        cos, sin = rope_tables(self.config, device=self.rope_cos.device)
        self.rope_cos = cos.to(self.rope_cos.dtype)
        self.rope_sin = sin.to(self.rope_sin.dtype)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (torch.utils.checkpoint) to save memory."""
        self.activation_checkpointing = enabled

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once); non_embedding drops the token embedding.

        Layers that keep their weight outside parameters (quantized ones) report it as `weight_count`;
        a quantized copy of a tied output head is not counted again.
        """
        n = sum(p.numel() for p in self.parameters())
        n += sum(getattr(m, "weight_count", 0) for name, m in self.named_modules()
                 if not (name == "lm_head" and self.config.tie_embeddings))
        return n - self.embed.weight.numel() if non_embedding else n

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A static KV cache on the model's device and dtype."""
        w = self.embed.weight
        return KVCache(self.config, batch_size, max_len, device=w.device, dtype=w.dtype)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Tensor,
        *,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        attend: Tensor | None = None,
        last_only: bool = False,
        logits_at: Tensor | None = None,
        cache_positions: Tensor | None = None,
    ) -> Tensor:
        """Logits [B, T, V] (or [B, 1, V] with last_only) for input_ids [B, T].

        kv_cache/start_pos: the tokens sit at cache slots start_pos..start_pos+T-1 and attend to
        every earlier slot. attention_mask: [B, start_pos+T] (1 = real token, 0 = padding) over all
        slots so far, as in HF; it also sets positions (cumsum - 1) unless `positions` [B, T] is given.
        attend: an explicit bool [B, T, start_pos+T] "query may attend to key" pattern, with `positions`;
        e.g. several continuations packed after one shared context (eval.decoder_lm). Then T may
        exceed the context (without a cache): only the positions must fit it.
        logits_at: [B, P] indices along T; only those positions are projected ([B, P, V] logits).
        cache_positions: [B] for one new token per row (T == 1) with a cache: row b is at position
        cache_positions[b], writes that slot of its cache row and attends to its slots up to it; rows
        may be at different positions (continuous batching, generate/batching.py).
        """
        B, T = input_ids.shape
        if cache_positions is not None:
            return self._step_rows(input_ids, kv_cache, cache_positions)
        end = start_pos + T
        if attend is not None:
            if positions is None:
                raise ValueError("an explicit `attend` pattern needs `positions`")
            if kv_cache is None:
                end = int(positions.max()) + 1 if positions.numel() else 0
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds the model context {self.config.max_seq_len}")
        if kv_cache is not None and self.config.bidirectional:
            raise ValueError("a bidirectional (masked-diffusion) model has no KV-cache decoding; every step "
                             "re-reads the whole sequence")
        if positions is None and attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, start_pos:end]
        if positions is None:  # [1, T, 1, R]: broadcast over batch and heads
            cos = self.rope_cos[start_pos:end][None, :, None]
            sin = self.rope_sin[start_pos:end][None, :, None]
        else:  # [B, T, 1, R]
            cos = self.rope_cos[positions].unsqueeze(2)
            sin = self.rope_sin[positions].unsqueeze(2)
        if attend is not None:
            mask = attend[:, None]
        else:
            mask = _attention_mask(T, start_pos, attention_mask, input_ids.device, causal=not self.config.bidirectional)
        x = self.embed(input_ids)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        for i, layer in enumerate(self.layers):
            cache = kv_cache.layers[i] if kv_cache is not None else None
            if self.activation_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, None, start_pos, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, start_pos, mask)
        if last_only:
            x = x[:, -1:]
        elif logits_at is not None:
            x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))
        return self.lm_head(self.norm(x))

    def _step_rows(self, input_ids: Tensor, kv_cache: KVCache | None, cache_positions: Tensor) -> Tensor:
        """One token per row, each row at its own cache slot (see `forward`'s cache_positions)."""
        if kv_cache is None or input_ids.shape[1] != 1 or cache_positions.shape != (input_ids.shape[0],):
            raise ValueError("cache_positions needs a kv_cache, one token per row and one position per row")
        if self.config.bidirectional:
            raise ValueError("a bidirectional (masked-diffusion) model has no KV-cache decoding")
        slots = int(cache_positions.max()) + 1
        if slots > kv_cache.max_len:
            raise ValueError(f"position {slots - 1} is beyond the cache of {kv_cache.max_len} slots")
        positions = cache_positions[:, None]
        cos, sin = self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)
        mask = (torch.arange(slots, device=input_ids.device)[None, :] <= positions)[:, None, None]  # [B,1,1,S]
        x = self.embed(input_ids)
        for layer, cache in zip(self.layers, kv_cache.layers):
            x = layer(x, cos, sin, cache, cache_positions, mask)
        return self.lm_head(self.norm(x))

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean cross-entropy (fp32) over labels != -100; labels[t] is the target for position t."""
        logits = self(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        labels = batch["labels"]
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def _attention_mask(T: int, start_pos: int, pad_mask: Tensor | None, device: torch.device,
                    causal: bool = True) -> Tensor | None:
    """Bool [B|1, 1, T, start_pos+T] "may attend" mask, or None when SDPA's own path suffices
    (causal, or for a bidirectional model everything)."""
    if pad_mask is None and (start_pos == 0 or T == 1 or not causal):
        return None
    S = start_pos + T
    query_slot = torch.arange(start_pos, S, device=device)[:, None]
    if causal:
        allowed = torch.arange(S, device=device)[None, :] <= query_slot  # [T, S] causal
    else:
        allowed = torch.ones(T, S, dtype=torch.bool, device=device)
    if pad_mask is not None:
        allowed = allowed[None] & pad_mask[:, None, :S].bool()  # [B, T, S]
        allowed = allowed | (torch.arange(S, device=device)[None, :] == query_slot)  # pad rows see themselves
        return allowed[:, None]
    return allowed[None, None]


def build_model(
    cfg: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Decoder:
    """A Decoder with initialised weights (uninitialised on the meta device) on `device` in `dtype`."""
    with torch.device(device or "cpu"):
        model = Decoder(cfg)
    if torch.device(device or "cpu").type != "meta":
        model.init_weights()
    if dtype is not None:
        model.to(dtype=dtype)
    return model
