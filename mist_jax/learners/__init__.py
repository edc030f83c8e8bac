"""Learners (docs/algorithm.md §9): one registry of plug-ins, keyed by ``Learner.name``.

Built in: SimpleCIL and RanPAC (freeze-based, on features), L2P, DualPrompt and CODA-Prompt
(prompts, on images), APER (a first-task adapter / SSF / VPT module merged with the
backbone), EASE (an adapter per task and a prototype ensemble of their subspaces),
SLCA (a slow-learning backbone and a classifier aligned on sampled class statistics),
the full fine-tuning reference.
A new learner is one file (a ``Learner`` or ``ImageLearner`` subclass) plus one line below, or
a ``register(MyLearner)`` call from your own code before the config is built; its config block
``config.learner.<name>`` comes from its ``default_config``.
"""

from mist_jax.learners.aper import Aper, AperState
from mist_jax.learners.base import Learner, check_task
from mist_jax.learners.coda_prompt import CodaPrompt, CodaPromptState
from mist_jax.learners.drift import compensate_drift
from mist_jax.learners.dualprompt import DualPrompt, DualPromptState
from mist_jax.learners.ease import Ease, EaseState
from mist_jax.learners.finetune import FineTune, FineTuneState
from mist_jax.learners.images import ImageLearner, fit_on_images
from mist_jax.learners.l2p import L2P, L2PState
from mist_jax.learners.ranpac import RanPAC, RanPACState
from mist_jax.learners.simplecil import SimpleCIL, SimpleCILState
from mist_jax.learners.slca import Slca, SlcaState

LEARNERS: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Add a learner class under ``cls.name`` (usable as a class decorator); returns ``cls``.

    Raises: ValueError if another class holds that name.
    """
    if LEARNERS.get(cls.name, cls) is not cls:
        raise ValueError(f"A different learner is already registered as {cls.name!r}.")
    LEARNERS[cls.name] = cls
    return cls


for _builtin in (SimpleCIL, RanPAC, FineTune, L2P, DualPrompt, CodaPrompt, Aper, Ease,
                 Slca):
    register(_builtin)


def get_learner_class(name: str) -> type[Learner]:
    """The registered class ``name``. Raises ValueError naming the registered ones."""
    if name not in LEARNERS:
        raise ValueError(f"Unknown learner {name!r}; choose from {sorted(LEARNERS)} (or "
                         "mist_jax.learners.register your own).")
    return LEARNERS[name]


def get_learner(name: str, config=None, **run) -> Learner:
    """The learner ``name`` built from its config block (default: its ``default_config``) and
    what the run knows (``num_classes``, ``model``, ``preprocess``).

    Example: ``get_learner("ranpac", ConfigDict({"num_projections": 2000}))``.

    Raises:
      ValueError: unknown name or config key.
    """
    cls = get_learner_class(name)
    config = cls.default_config() if config is None else config
    try:
        return cls.from_config(config, **run)
    except TypeError as e:
        raise ValueError(f"Bad config for learner {name!r}: {e}; its keys are "
                         f"{sorted(cls.default_config())}.") from e


__all__ = ["LEARNERS", "Aper", "AperState", "CodaPrompt", "CodaPromptState", "DualPrompt", "DualPromptState",
           "Ease", "EaseState",
           "FineTune", "FineTuneState", "ImageLearner", "L2P", "L2PState", "Learner", "RanPAC",
           "RanPACState", "SimpleCIL", "SimpleCILState", "Slca", "SlcaState", "check_task",
           "compensate_drift",
           "fit_on_images", "get_learner", "get_learner_class", "register"]
