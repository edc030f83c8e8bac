"""Config files (``configs/*.py``) are Python modules loaded by path, as ml_collections'
``--config FILE[:ARG]`` flag loads them: they work from any folder, importable or not. This is
the one loader for everything else that reads them (config files built on others, the study
tool, the notebook, the tests)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import ml_collections


def load_module(path: str | os.PathLike) -> ModuleType:
    """The config file at ``path`` as a fresh module. Raises FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} not found.")
    spec = importlib.util.spec_from_file_location(f"mist_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(path: str | os.PathLike, arg: str = "") -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the config file at ``path`` (``get_config()`` when ``arg`` is
    empty), as ``--config path:arg`` builds it."""
    module = load_module(path)
    return module.get_config(arg) if arg else module.get_config()
