"""Every config file loads, is locked, and configs/paper.py follows the official code
(github.com/zhwhu/MIST: exps/*/*.json, models/{simplecil,ranpac}_mist.py, utils/data.py)."""

from pathlib import Path

import pytest

from mist_jax.infra import config_files

#: The run config files (not the package's __init__ and common.py).
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))
SPEC_SPLITS = {"cifar100": ("cifar100", 10), "cub": ("caltech_birds2011", 20),
               "imagenet_r": ("imagenet_r", 20), "imagenet_a": ("imagenet_a", 20),
               "cars": ("cars196", 20)}


load = config_files.load_module


#: Arguments that build each config file (the text after ":" in --config FILE:ARG).
ARGS = {"paper": "dataset=cub,learner=ranpac"}
PROMPT_LEARNERS = ("l2p", "dualprompt", "coda_prompt")
ADAPTER_LEARNERS = ("aper", "ease", "slca")
PAPER_RUNS = [(d, l) for d in SPEC_SPLITS
              for l in ("simplecil", "ranpac", *PROMPT_LEARNERS, *ADAPTER_LEARNERS)]


def paper(arg):
    return load(next(p for p in CONFIGS if p.stem == "paper")).get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_locked_and_documented(path):
    mod = load(path)
    cfg = mod.get_config(ARGS.get(path.stem, ""))
    assert "python -m mist_jax.main --config configs/" in mod.__doc__
    with pytest.raises(AttributeError, match="locked"):
        cfg.mist.selct_rate = 0.05


@pytest.mark.parametrize("dataset,learner", PAPER_RUNS, ids=[f"{d}-{l}" for d, l in PAPER_RUNS])
def test_paper_config_follows_the_official_files(dataset, learner):
    cfg = paper(f"dataset={dataset},learner={learner}")
    with pytest.raises(AttributeError, match="locked"):
        cfg.mist.selct_rate = 0.05
    name, inc = SPEC_SPLITS[dataset]
    assert (cfg.data.name, cfg.data.init_cls, cfg.data.increment) == (name, inc, inc)
    assert cfg.learner.name == learner and cfg.mist.enabled and cfg.mist.tasks == "all"
    assert (cfg.mist.select_rate, cfg.mist.drop_rate, cfg.mist.epochs) == (0.1, 0.9, 20)
    assert (cfg.mist.learning_rate, cfg.mist.head_learning_rate) == (1e-4, 1e-2)
    assert cfg.data.image_size == 224 and cfg.data.class_order_seed == 1993
    assert (cfg.data.train_per_class, cfg.data.test_per_class) == (0, 0)
    # The AugReg ViT-B/16 in21k (timm 0.6.12 vit_base_patch16_224_in21k), fed [0, 1]
    # pixels, or data-side ImageNet mean / std for Cars: never normalised in the model.
    assert cfg.model.source == "vit_base_patch16_224_in21k"
    assert cfg.model.preprocess == "none"
    assert cfg.data.transform == ("cars" if dataset == "cars" else "default")
    # Freeze rule of each learner's file: ranpac_mist.py torch.quantile(s, 1 - 0.0005),
    # simplecil_mist.py torch.quantile(s, 1) (each tensor's maximum).
    # Image learners take SimpleCIL's MIST settings (no official file exists for them).
    assert cfg.mist.freeze_rate == (0.0005 if learner == "ranpac" else 0.0)
    # 56: ranpac's JSON; simplecil's published log (configs/paper.py docstring).
    assert cfg.mist.batch_size == 56


@pytest.mark.parametrize("flag", ["runlocal", "runlocal=True", " runlocal = true "])
def test_paper_runlocal_shrinks_only_the_sizes(flag):
    full = paper("dataset=cub,learner=simplecil")
    small = paper(f"dataset=cub,learner=simplecil,{flag}")
    assert (small.data.train_per_class, small.data.test_per_class) == (4, 4)
    assert small.mist.epochs < full.mist.epochs and small.mist.batch_size < full.mist.batch_size
    assert small.data.name == full.data.name and small.mist.freeze_rate == full.mist.freeze_rate
    assert paper("dataset=cub,learner=simplecil,runlocal=false").to_dict() == full.to_dict()


def _paper_docs() -> str:
    """configs/paper.py's docstring and docs/paper_runs.md, where its sources and numbers are."""
    paper_py = next(p for p in CONFIGS if p.stem == "paper")
    return load(paper_py).__doc__ + (paper_py.parents[1] / "docs" / "paper_runs.md").read_text()


def test_paper_config_documents_every_run_and_the_published_numbers():
    doc = _paper_docs()
    for dataset in SPEC_SPLITS:
        assert f"dataset={dataset}" in doc
    for learner, avg, last in (("ranpac", "85.10", "81.00"), ("simplecil", "80.95", "75.20")):
        assert avg in doc and last in doc
    assert "configs/paper.py:dataset=imagenet_r,learner=ranpac --workdir" in doc


@pytest.mark.parametrize("learner", PROMPT_LEARNERS)
def test_paper_prompt_learners_train_as_their_papers(learner):
    """LAMDA-PILOT's exps/<learner>.json (CIFAR-100) and <learner>_inr.json (the rest), the runs
    behind the quoted numbers: L2P 0.001875 (= 0.03 x 16 / 256) at 16 / 32 images for 5 / 10
    epochs, DualPrompt 0.001 at 24 for 5 / 10, CODA 0.001 at 128 for 20 / 50; runlocal shrinks
    only the sizes."""
    want = {"l2p": {"cifar100": (0.001875, 16, 5), "imagenet_r": (0.001875, 32, 10)},
            "dualprompt": {"cifar100": (0.001, 24, 5), "imagenet_r": (0.001, 24, 10)},
            "coda_prompt": {"cifar100": (0.001, 128, 20), "imagenet_r": (0.001, 128, 50)},
            }[learner]
    for dataset, (lr, batch, epochs) in want.items():
        block = paper(f"dataset={dataset},learner={learner}").learner[learner]
        assert (block.batch_size, block.epochs) == (batch, epochs)
        assert block.learning_rate == pytest.approx(lr, rel=1e-12)
    lr = want["imagenet_r"][0]
    small = paper(f"dataset=cub,learner={learner},runlocal").learner[learner]
    assert (small.epochs, small.batch_size) == (1, 8)
    assert small.learning_rate == pytest.approx(lr, rel=1e-12)
    if learner == "l2p":  # the reference's 5 tokens per prompt; 1 on the 56 px default
        assert small.length == 5 and load(CONFIGS[0].with_name("default.py")).get_config(
            ).learner.l2p.length == 1


def test_paper_config_quotes_the_prompt_learners_published_numbers():
    doc = _paper_docs()
    for row in ("| l2p | 75.46 | 69.77 |", "| dualprompt | 73.10 | 67.18 |",
                "| coda_prompt | 77.97 | 72.27 |"):
        assert row in doc


#: Values typed from the reference JSONs (RevisitingCIL exps/aper_adapter/*, CVPR24-Ease
#: exps/ease_*_in21k.json, GengDavid/SLCA exps/slca/slca_*.json; SLCA's batch from its code).
REFERENCE_JSON = {
    ("aper", "imagenet_r"): dict(learning_rate=0.05, weight_decay=0.005, batch_size=24, epochs=20),
    ("aper", "cifar100"): dict(learning_rate=0.01, weight_decay=0.0005, batch_size=48, epochs=20),
    ("ease", "imagenet_r"): dict(learning_rate=0.05, batch_size=16, weight_decay=0.005,
                                 alpha=0.1, epochs=20),
    ("ease", "cub"): dict(learning_rate=0.008, batch_size=32, weight_decay=0.0005, alpha=0.05,
                          epochs=20),
    ("ease", "cifar100"): dict(learning_rate=0.025, batch_size=48, alpha=0.1, epochs=20),
    ("slca", "cifar100"): dict(epochs=20, milestones=(18,), ca_epochs=5, batch_size=128,
                               ca_with_logit_norm=0.1, learning_rate=0.01),
    ("slca", "imagenet_r"): dict(epochs=50, milestones=(40,), ca_with_logit_norm=0.1),
    ("slca", "cars"): dict(epochs=50, milestones=(40,), ca_with_logit_norm=0.05),
}


@pytest.mark.parametrize("learner,dataset", sorted(REFERENCE_JSON))
def test_paper_adapter_learners_take_their_reference_json(learner, dataset):
    block = paper(f"dataset={dataset},learner={learner}").learner[learner]
    for key, want in REFERENCE_JSON[learner, dataset].items():
        assert block[key] == (pytest.approx(want) if isinstance(want, float) else want), key
    small = paper(f"dataset={dataset},learner={learner},runlocal").learner[learner]
    assert (small.epochs, small.batch_size) == (1, 8)


def test_paper_config_quotes_the_adapter_learners_published_numbers():
    doc = _paper_docs()
    for row in ("| aper (adapter) | 75.82 | 67.95 |", "| ease | 81.74 | 76.17 |",
                "| slca | 81.17 | 77.00 |"):
        assert row in doc


def test_named_paper_backbone_is_the_augreg_checkpoint():
    from mist_jax.models.pretrained import NAMED
    assert "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz" in \
        NAMED[paper("dataset=cifar100,learner=ranpac").model.source]


@pytest.mark.parametrize("arg,match", [
    ("", r"needs dataset=<cifar100 \| cub .*got no dataset"),
    ("learner=ranpac", "got no dataset"),
    ("dataset=cub", r"learner=<ranpac \| simplecil \| l2p \| dualprompt \| coda_prompt \| aper "
                    r"\| ease \| slca>.*got no learner"),
    ("dataset=svhn,learner=ranpac", "cifar100.*got unknown dataset 'svhn'"),
    ("dataset=cub,learner=finetune", "simplecil.*got unknown learner 'finetune'"),
    ("dataset=cub,learner=ranpac,big", "Unknown config argument 'big'.*dataset, learner, runlocal"),
    ("dataset=cub,learner=ranpac,seed=3", "valid keys: dataset, learner, runlocal"),
    ("dataset=cub,learner=ranpac,runlocal=maybe", "flag"),
    ("dataset,learner=ranpac", "needs a value"),
    ("dataset=cub,dataset=cars,learner=ranpac", "twice"),
])
def test_paper_config_rejects_bad_arguments(arg, match):
    with pytest.raises(ValueError, match=match):
        paper(arg)


def test_paper_config_through_config_flags():
    """``--config configs/paper.py:ARG`` hands ARG to get_config; overrides stay checked."""
    from absl import flags
    from ml_collections import config_flags
    path = next(p for p in CONFIGS if p.stem == "paper")

    def parse(*args):
        argv = ["prog", *args]
        fv = flags.FlagValues()
        holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                                 lock_config=True, sys_argv=argv)
        fv(argv)
        return holder.value

    cfg = parse(f"--config={path}:dataset=imagenet_r,learner=ranpac,runlocal",
                "--config.mist.select_rate=0.05")
    assert (cfg.data.name, cfg.learner.name, cfg.mist.select_rate) == ("imagenet_r", "ranpac", 0.05)
    assert cfg.data.train_per_class == 4
    with pytest.raises(flags.IllegalFlagValueError, match="valid keys: dataset, learner"):
        parse(f"--config={path}:dataset=cub,learner=ranpac,foo=1")
    with pytest.raises(AttributeError, match="select_rate"):
        parse(f"--config={path}:dataset=cub,learner=ranpac", "--config.mist.selct_rate=1")


#: Notes that live outside the repository (spelt in pieces so this file does not match itself).
OUTSIDE = ("MIST" "_SPEC", "OFFLINE" "_ASSETS", "ARCHITECTURE" ".md", "/work/" "shared",
           "../" "shared")


def test_no_references_to_files_outside_the_repository():
    root = CONFIGS[0].parents[1]
    skip = {".venv", ".git", "runs", "build"}
    files = [f for ext in ("py", "md", "ipynb", "sh", "toml", "cfg", "txt")
             for f in root.rglob(f"*.{ext}")
             if not skip & set(f.relative_to(root).parts) and "egg-info" not in str(f)]
    assert len(files) > 50
    for f in files:
        text = f.read_text(errors="replace")
        for name in OUTSIDE:
            assert name not in text, f"{f.relative_to(root)} mentions {name}"
