r"""SimpleCIL + MIST on ImageNet-A (10 tasks of 20), ViT-B/16 IN21k AugReg (docs/benchmarks.md).

Command::

  python -m mist_jax.main --config configs/paper_simplecil_imagenet_a.py --workdir runs/paper_simplecil_imagenet_a

Needs the backbone file (see mist_jax.models.pretrained.NAMED) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists). ``configs/paper_simplecil_imagenet_a.py:runlocal`` shrinks it to check the plumbing.
Add ``--config.mist.enabled=False`` for the same learner without MIST.

Settings: ``configs/paper.py`` and the official ``exps/simplecil_mist/imageneta_simplecil.json``.
Official file ``models/simplecil_mist.py``: after each task it freezes only each weight
tensor's maximum Fisher score (``torch.quantile(s, 1)``, ties included;
``mist.freeze_rate = 0.0``); batch 56, as its published log shows, not the module's
``batch_size=32`` (evidence in ``configs/paper.py``).
Split: the TFDS test split, seeded per-class 80/20 train/test (or the authors' own
split through ``folder:``).
Pixels: ``data.transform = "default"`` (RandomResizedCrop(224, scale (0.05, 1)) + flip;
test Resize(256) + CenterCrop(224)), [0, 1] without normalisation
(``model.preprocess = "none"``), as ``utils/data.py`` ``build_transform``.

Published numbers: see the paper's main table (arXiv 2505.19943); the official repository
publishes logs for ImageNet-R only, so no curve is quoted here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from paper import paper_config  # noqa: E402


def get_config(arg: str = ""):
    return paper_config("imagenet_a", "simplecil", arg)
