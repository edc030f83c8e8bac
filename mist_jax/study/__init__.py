"""Studies: a base run config x variants (config overrides) x repeats (seed, class-order seed).

A study config (``configs/studies/*.py``) is an ``ml_collections.ConfigDict`` with

  base      a run config (``configs/default.py`` layout)
  variants  {name: "key=value,key=value"}: overrides of ``base`` (values as Python literals;
            "" = base itself)
  repeats   ((seed, class_order_seed), ...): the same for every variant, so cells pair up
  compare   ((variant, reference), ...): the paired differences to report

Each cell is an ordinary run (``train.Run``) in ``<workdir>/<variant>/seed<s>_order<o>``:
resumable, and skipped once its ``results.json`` exists; a cell that fails is reported and the
others go on. Each cell's ``config.json`` records the config it ran; a study folder whose cells
record another config than the study now gives them is refused (``check_workdir``), so one
table never mixes two configs. ``cells`` lists them in a fixed order (variants by name, then repeats), so
``--cell K`` is the same cell on every host of a cluster array job.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import ml_collections

#: Sub-folder of a study's workdir holding the tuned backbones its cells share.
MIST_CACHE = "_mist_cache"

@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a study: ``index`` in ``cells`` order, the variant and its repeat."""

    index: int
    variant: str
    seed: int
    order: int

    @property
    def name(self) -> str:
        """Folder of the cell under the study workdir."""
        return f"{self.variant}/seed{self.seed}_order{self.order}"


#: A comma outside brackets (lookahead: no closing bracket before the next opening one).
_TOP_LEVEL_COMMA = r",(?![^([{]*[)\]}])"


def parse_overrides(spec: str) -> dict[str, object]:
    """``"mist.enabled=False,learner.name='ranpac'"`` -> ``{"mist.enabled": False, ...}``.

    Values are Python literals (``ast.literal_eval``; tuples and lists may hold commas:
    ``"learner.slca.milestones=(2, 3)"``); a bare word is a string (``ranpac``).
    Raises: ValueError for an item without ``=``.
    """
    out: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in re.split(_TOP_LEVEL_COMMA, spec))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant override {item!r} is not key=value.")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def check_study(study: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming each problem: no variants or repeats, a repeated (seed,
    order), a compare entry naming an unknown variant, an override of an unknown key."""
    problems = []
    if not study.variants:
        problems.append("variants is empty.")
    if not study.repeats:
        problems.append("repeats is empty.")
    if len(set(map(tuple, study.repeats))) != len(study.repeats):
        problems.append(f"repeats {study.repeats} lists a (seed, order) twice.")
    for pair in study.compare:
        for name in pair:
            if name not in study.variants:
                problems.append(f"compare names {name!r}, not one of {list(study.variants)}.")
    for name in study.variants:
        try:
            run_config(study, name, 0, 0)
        except (KeyError, AttributeError, ValueError, TypeError) as e:
            problems.append(f"variant {name!r}: {e}")
    if problems:
        raise ValueError("Bad study config:\n  " + "\n  ".join(problems))


def cells(study: ml_collections.ConfigDict) -> list[Cell]:
    """Every cell of the study: variants in name order (ConfigDict order), each with every
    repeat; ``--cell K`` indexes this list."""
    grid = [(v, int(s), int(o)) for v in study.variants for s, o in study.repeats]
    return [Cell(i, v, s, o) for i, (v, s, o) in enumerate(grid)]


def run_config(study: ml_collections.ConfigDict, variant: str, seed: int,
               order: int) -> ml_collections.ConfigDict:
    """The run config of one cell: ``base`` + the variant's overrides, ``seed``,
    ``data.class_order_seed``; one run (``compare_baseline=False``).
    Raises: KeyError / AttributeError for an override of a key ``base`` lacks."""
    cfg = study.base.copy_and_resolve_references()
    with cfg.unlocked():
        for dotted, value in parse_overrides(study.variants[variant]).items():
            node = cfg
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise KeyError(f"{dotted} is not a key of the run config.")
            node[leaf] = value
        cfg.seed = seed
        cfg.data.class_order_seed = order
        cfg.compare_baseline = False
    cfg.lock()
    return cfg


def cell_dir(workdir: str | Path, cell: Cell) -> Path:
    """``<workdir>/<variant>/seed<s>_order<o>``."""
    return Path(workdir) / cell.name


def is_finished(workdir: str | Path, cell: Cell) -> bool:
    """True when the cell's run has written its ``results.json``."""
    return (cell_dir(workdir, cell) / "results.json").is_file()


def changed_cells(study: ml_collections.ConfigDict, workdir: str | Path) -> list[str]:
    """``"<cell>: key: old -> new; ..."`` for each cell whose folder records (``config.json``)
    another config than the study gives it now (result-neutral keys aside, as for a run)."""
    from mist_jax.infra.checkpoint import config_diff

    out = []
    for cell in cells(study):
        recorded = cell_dir(workdir, cell) / "config.json"
        if not recorded.is_file():
            continue
        try:
            old = json.loads(recorded.read_text())
        except ValueError:
            out.append(f"{cell.name}: its config.json is unreadable")
            continue
        diff = config_diff(old, run_config(study, cell.variant, cell.seed, cell.order).to_dict())
        if diff:
            out.append(f"{cell.name}: {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}")
    return out


def check_workdir(study: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Refuse a study folder holding cells of another config before anything is run or
    aggregated. Raises: ValueError naming the cells, the keys that differ and the fix."""
    changed = changed_cells(study, workdir)
    if changed:
        raise ValueError(
            f"{workdir} holds {len(changed)} cell(s) run with another config ("
            + " | ".join(changed[:3]) + (" | ..." if len(changed) > 3 else "")
            + "); nothing was run or aggregated. Use a new --workdir for the changed study, "
            "or move those cell folders away to run them again.")
