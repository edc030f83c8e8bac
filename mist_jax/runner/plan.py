"""The dry run (``python -m mist_jax.main ... --dry_run``): every jitted program of a run
lowered and compiled at the config's true shapes on the current backend and mesh, with no
weights and no data, and what that says about an accelerator.

Parameters come from ``jax.eval_shape`` (``build.abstract_backbone``), batches are
``jax.ShapeDtypeStruct``s laid out as the run lays them out; XLA's ``memory_analysis()`` gives
each program's per-device memory and ``cost_analysis()`` its FLOPs (``infra/programs.py``).
The time estimate multiplies each program's FLOPs per image by the images it sees in the run
(epochs x the task's training images, and the seen classes' test images per evaluation) and
divides by the accelerator's peak (``infra/accelerators.py``) x ``plan.mfu``. Host work (image
decoding, RanPAC's ridge solve, checkpoints) is not in it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from mist_jax import mist
from mist_jax.data import splits
from mist_jax.infra import accelerators, programs, seeds, sharding
from mist_jax.mist import ablations, masks
from mist_jax.runner import outputs, validate
from mist_jax.runner.build import abstract_backbone, build_learner, build_tuner
from mist_jax.runner.evaluate import jit_forward

#: TFDS name -> (classes, training images, test images) as a run splits them
#: (docs/benchmarks.md; ImageNet-R / -A: the seeded per-class 80/20 split of their one split).
SIZES = {"cifar100": (100, 50000, 10000), "caltech_birds2011": (200, 5994, 5794),
         "imagenet_r": (200, 24000, 6000), "imagenet_a": (200, 6000, 1500),
         "cars196": (196, 8144, 8041)}
#: Programs exported by ``plan.export`` (MIST's steps, the ones an accelerator spends its time on).
EXPORTED = ("mist scoring step", "mist tuning step")


#: XLA:CPU's default scheduler favours concurrency over memory and keeps rematerialised
#: activations alive; TPU and GPU compilers schedule for memory. Off for a dry run on CPU.
CPU_SCHEDULE_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def memory_aware_cpu_schedule() -> None:
    """Add ``CPU_SCHEDULE_FLAG`` to ``XLA_FLAGS`` (only before JAX's backend starts; a flag the
    user set is kept)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_SCHEDULE_FLAG}".strip()


class DoesNotFit(ValueError):
    """A program's peak memory exceeds the accelerator's (the message names the fix)."""


def dataset_size(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(classes, training images, test images) of the run: ``SIZES`` for the paper's data
    sets (``data.train_per_class`` / ``test_per_class`` cap them), else read from the data
    itself (``tasks.load_data``: the embedded default and folders are local)."""
    d = cfg.data
    if d.name in SIZES:
        classes, train, test = SIZES[d.name]
        if d.train_per_class:
            train = min(train, classes * d.train_per_class)
        if d.test_per_class:
            test = min(test, classes * d.test_per_class)
        return classes, train, test
    from mist_jax.data import tasks  # pylint: disable=import-outside-toplevel

    data = tasks.load_data(cfg)
    return data.num_classes, len(data.train_idx), len(data.test_idx)


def _batch(mesh: sharding.MeshContext, size: int, side: int, key: bool) -> tuple:
    """An abstract global batch (images float32[B, S, S, 3], labels int32[B][, key])."""
    sh = mesh.batch_sharding(size)
    out = (jax.ShapeDtypeStruct((size, side, side, 3), jnp.float32, sharding=sh),
           jax.ShapeDtypeStruct((size,), jnp.int32, sharding=sh))
    if key:
        out += (jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype,
                                     sharding=mesh.replicated),)
    return out


def _placed(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def run_programs(cfg: ml_collections.ConfigDict, mesh: sharding.MeshContext, classes: int
                 ) -> tuple[list[programs.Program], dict]:
    """The run's programs at its shapes (``classes``: the data set's, ``dataset_size``), and
    what the run holds on each device beside them (``{"params", "mist_state",
    "scores_and_mask", "learner_state"}`` in bytes)."""
    model, backbone, preprocess = abstract_backbone(cfg)
    ranges = splits.task_ranges(classes, cfg.data.init_cls, cfg.data.increment)
    learner = build_learner(cfg, num_classes=classes, num_tasks=len(ranges), model=model,
                            preprocess=preprocess)
    tuning = learner.tuning(cfg.mist)
    mist_cfg = tuning or cfg.mist
    out_dim = (classes if mist_cfg.objective == "ce" or ablations.requested(mist_cfg)
               else mist_cfg.proj_dim)
    head = jax.eval_shape(lambda k: mist.init_head(k, model.width, out_dim), jax.random.key(0))
    params = _placed({"backbone": backbone, "head": head},
                     mesh.shardings({"backbone": backbone, "head": head}))
    state = jax.eval_shape(masks.init_mist_state, params)
    state = masks.MistState(*(_placed(x, mesh.shardings(x)) for x in state))
    side, size = cfg.data.image_size, cfg.learner.eval_batch_size
    out = []
    if tuning is not None:
        tuner = build_tuner(mist_cfg, model, preprocess, params, mesh, out_dim)
        b = mist_cfg.batch_size
        batch = _batch(mesh, b, side, key=True)
        score_steps = getattr(tuner, "score_steps", None)
        if score_steps is not None and mist_cfg.selector != "fish":
            out.append(programs.Program("mist scoring step", score_steps[1],
                                        (params, params, batch, state.frozen), b, 1))
        opt = _placed(jax.eval_shape(tuner.tx.init, params), tuner.opt_shardings)
        out.append(programs.Program("mist tuning step", tuner.step, (params, opt, batch), b,
                                    max(mist_cfg.epochs - 1, 0)))
    images = _batch(mesh, size, side, key=False)[0]
    out.append(programs.Program("features", jit_forward(model, preprocess, mesh, params),
                                (params["backbone"], images), size, 1, 1))
    # Built for real (no weights; a second at most): jax.Array leaves live on the device, numpy
    # ones (RanPAC's Gram matrix) on the host.
    lstate = learner.init(seeds.key(cfg.seed, "learner"), model.width)
    out += learner.programs(programs.abstract(lstate), params["backbone"], images, classes)
    held = {"params": programs.device_bytes(params),
            "mist_state": programs.device_bytes(tuple(state)),
            "scores_and_mask": programs.device_bytes(params) + programs.device_bytes(
                state.frozen) if tuning is not None else 0,
            "learner_state": programs.device_bytes([x for x in jax.tree.leaves(lstate)
                                                    if isinstance(x, jax.Array)])}
    return out, held


def estimate_seconds(cfg: ml_collections.ConfigDict, rows: list[dict], devices: int,
                     peak: float, mfu: float, size: tuple[int, int, int]) -> dict:
    """``{"per_task", "run"}`` seconds of device compute: sum over programs of FLOPs per image
    x images in the run / (devices x peak x mfu). Images: ``train_passes`` x every training
    image + ``test_passes`` x the seen classes' test images at each task's evaluation;
    ``size``: (classes, training images, test images), ``dataset_size``."""
    classes, train, test = size
    ranges = splits.task_ranges(classes, cfg.data.init_cls, cfg.data.increment)
    test_seen = sum(test * end / classes for _, end in ranges)
    flops = sum(r["flops_per_image"] * (r["train_passes"] * train + r["test_passes"] * test_seen)
                for r in rows)
    run = flops / (devices * peak * mfu)
    return {"per_task": run / len(ranges), "run": run}


def assess(cfg: ml_collections.ConfigDict, plan: dict, accelerator: str) -> dict:
    """What a dry run's ``plan`` (its ``programs`` rows, ``held_bytes_per_device``,
    ``devices``, ``mfu``, ``dataset``) means on ``accelerator``: ``{"fits", "need", "usable",
    "worst", "worst_peak", "estimated_seconds"}``. ``need``: the largest program peak plus
    what the run holds on each device (bytes); fits when it is at most the accelerator's
    usable memory."""
    acc = accelerators.get(accelerator)
    worst = max(plan["programs"], key=lambda r: r["peak_bytes_per_device"])
    need = worst["peak_bytes_per_device"] + sum(plan["held_bytes_per_device"].values())
    usable = acc.memory * acc.usable
    return {"fits": need <= usable, "need": need, "usable": usable, "worst": worst["name"],
            "worst_peak": worst["peak_bytes_per_device"],
            "estimated_seconds": estimate_seconds(
                cfg, plan["programs"], plan["devices"], acc.peak(cfg.model.dtype), plan["mfu"],
                tuple(plan["dataset"]))}


def _gib(n: float) -> str:
    return f"{n / accelerators.GiB:.3f}"


def table(rows: list[dict]) -> str:
    """One line per program: batch, per-device memory (GiB), GFLOP per step and per image."""
    head = (f"{'program':<24} {'batch':>5} {'args':>7} {'out':>7} {'temp':>7} {'peak':>7} "
            f"{'GFLOP/step':>11} {'GFLOP/img':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<24} {r['batch']:>5} {_gib(r['argument_bytes']):>7} "
                     f"{_gib(r['output_bytes']):>7} {_gib(r['temp_bytes']):>7} "
                     f"{_gib(r['peak_bytes_per_device']):>7} {r['flops_per_step'] / 1e9:>11.1f} "
                     f"{r['flops_per_image'] / 1e9:>10.2f}")
    return "\n".join(lines)


def dry_run(cfg: ml_collections.ConfigDict, workdir: str | Path,
            echo: Callable[[str], None] = print) -> dict:
    """Compile every program of the run, print the table, write ``workdir/plan.json`` (and,
    with ``plan.export``, ``workdir/export/*.jax_exported`` for tpu and cuda); return the plan.

    ``plan.json``: {"accelerator", "fits", "devices", "backend", "dtype", "mfu", "dataset"
    ([classes, training images, test images]), "programs":
    [{"name", "batch", "flops_per_step", "flops_per_image", "peak_bytes_per_device", ...}],
    "held_bytes_per_device", "estimated_seconds": {"per_task", "run"} (None without
    ``plan.accelerator``)}.
    Raises:
      ValueError: a bad config (before any work).
      DoesNotFit: after writing plan.json, when a program's peak plus what the run holds
        exceeds the accelerator's usable memory; the message names the fixes.
    """
    validate.check_config(cfg)
    plan_cfg = cfg.plan
    cfg = validate.run_config(cfg)
    mesh = sharding.from_config(cfg)
    devices = mesh.mesh.size
    size = dataset_size(cfg)  # read once (from the data itself for a data set not in SIZES)
    progs, held = run_programs(cfg, mesh, size[0])
    rows = [programs.analyse(p, devices) for p in progs]
    echo(f"Dry run: {cfg.model.source} at {cfg.data.image_size} px, {cfg.model.dtype}, "
         f"remat={cfg.model.remat}, {devices} {jax.default_backend()} device(s), mesh "
         f"{dict(mesh.mesh.shape)}; memory per device, FLOPs per call "
         f"({'XLA' if rows[0]['flops_source'] == 'xla' else 'jaxpr: XLA:GPU omits cuBLAS'}).")
    echo(table(rows))
    plan = {"accelerator": plan_cfg.accelerator or None, "fits": None, "devices": devices,
            "backend": jax.default_backend(), "dtype": cfg.model.dtype,
            "remat": cfg.model.remat, "mesh": dict(mesh.mesh.shape), "mfu": plan_cfg.mfu,
            "dataset": list(size), "programs": rows, "held_bytes_per_device": held,
            "estimated_seconds": None}
    problem = None
    if plan_cfg.accelerator:
        verdict = assess(cfg, plan, plan_cfg.accelerator)
        plan["fits"], plan["estimated_seconds"] = verdict["fits"], verdict["estimated_seconds"]
        est, worst, usable = verdict["estimated_seconds"], verdict["worst"], verdict["usable"]
        label = accelerators.get(plan_cfg.accelerator).label
        echo(f"{label}: largest need {_gib(verdict['need'])} GiB per device ({worst} "
             f"{_gib(verdict['worst_peak'])} + run state {_gib(sum(held.values()))}) of "
             f"{_gib(usable)} usable: "
             f"{'fits' if plan['fits'] else 'DOES NOT FIT'}. At {plan_cfg.mfu:.0%} MFU: "
             f"{est['per_task'] / 60:.1f} min per task, {est['run'] / 3600:.2f} h per run "
             "(device compute only).")
        if not plan["fits"]:
            problem = (f"{worst} needs {_gib(verdict['need'])} GiB per device, {label} gives "
                       f"{_gib(usable)}. Fix: a smaller per-device batch (mist.batch_size, "
                       "learner.eval_batch_size, or more devices), --config.mesh.fsdp=N, "
                       "--config.model.remat=True or --config.model.dtype=bfloat16.")
    workdir = Path(workdir)
    if plan_cfg.export:
        paths = [p for prog in progs if prog.name in EXPORTED
                 for p in programs.export(prog, ("tpu", "cuda"), workdir / "export")]
        plan["exported"] = [str(p.relative_to(workdir)) for p in paths]
        echo(f"Exported {len(paths)} programs for tpu and cuda into {workdir / 'export'}.")
    outputs.write_json(workdir / "plan.json", plan)
    if problem:
        raise DoesNotFit(problem)
    return plan

