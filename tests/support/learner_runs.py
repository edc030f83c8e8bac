"""What the image learners' end-to-end tests share: a smoke-config factory per learner, the
check that a run stopped inside the learner's epochs resumes bitwise, and the check that the
learner alone (no MIST) leaves the backbone bitwise unchanged."""

import jax
import numpy as np
import pytest
from support.runs import StopAt
from support.runs import smoke

from mist_jax.infra import interrupt
from mist_jax.runner import train


def learner_config(name: str, overrides: dict | None = None, **block):
    """``make(**more) -> config``: the smoke config with ``learner.name=name``, the dotted
    ``overrides`` and ``more``, and the learner's block updated with ``block``."""
    def make(**more):
        cfg = smoke(**{"learner.name": name, **(overrides or {}), **more})
        with cfg.unlocked():
            cfg.learner[name].update(**block)
        return cfg
    return make


def assert_same(a, b) -> None:
    """Every leaf of pytrees ``a`` and ``b`` bitwise equal (fetched to the host)."""
    a, b = jax.device_get(a), jax.device_get(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def assert_resumes_bitwise(make, run, results, tmp_path, stop_at: int, where: str,
                           backbone: bool = False) -> dict:
    """Stop a run of ``make()`` at step boundary ``stop_at`` (the message must match the regex
    ``where``), resume it, and check it ends as the uninterrupted ``run`` with ``results``:
    the accuracy matrix, the learner state and (``backbone``) the params. Returns the resumed
    results."""
    wd = tmp_path / "stopped"
    with pytest.raises(interrupt.Interrupted, match=where):
        train.Run(make(), wd, progress=False, stop=StopAt(stop_at)).run()
    again = train.Run(make(), wd, progress=False)
    resumed = again.run()
    assert resumed["acc_matrix"] == results["acc_matrix"]
    assert_same(again.learner_state, run.learner_state)
    if backbone:
        assert_same(again.params, run.params)
    return resumed


def run_without_mist(make, tmp_path) -> tuple[train.Run, dict]:
    """Run ``make(mist.enabled=False)`` to the end, check MIST did not run and the backbone is
    bitwise unchanged; returns ``(run, results)``."""
    run = train.Run(make(**{"mist.enabled": False}), tmp_path / "frozen", progress=False)
    backbone0 = jax.device_get(run.params["backbone"])
    results = run.run()
    assert all("mi_loss_per_epoch" not in task for task in results["tasks"])
    assert_same(backbone0, run.params["backbone"])
    return run, results
