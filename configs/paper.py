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

Backbone per learner (``BACKBONE``; ``--config.model.source=...`` overrides it):

  ============  ==========================================  ==================================
  learner       reference code it follows                   backbone of the quoted number
  ============  ==========================================  ==================================
  simplecil     zhwhu/MIST models/simplecil_mist.py         vit_base_patch16_224_in21k
  ranpac        zhwhu/MIST models/ranpac_mist.py            vit_base_patch16_224_in21k
  l2p           google-research/l2p, LAMDA-PILOT l2p.py     vit_base_patch16_224_in21k (a)
  dualprompt    google-research/l2p, LAMDA-PILOT            vit_base_patch16_224_in21k (a)
  coda_prompt   GT-RIPL/CODA-Prompt, LAMDA-PILOT            vit_base_patch16_224_in21k (a)
  aper          zhoudw-zdw/RevisitingCIL (adapter)          vit_base_patch16_224_in21k (a)
  ease          sun-hailong/CVPR24-Ease                     vit_base_patch16_224_in21k
  slca          GengDavid/SLCA models/slca.py (b)           vit_base_patch16_224_in21k (a)
  ============  ==========================================  ==================================

(a) The quoted published numbers (docs/paper_runs.md) are the ViT-B/16-IN21K table of the EASE
and MOS papers, LAMDA-PILOT runs with its ``*_in21k`` backbones; LAMDA-PILOT's shipped JSONs
load timm ``vit_base_patch16_224`` (IN21k pre-trained, IN1k fine-tuned) instead: run
``--config.model.source=vit_base_patch16_224`` for those, and compare with that paper's IN1K
table, not the IN21K one. (b) SLCA follows the authors' repository (the pre-trained final norm
replaced by a fresh one trained at the slow rate, convs/vits.py; its exps/slca JSONs in
``ADAPTER_TRAINING``), while the quoted number is LAMDA-PILOT's port, which keeps the
pre-trained final norm: a known difference, stated beside the number in docs/paper_runs.md.

Sources, every setting's provenance per dataset and learner, and the published numbers:
docs/paper_runs.md.
"""

from pathlib import Path

import ml_collections

from mist_jax import learners
from mist_jax.infra import config_files

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

#: learner -> model.source: the checkpoint behind each learner's quoted number (table above).
BACKBONE = dict.fromkeys(FREEZE_RATE, "vit_base_patch16_224_in21k")

#: learner -> mist.batch_size (see the module docstring for the SimpleCIL evidence).
BATCH_SIZE = dict.fromkeys(FREEZE_RATE, 56)

#: prompt learner -> ((learning rate, batch size, epochs) on CIFAR-100, the same elsewhere):
#: LAMDA-PILOT's exps/<learner>.json and exps/<learner>_inr.json (Adam, constant rate; CODA
#: cosine), the runs behind the quoted numbers (docs/paper_runs.md).
PROMPT_TRAINING = {"l2p": ((0.03 * 16 / 256, 16, 5), (0.03 * 16 / 256, 32, 10)),
                   "dualprompt": ((1e-3, 24, 5), (1e-3, 24, 10)),
                   "coda_prompt": ((1e-3, 128, 20), (1e-3, 128, 50))}

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
        lr, batch, epochs = PROMPT_TRAINING[learner][dataset != "cifar100"]
        settings.update({f"learner.{learner}.learning_rate": lr,
                         f"learner.{learner}.batch_size": batch,
                         f"learner.{learner}.epochs": epochs})
    if learner in ADAPTER_TRAINING:
        values = dict(ADAPTER_TRAINING[learner][dataset])
        if learner == "slca":
            values["batch_size"] = _SLCA_BATCH
        settings.update({f"learner.{learner}.{k}": v for k, v in values.items()})
    return settings


def _default_config() -> ml_collections.ConfigDict:
    """The embedded default (``configs/default.py``'s ``get_config()``), loaded by file path."""
    return config_files.get_config(Path(__file__).with_name("default.py"))


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
        c.data.workers = -1  # all cores but one decode and crop 224-px JPEGs
        c.model.source = BACKBONE[a.learner]
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
