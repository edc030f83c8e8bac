r"""Embedded ablation study: MIST's selector and its select_rate x drop_rate budget, SimpleCIL,
3 repeats, on a shrunk embedded stream (24 cells).

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
  selectXX_dropYY  one budget setting changed at a time from the default 0.1 / 0.9 (``fisher``),
                in percent: select_rate 0.05 at drop_rate 0.9, drop_rate 0.5 at select_rate 0.1
Each selector and grid point is compared (paired, same seed and class order) with ``fisher``,
and ``fisher`` with ``baseline``. The official code's own ablation procedures
(``mist.spr=rand|l2|grad``) are a different training loop, not a selector; add them as
variants ("mist.spr=grad,mist.select_rate=0.005") to compare them too.

Command::

  .venv/bin/python -m mist_jax.study --config configs/studies/embedded_ablation.py \
      --workdir runs/embedded_ablation

Cost on a 2-core CPU, measured end to end (2026-12-01, jax 0.10.2): **75 min 22 s** wall
from the first cell to the aggregate (the 24 cells' own ``wall_minutes`` sum to 68.9). The run
was restarted twice from the same workdir while its budget grid was cut to fit (finished cells
were skipped; about a minute lost). A SimpleCIL cell takes about 0.2 minutes, a MIST cell
2.8-3.6 minutes. Cluster: ``--list`` prints the cells, ``--cell K`` runs one.
"""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

_common = config_files.load_module(Path(__file__).resolve().parents[1] / "common.py")

# (select_rate, drop_rate): each axis moved once from the default (0.1, 0.9), which is
# ``fisher``. Each more point costs 3 cells, about 11 minutes here: the 2 x 2 grid's fourth
# corner (0.05, 0.5) would put the study at about 90 minutes, over budget on this CPU.
GRID = ((0.05, 0.9), (0.1, 0.5))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _common.default_config()
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
