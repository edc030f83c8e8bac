"""The optimizer MIST's sparse transform feeds (docs/algorithm.md §7): the authors' PyTorch SGD
or any optax optimizer, with one learning rate for the backbone and one for the projection head.

``torch_sgd`` is also the optimizer of the learners that follow a PyTorch reference (APER,
EASE): one definition of ``torch.optim.SGD`` for the whole package.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax
import optax

from mist_jax.infra import trees

SGD_OPTIONS = ("momentum", "weight_decay")
#: The official code's ``optim.SGD(momentum=0.9, weight_decay=5e-4)``.
MIST_SGD = {"momentum": 0.9, "weight_decay": 5e-4}


def torch_sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.0,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay)``: per element ``g += weight_decay * p``
    (coupled decay, before momentum), ``buf = momentum * buf + g`` (``buf = g`` at the first
    step), ``p -= lr * buf``. Requires ``params`` in ``update``."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None))


def group_labels(head_pattern: str = trees.HEAD):
    """params -> label pytree: "head" where re.search(head_pattern, path), else "backbone"."""
    pattern = re.compile(head_pattern)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "head" if pattern.search(trees.path_str(p)) else "backbone", params
        )

    return labels


def inner_optimizer(
    name: str = "sgd",
    *,
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    head_learning_rate: optax.ScalarOrSchedule = 1e-2,
    head_pattern: str = trees.HEAD,
    **options: Any,
) -> optax.GradientTransformation:
    """One optimizer per parameter group: ``learning_rate`` for the backbone, and
    ``head_learning_rate`` for paths matching ``head_pattern`` (the projection head).

    ``name="sgd"`` is the authors' ``torch_sgd`` (options ``momentum``, ``weight_decay``;
    default ``MIST_SGD``: 0.9 and 5e-4). Any other name is an optax optimizer factory, e.g. ``"adamw"``, called
    as ``getattr(optax, name)(learning_rate=..., **options)``.

    Raises:
      ValueError: ``name`` is not an optax optimizer taking ``learning_rate``, or an option the
        optimizer does not take (named, with the ones it takes).
    """
    if name == "sgd":
        allowed, options = SGD_OPTIONS, {**MIST_SGD, **options}
        make = lambda lr: torch_sgd(lr, **options)
    else:
        factory = getattr(optax, name, None)
        params = inspect.signature(factory).parameters if callable(factory) else {}
        if "learning_rate" not in params:
            raise ValueError(f"mist.optimizer={name!r} is not an optax optimizer taking a "
                             "learning_rate; use 'sgd' (the authors' SGD) or e.g. 'adamw', "
                             "'adam', 'lion', 'rmsprop'.")
        allowed = tuple(k for k in params if k != "learning_rate")
        make = lambda lr: factory(learning_rate=lr, **options)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"optimizer {name!r} takes no {', '.join(map(repr, unknown))}; its "
                         f"options are {list(allowed)}.")
    return optax.multi_transform(
        {"backbone": make(learning_rate), "head": make(head_learning_rate)},
        group_labels(head_pattern))


def from_config(cfg: Any) -> optax.GradientTransformation:
    """``inner_optimizer`` of ``config.mist``: its ``optimizer``, learning rates,
    ``weight_decay`` and ``momentum`` (momentum 0 passes none, for optimizers without one).

    Raises: ValueError as ``inner_optimizer`` (e.g. ``optimizer="adamw"`` with a momentum:
    set ``mist.momentum=0``; adamw's ``b1`` is its momentum).
    """
    options = {"weight_decay": cfg.weight_decay}
    if cfg.momentum:
        options["momentum"] = cfg.momentum
    try:
        return inner_optimizer(cfg.optimizer, learning_rate=cfg.learning_rate,
                               head_learning_rate=cfg.head_learning_rate, **options)
    except ValueError as e:
        if "takes no 'momentum'" in str(e):
            raise ValueError(f"{e} Set mist.momentum=0 with mist.optimizer={cfg.optimizer!r} "
                             "(SGD's momentum; the optimizer has its own).") from e
        raise
