r"""SimpleCIL + MIST on ImageNet-A (10 tasks of 20), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_simplecil_imagenet_a.py --workdir runs/paper_simplecil_imagenet_a

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_simplecil_imagenet_a.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` (its freeze-rule, batch-size and pixel notes for
SimpleCIL) and the official ``exps/simplecil_mist/imageneta_simplecil.json``.
Split: the TFDS test split, seeded per-class 80/20 train/test (or the authors' own
split through ``folder:``).

Published numbers: see the paper's main table (arXiv 2505.19943); the official repository
publishes logs for ImageNet-R only, so no curve is quoted here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("imagenet_a", "simplecil", arg)
