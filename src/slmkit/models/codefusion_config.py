"""CodeFusion's configuration and presets (no torch import: recipes load it to check keys)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from slmkit.errors import SlmError, check_choice, did_you_mean
from slmkit.models.config import MLPS, NORMS, ModelConfig


@dataclass
class CodeFusionConfig:
    """Shape, diffusion schedule and special ids of a CodeFusion model."""

    vocab_size: int = 32100  # CodeT5's vocabulary
    d_model: int = 512
    encoder_layers: int = 6
    denoiser_layers: int = 10
    decoder_layers: int = 6
    n_heads: int = 8
    ffn_hidden: int = 2048
    max_utterance_len: int = 128
    code_len: int = 128  # fixed generated length (paper: 128)
    diffusion_steps: int = 1200  # T (paper: 1200)
    schedule_offset: float = 1e-4  # s in alpha_bar(t) = 1 - sqrt(t/T + s)
    dropout: float = 0.0
    pad_id: int = 0
    mask_id: int = 1  # the token that hides a span for hidden-span pretraining batches
    norm: str = "rmsnorm"  # T5-style
    mlp: str = "gelu"  # non-gated d -> ffn_hidden -> d (T5-small's FFN shape)
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    bias: bool = False
    init_std: float = 0.02
    embed_init_std: float = 1.0  # L on the noise's scale
    loss_on_padding: bool = True  # count pad positions of the code in the loss (learn the length)

    def validate(self) -> CodeFusionConfig:
        """Check the fields; SlmError naming the `codefusion.<field>` at fault."""
        check_choice(self.norm, NORMS, "codefusion key 'codefusion.norm'")
        check_choice(self.mlp, MLPS, "codefusion key 'codefusion.mlp'")
        for key in ("vocab_size", "d_model", "encoder_layers", "denoiser_layers", "decoder_layers", "n_heads",
                    "ffn_hidden", "max_utterance_len", "code_len", "diffusion_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmError(f"codefusion key 'codefusion.{key}' must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise SlmError(
                f"codefusion key 'codefusion.n_heads' ({self.n_heads}) must divide codefusion.d_model "
                f"({self.d_model}) into an even head width"
            )
        if not 0.0 < self.schedule_offset < 1.0:
            raise SlmError(f"codefusion key 'codefusion.schedule_offset' must be in (0, 1), got {self.schedule_offset}")
        if not 0.0 <= self.dropout < 1.0:
            raise SlmError(f"codefusion key 'codefusion.dropout' must be in [0, 1), got {self.dropout}")
        for key in ("pad_id", "mask_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                raise SlmError(
                    f"codefusion key 'codefusion.{key}' must be in [0, vocab_size={self.vocab_size}), got {getattr(self, key)}"
                )
        for key in ("norm_eps", "rope_theta", "init_std", "embed_init_std"):
            if getattr(self, key) <= 0:
                raise SlmError(f"codefusion key 'codefusion.{key}' must be > 0, got {getattr(self, key)}")
        return self

    def replace(self, **changes: Any) -> CodeFusionConfig:
        """A validated copy with some fields changed (unknown names raise SlmError)."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise SlmError(f"unknown codefusion key {key!r}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def block_config(self) -> ModelConfig:
        """The ModelConfig that the shared layers (Attention, MLP, norms, Block) are built from."""
        return ModelConfig(
            family="llama", vocab_size=self.vocab_size, d_model=self.d_model, n_layers=1, n_heads=self.n_heads,
            d_ff=self.ffn_hidden, max_seq_len=max(self.max_utterance_len, self.code_len), norm=self.norm,
            norm_eps=self.norm_eps, mlp=self.mlp, parallel_block=False, rope_theta=self.rope_theta,
            bias=self.bias, init_std=self.init_std, dropout=self.dropout,
        ).validate()


CODEFUSION_PRESETS: dict[str, CodeFusionConfig] = {
    # Trains on a CPU in minutes.
    "codefusion-tiny": CodeFusionConfig(
        vocab_size=8192, d_model=128, encoder_layers=2, denoiser_layers=2, decoder_layers=2, n_heads=4,
        ffn_hidden=512, max_utterance_len=128, code_len=64, diffusion_steps=200,
    ),
    # Paper shape: CodeT5-small encoder (6 x d512, 8 heads, ffn 2048), denoiser 10, decoder 6, vocab 32100.
    "codefusion-75m": CodeFusionConfig(),
}


def get_codefusion_preset(name: str) -> CodeFusionConfig:
    if name not in CODEFUSION_PRESETS:
        raise SlmError(f"unknown codefusion preset {name!r}{did_you_mean(name, CODEFUSION_PRESETS)}; "
                       f"presets: {', '.join(CODEFUSION_PRESETS)}")
    return dataclasses.replace(CODEFUSION_PRESETS[name]).validate()


def is_codefusion_preset(name: str) -> bool:
    """Whether a `model.preset` name is a CodeFusion preset (else a decoder preset)."""
    return name in CODEFUSION_PRESETS
