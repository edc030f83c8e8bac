r"""RanPAC + MIST on CUB-200 (10 tasks of 20), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_ranpac_cub.py --workdir runs/paper_ranpac_cub

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_ranpac_cub.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` (its freeze-rule, batch-size and pixel notes for
RanPAC) and the official ``exps/ranpac_mist/cub_ranpac_mist.json``.

Published numbers: see the paper's main table (arXiv 2505.19943); the official repository
publishes logs for ImageNet-R only, so no curve is quoted here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("cub", "ranpac", arg)
