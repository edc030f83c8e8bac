"""What the config files share: the run config of ``configs/default.py``, loaded by path."""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

HERE = Path(__file__).resolve().parent


def default_config(arg: str = "") -> ml_collections.ConfigDict:
    """``configs/default.py``'s ``get_config(arg)``, unlocked for a study or paper config to
    adjust."""
    cfg = config_files.get_config(HERE / "default.py", arg)
    cfg.unlock()
    return cfg


def load(name: str):
    """The config file ``configs/<name>`` (e.g. ``"paper.py"``) as a module."""
    return config_files.load_module(HERE / name)
