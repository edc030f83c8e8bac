"""Shared settings of the paper's ten runs (MIST_SPEC Sec. 2-4; authors' code defaults).

Not a config file by itself: ``configs/paper_<learner>_<dataset>.py`` call ``paper_config``.
ViT-B/16 ImageNet-21k at 224 px (bring the file: see ``mist_jax.models.pretrained.NAMED``),
10 tasks, MIST on every task with 20 MI epochs (1 scoring + 19 update), select_rate 0.1,
drop_rate 0.9, SGD lr 1e-4 (head 1e-2), momentum 0.9, weight decay 5e-4, batch 56 (the
authors' logs), pixels in [0, 1] without normalisation (Cars: ImageNet mean/std).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import default  # noqa: E402

#: dataset -> (TFDS name, init_cls, increment, preprocessing)
BENCHMARKS = {
    "cifar100": ("cifar100", 10, 10, "none"),
    "cub": ("caltech_birds2011", 20, 20, "none"),
    "imagenet_r": ("imagenet_r", 20, 20, "none"),
    "imagenet_a": ("imagenet_a", 20, 20, "none"),
    "cars": ("cars196", 20, 20, "imagenet"),
}


def paper_config(dataset: str, learner: str, arg: str = ""):
    """The locked config of one paper run; ``arg == "runlocal"`` shrinks it for a laptop."""
    c = default.get_config()
    name, init_cls, increment, preprocess = BENCHMARKS[dataset]
    with c.unlocked():
        c.compare_baseline = False
        c.data.name = name
        c.data.init_cls = init_cls
        c.data.increment = increment
        c.data.train_per_class = 0
        c.data.test_per_class = 0
        c.data.image_size = 224
        c.model.source = "vit_base_patch16_224_in21k"
        c.model.preprocess = preprocess
        c.mist.epochs = 20
        c.mist.batch_size = 56
        c.mist.learning_rate = 1e-4  # the authors' value (the embedded default uses 1e-5)
        c.learner.name = learner
        if arg == "runlocal":  # a few images per class, 2 MI epochs: checks the plumbing
            c.data.train_per_class = 4
            c.data.test_per_class = 4
            c.mist.epochs = 2
            c.mist.batch_size = 8
            c.learner.ranpac_dim = 512
        elif arg:
            raise ValueError(f"Unknown variant {arg!r}; use '' or 'runlocal'.")
    return c
