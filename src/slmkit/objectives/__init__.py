"""The objective registry: `task: NAME` in a recipe picks one. Masked diffusion joins here.

This is the only place that maps a task name to behaviour; everything else asks the objective.
"""

from __future__ import annotations

from slmkit.errors import SlmError, did_you_mean
from slmkit.objectives.ar_code import ArCodeObjective
from slmkit.objectives.base import Objective
from slmkit.objectives.codefusion import CodeFusionObjective
from slmkit.objectives.pretrain import PretrainObjective
from slmkit.objectives.sft import SFTObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (PretrainObjective, SFTObjective, CodeFusionObjective, ArCodeObjective)
}


def get_objective(task: str) -> Objective:
    """The objective of `task: NAME`; SlmError naming the closest task when unknown."""
    if task not in OBJECTIVES:
        raise SlmError(
            f"recipe key 'task': {task!r} is not one of {', '.join(OBJECTIVES)}{did_you_mean(str(task), OBJECTIVES)}"
        )
    return OBJECTIVES[task]()


__all__ = ["OBJECTIVES", "Objective", "get_objective"]
