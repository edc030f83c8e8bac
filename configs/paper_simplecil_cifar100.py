r"""SimpleCIL + MIST on CIFAR-100 (10 tasks of 10), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_simplecil_cifar100.py --workdir runs/paper_simplecil_cifar100

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_simplecil_cifar100.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` (its freeze-rule, batch-size and pixel notes for
SimpleCIL) and the official ``exps/simplecil_mist/cifar_simplecil.json``.

Published numbers: see the paper's main table (arXiv 2505.19943); the official repository
publishes logs for ImageNet-R only, so no curve is quoted here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("cifar100", "simplecil", arg)
