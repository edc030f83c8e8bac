"""Every config file loads, is locked, and the paper configs follow MIST_SPEC Sec. 4."""

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


def test_imagenet_r_configs_quote_the_published_numbers():
    for learner, avg in (("ranpac", "85.10"), ("simplecil", "80.95")):
        mod = load(next(p for p in CONFIGS if p.stem == f"paper_{learner}_imagenet_r"))
        assert avg in mod.__doc__
