"""Every config file loads, is locked, and the paper configs follow the official code
(github.com/zhwhu/MIST: exps/*/*.json, models/{simplecil,ranpac}_mist.py, utils/data.py)."""

import importlib.util
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
SPEC_SPLITS = {"cifar100": ("cifar100", 10), "cub": ("caltech_birds2011", 20),
               "imagenet_r": ("imagenet_r", 20), "imagenet_a": ("imagenet_a", 20),
               "cars": ("cars196", 20)}


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "paper"], ids=lambda p: p.stem)
def test_config_is_locked_and_documented(path):
    mod = load(path)
    cfg = mod.get_config()
    assert "python -m mist_jax.main --config configs/" in mod.__doc__
    with pytest.raises(AttributeError, match="locked"):
        cfg.mist.selct_rate = 0.05
    if path.stem.startswith("paper_"):
        _, learner, dataset = path.stem.split("_", 2)
        name, inc = SPEC_SPLITS[dataset]
        assert (cfg.data.name, cfg.data.init_cls, cfg.data.increment) == (name, inc, inc)
        assert cfg.learner.name == learner and cfg.mist.enabled and cfg.mist.tasks == "all"
        assert (cfg.mist.select_rate, cfg.mist.drop_rate, cfg.mist.epochs) == (0.1, 0.9, 20)
        assert (cfg.mist.learning_rate, cfg.mist.head_learning_rate) == (1e-4, 1e-2)
        assert cfg.data.image_size == 224 and cfg.data.class_order_seed == 1993
        assert mod.get_config("runlocal").data.train_per_class == 4
        # The AugReg ViT-B/16 in21k (timm 0.6.12 vit_base_patch16_224_in21k), fed [0, 1]
        # pixels, or data-side ImageNet mean / std for Cars: never normalised in the model.
        assert cfg.model.source == "vit_base_patch16_224_in21k"
        assert cfg.model.preprocess == "none"
        assert cfg.data.transform == ("cars" if dataset == "cars" else "default")
        # Freeze rule of each learner's file: ranpac_mist.py torch.quantile(s, 1 - 0.0005),
        # simplecil_mist.py torch.quantile(s, 1) (each tensor's maximum).
        assert cfg.mist.freeze_rate == {"ranpac": 0.0005, "simplecil": 0.0}[learner]
        # 56: ranpac's JSON; simplecil's published log (configs/paper.py docstring).
        assert cfg.mist.batch_size == 56


def test_imagenet_r_configs_quote_the_published_numbers():
    for learner, avg in (("ranpac", "85.10"), ("simplecil", "80.95")):
        mod = load(next(p for p in CONFIGS if p.stem == f"paper_{learner}_imagenet_r"))
        assert avg in mod.__doc__


def test_named_paper_backbone_is_the_augreg_checkpoint():
    from mist_jax.models.pretrained import NAMED
    mod = load(next(p for p in CONFIGS if p.stem == "paper_ranpac_cifar100"))
    assert "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz" in \
        NAMED[mod.get_config().model.source]


def test_paper_config_rejects_unknown_names():
    paper_config = load(next(p for p in CONFIGS if p.stem == "paper")).paper_config
    for args, match in ((("svhn", "ranpac"), "cifar100"), (("cub", "l2p"), "simplecil"),
                        (("cub", "ranpac", "big"), "runlocal")):
        with pytest.raises(ValueError, match=match):
            paper_config(*args)


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
