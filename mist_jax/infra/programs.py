"""Jitted programs as data: lowered and compiled on abstract inputs for their memory and FLOPs,
and exported (``jax.export``) for other platforms, without weights, data or an accelerator.

A ``Program`` is a jitted function with ``jax.ShapeDtypeStruct`` arguments (shardings
included), so ``analyse`` runs XLA's real compiler on the current backend and mesh, and
``export`` serialises its StableHLO for ``"tpu"``, ``"cuda"`` or ``"cpu"``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax import export as jax_export
from jax.experimental import roofline

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Program:
    """One jitted program of a run and how often it runs.

    Attributes:
      name: e.g. ``"mist tuning step"``.
      fn: the ``jax.jit``-ed function (its own in/out shardings and donations).
      args: its arguments as a pytree of ``jax.ShapeDtypeStruct`` (or arrays).
      batch: images per call (global, all devices).
      train_passes: calls' images per training image of a task (epochs; 1 for one pass).
      test_passes: calls' images per test image of the seen classes, per task.
    """

    name: str
    fn: Callable
    args: tuple
    batch: int
    train_passes: float = 0.0
    test_passes: float = 0.0


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` per leaf of ``tree`` (arrays, numpy arrays or structs), keeping
    a jax.Array's sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        tree)


def device_bytes(tree: Any) -> int:
    """Bytes of ``tree`` on one device: each leaf's shard (``sharding.shard_shape``) when it
    has a sharding, else the whole leaf (arrays or ``ShapeDtypeStruct``s; PRNG keys and other
    non-array leaves count 0)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if not hasattr(x, "dtype") or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            continue
        sh = getattr(x, "sharding", None)
        shape = sh.shard_shape(x.shape) if sh is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return cost or {}


def jaxpr_flops(fn: Callable, args: tuple) -> float:
    """Floating-point operations of one call of ``fn(*args)``, counted on its jaxpr by
    ``jax.experimental.roofline`` (matmuls, convolutions and elementwise ops, unfused; the
    whole program, not one device's share). Needs only abstract ``args``.

    For XLA:GPU, whose compiled ``cost_analysis()`` counts a matmul handed to cuBLAS as almost
    nothing (jax-ml/jax#22249; measured on an H200: 5.9 GFLOP per image for the ViT-B/16 MIST
    step against 212 by XLA:CPU). At ViT-B/16, 224 px the jaxpr count is 0.5% under XLA:CPU's
    for the MIST tuning step (211.0 against 212.0 GFLOP per image) and 1.2% for features
    (35.2 against 35.7); at the tiny smoke shapes about 6-13% (it skips the few ops it has no
    rule for, and elementwise work weighs more there).
    """
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_no_rule_filter)  # it logs a page per op it has no rule for
    try:
        _, result = roofline.roofline(fn)(*args)
    finally:
        absl_logger.removeFilter(_no_rule_filter)
    return float(result.unfused_flops)


def _no_rule_filter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No roofline rule")


def program_flops(fn: Callable, args: tuple, devices: int = 1, compiled=None) -> tuple[float, str]:
    """FLOPs of one call on one device and where they come from: XLA's cost analysis of the
    compiled program (``"xla"``; ``compiled`` is compiled here if not given), except on GPU,
    where it misses the cuBLAS matmuls: there ``jaxpr_flops / devices`` (``"jaxpr"``)."""
    if jax.default_backend() == "gpu":
        return jaxpr_flops(fn, args) / devices, "jaxpr"
    if compiled is None:
        compiled = fn.lower(*args).compile()
    return float(_cost(compiled).get("flops", 0.0)), "xla"


def analyse(program: Program, devices: int = 1) -> dict:
    """Lower and compile ``program`` for the current backend; its per-device memory and cost.
    ``devices``: the devices of the mesh it runs on (one partition each).

    Returns a dict: ``name``, ``batch``, ``argument_bytes``, ``output_bytes``, ``alias_bytes``
    (outputs written over donated arguments), ``temp_bytes`` (XLA's scratch: activations kept
    for the backward pass and the like), ``peak_bytes_per_device`` (arguments + outputs -
    aliased + temporaries: what one call holds at once on one device; XLA's own buffer
    assignment, not a model), ``flops_per_step`` (floating-point operations per call on one
    device: XLA's cost analysis of the compiled program, or on GPU the jaxpr count, see
    ``program_flops``), ``flops_source`` (``"xla"`` or ``"jaxpr"``), ``flops_per_image``
    (``flops_per_step x devices / batch``), ``train_passes`` and ``test_passes``.
    Raises: whatever XLA raises for a program that does not compile (e.g. out of memory on a
    real accelerator).
    """
    compiled = program.fn.lower(*program.args).compile()
    mem = compiled.memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    flops, source = program_flops(program.fn, program.args, devices, compiled)
    return {"name": program.name, "batch": program.batch, "argument_bytes": arg,
            "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
            "peak_bytes_per_device": arg + out - alias + temp, "flops_per_step": flops,
            "flops_source": source,
            "flops_per_image": flops * devices / max(program.batch, 1), "devices": devices,
            "train_passes": program.train_passes, "test_passes": program.test_passes}


def export(program: Program, platforms: Sequence[str], folder: str | Path) -> list[Path]:
    """Serialise ``program`` for each platform with ``jax.export`` (lowered here, for any
    platform: no such device is needed) into ``folder/<name>.<platform>.jax_exported``.

    The exported function takes and returns flat lists of arrays (the leaves of ``args`` and
    of the outputs, in ``jax.tree.leaves`` order), so no pytree type needs registering; it is
    unsharded (one device). Load it with ``jax.export.deserialize(bytes).call(*leaves)``.
    Returns the written paths. Raises: ValueError for an unknown platform.
    """
    leaves, tree = jax.tree.flatten(program.args)
    leaves = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    fn = getattr(program.fn, "__wrapped__", program.fn)
    flat = jax.jit(lambda *xs: jax.tree.leaves(fn(*jax.tree.unflatten(tree, xs))))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = program.name.replace(" ", "_")
    paths = []
    for platform in platforms:
        exported = jax_export.export(flat, platforms=[platform])(*leaves)
        path = folder / f"{stem}.{platform}.jax_exported"
        path.write_bytes(exported.serialize())
        paths.append(path)
    return paths
