"""Pytree paths: "/"-joined key paths, path-regex matching and prefix trees.

Paths are the "/"-joined dict keys of a pytree, e.g. "backbone/encoderblock_0/attn/query/kernel".
MIST's masks (mist_jax/mist/masks.py), its optimizer (mist_jax/mist/optim.py) and the device-mesh rules
(mist_jax/infra/sharding.py) all address parameters by such paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

#: Regex (re.search on the path) of MIST's projection head: its own learning rate, exempt from
#: selection, replicated on a device mesh.
HEAD = r"(^|/)head/"


def path_str(key_path) -> str:
    """Returns the "/"-joined path string of a `jax.tree_util` key path, e.g. "head/kernel"."""
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def tree_paths(tree: PyTree) -> PyTree:
    """Returns a pytree shaped like `tree` whose leaves are their "/"-joined path strings."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def compile_patterns(patterns: Sequence[str] | None) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        raise ValueError(
            f"exempt/patterns must be a sequence of regexes, got the string {patterns!r}; "
            "wrap it in a tuple: (pattern,)."
        )
    return [re.compile(p) for p in patterns]


def exempt_tree(params: PyTree, patterns: Sequence[str] | None) -> PyTree:
    """Marks the leaves whose path matches any regex in `patterns` (re.search).

    Args:
      params: any pytree (arrays or shapes); only its structure and paths are used.
      patterns: regexes; None or () matches nothing.

    Returns:
      A pytree shaped like `params` with Python bool leaves (static, usable in jit tracing).
    """
    compiled = compile_patterns(patterns)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: any(c.search(path_str(p)) for c in compiled), params
    )


def expand_prefix(prefix: PyTree | None, params: PyTree, default) -> PyTree:
    """Matches a prefix tree to the leaves of `params`; None (anywhere) stands for `default`.

    Values are checked to broadcast to each leaf's shape but are not materialised at full size
    (a scalar stays a scalar), so uncovered leaves cost no memory.

    Args:
      prefix: None, an array/scalar, or a pytree that is a prefix of `params`' structure whose
        leaves are arrays (shared by the matching subtree of `params`) or None.
      params: the full pytree whose leaves are arrays (their shapes are used).
      default: scalar used for leaves covered by None.

    Returns:
      A pytree shaped like `params` whose leaves are jnp arrays broadcastable to the leaves.

    Raises:
      ValueError: `prefix` is not a prefix of `params` or a value does not broadcast.
    """

    def fill(outer, value, subtree):
        def one(inner, leaf):
            path = tuple(outer) + tuple(inner)
            v = jnp.asarray(default if value is None else value)
            try:
                ok = jnp.broadcast_shapes(v.shape, jnp.shape(leaf)) == jnp.shape(leaf)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"value of shape {v.shape} does not broadcast to the parameter at "
                    f"{path_str(path)!r} of shape {jnp.shape(leaf)}; pass a tree matching params."
                )
            return v

        return jax.tree_util.tree_map_with_path(one, subtree)

    try:
        return jax.tree_util.tree_map_with_path(fill, prefix, params, is_leaf=lambda x: x is None)
    except ValueError as e:
        if "broadcast" in str(e):
            raise
        raise ValueError(
            "mask/count/frozen tree is not a prefix of the params tree "
            f"({jax.tree.structure(prefix, is_leaf=lambda x: x is None)} vs "
            f"{jax.tree.structure(params)}); use None for uncovered subtrees."
        ) from e


def leaf_dict(tree: PyTree) -> dict[str, Any]:
    """The leaves of any pytree (tuples and NamedTuples included, e.g. an optax state) as a
    flat ``{"00000": leaf, "00001": ...}`` dict in ``jax.tree.leaves`` order: a form every
    checkpointer can store. ``from_leaf_dict`` inverts it."""
    return {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(tree))}


def from_leaf_dict(template: PyTree, leaves: dict[str, Any]) -> PyTree:
    """The tree of ``template``'s structure holding ``leaves`` (from ``leaf_dict``).

    Raises: ValueError when the leaf count differs (a state saved by another optimizer).
    """
    treedef = jax.tree.structure(template)
    if treedef.num_leaves != len(leaves):
        raise ValueError(f"{len(leaves)} saved leaves do not fit a tree of {treedef.num_leaves} "
                         "(the checkpoint was written by another optimizer or model).")
    return jax.tree.unflatten(treedef, [leaves[k] for k in sorted(leaves)])


def sha256(tree: PyTree) -> str:
    """SHA-256 (hex) of a pytree's arrays: for each leaf in the order of its "/"-joined path
    (``path_str``), the bytes of ``f"{path}|{dtype.str}|{shape}|"`` then its C-order bytes.
    Equal for equal values whatever file format they were read from; any change of a value,
    dtype, shape or name changes it."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    leaves = sorted((path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0])
    for path, leaf in leaves:
        x = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{path}|{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()
