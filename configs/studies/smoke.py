r"""Smoke study: SimpleCIL with and without MIST on the tiny random ViT, 2 seeds (4 cells).

For tests and CI (about a minute per cell on a 2-core CPU)::

  .venv/bin/python -m mist_jax.study --config configs/studies/smoke.py --workdir runs/smoke_study
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("_study_base", Path(__file__).with_name("_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _base.default_config("smoke")
    c.variants = {"simplecil": "mist.enabled=False", "simplecil_mist": ""}
    c.repeats = ((0, 1993), (1, 1))  # (seed, class-order seed); the authors' order first
    c.compare = (("simplecil_mist", "simplecil"),)
    c.lock()
    return c
