"""`slm eval TARGET [--tasks LIST ...]`: benchmark tasks on any model folder, or a run's eval stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmkit.eval.tasks import CandidateSettings, GenerationSettings

BACKENDS = ("native", "lm-eval")
CODEFUSION_PREFIX = "codefusion-"  # the natural language to code tasks (candidates)


def register(subparsers: argparse._SubParsersAction) -> None:
    from slmkit.eval.lm import CANDIDATE_METHODS
    from slmkit.eval.tasks.generation import PROMPT_FORMATS

    parser = subparsers.add_parser(
        "eval",
        help="score a model on benchmark tasks (arc, mmlu, gsm8k, humaneval, ppl:<source>, ...) or run a run's eval stage",
        description="With --tasks: score TARGET (a checkpoint, an HF model folder such as one from `slm import`, "
        "or a run folder = its latest checkpoint) on benchmark tasks, offline, from the shared datasets. Without "
        "--tasks, TARGET must be a run folder or one of its checkpoints: run the recipe's eval stage (eval.tasks, "
        "default ppl:val = validation loss and bits per byte beside a unigram baseline) into RUN/eval/. "
        "Tasks: arc_easy, arc_challenge, piqa, winogrande, boolq, openbookqa, siqa, hellaswag (--hellaswag FILE), "
        "mmlu (or mmlu_<subject>), gsm8k, humaneval, mbpp, ppl:<source type> (e.g. ppl:python-docs), ppl:val, "
        "codefusion-bash, codefusion-python, codefusion-cf (natural language to code, top-1/3/5 over ranked "
        "candidates; TARGET may be a CodeFusion or masked-diffusion folder). Several TARGETs with --compare: "
        "one table, the first TARGET's results in --out.",
    )
    parser.add_argument("target", metavar="TARGET", help="checkpoint / HF model folder, or a run folder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE|TARGET",
                        help="run's eval stage: override eval.* keys of the run's recipe.yaml; with --tasks and "
                        "--compare: more models to score in the same table")
    parser.add_argument("--tasks", metavar="LIST", help="comma-separated task names, e.g. arc_easy,piqa,mmlu")
    parser.add_argument("--limit", type=int, metavar="N", help="first N documents per task (mmlu: per subject)")
    parser.add_argument("--num-fewshot", type=int, metavar="K", help="examples in each prompt (default: each task's)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="rows per forward pass (default 16)")
    parser.add_argument("--out", metavar="FILE", help="write results JSON here, plus FILE.samples.jsonl and FILE.md")
    parser.add_argument("--force", action="store_true", help="overwrite existing --out files")
    parser.add_argument("--compare", nargs="*", default=None, metavar="OTHER",
                        help="results JSON files or other model folders to show side by side (more TARGETs given "
                        "before --tasks count too)")
    parser.add_argument("--backend", choices=BACKENDS, default="native",
                        help="native harness, or lm-evaluation-harness's evaluator over our model (same local data)")
    parser.add_argument("--data-root", metavar="DIR", help="folder of the shared datasets (default: ../shared/datasets "
                        "or $SLMKIT_DATASETS)")
    parser.add_argument("--hellaswag", metavar="FILE", help="upstream hellaswag_val.jsonl (not shipped)")
    parser.add_argument("--samples", type=int, default=1, metavar="N", help="code tasks: programs per problem (pass@k)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="generation tasks: 0 = greedy (default); codefusion-* tasks: decoder sampling "
                        "(default 0.8)")
    parser.add_argument("--top-p", type=float, default=None, help="generation tasks: nucleus sampling")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="generation tasks: budget (default: per task; codefusion-* tasks: 128)")
    parser.add_argument("--num-candidates", type=int, metavar="N",
                        help="codefusion-* tasks: draws per utterance, ranked into top-1/3/5 (default 5)")
    parser.add_argument("--candidate-method", choices=CANDIDATE_METHODS, default="sample",
                        help="codefusion-* tasks on a decoder: k samples ranked by log-probability, or beam search")
    parser.add_argument("--steps", type=int, metavar="S",
                        help="diffusion models: sampling steps (CodeFusion: default its T; masked diffusion: 1..length, "
                        "default the length)")
    parser.add_argument("--steps-sweep", metavar="LIST",
                        help="diffusion models: also score the codefusion-* tasks at each of these step counts "
                        "(e.g. 4,8,16,32); the table gains top-1/3/5 per step count and, with --out, "
                        "FILE.sweep.png plots top-5 against steps, one panel per task")
    parser.add_argument("--clamp", action="store_true",
                        help="CodeFusion: clamp each step's x0 to the nearest embedding")
    parser.add_argument("--length", type=int, metavar="L",
                        help="masked diffusion: answer positions to fill (default: the length it was trained on)")
    parser.add_argument("--block-size", type=int, metavar="B",
                        help="masked diffusion: semi-autoregressive blocks of B positions (must divide the length)")
    parser.add_argument("--intermediate-every", type=int, metavar="K",
                        help="diffusion models: decode every K steps; with --out, FILE.steps.png shows the edit "
                        "distance to the final output against step")
    parser.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="lm-eval",
                        help="lm-eval's prompts, or phi-1.5's (mbpp as signature + docstring, gsm8k as executed code)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast (default fp32)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or lines")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.tasks is None:
        return _run_stage(args)
    from slmkit.eval.results import markdown_table, summary_lines, write_results

    results, samples, others = evaluate_target(args)
    if args.out:
        paths = write_results(Path(args.out), results, samples, others)
        print(f"wrote {paths['results']}, " + ", ".join(p.name for k, p in paths.items() if k != "results"),
              file=sys.stderr)
    if args.json:
        print(json.dumps(results if not others else {"results": results, "compare": others}))
    else:
        if not others:
            print("\n".join(summary_lines(results)))
        print(markdown_table([results, *others]))
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from slmkit.errors import SlmError

    for flag, value, low in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                             ("--samples", args.samples, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--num-candidates", args.num_candidates, 1), ("--steps", args.steps, 1),
                             ("--intermediate-every", args.intermediate_every, 1), ("--length", args.length, 1),
                             ("--block-size", args.block_size, 1)):
        if value is not None and value < low:
            raise SlmError(f"{flag} must be >= {low}, got {value}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise SlmError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.overrides:
        raise SlmError(f"key=value overrides ({args.overrides[0]}) apply to a run's eval stage, not to --tasks; "
                       "use the options (--limit, --num-fewshot, ...)")


def evaluate_target(args: argparse.Namespace) -> tuple[dict, list[dict], list[dict]]:
    """(results, samples, results of --compare models) for `slm eval TARGET --tasks ...`."""
    import os

    from slmkit.data.paths import datasets_dir
    from slmkit.eval.results import check_writable, load_results
    from slmkit.eval.tasks import get_tasks, parse_task_list
    from slmkit.eval.tasks.choice import HELLASWAG_ENV
    from slmkit.generate.sampling import SamplingConfig

    targets = _targets(args)
    _check_numbers(args)
    names = parse_task_list(args.tasks)
    SamplingConfig(_temperature(args), None, args.top_p).validate()
    get_tasks(names, _generation_settings(args), args.limit)  # unknown task: exit 2 before loading anything
    folder = model_folder(args.target)
    compare = [Path(p) for p in targets]
    folders = [folder, *(model_folder(str(other)) for other in compare if other.suffix != ".json")]
    _check_candidate_options(args, folders)
    args.sweep = _sweep(args, names, folders)
    _check_backend(args, names, folders)
    if args.out:
        check_writable(Path(args.out), args.force)
    if args.hellaswag:
        os.environ[HELLASWAG_ENV] = str(Path(args.hellaswag).resolve())
    root = Path(args.data_root) if args.data_root else datasets_dir()
    results, samples = _evaluate_folder(args, folder, names, root)
    others = []
    for other in compare:
        if other.suffix == ".json":
            others.append(load_results(other))
        else:
            others.append(_evaluate_folder(args, model_folder(str(other)), names, root)[0])
    return results, samples, others


def _targets(args: argparse.Namespace) -> list[str]:
    """The models compared with TARGET: --compare's, then further positional TARGETs (`slm eval A B C
    --tasks ... --compare`)."""
    from slmkit.errors import SlmError

    extra = list(args.overrides)
    args.overrides = []
    if extra and args.compare is None:
        raise SlmError(f"{extra[0]}: several TARGETs need --compare (one table for all); key=value overrides "
                       "apply to a run's eval stage, not to --tasks")
    return [*extra, *(args.compare or [])]


def _sweep(args: argparse.Namespace, names: list[str], folders: list[Path]) -> list[int]:
    """The --steps-sweep step counts, checked against every diffusion model given (exit 2 early)."""
    from slmkit.errors import SlmError

    if not args.steps_sweep:
        return []
    try:
        steps = sorted({int(v) for v in args.steps_sweep.split(",") if v.strip()})
    except ValueError:
        raise SlmError(f"--steps-sweep must be a comma-separated list of integers, got {args.steps_sweep!r}") from None
    if not steps or steps[0] < 1:
        raise SlmError(f"--steps-sweep needs step counts >= 1, got {args.steps_sweep!r}")
    if not any(n.startswith(CODEFUSION_PREFIX) for n in names):
        raise SlmError("--steps-sweep applies to the codefusion-* tasks; add one to --tasks")
    for folder in folders:
        for value in steps:
            _check_steps(args, folder, value)
    return steps


def _temperature(args: argparse.Namespace) -> float:
    """Generation tasks' temperature: greedy unless --temperature."""
    return 0.0 if args.temperature is None else args.temperature


def _generation_settings(args: argparse.Namespace) -> GenerationSettings:
    from slmkit.eval.tasks import GenerationSettings

    return GenerationSettings(samples=args.samples, temperature=_temperature(args), top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, prompt_format=args.prompt_format)


def candidate_settings(args: argparse.Namespace, kind: str) -> CandidateSettings:
    """How the codefusion-* tasks draw candidates from a model of `kind`: a CodeFusion model samples
    noise with the diffusion options, a decoder uses --candidate-method (and the --compare models of
    the other kind ignore the options that are not theirs)."""
    from slmkit.eval.tasks import CandidateSettings

    diffusion = kind in ("codefusion", "masked-diffusion")
    masked = kind == "masked-diffusion"
    return CandidateSettings(
        num_candidates=args.num_candidates or CandidateSettings.num_candidates,
        method="sample" if diffusion else args.candidate_method,
        max_new_tokens=args.max_new_tokens or CandidateSettings.max_new_tokens,
        temperature=CandidateSettings.temperature if args.temperature is None else args.temperature,
        top_p=args.top_p, steps=args.steps if diffusion else None, clamp=args.clamp and kind == "codefusion",
        intermediate_every=args.intermediate_every if diffusion else None,
        length=args.length if masked else None, block_size=args.block_size if masked else None)


def _check_candidate_options(args: argparse.Namespace, folders: list[Path]) -> None:
    """--num-candidates etc. >= 1; a diffusion option when no model given is of its kind, beam without a
    decoder, --steps above a CodeFusion model's T or a masked model's length: exit 2 before anything runs.
    (In a comparison each option applies to the models of its kind; the others ignore it.)"""
    from slmkit.commands.candidates import MAX_CANDIDATES, check_kind_options
    from slmkit.errors import SlmError
    from slmkit.interop.folder import check_model_folder

    if args.num_candidates is not None and not 1 <= args.num_candidates <= MAX_CANDIDATES:
        raise SlmError(f"--num-candidates must be in [1, {MAX_CANDIDATES}], got {args.num_candidates}")
    check_kind_options(args, [(f, check_model_folder(f)) for f in folders], sampling=False)
    for folder in folders:
        _check_steps(args, folder)  # the sampling options against each diffusion model


def _check_steps(args: argparse.Namespace, folder: Path, steps: int | None = None) -> None:
    """The diffusion options fit `folder` (--compare models of another kind ignore them)."""
    from slmkit.errors import SlmError
    from slmkit.interop.folder import check_model_folder, read_codefusion_config

    steps = steps or args.steps
    kind = check_model_folder(folder)
    if kind == "masked-diffusion":
        from slmkit.eval.masked_lm import masked_sampling_for

        masked_sampling_for(folder, args.length, steps, args.block_size, args.temperature)
    if steps is None or kind != "codefusion":
        return
    T = read_codefusion_config(folder).diffusion_steps
    if steps > T:
        raise SlmError(f"--steps {steps} exceeds T={T}, the diffusion steps of {folder}; use 1..{T}")


def _check_backend(args: argparse.Namespace, names: list[str], folders: list[Path]) -> None:
    from slmkit.errors import SlmError
    from slmkit.interop.folder import check_model_folder

    if args.backend != "lm-eval":
        return
    for folder in folders:
        if check_model_folder(folder) != "decoder":
            raise SlmError(f"{folder} is a diffusion checkpoint; --backend lm-eval runs (causal) decoders only")
    cf = next((n for n in names if n.startswith(CODEFUSION_PREFIX)), None)
    if cf:
        raise SlmError(f"task {cf} runs on the native backend only (drop --backend lm-eval)")


def model_folder(target: str) -> Path:
    """The model folder TARGET names (a run folder means its latest checkpoint); exit 2 when it is none."""
    from slmkit.errors import SlmError
    from slmkit.pipeline.rundir import MODEL_CONFIG_FILE, resolve_checkpoint

    path = Path(target)
    if not path.exists():
        raise SlmError(f"{target}: no such file or folder")
    try:
        folder = resolve_checkpoint(path)
    except SlmError:
        raise SlmError(f"{target}: not a model folder (no {MODEL_CONFIG_FILE}) and not a run folder with a "
                       "checkpoint; give a checkpoint, an HF folder (e.g. from `slm import`) or a run folder") from None
    from slmkit.interop.folder import check_model_folder

    check_model_folder(folder)  # an unsupported or broken config.json: one line, exit 2
    return folder


def _evaluate_folder(args: argparse.Namespace, folder: Path, names: list[str], root: Path) -> tuple[dict, list[dict]]:
    from dataclasses import asdict

    from slmkit.eval.harness import train_flops
    from slmkit.eval.results import results_entry
    from slmkit.eval.tasks import RUN_VALIDATION, get_tasks
    from slmkit.interop.folder import check_model_folder

    kind = check_model_folder(folder)
    candidates = candidate_settings(args, kind)
    tasks = get_tasks(names, _generation_settings(args), args.limit, candidates)
    if args.backend == "lm-eval":
        import os

        if not args.progress:  # lm-eval and datasets draw their own bars
            os.environ["TQDM_DISABLE"] = "1"
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        from slmkit.eval.lm_eval_bridge import run_lm_eval

        results = run_lm_eval(folder, [t.name for t in tasks], limit=args.limit, num_fewshot=args.num_fewshot,
                              batch_size=args.batch_size, device=args.device, backend_model="slmkit", data_root=root)
        samples = results.pop("samples")
    else:
        from slmkit.eval.harness import EvalOptions, evaluate, load_lm

        lm = load_lm(folder, device=args.device, batch_size=args.batch_size, precision=args.precision,
                     name=_display_name(folder) + ("" if candidates.method == "sample" else f" ({candidates.method})"),
                     steps=candidates.steps, clamp=candidates.clamp, length=candidates.length,
                     block_size=candidates.block_size)
        options = EvalOptions(root, limit=args.limit, num_fewshot=args.num_fewshot, progress=args.progress)
        results, samples = evaluate(lm, tasks, options)
        if getattr(args, "sweep", None) and kind != "decoder":
            results["steps_sweep"] = _steps_sweep(args, lm, candidates, names, options)
    if RUN_VALIDATION in names:
        from slmkit.eval.perplexity import run_validation_entry

        results["tasks"][RUN_VALIDATION] = run_validation_entry(folder, progress=args.progress)
    results["model"].update(path=str(folder), train_flops=train_flops(folder))
    results["settings"].update(backend=args.backend, prompt_format=args.prompt_format, samples=args.samples,
                               temperature=_temperature(args), batch_size=args.batch_size)
    if any(name.startswith(CODEFUSION_PREFIX) for name in names):
        results["settings"]["candidates"] = asdict(candidates)
    return results_entry(results), samples


def _steps_sweep(args: argparse.Namespace, lm: Any, candidates: CandidateSettings, names: list[str],
                 options: Any) -> dict[str, list[dict]]:
    """{task: [{"steps", "top1", "top3", "top5", "seconds_per_query"}, ...]} over --steps-sweep."""
    import dataclasses

    from slmkit.eval.harness import evaluate
    from slmkit.eval.tasks import get_tasks

    code_tasks = [n for n in names if n.startswith(CODEFUSION_PREFIX)]
    sweep: dict[str, list[dict]] = {n: [] for n in code_tasks}
    for steps in args.sweep:
        settings = dataclasses.replace(candidates, steps=steps, intermediate_every=None)  # each request's steps
        print(f"{lm.name}: --steps-sweep {steps}", file=sys.stderr)
        results, _ = evaluate(lm, get_tasks(code_tasks, _generation_settings(args), args.limit, settings), options)
        for name in code_tasks:
            entry = results["tasks"][name]
            sweep[name].append({"steps": steps, **{k: entry["metrics"][k]["value"] for k in ("top1", "top3", "top5")},
                                "seconds_per_query": entry.get("seconds_per_query")})
    return sweep


def _display_name(folder: Path) -> str:
    """'run/step-000400' for a run's checkpoint, else the folder name."""
    from slmkit.pipeline.rundir import run_of_checkpoint

    run = run_of_checkpoint(folder)
    return f"{run.root.name}/{folder.name}" if run is not None else folder.name


def _run_stage(args: argparse.Namespace) -> int:
    """The run's eval stage (recipe's eval section) on the checkpoint TARGET names."""
    from slmkit.commands.common import run_and_checkpoint
    from slmkit.errors import SlmError
    from slmkit.eval.perplexity import format_table
    from slmkit.eval.results import markdown_table
    from slmkit.eval.stage import run_eval_stage

    given = [flag for flag, value in (("--limit", args.limit), ("--num-fewshot", args.num_fewshot),
                                      ("--out", args.out), ("--compare", args.compare),
                                      ("--num-candidates", args.num_candidates is not None),
                                      ("--candidate-method", args.candidate_method != "sample"),
                                      ("--steps", args.steps), ("--clamp", args.clamp),
                                      ("--steps-sweep", args.steps_sweep), ("--length", args.length),
                                      ("--block-size", args.block_size),
                                      ("--intermediate-every", args.intermediate_every)) if value]
    if given:
        raise SlmError(f"{given[0]} needs --tasks (without --tasks, slm eval runs the run's eval stage; "
                       "set eval.* keys instead)")
    with run_and_checkpoint(args, "eval") as (recipe, run, ckpt):
        result = run_eval_stage(recipe, run, ckpt=ckpt, progress=args.progress)
    val, tasks = result["val"], result["tasks"]
    if args.json:
        print(json.dumps(val if tasks is None else result))
        return 0
    if val is not None:
        print(f"{val['checkpoint']} (step {val['step']})\n{format_table(val)}")
    if tasks is not None:
        print(markdown_table([tasks]))
    return 0
