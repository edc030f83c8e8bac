"""Learners on backbone features (docs/algorithm.md §9): SimpleCIL, RanPAC (freeze-based), SDC,
and the full fine-tuning reference."""

from mist_jax.learners.base import Learner, check_task
from mist_jax.learners.drift import compensate_drift
from mist_jax.learners.finetune import FineTune, FineTuneState
from mist_jax.learners.ranpac import RanPAC, RanPACState
from mist_jax.learners.simplecil import SimpleCIL, SimpleCILState

LEARNERS = {"simplecil": SimpleCIL, "ranpac": RanPAC, "finetune": FineTune}


def get_learner(name: str, **kwargs) -> Learner:
    """The learner `name` ("simplecil", "ranpac", "finetune") built with hyper-parameters `kwargs`.

    Example: ``get_learner("ranpac", num_projections=2000)``.

    Raises:
      ValueError: unknown name or hyper-parameter.
    """
    if name not in LEARNERS:
        raise ValueError(f"Unknown learner {name!r}; choose from {sorted(LEARNERS)}.")
    try:
        return LEARNERS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"Bad hyper-parameters for learner {name!r}: {e}") from e


__all__ = ["LEARNERS", "FineTune", "FineTuneState", "Learner", "RanPAC", "RanPACState", "SimpleCIL", "SimpleCILState",
           "check_task", "compensate_drift", "get_learner"]
