"""Shared by the study configs: the run config of ``configs/default.py``, loaded by path (the
study configs are loaded as files by ``ml_collections.config_flags``, not as a package)."""

import importlib.util
from pathlib import Path


def default_config(arg: str = ""):
    """``configs/default.py``'s ``get_config(arg)``, unlocked for the study to adjust."""
    path = Path(__file__).resolve().parents[1] / "default.py"
    spec = importlib.util.spec_from_file_location("mist_jax_configs_default", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg)
    cfg.unlock()
    return cfg
