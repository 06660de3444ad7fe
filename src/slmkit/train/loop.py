"""The training loop: `train(recipe, run)` trains the run's objective and checkpoints it.

One step = `grad_accum` micro-batches of `batch_size` rows on each of the world's processes,
then one optimizer update. The loop knows the model only through its objective (which builds it,
feeds it batches and computes `objective.loss(model, batch)`) and `model.layers` (for FSDP);
parallelism (distributed.py), checkpoints (checkpoint.py), faults (faults.py) and what is shown and
recorded (metrics.py) live beside it. It needs the run's earlier stages done (the stage runner
runs them): the tokenizer, and whatever data the objective reads.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmkit.device import autocast_for, resolve_precision
from slmkit.errors import SlmError
from slmkit.eval.loss import bits_per_byte, evaluate
from slmkit.objectives import get_objective
from slmkit.pipeline.rundir import RunDir
from slmkit.train.budget import finished, is_auto, plan_steps, probe_steps, recorded_max_steps, write_plan
from slmkit.train.checkpoint import clean_temp, load_checkpoint, read_trainer_state, save_checkpoint
from slmkit.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    clip_grad_norm,
    gather_objects,
    grad_sync,
    init_distributed,
    local_params,
    parallelize,
    shutdown,
)
from slmkit.train.faults import BadStepTracker, FaultInjector, StopSignals
from slmkit.train.metrics import MetricsLogger, format_postfix
from slmkit.train.mfu import mfu as compute_mfu
from slmkit.train.mfu import peak_flops
from slmkit.train.optim import build_optimizer, resolve_optim_settings
from slmkit.train.rng import rng_state, seed_everything, set_rng_state
from slmkit.train.schedule import build_scheduler


@dataclass
class Progress:
    """Counters carried across steps and saved in trainer_state.json."""

    step: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    last: dict[str, float | None] = field(default_factory=lambda: {"loss": None, "val_loss": None, "val_bpb": None})


def summary_from_state(state: dict[str, Any], ckpt: Path | None, stopped: str) -> dict[str, Any]:
    """The result `train` returns, from a trainer_state mapping."""
    last = state.get("last", {})
    return {
        "steps": state.get("step", 0),
        "max_steps": state.get("max_steps"),
        "loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "val_bpb": last.get("val_bpb"),
        "checkpoint": str(ckpt) if ckpt else None,
        "tokens": state.get("tokens", 0),
        "train_flops": state.get("train_flops"),
        "wall_time_s": round(state.get("train_time_s", 0.0), 2),
        "skipped_steps": state.get("bad_steps", {}).get("total", 0),
        "stopped": stopped,
    }


def train(recipe, run: str | Path | RunDir, resume: bool = True, progress: bool = True,
          prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train per `recipe.train` into the run folder, resuming from its latest checkpoint when `resume`.

    `prepare` (e.g. the stage runner making the tokenizer and data) runs on rank 0 before any rank
    reads the run folder.

    Returns a summary (steps, loss, val_loss, val_bpb, checkpoint, tokens, wall_time_s, skipped_steps,
    stopped) where stopped is 'complete', 'time limit' or the signal name ('SIGINT', 'SIGTERM').
    """
    run = RunDir.of(run)
    tc = recipe.train
    settings = resolve_optim_settings(tc)
    env = init_distributed(tc.device, tc.parallel)
    trainer = _Trainer(recipe, run, settings, env, resume, progress, prepare)
    clean = False
    try:
        result = trainer.run()
        clean = True
        return result
    finally:
        # Free the model, optimizer and wrappers (they hold the process group) while the
        # interpreter is fully alive; gloo objects freed during interpreter teardown abort.
        del trainer
        gc.collect()
        shutdown(env, clean=clean)


class _Trainer:
    """State of one invocation of `train`; `run()` does setup, the loop and the final checkpoint."""

    def __init__(self, recipe, run: RunDir, settings, env: DistEnv, resume: bool, progress: bool,
                 prepare: Callable[[], None] | None = None) -> None:
        self.recipe, self.tc, self.rundir = recipe, recipe.train, run
        self.objective = get_objective(recipe.task, recipe)
        self.prepare = prepare
        self.settings, self.env, self.resume, self.show_progress = settings, env, resume, progress
        self.precision = resolve_precision(self.tc.precision, env.device)
        self.autocast = autocast_for(self.precision, env.device)
        self.faults = FaultInjector.from_env()
        self.progress = Progress()
        self.bad = BadStepTracker(self.tc.max_bad_steps)
        self.log: MetricsLogger | None = None
        self.eval_enabled = self.tc.eval_batches > 0
        # train.max_steps: auto leaves the total unknown (None) until the probe has measured a step
        self.auto = is_auto(self.tc.max_steps)
        self.max_steps: int | None = None if self.auto else self.tc.max_steps
        self.step_times: list[float] = []  # of this invocation's probe steps

    # ------------------------------------------------------------------ setup

    def _find_checkpoint(self) -> Path | None:
        ckpt = self.rundir.latest_checkpoint()
        if ckpt is not None and not self.resume:
            raise SlmError(
                f"{self.rundir.root} already holds checkpoints (latest {ckpt.name}); resume, use another --out, "
                f"or delete {self.rundir.ckpt_root} to start over"
            )
        return ckpt

    def _build_model(self, tokenizer) -> None:
        tc, env = self.tc, self.env
        seed_everything(tc.seed)
        model = self.objective.build_model(self.recipe, tokenizer)
        model.to(env.device).train()
        if tc.activation_checkpointing:
            model.set_activation_checkpointing(True)
        self.model = model
        if env.world_size > 1:  # same initial weights on every rank, then each its own noise / masks / dropout
            seed_everything(tc.seed + 1 + env.rank)

    def _setup(self, ckpt: Path | None) -> None:
        tc, env, recipe = self.tc, self.env, self.recipe
        from slmkit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.rundir.tokenizer)
        self._build_model(tokenizer)
        self.step_module = parallelize(self.model, self.objective.loss, tc.parallel, env, compile=tc.compile,
                                       reshard_after_forward=tc.reshard_after_forward)
        self.params = local_params(self.model)
        self.optimizer = build_optimizer(self.model, self.settings)
        self.scheduler = build_scheduler(self.optimizer, self.settings, lambda: self.max_steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.loader = self.objective.train_loader(recipe, self.rundir, tokenizer, tc.batch_size, tc.seed,
                                                  env.rank, env.world_size)
        self.tokenizer = tokenizer
        self.bytes_per_token = self.objective.val_bytes_per_token(recipe, self.rundir)
        self.chat_template = self.objective.chat_template(recipe)
        self.folder_metadata = self.objective.folder_metadata(recipe, tokenizer)
        if ckpt is not None:
            self._restore(ckpt)
        self.flops_per_token = self.objective.flops_per_token(self.model, recipe)
        self.peak = peak_flops(env.device, self.precision) if env.is_main else None

    def _restore(self, ckpt: Path) -> None:
        state = read_trainer_state(ckpt)
        if state.get("world_size", 1) != self.env.world_size:
            raise SlmError(
                f"{ckpt} was written by {state.get('world_size')} processes; resume with the same number "
                f"(now {self.env.world_size})"
            )
        load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, parallel=self.tc.parallel, env=self.env)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.env.rank]
        self.loader.load_state_dict(mine["data"])
        set_rng_state(mine["rng"])
        self.bad.load_state_dict(state.get("bad_steps", {}))
        self.progress = Progress(step=state["step"], tokens=state.get("tokens", 0),
                                 train_time_s=state.get("train_time_s", 0.0),
                                 last=dict(state.get("last", self.progress.last)))

    # ------------------------------------------------------------------ one step

    def _train_step(self, step: int) -> tuple[float, float, int]:
        """Forward/backward over the micro-batches and (if all is finite) one update.

        Returns (global mean loss, grad norm, tokens processed by all ranks)."""
        tc, env = self.tc, self.env
        loss_sum = torch.zeros((), device=env.device)
        tokens = 0
        factor = self.faults.loss_factor(step)
        for micro in range(tc.grad_accum):
            batch = {k: v.to(env.device, non_blocking=True) for k, v in self.loader.next_batch().items()}
            tokens += self.objective.batch_tokens(batch)
            with grad_sync(self.step_module, self.model, tc.parallel, sync=micro == tc.grad_accum - 1):
                with self.autocast():
                    loss = self.step_module(batch)
                if factor != 1.0:
                    loss = loss * factor
                scaled = loss / tc.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
        self.faults.mid_step(step)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(clip_grad_norm(self.params, self.settings.grad_clip))
        # one small all-reduce per step: mean loss, tokens and stop votes (on the device: NCCL needs it)
        shared = torch.tensor([float(loss_sum) / tc.grad_accum, tokens, self._stop_vote()], dtype=torch.float64,
                              device=env.device)
        all_reduce_sum(shared, env)
        loss_value = float(shared[0]) / env.world_size
        self._stop_votes = float(shared[2])
        loss_ok, grad_ok = math.isfinite(loss_value), math.isfinite(grad_norm)
        if self.scaler is not None:  # fp16: an overflowing gradient is normal; the scaler skips it
            if loss_ok:
                self.scaler.step(self.optimizer)
            self.scaler.update()
            finite = loss_ok
        else:
            finite = loss_ok and grad_ok
            if finite:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._lr = self.optimizer.param_groups[0]["lr"]  # the lr this update used
        self.scheduler.step()
        self.bad.record(finite)
        self._skipped = not (loss_ok and grad_ok)
        return loss_value, grad_norm, int(shared[1])

    def _stop_vote(self) -> float:
        """1 when this rank wants to stop (signal or time limit): any rank's vote stops every rank."""
        # train.max_minutes is a budget for the whole run: time spent before a resume counts too.
        over_time = self.tc.max_minutes is not None and time.perf_counter() - self.t_start > self.time_left
        return 1.0 if (self.signals.received is not None or over_time) else 0.0

    # ------------------------------------------------------------------ evaluation / checkpoint

    def _evaluate(self) -> dict[str, float | None]:
        tc = self.tc
        # Every rank evaluates the same batches of the global batch size, so the result does not
        # depend on how many processes train (FSDP needs every rank in each forward anyway).
        batches = self.objective.eval_batches(self.recipe, self.rundir, self.tokenizer,
                                              tc.batch_size * self.env.world_size, tc.eval_batches)
        try:
            result = evaluate(self.model, batches, device=self.env.device, autocast=self.autocast,
                              loss_fn=lambda batch: self.objective.loss(self.model, batch),
                              count_fn=self.objective.batch_targets)
        except SlmError as exc:  # e.g. no validation split (data.val_fraction=0): train on without it
            self.log.message(f"validation skipped: {exc}")
            self.eval_enabled = False
            return {"val_loss": None, "val_bpb": None}
        if not result["tokens"]:
            return {"val_loss": None, "val_bpb": None}
        return {"val_loss": result["loss"], "val_bpb": bits_per_byte(result["loss"], self.bytes_per_token)}

    def _evaluate_tasks(self) -> dict[str, float]:
        """train.eval_tasks on the first eval_tasks_limit documents: {"eval/TASK/METRIC": value}.

        Every rank scores the same requests in the same order (FSDP needs each rank in each forward)."""
        from slmkit.data.paths import datasets_dir
        from slmkit.eval.harness import EvalOptions, evaluate as evaluate_tasks
        from slmkit.eval.tasks import get_tasks

        tc = self.tc
        model = getattr(self.model, "module", self.model)
        was_training = model.training
        lm = self.objective.language_model(model, self.tokenizer, tc.batch_size, self.autocast)
        try:
            results, _ = evaluate_tasks(lm, get_tasks(tc.eval_tasks, limit=tc.eval_tasks_limit),
                                        EvalOptions(datasets_dir(), limit=tc.eval_tasks_limit, progress=False))
        finally:
            model.train(was_training)
        return {f"eval/{name}/{metric}": value["value"] for name, entry in results["tasks"].items()
                for metric, value in entry.get("metrics", {}).items()}

    def _trainer_state(self, stopped: str | None) -> dict[str, Any]:
        mine = {"rng": rng_state(), "data": self.loader.state_dict()}
        ranks = gather_objects(mine, self.env)
        p = self.progress
        return {
            "step": p.step,
            "max_steps": self.max_steps,
            "max_steps_auto": self.auto,
            "world_size": self.env.world_size,
            "parallel": self.tc.parallel,
            "tokens": p.tokens,
            "flops_per_token": self.flops_per_token,
            "train_flops": p.tokens * self.flops_per_token,  # model FLOPs of training so far (forward + backward)
            "train_time_s": p.train_time_s,
            "bad_steps": self.bad.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "last": p.last,
            "stopped": stopped,
            "ranks": ranks,
        }

    def _save(self, stopped: str | None = None) -> Path:
        path = save_checkpoint(
            self.rundir, self.progress.step, model=self.model, optimizer=self.optimizer,
            parallel=self.tc.parallel, env=self.env, trainer_state=self._trainer_state(stopped),
            keep_last=self.tc.keep_last, tokenizer_file=self.rundir.tokenizer,
            chat_template=self.chat_template, metadata=self.folder_metadata,
        )
        self.last_ckpt, self.saved_step = path, self.progress.step
        return path

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        tc, env = self.tc, self.env
        if env.is_main:
            clean_temp(self.rundir)
            if self.prepare is not None:
                self.prepare()
        barrier(env)
        if not self.rundir.tokenizer.is_file():
            raise SlmError(f"{self.rundir.tokenizer} is missing; make it first: "
                           f"slm tokenizer train {self.rundir.recipe} --out {self.rundir.root}")
        ckpt = self._find_checkpoint()
        state = read_trainer_state(ckpt) if ckpt is not None else None
        if self.auto:
            self.max_steps = recorded_max_steps(state, self.rundir, tc.max_minutes)
        done = finished(state, self.max_steps, tc.max_minutes) if state is not None else None
        if done:
            return summary_from_state(state, ckpt, done)
        self._setup(ckpt)
        self.last_ckpt, self.saved_step = ckpt, self.progress.step
        self.log = MetricsLogger(self.rundir, self.progress.step, self.max_steps, enabled=env.is_main,
                                 progress=self.show_progress)
        try:
            with StopSignals() as self.signals:
                stopped = self._loop()
        finally:
            self.log.close()
        state = {**self._last_state, "stopped": stopped}
        return summary_from_state(state, self.last_ckpt, stopped)

    def _loop(self) -> str:
        tc, env, p = self.tc, self.env, self.progress
        if p.step:
            self.log.message(f"resuming from {self.last_ckpt} (step {p.step})")
        self.t_start = time.perf_counter()
        self.time_left = 60 * tc.max_minutes - p.train_time_s if tc.max_minutes is not None else math.inf
        probe_end = probe_steps(self.settings.warmup_steps) if self.max_steps is None else None
        interval_tokens, interval_time = 0, 0.0
        stopped = "complete"
        while self.max_steps is None or p.step < self.max_steps:
            t0 = time.perf_counter()
            step = p.step + 1
            loss, grad_norm, tokens = self._train_step(step)
            dt = time.perf_counter() - t0
            p.step, p.tokens, p.train_time_s = step, p.tokens + tokens, p.train_time_s + dt
            interval_tokens, interval_time = interval_tokens + tokens, interval_time + dt
            if self.max_steps is None:
                self.step_times.append(dt)
                if step >= probe_end:
                    self._fix_max_steps(step, tokens)
            lr = float(self._lr)
            if self._skipped:
                self.log.message(f"step {step}: non-finite loss/gradient (loss {loss}, grad norm {grad_norm}); "
                                 f"update skipped ({self.bad.in_a_row} in a row, {self.bad.total} in total)")
            if math.isfinite(loss):
                p.last["loss"] = loss
            stopping = self._stop_votes > 0
            if stopping:
                stopped = broadcast_object(self.signals.name or "time limit", env)
            last_step = step == self.max_steps or stopping
            if (tc.log_every and step % tc.log_every == 0) or last_step or self._skipped:
                tok_per_s = interval_tokens / max(interval_time, 1e-9)
                mfu = compute_mfu(self.flops_per_token, tok_per_s, self.peak, env.world_size)
                self.log.log({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tok_per_s": tok_per_s,
                              "mfu": mfu, "tokens": p.tokens, "elapsed": p.train_time_s,
                              "skipped": self.bad.total})
                self.log.progress(step, **format_postfix(loss, lr, tok_per_s, mfu))
                interval_tokens, interval_time = 0, 0.0
            else:
                self.log.progress(step)
            if self.bad.exceeded:
                last = self.rundir.latest_checkpoint()
                raise SlmError(
                    f"{self.bad.in_a_row} non-finite steps in a row (train.max_bad_steps={tc.max_bad_steps}), "
                    f"stopped at step {step}; last good checkpoint: {last or 'none yet'}"
                )
            # a run the time limit stops between eval_every points still ends with an evaluation
            eval_due = (tc.eval_every and step % tc.eval_every == 0) or step == self.max_steps or stopped == "time limit"
            if self.eval_enabled and eval_due:
                val = self._evaluate()
                p.last.update(val)
                if val["val_loss"] is not None:
                    self.log.log({"step": step, **val})
                    bpb = f", bpb {val['val_bpb']:.4f}" if val["val_bpb"] is not None else ""
                    bound = " (ELBO upper bound)" if self.objective.loss_is_bound else ""
                    self.log.message(f"step {step}: val loss {val['val_loss']:.4f}{bpb}{bound}")
            if tc.eval_tasks and eval_due:
                scores = self._evaluate_tasks()
                self.log.log({"step": step, **scores})
                self.log.message(f"step {step}: " + ", ".join(f"{k.removeprefix('eval/')} {v:.4f}"
                                                               for k, v in scores.items()))
            if stopping:
                break
            periodic = tc.save_every and step % tc.save_every == 0 and not self.bad.in_a_row
            if step == self.max_steps or periodic:  # no periodic save inside a non-finite streak
                self._save()
        if stopped != "complete" or self.saved_step != p.step:
            self._save(stopped)
        self._last_state = self._trainer_state(stopped)
        if stopped != "complete":
            self.log.message(f"stopped at step {p.step} ({stopped}); checkpoint {self.last_ckpt}")
        return stopped

    def _fix_max_steps(self, step: int, tokens_per_step: int) -> None:
        """train.max_steps: auto, at the end of the probe: measure, fix the total, record it, log it."""
        tc, env = self.tc, self.env
        measured = self.step_times[1:] or self.step_times  # this invocation's first step pays for warm-up
        step_s = self.faults.step_seconds or sum(measured) / len(measured)
        # one validation pass: eval_batches forward passes of the global batch (a forward ~ 1/3 of a micro-step)
        eval_s = tc.eval_batches * env.world_size * step_s / (3 * tc.grad_accum) if self.eval_enabled else 0.0
        consumed = 60 * tc.max_minutes - self.time_left + (time.perf_counter() - self.t_start)
        if self.faults.step_seconds:  # the pretend clock of the time-budget tests
            consumed = step * self.faults.step_seconds
        plan = plan_steps(max_minutes=tc.max_minutes, elapsed_s=consumed, step_seconds=step_s,
                          tokens_per_step=tokens_per_step, probe=step, eval_seconds=eval_s, eval_every=tc.eval_every)
        plan = broadcast_object(plan, env)  # every rank trains rank 0's number of steps
        self.max_steps = plan.max_steps
        if env.is_main:
            write_plan(self.rundir, plan)
        self.log.set_total(plan.max_steps)
        self.log.message(plan.describe())
