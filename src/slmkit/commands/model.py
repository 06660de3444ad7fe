"""`slm model info PRESET|FOLDER [KEY=VALUE ...] [--seq-len N] [--json]`: size, FLOPs and memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slmkit.commands.common import human_bytes
from slmkit.errors import SlmError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model presets and checkpoints")
    verbs = parser.add_subparsers(dest="model_command", metavar="ACTION")
    info = verbs.add_parser(
        "info",
        help="parameters, FLOPs per token and training memory of a preset or HF folder",
        description="Parameter count (built on the meta device, no memory), FLOPs per token "
        "(forward, and training = 3x forward: 6N + attention), and memory of weights/grads/Adam states.",
    )
    info.add_argument("model", metavar="PRESET|FOLDER",
                      help="a preset name (e.g. tiny-llama, llama-7b, codefusion-75m) or a model folder")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config fields, e.g. n_layers=4")
    info.add_argument("--seq-len", type=int, default=None, help="context for the attention FLOPs (default: max_seq_len)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.set_defaults(handler=run_info)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def _config_from_arg(name: str, overrides: list[str]) -> Any:
    import yaml

    from slmkit.models.presets import get_preset

    if Path(name).is_dir():
        from slmkit.interop.hf import read_hf_config

        cfg = read_hf_config(name)
    else:
        cfg = get_preset(name)
    changes: dict[str, Any] = {}
    for text in overrides:
        if "=" not in text:
            raise SlmError(f"override {text!r} must look like key=value (e.g. n_layers=4)")
        key, raw = text.split("=", 1)
        key = key.strip().removeprefix("model.")
        changes[key] = yaml.safe_load(raw) if raw.strip() else None
    from slmkit.config import model_overrides

    return cfg.replace(**model_overrides(changes))


def _codefusion_config(name: str, overrides: list[str]) -> Any:
    """The CodeFusionConfig a preset or folder names (None when it is a decoder)."""
    from slmkit.models.codefusion_config import get_codefusion_preset, is_codefusion_preset

    if Path(name).is_dir():
        from slmkit.interop.folder import is_codefusion_folder, read_codefusion_config

        cfg = read_codefusion_config(name) if is_codefusion_folder(name) else None
    else:
        cfg = get_codefusion_preset(name) if is_codefusion_preset(name) else None
    if cfg is None:
        return None
    changes = dict(parse_assignment(text) for text in overrides)
    return cfg.replace(**changes)


def parse_assignment(text: str) -> tuple[str, Any]:
    """'key=value' -> (key without a 'model.' prefix, YAML value)."""
    import yaml

    if "=" not in text:
        raise SlmError(f"override {text!r} must look like key=value (e.g. n_layers=4)")
    key, raw = text.split("=", 1)
    return key.strip().removeprefix("model."), yaml.safe_load(raw) if raw.strip() else None


def run_info(args: argparse.Namespace) -> int:
    """Handler of `slm model info`."""
    from slmkit.models.accounting import model_summary

    if args.seq_len is not None and args.seq_len < 1:
        raise SlmError(f"--seq-len must be >= 1, got {args.seq_len}")
    cf = _codefusion_config(args.model, args.overrides)
    if cf is not None:
        from slmkit.models.codefusion import codefusion_summary

        summary = codefusion_summary(cf, args.seq_len)
        print(json.dumps({"model": args.model, **summary}) if args.json else format_codefusion(args.model, summary))
        return 0
    cfg = _config_from_arg(args.model, args.overrides)
    summary = model_summary(cfg, args.seq_len)
    if args.json:
        print(json.dumps({"model": args.model, **summary}))
    else:
        print(format_summary(args.model, summary))
    return 0


def format_codefusion(name: str, s: dict[str, Any]) -> str:
    """A readable table of a codefusion_summary() result."""
    c = s["config"]
    parts = ", ".join(f"{k} {v:,}" for k, v in s["params_by_part"].items())
    return "\n".join([
        f"model {name}  (CodeFusion: encoder + denoiser + decoder, {c['norm']}, {c['mlp']})",
        f"  shape              d_model {c['d_model']}, encoder {c['encoder_layers']}, denoiser {c['denoiser_layers']}, "
        f"decoder {c['decoder_layers']} layers, heads {c['n_heads']}, ffn {c['ffn_hidden']}, vocab {c['vocab_size']}",
        f"  sequence           utterance <= {c['max_utterance_len']} tokens, code {c['code_len']} tokens, "
        f"T = {c['diffusion_steps']} diffusion steps",
        f"  parameters         {s['params']:,}  ({_human(s['params'])}; the CodeFusion paper reports "
        f"{_human(s['paper_params'])} for its model)",
        f"  by part            {parts}",
        f"  FLOPs/example fwd  {_human(s['flops_per_example_forward'], 'FLOP')}  (utterance {s['utterance_len']} tokens,"
        f" one denoiser + decoder pass)",
        f"  FLOPs/example train {_human(s['flops_per_example_training'], 'FLOP')}  (3x forward)",
        f"  memory (fp32)      weights {human_bytes(4 * s['params'])}, "
        f"training {human_bytes(16 * s['params'])} (weights, grads, Adam)",
    ])


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()




def format_summary(name: str, s: dict[str, Any]) -> str:
    """A readable table of a model_summary() result."""
    c = s["config"]
    lines = [
        f"model {name}  ({c['family']} family: {c['norm']}, {c['mlp']}, "
        f"{'parallel' if c['parallel_block'] else 'sequential'} block"
        f"{', bidirectional: a masked-diffusion denoiser' if c.get('bidirectional') else ''})",
        f"  shape              d_model {c['d_model']}, layers {c['n_layers']}, heads {c['n_heads']} "
        f"(kv {c['kv_heads']}, head_dim {c['head_dim']}), ffn {c['ffn_hidden']}, vocab {c['vocab_size']}, "
        f"context {c['max_seq_len']}",
        f"  parameters         {s['params']:,}  ({_human(s['params'])})",
        f"  non-embedding      {s['params_non_embedding']:,}",
        f"  FLOPs/token fwd    {_human(s['flops_per_token_forward'], 'FLOP')}  (seq_len {s['seq_len']})",
        f"  FLOPs/token train  {_human(s['flops_per_token_training'], 'FLOP')}  (6N + 12*L*d*T)",
        "  memory             weights      grads        Adam states  master       total (training)",
    ]
    for dtype in ("fp32", "bf16"):
        m = s["memory"][dtype]
        cols = [human_bytes(m[k]) for k in ("weights", "grads", "adam_states", "master_weights", "total_training")]
        lines.append(f"    {dtype:<16} " + " ".join(f"{col:<12}" for col in cols))
    if not c.get("bidirectional"):  # a masked-diffusion model re-reads the sequence each step: no KV cache
        lines.append(f"  KV cache/token     fp32 {human_bytes(s['memory']['fp32']['kv_cache_per_token'])}, "
                     f"bf16 {human_bytes(s['memory']['bf16']['kv_cache_per_token'])}")
    return "\n".join(lines)
