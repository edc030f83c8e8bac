r"""Embedded ablation study: MIST's selector and its select_rate x drop_rate budget, SimpleCIL,
3 repeats, on a shrunk embedded stream (30 cells).

The paper's ablations (its selection-criterion table and budget study) on the embedded default
(configs/default.py), shrunk to fit a laptop: 20 training images per class (not 60), 30 test
images per class (not 100), 3 tasks of 10 classes (not 6 of 5), 3 MIST epochs (1 scoring + 2
update, not 5). Everything else is the default: DINOv2 ViT-S/14 at 56 px, the 30-class stream,
SimpleCIL.

Variants (each on the same per-unit budget unless it is the budget being varied):
  baseline      SimpleCIL alone (mist.enabled=False)
  fisher        MIST as shipped: MI-Fisher selector, select_rate 0.1, drop_rate 0.9
  fish          Fisher of the task's prototype classifier's cross-entropy (FISH, Sung et al.)
  gradient      summed |batch gradient| of the MI loss
  magnitude     |w|
  random        a uniform random mask per task
  selectXX_dropYY  the select_rate {0.05, 0.2} x drop_rate {0.5, 0.9} grid, in percent
                (the default 0.1 / 0.9 is ``fisher``)
Each selector and grid point is compared (paired, same seed and class order) with ``fisher``,
and ``fisher`` with ``baseline``. The official code's own ablation procedures
(``mist.spr=rand|l2|grad``) are a different training loop, not a selector; add them as
variants ("mist.spr=grad,mist.select_rate=0.005") to compare them too.

Command::

  .venv/bin/python -m mist_jax.study --config configs/studies/embedded_ablation.py \
      --workdir runs/embedded_ablation

Cost on a 2-core CPU: not yet measured end to end. Estimated from the MIST throughput of the
embedded_main cells on this session's machine (about 24 images a second through the backbone's
forward and backward pass): about 2.8 minutes per MIST cell with the compilation cache warm, so
about 80 minutes for the 30 cells. Cluster: ``--list`` prints the cells, ``--cell K`` runs one.
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("_study_base", Path(__file__).with_name("_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

GRID = ((0.05, 0.5), (0.05, 0.9), (0.2, 0.5), (0.2, 0.9))  # (select_rate, drop_rate)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _base.default_config()
    c.base.data.train_per_class = 20
    c.base.data.test_per_class = 30
    c.base.data.init_cls = 10
    c.base.data.increment = 10
    c.base.mist.epochs = 3
    variants = {
        "baseline": "mist.enabled=False",
        "fisher": "",
        "fish": "mist.selector=fish",
        "gradient": "mist.selector=gradient",
        "magnitude": "mist.selector=magnitude",
        "random": "mist.selector=random",
    }
    for select, drop in GRID:
        name = f"select{round(100 * select):02d}_drop{round(100 * drop):02d}"  # select05_drop50
        variants[name] = f"mist.select_rate={select},mist.drop_rate={drop}"
    c.variants = variants
    c.repeats = ((0, 1993), (1, 1), (2, 2))
    c.compare = (("fisher", "baseline"),) + tuple(
        (name, "fisher") for name in variants if name not in ("baseline", "fisher"))
    c.lock()
    return c
