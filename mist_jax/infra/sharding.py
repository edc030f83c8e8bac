"""Scale-out for MIST: device mesh, sharding rules, batch placement, multi-host setup.

One ``jax.jit`` + GSPMD path for every device count (no ``pmap``), as in big_vision:

* mesh ``("data", "fsdp")`` from ``config.mesh`` (``data = -1``: all remaining devices).
  The batch is split over both axes (``P(("data", "fsdp"))``); parameters, scores, masks,
  counts and optimizer state are replicated on ``data`` and, for leaves whose path matches an
  ``"fsdp"`` rule, sharded over ``fsdp`` along their largest divisible axis (ZeRO-3 / FSDP).
* rules: ``(regex, "fsdp" | "replicate")`` pairs, ``re.search`` on the "/"-joined path, first
  match wins; a leaf that matches no rule is an error (big_vision's "every parameter matched
  some rule"). Optimizer-state paths embed the parameter path (``.../trace/backbone/...``),
  so the same rules cover them.
* batches: each process transforms only its own rows of a global batch and
  ``jax.make_array_from_process_local_data`` assembles the global array; a batch that does not
  split evenly (the last, ragged one) is replicated instead, so no example is dropped or padded
  and the MI loss is unchanged.
* ``initialize_distributed``: ``jax.distributed.initialize()`` when the environment asks.

Nothing here changes the math: the same seed gives the same results on 1 or N devices up to
float32 summation order (tests/infra/test_sharding.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mist_jax.infra import trees

PyTree = Any
DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)
RULE_KINDS = ("fsdp", "replicate")
#: Defaults of ``config.mesh`` (also used when a config has no ``mesh`` block).
DEFAULT_RULES: tuple[tuple[str, str], ...] = ((trees.HEAD, "replicate"), (r".*", "fsdp"))
DEFAULT_FSDP_MIN_SIZE = 1 << 14


def initialize_distributed() -> bool:
    """Start multi-process JAX when the environment asks for it; safe to call more than once.

    Triggers (call before any other JAX computation):
      * ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) with ``JAX_NUM_PROCESSES`` and
        ``JAX_PROCESS_ID``: an explicit cluster, e.g. several GPU hosts;
      * ``MIST_JAX_DISTRIBUTED=1``: let JAX auto-detect the cluster (Cloud TPU pod slices,
        SLURM, Open MPI, Kubernetes).
    Processes other than 0 then log warnings only (only process 0 writes results and logs).

    Returns:
      True if JAX runs multi-process (initialised now or before), False otherwise.
    Raises:
      ValueError: ``JAX_COORDINATOR_ADDRESS`` is set without the process count or id.
    """
    if jax.distributed.is_initialized():
        return True
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = os.environ.get("MIST_JAX_DISTRIBUTED", "").lower() in ("1", "true", "yes")
    if not address and not auto:
        return False
    if address and not auto:
        try:
            count, pid = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError) as e:
            raise ValueError("JAX_COORDINATOR_ADDRESS is set: also set JAX_NUM_PROCESSES (number "
                             "of processes) and JAX_PROCESS_ID (0..N-1), or set "
                             "MIST_JAX_DISTRIBUTED=1 to auto-detect the cluster.") from e
        jax.distributed.initialize(address, num_processes=count, process_id=pid)
    else:
        jax.distributed.initialize()
    if jax.process_index() != 0:
        from absl import logging  # pylint: disable=import-outside-toplevel

        logging.set_verbosity(logging.WARNING)
    return True


def is_writer() -> bool:
    """True in the process that writes results, logs and plots (process 0)."""
    return jax.process_index() == 0


def _fsdp_spec(shape: Sequence[int], n: int, min_size: int) -> P:
    """Shard the largest axis divisible by n (the first of equals); replicate small leaves."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    axes = [a for a in range(len(shape)) if shape[a] % n == 0]
    if not axes:
        return P()
    axis = max(axes, key=lambda a: (shape[a], -a))
    return P(*([None] * axis + [FSDP]))


@dataclasses.dataclass(frozen=True)
class MeshContext:
    """A ``("data", "fsdp")`` mesh and the rules that shard pytrees on it.

    Attributes:
      mesh: the device mesh, axis names ``("data", "fsdp")``, Auto axis types (GSPMD).
      rules: ``((regex, "fsdp" | "replicate"), ...)``, first ``re.search`` match wins.
      fsdp_min_size: leaves with fewer elements stay replicated (sharding them costs more
        communication than it saves memory).
    """

    mesh: Mesh
    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE

    def __post_init__(self):
        for rule in self.rules:
            if len(rule) != 2 or rule[1] not in RULE_KINDS:
                raise ValueError(f"mesh.rules entries must be (regex, kind) with kind in "
                                 f"{RULE_KINDS}, got {rule!r}.")
            re.compile(rule[0])

    # ------------------------------------------------------------------ sizes
    @property
    def fsdp_size(self) -> int:
        return self.mesh.shape[FSDP]

    @property
    def batch_shards(self) -> int:
        """Number of pieces a global batch is cut into (data x fsdp devices)."""
        return self.mesh.shape[DATA] * self.mesh.shape[FSDP]

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    # ------------------------------------------------------------------ parameters and state
    def spec(self, path: str, shape: Sequence[int]) -> P:
        """PartitionSpec of the leaf at ``path`` (e.g. "backbone/encoderblock_0/mlp/fc1/kernel").

        Raises: ValueError if no rule matches the path (add a catch-all ``(".*", ...)`` rule).
        """
        for pattern, kind in self.rules:
            if re.search(pattern, path):
                return P() if kind == "replicate" else _fsdp_spec(shape, self.fsdp_size,
                                                                  self.fsdp_min_size)
        raise ValueError(f"No mesh rule matches the parameter/state path {path!r}; add a rule "
                         "for it or a catch-all (r'.*', 'fsdp') at the end of mesh.rules.")

    def shardings(self, tree: PyTree) -> PyTree:
        """NamedSharding per leaf of ``tree`` (arrays or ShapeDtypeStructs), by path rules."""
        return jax.tree_util.tree_map_with_path(
            lambda p, x: NamedSharding(self.mesh, self.spec(trees.path_str(p), np.shape(x))),
            tree)

    def place(self, tree: PyTree) -> PyTree:
        """``tree`` (numpy or jax leaves, PRNG keys included) laid out by ``shardings(tree)``.

        Every process must pass the same values (parameters, masks, optimizer state are
        deterministic functions of the seed on every host). Leaves already laid out are kept.
        """
        return jax.tree.map(_put, tree, self.shardings(tree))

    def replicate(self, tree: PyTree) -> PyTree:
        """``tree`` replicated on every device (readable with ``np.asarray`` on every host)."""
        return jax.tree.map(lambda x: _put(x, self.replicated), tree)

    # ------------------------------------------------------------------ batches
    def batch_sharding(self, global_size: int) -> NamedSharding:
        """Batch axis split over data x fsdp, or replicated if global_size does not divide."""
        if global_size % self.batch_shards:
            return self.replicated
        return NamedSharding(self.mesh, P(BATCH_AXES))

    def local_rows(self, global_size: int) -> slice:
        """The rows of a global batch of ``global_size`` that this process must load.

        Raises: ValueError if this process's devices hold non-contiguous rows (a mesh whose
        device order interleaves hosts; build it with ``jax.make_mesh``).
        """
        index_map = self.batch_sharding(global_size).addressable_devices_indices_map(
            (global_size,))
        rows = sorted({(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                       for s in index_map.values()})
        lo, hi = rows[0][0], rows[-1][1]
        if sum(b - a for a, b in rows) != hi - lo and len(rows) > 1:
            raise ValueError(f"Process {jax.process_index()} holds non-contiguous batch rows "
                             f"{rows}; build the mesh with jax.make_mesh (host-major order).")
        return slice(lo, hi)

    def put_batch(self, local: tuple, global_size: int) -> tuple:
        """Global arrays from this process's rows: ``(x[rows], y[rows], ...) -> (X, Y, ...)``.

        Args:
          local: numpy arrays holding ``local_rows(global_size)`` of the batch along axis 0,
            and optionally trailing non-batch leaves (e.g. a PRNG key), which are replicated.
          global_size: rows of the global batch.
        Returns:
          A tuple of jax.Arrays laid out by ``batch_sharding(global_size)`` (keys replicated).
        """
        sharding = self.batch_sharding(global_size)
        out = []
        for x in local:
            if _is_key(x):
                out.append(_put(x, self.replicated))
            else:
                x = np.asarray(x)
                out.append(jax.make_array_from_process_local_data(
                    sharding, x, (global_size,) + x.shape[1:]))
        return tuple(out)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding: NamedSharding):
    """x laid out by sharding; jax.Arrays are resharded on device, host values are copied."""
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=impl)
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if jax.process_count() == 1 or not x.is_fully_addressable:
            return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp)`` device mesh with Auto (GSPMD) axis types.

    Args:
      data: devices on the batch axis; -1 = all devices / fsdp.
      fsdp: devices each parameter leaf is sharded over.
      devices: the devices to use (default ``jax.devices()``); a single-process run may use a
        prefix of them (e.g. 1 of 8 in tests); a multi-process run must use all.
    Raises:
      ValueError: sizes that do not fit the devices (names them and the fix).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {n} devices.")
    if data == -1:
        data = n // fsdp
    if data < 1 or data * fsdp > n:
        raise ValueError(f"mesh.data x mesh.fsdp = {data} x {fsdp} does not fit the {n} devices; "
                         "use mesh.data=-1 (all remaining devices).")
    if data * fsdp < n and jax.process_count() > 1:
        raise ValueError(f"A multi-process run must use all {n} devices, not {data * fsdp}; set "
                         "mesh.data=-1.")
    return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto,) * 2,
                         devices=devices[:data * fsdp])


def from_config(cfg, devices: Sequence | None = None) -> MeshContext:
    """The ``MeshContext`` of a run config (``config.mesh``; defaults if the block is absent).

    ``config.mesh``: ``data`` (int, -1 = all), ``fsdp`` (int), ``rules`` (tuple of (regex,
    kind) pairs), ``fsdp_min_size`` (int elements).
    """
    m = cfg.get("mesh") or {}
    rules = tuple(tuple(r) for r in m.get("rules", DEFAULT_RULES))
    return MeshContext(make_mesh(int(m.get("data", -1)), int(m.get("fsdp", 1)), devices),
                       rules, int(m.get("fsdp_min_size", DEFAULT_FSDP_MIN_SIZE)))
