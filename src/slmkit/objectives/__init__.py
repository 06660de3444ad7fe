"""The objective registry: `task: NAME` in a recipe picks one (and the recipe its form: see `for_recipe`).

This is the only place that maps a task name to behaviour; everything else asks the objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slmkit.errors import SlmError, did_you_mean
from slmkit.objectives.ar_code import ArCodeObjective
from slmkit.objectives.base import Objective
from slmkit.objectives.codefusion import CodeFusionObjective
from slmkit.objectives.masked_diffusion import MaskedDiffusionObjective
from slmkit.objectives.pretrain import PretrainObjective
from slmkit.objectives.sft import SFTObjective

if TYPE_CHECKING:
    from slmkit.config import Recipe

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (PretrainObjective, SFTObjective, CodeFusionObjective, ArCodeObjective,
                          MaskedDiffusionObjective)
}


def get_objective(task: str, recipe: Recipe | None = None) -> Objective:
    """The objective of `task: NAME` (in the form `recipe` asks for); SlmError naming the closest task
    when unknown."""
    if task not in OBJECTIVES:
        raise SlmError(
            f"recipe key 'task': {task!r} is not one of {', '.join(OBJECTIVES)}{did_you_mean(str(task), OBJECTIVES)}"
        )
    return OBJECTIVES[task].for_recipe(recipe)


__all__ = ["OBJECTIVES", "Objective", "get_objective"]
