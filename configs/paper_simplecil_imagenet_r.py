r"""SimpleCIL + MIST on ImageNet-R (10 tasks of 20), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_simplecil_imagenet_r.py --workdir runs/paper_simplecil_imagenet_r

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_simplecil_imagenet_r.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` (its freeze-rule, batch-size and pixel notes for
SimpleCIL) and the official ``exps/simplecil_mist/imagenetr_simplecil.json``.
Split: the TFDS test split, seeded per-class 80/20 train/test (or the authors' own
split through ``folder:``).

Authors' log (``logs/simplecil_mist_mist_imagenetr.log``; one GPU, about 8 min per task):
top1_curve 92.31 86.53 84.33 81.75 79.26 78.38 78.55 77.14 76.07 75.20; average_accuracy
80.95, last_accuracy 75.20. Task-0 MI loss: 18.086 in the scoring epoch, 14.982 in the first
update epoch, 13.107 in the last.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("imagenet_r", "simplecil", arg)
