r"""RanPAC + MIST on ImageNet-R (10 tasks of 20), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_ranpac_imagenet_r.py --workdir runs/paper_ranpac_imagenet_r

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_ranpac_imagenet_r.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` (its freeze-rule, batch-size and pixel notes for
RanPAC) and the official ``exps/ranpac_mist/imagenetr_ranpac_mist.json``.
Split: the TFDS test split, seeded per-class 80/20 train/test (or the authors' own
split through ``folder:``).

Authors' log (``logs/ranpac_mist_mist_imagenetr.log``; one GPU, about 8 min per task):
top1_curve 92.89 90.23 87.49 86.51 83.89 82.83 82.65 81.91 81.65 81.00; average_accuracy
85.10, last_accuracy 81.00. Task-0 MI loss: 18.083 in the scoring epoch, 14.762 in the first
update epoch, 12.088 in the last.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("imagenet_r", "ranpac", arg)
