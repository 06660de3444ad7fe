"""`slm eval TARGET [--tasks LIST ...]`: benchmark tasks on any model folder, or a run's eval stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
        "candidates; TARGET may be a CodeFusion folder).",
    )
    parser.add_argument("target", metavar="TARGET", help="checkpoint / HF model folder, or a run folder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="run's eval stage only: override eval.* keys of the run's recipe.yaml")
    parser.add_argument("--tasks", metavar="LIST", help="comma-separated task names, e.g. arc_easy,piqa,mmlu")
    parser.add_argument("--limit", type=int, metavar="N", help="first N documents per task (mmlu: per subject)")
    parser.add_argument("--num-fewshot", type=int, metavar="K", help="examples in each prompt (default: each task's)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="rows per forward pass (default 16)")
    parser.add_argument("--out", metavar="FILE", help="write results JSON here, plus FILE.samples.jsonl and FILE.md")
    parser.add_argument("--force", action="store_true", help="overwrite existing --out files")
    parser.add_argument("--compare", nargs="+", default=[], metavar="OTHER",
                        help="results JSON files or other model folders to show side by side")
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
    parser.add_argument("--steps", type=int, metavar="S", help="CodeFusion: sampling steps (default: the model's T)")
    parser.add_argument("--clamp", action="store_true",
                        help="CodeFusion: clamp each step's x0 to the nearest embedding")
    parser.add_argument("--intermediate-every", type=int, metavar="K",
                        help="CodeFusion: decode every K steps; with --out, FILE.steps.png shows the edit distance "
                        "to the final output against step")
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
                             ("--intermediate-every", args.intermediate_every, 1)):
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

    _check_numbers(args)
    names = parse_task_list(args.tasks)
    SamplingConfig(_temperature(args), None, args.top_p).validate()
    get_tasks(names, _generation_settings(args), args.limit)  # unknown task: exit 2 before loading anything
    folder = model_folder(args.target)
    _check_candidate_options(args, folder)
    compare = [Path(p) for p in args.compare]
    folders = [folder, *(model_folder(str(other)) for other in compare if other.suffix != ".json")]
    for other in folders[1:]:
        _check_steps(args, other)
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

    diffusion = kind == "codefusion"
    return CandidateSettings(
        num_candidates=args.num_candidates or CandidateSettings.num_candidates,
        method="sample" if diffusion else args.candidate_method,
        max_new_tokens=args.max_new_tokens or CandidateSettings.max_new_tokens,
        temperature=CandidateSettings.temperature if args.temperature is None else args.temperature,
        top_p=args.top_p, steps=args.steps if diffusion else None, clamp=args.clamp and diffusion,
        intermediate_every=args.intermediate_every if diffusion else None)


def _check_candidate_options(args: argparse.Namespace, folder: Path) -> None:
    """--num-candidates etc. >= 1; CodeFusion options on a decoder TARGET, beam on a CodeFusion one, or
    --steps above the model's T: exit 2 before anything runs."""
    from slmkit.commands.candidates import wants_candidates

    wants_candidates(args, folder)
    _check_steps(args, folder)


def _check_steps(args: argparse.Namespace, folder: Path) -> None:
    from slmkit.errors import SlmError
    from slmkit.interop.folder import is_codefusion_folder, read_codefusion_config

    if args.steps is None or not is_codefusion_folder(folder):
        return
    T = read_codefusion_config(folder).diffusion_steps
    if args.steps > T:
        raise SlmError(f"--steps {args.steps} exceeds T={T}, the diffusion steps of {folder}; use 1..{T}")


def _check_backend(args: argparse.Namespace, names: list[str], folders: list[Path]) -> None:
    from slmkit.errors import SlmError
    from slmkit.interop.folder import is_codefusion_folder

    if args.backend != "lm-eval":
        return
    for folder in folders:
        if is_codefusion_folder(folder):
            raise SlmError(f"{folder} is a CodeFusion checkpoint; --backend lm-eval runs decoders only")
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

    candidates = candidate_settings(args, check_model_folder(folder))
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
                     steps=candidates.steps, clamp=candidates.clamp)
        options = EvalOptions(root, limit=args.limit, num_fewshot=args.num_fewshot, progress=args.progress)
        results, samples = evaluate(lm, tasks, options)
    if RUN_VALIDATION in names:
        from slmkit.eval.perplexity import run_validation_entry

        results["tasks"][RUN_VALIDATION] = run_validation_entry(folder, progress=args.progress)
    results["model"].update(path=str(folder), train_flops=train_flops(folder))
    results["settings"].update(backend=args.backend, prompt_format=args.prompt_format, samples=args.samples,
                               temperature=_temperature(args), batch_size=args.batch_size)
    if any(name.startswith(CODEFUSION_PREFIX) for name in names):
        results["settings"]["candidates"] = asdict(candidates)
    return results_entry(results), samples


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
