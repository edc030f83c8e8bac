r"""Embedded main study: SimpleCIL and RanPAC, each with and without MIST, on the embedded
default stream (configs/default.py) with 40 training images per class, 5 repeats (20 cells).

Repeat k uses run seed k and its own class order: the authors' order 1993 first, then orders
1..4. The paired differences (same seed and order) of each learner with MIST minus without
are reported with a paired t-test and a Wilcoxon test.

Command::

  .venv/bin/python -m mist_jax.study --config configs/studies/embedded_main.py \
      --workdir runs/embedded_main

Cost on a 2-core CPU, measured end to end (2026-11-30, jax 0.10.2): **74 min 40 s** wall for
the 20 cells (103 min user CPU; unit tests ran at ``nice 19`` alongside for part of it). A
frozen RanPAC or SimpleCIL cell takes about 0.6 minutes; a RanPAC + MIST cell 10-11 minutes
(MIST about 80-90 s a task, 40 training images per class; the first cell also compiles); a
SimpleCIL + MIST cell about a minute, as it reuses the RanPAC + MIST cell's tuning
(``mist.cache_dir``; its ``wall_minutes`` counts the reused MIST time). Cluster: ``--list``
prints the cells, ``--cell K`` runs one.
"""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

_common = config_files.load_module(Path(__file__).resolve().parents[1] / "common.py")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _common.default_config()
    # RanPAC's M = 10000 is sized for ViT-B/16 on 100-200 classes; its 10000 x 10000 float64
    # solve costs ~30 s a task on 2 cores, half the study's time. 2000 random features for
    # 384-d ViT-S features and 30 classes keep the study within 90 minutes.
    c.base.learner.ranpac.num_projections = 2000
    # 40 training images per class instead of the default's 60: MIST costs ~2 min a task on
    # 2 cores at 60, which put the 20 cells at ~90 minutes. Test images stay at 100 a class.
    c.base.data.train_per_class = 40
    c.variants = {
        "simplecil": "mist.enabled=False",
        "simplecil_mist": "",
        "ranpac": "learner.name=ranpac,mist.enabled=False",
        "ranpac_mist": "learner.name=ranpac",
    }
    c.repeats = ((0, 1993), (1, 1), (2, 2), (3, 3), (4, 4))
    c.compare = (("simplecil_mist", "simplecil"), ("ranpac_mist", "ranpac"))
    c.lock()
    return c
