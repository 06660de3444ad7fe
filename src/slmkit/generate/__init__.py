"""Sampling from decoders: the KV-cache engine (`engine`) and the CPU packed-weight path (`cpu_packed`)."""

from slmkit.generate.engine import SamplingConfig, generate, generate_tokens, sample_next

__all__ = ["SamplingConfig", "generate", "generate_tokens", "sample_next"]
