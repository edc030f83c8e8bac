r"""The paper's runs: SimpleCIL, RanPAC or a prompt learner + MIST on five benchmarks, ViT-B/16.

Command (one dataset and one learner per run; docs/benchmarks.md)::

  python -m mist_jax.main --config configs/paper.py:dataset=imagenet_r,learner=ranpac --workdir runs/paper_ranpac_imagenet_r

The text after ``:`` is comma-separated ``key=value`` items and bare flags (``parse_arg``):

* ``dataset`` (required): ``cifar100``, ``cub``, ``imagenet_r``, ``imagenet_a`` or ``cars``;
* ``learner`` (required): ``simplecil``, ``ranpac`` (the two learners the authors released with
  MIST), or ``l2p``, ``dualprompt``, ``coda_prompt`` (prompt learners, below);
* ``runlocal`` (flag, default False): a few images per class, 2 MI epochs, batch 8 and a
  512-wide RanPAC projection (prompt learners: 1 epoch at batch 8), to check the plumbing on a
  laptop, e.g.
  ``--config configs/paper.py:dataset=cub,learner=simplecil,runlocal``.

A missing dataset or learner, an unknown value or an unknown key is a ValueError naming the
choices. Any config key can still be overridden (``--config.mist.select_rate=0.05``); add
``--config.mist.enabled=False`` for the same learner without MIST. Each run needs the backbone
file (see ``mist_jax.models.pretrained.NAMED``) and the TFDS dataset prepared in
``--config.data.data_dir`` (or ``--config.data.name=folder:/path/to/split`` for the authors' own
file lists).

Sources: the official code github.com/zhwhu/MIST (``exps/{simplecil,ranpac}_mist/*.json``,
``models/simplecil_mist.py``, ``models/ranpac_mist.py``, ``utils/data.py``) and its published
ImageNet-R logs (``logs/{simplecil,ranpac}_mist_mist_imagenetr.log``). Algorithm and
benchmark notes: ``docs/algorithm.md``, ``docs/benchmarks.md``.

Common to all runs:

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
  with B = 56, and the SimpleCIL runs use ``mist.batch_size = 56`` (set 32 to follow the
  module constant instead).

Prompt learners (``learner=l2p|dualprompt|coda_prompt``). The authors released no MIST code
for them; the paper puts MIST in front of L2P and DualPrompt as in front of SimpleCIL, so these
runs take SimpleCIL's MIST settings (freeze rule ``mist.freeze_rate = 0.0``, batch 56) and then
train the prompts and classifier on the tuned, frozen backbone, which is also the query
backbone. The learner's own training follows its paper: Adam, batch 128, constant learning rate
0.03 x 128 / 256 = 0.015 for L2P and DualPrompt (L2P's rate at batch 256, scaled as the L2P
code scales it) and 1e-3 for CODA-Prompt (with the CODA code's per-epoch cosine); 5 epochs on
CIFAR-100 (20 for CODA-Prompt) and 50 on the other four datasets (the DualPrompt and CODA
papers' ImageNet-R schedule). Pool sizes, prompt lengths and layers are the learner modules'
defaults (LAMDA-PILOT's settings). LAMDA-PILOT's own JSON files, behind the published numbers
below, are not in this repository's sources; a framework derived from LAMDA-PILOT quotes its
``l2p.json`` (CIFAR-100) as batch 16, 5 epochs, learning rate 0.001875 = 0.03 x 16 / 256, Adam,
constant: the same rate per image as here. Published, ImageNet-R, 10 tasks,
ViT-B/16 IN21k, without MIST, as reported in the table of the MOS paper (Sun et al., AAAI 2025;
LAMDA-PILOT runs), average / last accuracy:

  | learner | average_accuracy | last_accuracy |
  |---|---|---|
  | l2p | 75.46 | 69.77 |
  | dualprompt | 73.10 | 67.18 |
  | coda_prompt | 77.97 | 72.27 |

Adapter and slow learners (``learner=aper|ease|slca``). As the prompt learners: SimpleCIL's
MIST settings (freeze 0.0, batch 56) on every task, then the learner's own training with its
reference JSON's settings per dataset (``ADAPTER_TRAINING``; a dataset without a JSON takes the
closest one, named there): APER with its adapter module (zhoudw-zdw/RevisitingCIL
``exps/aper_adapter/*_vit-b_adapter.json``: 20 epochs, SGD, cosine), EASE
(sun-hailong/CVPR24-Ease ``exps/ease_*_in21k.json``: 20 epochs per task, SGD, cosine) and SLCA
(GengDavid/SLCA ``exps/slca/slca_*.json``: batch 128, 20 epochs with the decay at 18 on
CIFAR-100, 50 with the decay at 40 elsewhere, 5 alignment epochs). SLCA trains the backbone
itself after MIST (learners/slca.py says what that means). Published, ImageNet-R, 10 tasks,
ViT-B/16 IN21k, without MIST, MOS paper's table, average / last accuracy:

  | learner | average_accuracy | last_accuracy |
  |---|---|---|
  | aper (adapter) | 75.82 | 67.95 |
  | ease | 81.74 | 76.17 |
  | slca | 81.17 | 77.00 |

Per dataset: official JSONs (``exps/simplecil_mist/...``, ``exps/ranpac_mist/...``), split and
the authors' published numbers. The official repository publishes logs for ImageNet-R only;
for the other four datasets see the paper's main table (arXiv 2505.19943), no curve is quoted.

* ``dataset=cifar100``: CIFAR-100, 10 tasks of 10 (TFDS ``cifar100``, its train / test).
  JSONs ``cifar_simplecil.json``, ``cifar_ranpac_mist.json``. Published: paper table only.
* ``dataset=cub``: CUB-200-2011, 10 tasks of 20 (TFDS ``caltech_birds2011``, the dataset's
  official train / test). JSONs ``cub_simplecil.json``, ``cub_ranpac_mist.json``. Published:
  paper table only.
* ``dataset=imagenet_r``: ImageNet-R, 10 tasks of 20 (TFDS ``imagenet_r``). JSONs
  ``imagenetr_simplecil.json``, ``imagenetr_ranpac_mist.json``. Split: the TFDS test split,
  seeded per-class 80/20 train/test (or the authors' own split through ``folder:``).
  Published: the authors' logs (``logs/{simplecil,ranpac}_mist_mist_imagenetr.log``; one GPU,
  about 8 min per task); MI loss: task 0's scoring / first update / last update epoch:

  | learner | top1_curve (after tasks 1 .. 10) | average_accuracy | last_accuracy | MI loss |
  |---|---|---|---|---|
  | simplecil | 92.31 86.53 84.33 81.75 79.26 78.38 78.55 77.14 76.07 75.20 | 80.95 | 75.20 | 18.086 / 14.982 / 13.107 |
  | ranpac | 92.89 90.23 87.49 86.51 83.89 82.83 82.65 81.91 81.65 81.00 | 85.10 | 81.00 | 18.083 / 14.762 / 12.088 |

* ``dataset=imagenet_a``: ImageNet-A, 10 tasks of 20 (TFDS ``imagenet_a``). JSONs
  ``imageneta_simplecil.json``, ``imageneta_ranpac_mist.json``. Split: the TFDS test split,
  seeded per-class 80/20 train/test (or the authors' own split through ``folder:``).
  Published: paper table only.
* ``dataset=cars``: Cars-196, 9 tasks of 20 + one of 16 (TFDS ``cars196``, train / test;
  ``data.manual_dir`` reads the original Stanford Cars files). JSONs ``cars_simplecil.json``,
  ``cars_ranpac_mist.json``. Published: paper table only.
"""

import importlib.util
from pathlib import Path

import ml_collections

from mist_jax import learners

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
#: (torch.quantile(s, 1 - 0.0005)), SimpleCIL each tensor's maximum (torch.quantile(s, 1));
#: prompt learners take SimpleCIL's MIST settings.
FREEZE_RATE = {"ranpac": 0.0005, "simplecil": 0.0, "l2p": 0.0, "dualprompt": 0.0,
               "coda_prompt": 0.0, "aper": 0.0, "ease": 0.0, "slca": 0.0}

#: learner -> mist.batch_size (see the module docstring for the SimpleCIL evidence).
BATCH_SIZE = dict.fromkeys(FREEZE_RATE, 56)

#: prompt learner -> (learning rate, epochs on CIFAR-100, epochs elsewhere) at batch 128
#: (Adam; the module docstring gives the sources).
PROMPT_TRAINING = {"l2p": (0.03 * 128 / 256, 5, 50), "dualprompt": (0.03 * 128 / 256, 5, 50),
                   "coda_prompt": (1e-3, 20, 50)}

#: learner -> dataset -> its block's settings from the reference JSON of that dataset.
_APER_IMAGENET_R = {"learning_rate": 0.05, "weight_decay": 0.005, "batch_size": 24}
_APER_OTHERS = {"learning_rate": 0.01, "weight_decay": 5e-4, "batch_size": 48}  # cifar/cub/ina
_EASE = {  # ease_{cifar,cub,ina,inr}_in21k.json; Cars has none: CUB's
    "cifar100": {"learning_rate": 0.025, "batch_size": 48, "weight_decay": 5e-4, "alpha": 0.1},
    "cub": {"learning_rate": 0.008, "batch_size": 32, "weight_decay": 5e-4, "alpha": 0.05},
    "imagenet_a": {"learning_rate": 0.05, "batch_size": 32, "weight_decay": 0.005, "alpha": 0.1},
    "imagenet_r": {"learning_rate": 0.05, "batch_size": 16, "weight_decay": 0.005, "alpha": 0.1},
}
_SLCA_50 = {"epochs": 50, "milestones": (40,), "ca_with_logit_norm": 0.1}  # cub, imgnetr
ADAPTER_TRAINING = {
    "aper": {d: dict(_APER_IMAGENET_R if d == "imagenet_r" else _APER_OTHERS, epochs=20,
                     module="adapter")  # Cars has no JSON: the CIFAR / CUB / ImageNet-A one
             for d in ("cifar100", "cub", "imagenet_r", "imagenet_a", "cars")},
    "ease": {**{d: dict(v, epochs=20) for d, v in _EASE.items()},
             "cars": dict(_EASE["cub"], epochs=20)},
    "slca": {"cifar100": {"epochs": 20, "milestones": (18,), "ca_with_logit_norm": 0.1},
             "cub": _SLCA_50, "imagenet_r": _SLCA_50,
             "imagenet_a": _SLCA_50,  # no JSON: ImageNet-R's
             "cars": dict(_SLCA_50, ca_with_logit_norm=0.05)},
}
_SLCA_BATCH = 128  # GengDavid/SLCA models/slca.py

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
    """``get_config``'s string argument as a ConfigDict, in big_vision's ``parse_arg`` style.

    ``arg`` holds comma-separated ``key=value`` items and bare flags, e.g.
    ``"dataset=cub,learner=ranpac,runlocal"``. Every key must be one of ``defaults``; a value
    takes the type of its default (a default of None: a string). A bare word sets a bool key to
    True; a bool value reads true / false / 1 / 0 / yes / no in any case. Keys not given keep
    their defaults.

    Raises: ValueError for an unknown or repeated key (naming the valid keys), a bare word for
    a key that is not a bool, or a value its type does not accept.
    """
    values, given = dict(defaults), set()
    for item in (s.strip() for s in (arg or "").split(",")):
        if not item:
            continue
        key, eq, text = (s.strip() for s in item.partition("="))
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r} in {arg!r}; valid keys: "
                             f"{', '.join(defaults)}.")
        if key in given:
            raise ValueError(f"Config argument {key!r} given twice in {arg!r}.")
        given.add(key)
        default = defaults[key]
        if isinstance(default, bool):
            if not eq or text.lower() in _TRUE:
                values[key] = True
            elif text.lower() in _FALSE:
                values[key] = False
            else:
                raise ValueError(f"Config argument {key!r} is a flag (bare, =true or =false); "
                                 f"got {text!r}.")
        elif not eq:
            raise ValueError(f"Config argument {key!r} needs a value: {key}=...")
        else:
            try:
                values[key] = text if default is None else type(default)(text)
            except ValueError as e:
                raise ValueError(f"Config argument {key}={text!r}: {e}") from None
    return ml_collections.ConfigDict(values, type_safe=False)


def learner_settings(dataset: str, learner: str) -> dict:
    """What a paper run sets per learner, as dotted config keys: ``learner.name``, MIST's freeze
    rate and batch size, and an image learner's training settings (``runlocal`` aside).
    Raises: KeyError for a learner not in ``FREEZE_RATE``."""
    settings = {"learner.name": learner, "mist.freeze_rate": FREEZE_RATE[learner],
                "mist.batch_size": BATCH_SIZE[learner]}
    if learner in PROMPT_TRAINING:
        lr, cifar_epochs, epochs = PROMPT_TRAINING[learner]
        settings.update({f"learner.{learner}.learning_rate": lr,
                         f"learner.{learner}.batch_size": 128,
                         f"learner.{learner}.epochs": cifar_epochs if dataset == "cifar100"
                         else epochs})
    if learner in ADAPTER_TRAINING:
        values = dict(ADAPTER_TRAINING[learner][dataset])
        if learner == "slca":
            values["batch_size"] = _SLCA_BATCH
        settings.update({f"learner.{learner}.{k}": v for k, v in values.items()})
    return settings


def _default_config() -> ml_collections.ConfigDict:
    """The embedded default (``configs/default.py``'s ``get_config()``), loaded by file path."""
    path = Path(__file__).with_name("default.py")
    spec = importlib.util.spec_from_file_location("mist_jax_configs_default", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The locked config of one paper run: ``arg = "dataset=..,learner=..[,runlocal]"``.

    Raises: ValueError for a missing or unknown dataset or learner, or an unknown key, naming
    the valid choices.
    """
    a = parse_arg(arg, dataset=None, learner=None, runlocal=False)
    usage = (f"configs/paper.py needs dataset=<{' | '.join(BENCHMARKS)}> and "
             f"learner=<{' | '.join(FREEZE_RATE)}>, e.g. "
             "configs/paper.py:dataset=imagenet_r,learner=ranpac (flag: runlocal)")
    if a.dataset not in BENCHMARKS:
        what = "no dataset" if a.dataset is None else f"unknown dataset {a.dataset!r}"
        raise ValueError(f"{usage}; got {what}.")
    if a.learner not in FREEZE_RATE:
        what = "no learner" if a.learner is None else f"unknown learner {a.learner!r}"
        raise ValueError(f"{usage}; got {what}.")
    c = _default_config()
    name, init_cls, increment, transform = BENCHMARKS[a.dataset]
    with c.unlocked():
        for learner_name, cls in learners.LEARNERS.items():  # reference values, not the
            c.learner[learner_name] = cls.default_config()  # embedded stream's (L2P length)
        c.compare_baseline = False
        c.checkpoint_every_steps = 200  # a paper task is minutes of accelerator time
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
        c.mist.learning_rate = 1e-4  # the authors' value (the embedded default uses 1e-5)
        c.update_from_flattened_dict(learner_settings(a.dataset, a.learner))
        if a.runlocal:  # a few images per class, 2 MI epochs: checks the plumbing
            c.data.train_per_class = 4
            c.data.test_per_class = 4
            c.mist.epochs = 2
            c.mist.batch_size = 8
            c.learner.ranpac.num_projections = 512
            if a.learner in PROMPT_TRAINING or a.learner in ADAPTER_TRAINING:
                c.learner[a.learner].epochs = 1
                c.learner[a.learner].batch_size = 8
                if a.learner == "slca":
                    c.learner.slca.milestones = (1,)
    return c
