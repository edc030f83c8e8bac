r"""Shared settings of the paper's ten runs (docs/benchmarks.md; each learner's official file).

Not a config file by itself: ``configs/paper_<learner>_<dataset>.py`` call ``paper_config``.
Sources: the official code github.com/zhwhu/MIST (``exps/{simplecil,ranpac}_mist/*.json``,
``models/simplecil_mist.py``, ``models/ranpac_mist.py``, ``utils/data.py``) and its published
ImageNet-R logs (``logs/{simplecil,ranpac}_mist_mist_imagenetr.log``). Algorithm and
benchmark notes: ``docs/algorithm.md``, ``docs/benchmarks.md``.

Common to all ten runs:

* backbone ``vit_base_patch16_224_in21k`` at 224 px: timm 0.6.12's model of that name, the
  AugReg ViT-B/16 ImageNet-21k checkpoint
  ``B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`` (gs://vit_models/augreg/;
  on Hugging Face ``timm/vit_base_patch16_224.augreg_in21k``). Bring the file: see
  ``mist_jax.models.pretrained.NAMED``.
* 10 tasks, class order ``np.random.seed(1993); permutation(C)``; MIST on every task with 20
  MI epochs (1 scoring + 19 update epochs), select_rate 0.1, drop_rate 0.9; SGD lr 1e-4
  (head 1e-2), momentum 0.9, weight decay 5e-4 (both learner files).
* pixels: ``model.preprocess = "none"`` everywhere. CIFAR-100, CUB, ImageNet-R/A use
  ``data.transform = "default"`` (``build_transform``: RandomResizedCrop(224, scale (0.05, 1)) +
  flip, pixels in [0, 1], no normalisation). Cars-196 uses ``data.transform = "cars"``
  (``iCARS196_224``: Resize((300, 300), bicubic) + RandomCrop(224) + flip; test Resize(256) +
  CenterCrop(224); both then Normalize(ImageNet mean / std)); the normalisation is on the data
  side, so MIST's second view is taken of normalised images as in the official code.

Per learner (what each official file does, not what its JSON says):

* freeze rule, applied after each task's MI epochs to the scoring-pass Fisher scores of every
  weight tensor: ``models/ranpac_mist.py`` freezes ``s >= torch.quantile(s, 1 - 0.0005)``, the
  top 0.05% per tensor (``mist.freeze_rate = 0.0005``); ``models/simplecil_mist.py`` freezes
  ``s >= torch.quantile(s, 1)``, only each tensor's maximum, ties included
  (``mist.freeze_rate = 0.0``).
* batch size 56 for both. ``models/ranpac_mist.py`` reads ``batch_size`` (56) from its JSON.
  ``models/simplecil_mist.py`` hard-codes ``batch_size=32`` at module level, yet its published
  ImageNet-R log prints ``batch_size: 56`` and its task-0 scoring loss (epoch 1, before any
  update) is 18.086, against 18.083 in the RanPAC log (B = 56, same seed 1993 and class
  order, same pre-trained backbone). That loss depends on B: in ``Supervised_NT_xent_n`` every
  row's own zeroed diagonal entry costs -log(1e-8) = 18.42 with label-mask weight 1/(2c)
  (c: images of the row's class in the batch), in all 2 x 18.42 x E[1/(2c)] = 6.22 at B = 56
  and 9.29 at B = 32 for 20 equally likely classes, while each other -log p term falls by
  only about log(111 / 63) = 0.57 from B = 56 to B = 32 (log(2B - 1) = 4.71 vs 4.14 when all
  similarities are equal). A NumPy transcription of the loss on
  synthetic two-view features (20 classes of 120 images, 100 settings of class / image / view
  spread) puts the B = 32 epoch loss 0.49 to 1.21 above the B = 56 one in every setting
  (uniform similarities: 19.50 vs 18.78). The logs differ by 0.003, so the SimpleCIL log ran
  with B = 56, and the SimpleCIL configs use ``mist.batch_size = 56`` (set 32 to follow the
  module constant instead).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import default  # noqa: E402

#: dataset -> (TFDS name, init_cls, increment, data.transform); exps/*/<dataset>_*.json and
#: utils/data.py of the official code.
BENCHMARKS = {
    "cifar100": ("cifar100", 10, 10, "default"),
    "cub": ("caltech_birds2011", 20, 20, "default"),
    "imagenet_r": ("imagenet_r", 20, 20, "default"),
    "imagenet_a": ("imagenet_a", 20, 20, "default"),
    "cars": ("cars196", 20, 20, "cars"),
}

#: learner -> mist.freeze_rate: RanPAC freezes the top 0.05% per tensor
#: (torch.quantile(s, 1 - 0.0005)), SimpleCIL each tensor's maximum (torch.quantile(s, 1)).
FREEZE_RATE = {"ranpac": 0.0005, "simplecil": 0.0}

#: learner -> mist.batch_size (see the module docstring for the SimpleCIL evidence).
BATCH_SIZE = {"ranpac": 56, "simplecil": 56}


def paper_config(dataset: str, learner: str, arg: str = ""):
    """The locked config of one paper run; ``arg == "runlocal"`` shrinks it for a laptop.

    Raises: ValueError for an unknown dataset, learner or variant, naming the valid choices.
    """
    if dataset not in BENCHMARKS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(BENCHMARKS)}.")
    if learner not in FREEZE_RATE:
        raise ValueError(f"Unknown learner {learner!r}; choose one of {sorted(FREEZE_RATE)}.")
    c = default.get_config()
    name, init_cls, increment, transform = BENCHMARKS[dataset]
    with c.unlocked():
        c.compare_baseline = False
        c.data.name = name
        c.data.init_cls = init_cls
        c.data.increment = increment
        c.data.train_per_class = 0
        c.data.test_per_class = 0
        c.data.image_size = 224
        c.data.transform = transform
        c.model.source = "vit_base_patch16_224_in21k"
        c.model.preprocess = "none"  # [0, 1] pixels, or data-side ImageNet mean/std for Cars
        c.mist.epochs = 20
        c.mist.batch_size = BATCH_SIZE[learner]
        c.mist.freeze_rate = FREEZE_RATE[learner]
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
