"""Key lookups shared by the checkpoint converters: a named array or a clear error.

Every converter (``big_vision``, ``timm``, ``onnx_dinov2``) reads a flat ``{name: array}``
mapping of a foreign checkpoint; these two helpers turn a missing or oddly numbered key into a
ValueError that says which key, which file format and the likely cause.
"""

from __future__ import annotations

import re

import numpy as np


def get_array(flat: dict, key: str, source: str) -> np.ndarray:
    """``flat[key]`` as a numpy array (any shape, the stored dtype).

    Args:
      flat: ``{name: array}`` of one checkpoint.
      key: the name to read.
      source: the format, for the message (e.g. ``"timm safetensors"``).
    Raises:
      ValueError: ``key`` is missing; names up to three keys with the same last component and
        the usual cause (a foreign file, or a ``module.`` / ``model.`` prefix).
    """
    if key not in flat:
        near = [k for k in flat if k.split("/")[-1] == key.split("/")[-1]][:3]
        raise ValueError(
            f"{source}: key {key!r} is missing (found {len(flat)} keys"
            + (f", e.g. {near}" if near else "") + "). Likely cause: the file is not a ViT "
            "checkpoint of this format, or it was saved with a prefix (e.g. 'module.' or "
            "'model.'); strip the prefix or convert the file."
        )
    return np.asarray(flat[key])


def count_blocks(flat: dict, pattern: str) -> int:
    """Number of encoder blocks: the distinct indices that ``pattern``'s first group captures.

    Args:
      flat: ``{name: array}`` of one checkpoint.
      pattern: a regular expression matched at the start of each key, e.g.
        ``r"blocks\\.(\\d+)\\."``.
    Raises:
      ValueError: no key matches, or the indices are not ``0, 1, ..., n - 1``.
    """
    ids = {int(m.group(1)) for k in flat if (m := re.match(pattern, k))}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"Could not find consecutive encoder blocks matching {pattern!r}; "
                         "the file is not a ViT checkpoint of this format.")
    return len(ids)
