"""`slm generate --num-candidates`: ranked natural-language-to-code candidates (CodeFusion, masked
diffusion or a decoder)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

MAX_CANDIDATES = 256  # k draws run as one batch: a bound keeps a typo from exhausting memory
# option -> the model kinds it applies to (check_model_folder's kinds)
KIND_OPTIONS = {
    "--steps": ("steps", ("codefusion", "masked-diffusion")),
    "--intermediate-every": ("intermediate_every", ("codefusion", "masked-diffusion")),
    "--clamp": ("clamp", ("codefusion",)),
    "--length": ("length", ("masked-diffusion",)),
    "--block-size": ("block_size", ("masked-diffusion",)),
}
KIND_NAMES = {"codefusion": "a CodeFusion", "masked-diffusion": "a masked-diffusion", "decoder": "a decoder"}


def check_kind_options(args: argparse.Namespace, models: list[tuple[Path, str]], sampling: bool = True) -> None:
    """Options >= 1 where they are counts, and each kind-specific option applying to at least one of the
    (folder, kind) models (a comparison applies it to the models of its kind): exit 2 otherwise. With
    `sampling`, also a masked model's --length/--steps/--block-size against its context."""
    kinds = {kind for _, kind in models}
    folder, kind = models[0]
    for flag, (attr, owners) in KIND_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is None or value is False:
            continue
        if value is not True and value < 1:
            raise SlmError(f"{flag} must be >= 1, got {value}")
        if not kinds & set(owners):
            names = " and ".join(KIND_NAMES[k].split(" ", 1)[1] for k in owners)
            where = f"{folder} is {KIND_NAMES[kind]} checkpoint" if len(models) == 1 else "no model given is one"
            raise SlmError(f"{flag} is a {names} option; {where}")
    if args.candidate_method == "beam" and "decoder" not in kinds:
        raise SlmError(f"--candidate-method beam is for decoders; {folder} is {KIND_NAMES[kind]} checkpoint (its "
                       "candidates are independent draws)")
    for folder, kind in models:
        if sampling and kind == "masked-diffusion":
            from slmkit.eval.masked_lm import masked_sampling_for

            masked_sampling_for(folder, args.length, args.steps, args.block_size, args.temperature)


def wants_candidates(args: argparse.Namespace, folder: Path) -> bool:
    """Candidate mode: a diffusion folder, or --num-candidates given; checks the options either way."""
    from slmkit.interop.folder import check_model_folder

    kind = check_model_folder(folder)
    if args.num_candidates is not None and not 1 <= args.num_candidates <= MAX_CANDIDATES:
        raise SlmError(f"--num-candidates must be in [1, {MAX_CANDIDATES}], got {args.num_candidates}")
    check_kind_options(args, [(folder, kind)])
    return kind != "decoder" or args.num_candidates is not None


def _load(folder: Path, device: str, args: argparse.Namespace) -> Any:
    from slmkit.interop.folder import check_model_folder

    kind = check_model_folder(folder)
    if kind == "codefusion":
        from slmkit.eval.codefusion_lm import load_codefusion_lm

        return load_codefusion_lm(folder, device=device, steps=args.steps, clamp=args.clamp, truncate=False)
    if kind == "masked-diffusion":
        from slmkit.eval.masked_lm import load_masked_lm

        return load_masked_lm(folder, device=device, steps=args.steps, length=args.length,
                              block_size=args.block_size, truncate=False)
    from slmkit.eval.decoder_lm import load_decoder_lm

    return load_decoder_lm(folder, device=device)


def _requests(args: argparse.Namespace, lm: Any) -> list:
    from slmkit.eval.lm import CandidateRequest
    from slmkit.objectives.ar_code import ar_prompt

    k = args.num_candidates or 1
    out = []
    for text in args.prompt:
        utterance = text.replace("\\n", "\n").strip()
        if not utterance:
            raise SlmError("--prompt is empty; give an utterance such as \"find all .txt files\"")
        out.append(CandidateRequest(prompt=ar_prompt(utterance), source=utterance, k=k, method=args.candidate_method,
                                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed, steps=args.steps, clamp=args.clamp,
                                    intermediate_every=args.intermediate_every, length=args.length,
                                    block_size=args.block_size))
    return out


def _top_trajectory(result: Any) -> list[tuple[int, int, str]]:
    """(step, t, text) of the draw that became the top candidate, at each recorded step."""
    if not result.intermediate:
        return []
    final = result.intermediate[-1]["texts"]
    draw = final.index(result.texts[0]) if result.texts and result.texts[0] in final else 0
    return [(s["step"], s["t"], s["texts"][draw]) for s in result.intermediate]


def run_candidates(args: argparse.Namespace, folder: Path, device: str) -> int:
    """Print (or --json) the ranked candidates of every --prompt."""
    t0 = time.perf_counter()
    lm = _load(folder, device, args)
    requests = _requests(args, lm)
    print(f"loaded {folder} ({lm.describe()['params']:,} params, {device}) "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    t0 = time.perf_counter()
    results = lm.candidates(requests)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps([{"prompt": r.source, "candidates": [{"text": t, "score": s, "count": c} for t, s, c in
                                                               zip(res.texts, res.scores, res.counts)],
                           "intermediate": [{"step": st, "t": t, "text": x} for st, t, x in _top_trajectory(res)]}
                          for r, res in zip(requests, results)]))
    else:
        for r, res in zip(requests, results):
            print(f"--- {r.source}")
            for rank, (text, score, count) in enumerate(zip(res.texts, res.scores, res.counts), 1):
                print(f"{rank}. [{score:.3f}{f' x{count}' if count > 1 else ''}] {text}")
            for step, t, text in _top_trajectory(res):
                print(f"   step {step} (t={t}): {text}")
    print(f"{len(requests)} prompt(s), {sum(r.k for r in requests)} draws in {seconds:.2f}s", file=sys.stderr)
    return 0
