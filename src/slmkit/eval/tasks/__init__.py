"""The task registry: names -> Task objects (`slm eval --tasks a,b,...`)."""

from __future__ import annotations

from collections.abc import Callable

from slmkit.errors import SlmError, did_you_mean
from slmkit.eval.tasks.base import Task, TaskDataMissing
from slmkit.eval.tasks.choice import choice_tasks
from slmkit.eval.tasks.codefusion import CandidateSettings, codefusion_tasks
from slmkit.eval.tasks.generation import GenerationSettings, generation_tasks
from slmkit.eval.tasks.perplexity import PREFIX, RUN_VALIDATION, PerplexityTask

__all__ = ["Task", "TaskDataMissing", "GenerationSettings", "CandidateSettings", "get_tasks", "task_names",
           "parse_task_list", "RUN_VALIDATION", "PREFIX"]


def _registry(settings: GenerationSettings, candidates: CandidateSettings) -> dict[str, Callable[[], Task]]:
    return {**choice_tasks(), **generation_tasks(settings), **codefusion_tasks(candidates)}


def task_names(include_subtasks: bool = False) -> list[str]:
    """Every task name (mmlu's 57 single-subject tasks only with include_subtasks)."""
    names = list(_registry(GenerationSettings(), CandidateSettings()))
    return names if include_subtasks else [n for n in names if not n.startswith("mmlu_")]


def parse_task_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (order kept, duplicates dropped); SlmError when empty."""
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise SlmError("--tasks is empty; name at least one task (e.g. --tasks arc_easy,piqa)")
    return names


def get_tasks(names: list[str], settings: GenerationSettings | None = None, limit: int | None = None,
              candidates: CandidateSettings | None = None) -> list[Task]:
    """Task objects for names; SlmError with a suggestion for an unknown one (before anything runs).
    `candidates`: how the codefusion-* tasks draw candidates."""
    registry = _registry(settings or GenerationSettings(), candidates or CandidateSettings())
    tasks: list[Task] = []
    for name in names:
        if name.startswith(PREFIX) and name != RUN_VALIDATION:
            tasks.append(PerplexityTask(name[len(PREFIX):], max_docs=limit))
        elif name in registry:
            tasks.append(registry[name]())
        elif name != RUN_VALIDATION:
            known = [*registry, RUN_VALIDATION, f"{PREFIX}<source>"]
            raise SlmError(f"unknown task {name!r}{did_you_mean(name, known)}; known tasks: "
                           f"{', '.join(task_names())}, mmlu_<subject>, {PREFIX}<source type>, {RUN_VALIDATION}")
    return tasks
