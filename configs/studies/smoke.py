r"""Smoke study: SimpleCIL with and without MIST on the tiny random ViT, 2 seeds (4 cells).

For tests and CI (about a minute per cell on a 2-core CPU)::

  .venv/bin/python -m mist_jax.study --config configs/studies/smoke.py --workdir runs/smoke_study
"""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

_common = config_files.load_module(Path(__file__).resolve().parents[1] / "common.py")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _common.default_config("smoke")
    c.variants = {"simplecil": "mist.enabled=False", "simplecil_mist": ""}
    c.repeats = ((0, 1993), (1, 1))  # (seed, class-order seed); the authors' order first
    c.compare = (("simplecil_mist", "simplecil"),)
    c.lock()
    return c
