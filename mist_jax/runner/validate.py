"""Every run-config value checked before any data, weights or work (one error lists them all).

``check_config(cfg)`` is the first thing ``train.Run`` does: each value is checked against its
allowed set or range, and the error names the key, the value and the fix, instead of a wrong
run (``mist.tasks=al`` silently running as "first") or a late crash (a bad selector after the
scoring pass). The learner's own block is checked by building the learner.
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_collections

from mist_jax import learners
from mist_jax.infra import accelerators
from mist_jax.mist import ablations, inner, masks, objectives, optim
from mist_jax.data import preprocess, transforms

DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("all", "first")
EVAL_SPLITS = ("test", "validation")
MESH_KINDS = ("fsdp", "replicate")


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rules(cfg) -> list[str]:
    problems = []
    m = cfg.get("mesh") or {}
    if not _int(m.get("data", -1)) or (m.get("data", -1) < 1 and m.get("data", -1) != -1):
        problems.append(f"mesh.data={m.get('data')!r}: a device count >= 1, or -1 for all.")
    if not _int(m.get("fsdp", 1)) or m.get("fsdp", 1) < 1:
        problems.append(f"mesh.fsdp={m.get('fsdp')!r}: devices per parameter shard, >= 1.")
    for rule in m.get("rules", ()):
        ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and rule[1] in MESH_KINDS
        try:
            re.compile(rule[0]) if ok else None
        except (re.error, TypeError):
            ok = False
        if not ok:
            problems.append(f"mesh.rules entry {rule!r}: a (regex, 'fsdp' | 'replicate') pair.")
    return problems


def _plan(cfg) -> list[str]:
    p = cfg.get("plan") or {}
    problems = []
    if p.get("accelerator", "") not in ("", *accelerators.ACCELERATORS):
        problems.append(f"plan.accelerator={p.get('accelerator')!r}: one of "
                        f"{', '.join(accelerators.ACCELERATORS)}, or '' for none.")
    if not _num(p.get("mfu", 0.4)) or not 0 < p.get("mfu", 0.4) <= 1:
        problems.append(f"plan.mfu={p.get('mfu')!r}: the model FLOPs utilisation assumed, in "
                        "(0, 1], e.g. 0.4.")
    return problems


#: Seeds are kept below 2**32: a JAX key and np.random.seed hold 32 bits.
SEED_LIMIT = 2 ** 32


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Check every value of a run config (``configs/default.py`` layout).

    Raises:
      ValueError: listing each bad ``key=value`` with its allowed values and a fix.
    """
    d, m, mi, le = cfg.data, cfg.model, cfg.mist, cfg.learner
    learner = learners.LEARNERS.get(le.name)
    tunes = mi.enabled or (learner is not None and learner.tuning(mi) is not None)
    checks: list[tuple[str, Any, bool, str]] = [
        ("seed", cfg.seed, _int(cfg.seed) and 0 <= cfg.seed < SEED_LIMIT,
         f"an integer in [0, {SEED_LIMIT - 1}] (a PRNG key holds 32 bits: larger seeds would "
         "repeat smaller ones' streams)"),
        ("data.class_order_seed", d.class_order_seed,
         _int(d.class_order_seed) and 0 <= d.class_order_seed < SEED_LIMIT,
         f"an integer in [0, {SEED_LIMIT - 1}] (np.random.seed's range; 1993 = the authors')"),
        ("checkpoint_every_steps", cfg.checkpoint_every_steps,
         _int(cfg.checkpoint_every_steps) and cfg.checkpoint_every_steps >= 0,
         "an integer >= 0 (0 = checkpoints at task ends only)"),
        ("data.init_cls", d.init_cls, _int(d.init_cls) and d.init_cls >= 1, "an integer >= 1"),
        ("data.increment", d.increment, _int(d.increment) and d.increment >= 1,
         "an integer >= 1"),
        ("data.train_per_class", d.train_per_class,
         _int(d.train_per_class) and d.train_per_class >= 0, "an integer >= 0 (0 = all)"),
        ("data.test_per_class", d.test_per_class,
         _int(d.test_per_class) and d.test_per_class >= 0, "an integer >= 0 (0 = all)"),
        ("data.workers", d.get("workers", 0), _int(d.get("workers", 0))
         and d.get("workers", 0) >= -1, "an integer >= 0, or -1 for all cores but one"),
        ("data.eval_split", d.eval_split, d.eval_split in EVAL_SPLITS, f"one of {EVAL_SPLITS}"),
        ("data.image_size", d.image_size, _int(d.image_size) and d.image_size >= 1,
         "a side in pixels, a multiple of the model's patch size"),
        ("data.transform", d.transform, d.transform in transforms.TRANSFORMS,
         f"one of {transforms.TRANSFORMS}"),
        ("data.train_crop_scale", d.train_crop_scale,
         len(d.train_crop_scale) == 2 and all(_num(s) for s in d.train_crop_scale)
         and 0 < d.train_crop_scale[0] <= d.train_crop_scale[1] <= 1,
         "(low, high) with 0 < low <= high <= 1"),
        ("model.dtype", m.dtype, m.dtype in DTYPES, f"one of {DTYPES}"),
        ("model.preprocess", m.preprocess, m.preprocess in preprocess.PREPROCESS,
         f"one of {sorted(preprocess.PREPROCESS)}"),
        ("mist.tasks", mi.tasks, mi.tasks in TASKS, f"one of {TASKS}"),
        ("mist.selector", mi.selector, mi.selector in masks.SELECTORS,
         f"one of {masks.SELECTORS}"),
        ("mist.spr", mi.spr, mi.spr in ablations.MODES,
         f"one of {ablations.MODES} (mist_jax/mist/ablations.py)"),
        ("mist.objective", mi.objective, mi.objective in objectives.OBJECTIVES,
         f"one of {sorted(objectives.OBJECTIVES)}"),
        ("mist.selection_units", mi.selection_units, mi.selection_units in masks.UNITS,
         f"one of {masks.UNITS}"),
        ("mist.sparsity", mi.sparsity, mi.sparsity in optim.SPARSITY_MODES,
         f"one of {optim.SPARSITY_MODES}"),
        ("mist.epochs", mi.epochs, not tunes or (_int(mi.epochs) and mi.epochs >= 2),
         "an integer >= 2 (1 scoring epoch + at least 1 update epoch)"),
        ("mist.batch_size", mi.batch_size, _int(mi.batch_size) and mi.batch_size >= 1,
         "an integer >= 1"),
        ("mist.select_rate", mi.select_rate, _num(mi.select_rate) and 0 < mi.select_rate <= 1,
         "in (0, 1], e.g. 0.1"),
        ("mist.drop_rate", mi.drop_rate, _num(mi.drop_rate) and 0 <= mi.drop_rate < 1,
         "in [0, 1): 1.0 would drop every gradient and update nothing"),
        ("mist.overlap_decay", mi.overlap_decay,
         _num(mi.overlap_decay) and 0 <= mi.overlap_decay <= 1, "in [0, 1], e.g. 0.9"),
        ("mist.freeze_rate", mi.freeze_rate, _num(mi.freeze_rate) and 0 <= mi.freeze_rate <= 1,
         "in [0, 1]: 0.0 freezes each unit's maximum, 0.0005 is the RanPAC file's"),
        ("mist.learning_rate", mi.learning_rate, _num(mi.learning_rate) and mi.learning_rate > 0,
         "> 0, e.g. 1e-4"),
        ("mist.head_learning_rate", mi.head_learning_rate,
         _num(mi.head_learning_rate) and mi.head_learning_rate >= 0, ">= 0, e.g. 1e-2"),
        ("mist.momentum", mi.momentum, _num(mi.momentum) and 0 <= mi.momentum < 1, "in [0, 1)"),
        ("mist.weight_decay", mi.weight_decay, _num(mi.weight_decay) and mi.weight_decay >= 0,
         ">= 0"),
        ("mist.temperature", mi.temperature, _num(mi.temperature) and mi.temperature > 0, "> 0"),
        ("mist.proj_dim", mi.proj_dim, _int(mi.proj_dim) and mi.proj_dim >= 1,
         "an integer >= 1"),
        ("mist.log_every", mi.log_every, _int(mi.log_every) and mi.log_every >= 1,
         "an integer >= 1"),
        ("mist.cache_dir", mi.cache_dir, isinstance(mi.cache_dir, str),
         'a folder path, or "" for no cache'),
        ("learner.name", le.name, le.name in learners.LEARNERS,
         f"one of {sorted(learners.LEARNERS)} (or register your own)"),
        ("learner.eval_batch_size", le.eval_batch_size,
         _int(le.eval_batch_size) and le.eval_batch_size >= 1, "an integer >= 1"),
    ]
    problems = [f"{key}={value!r}: must be {allowed}." for key, value, ok, allowed in checks
                if not ok]
    try:
        inner.from_config(mi)
    except ValueError as e:
        problems.append(str(e))
    problems += _rules(cfg) + _plan(cfg)
    if learner is not None and le.name not in le:
        problems.append(f"learner.{le.name}: the config has no block for this learner; add "
                        f"config.learner.{le.name} = LEARNERS[{le.name!r}].default_config().")
    if problems:
        raise ValueError("Bad config value(s):\n  " + "\n  ".join(problems))


def run_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a run uses and records (config.json, results.json, checkpoints): a locked
    copy of ``cfg`` whose ``learner`` holds only the chosen learner's block (the config files
    carry every learner's block, so that ``--config.learner.<name>.<key>`` overrides reach any
    of them; a run reads only its own)."""
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
        for name in [k for k, v in out.learner.items()
                     if isinstance(v, ml_collections.ConfigDict) and k != out.learner.name]:
            del out.learner[name]
    out.lock()
    return out
