r"""The paper's ImageNet-R table for a cluster: SimpleCIL, RanPAC, L2P, DualPrompt, CODA-Prompt,
APER, EASE and SLCA, each with and without MIST, ViT-B/16 IN21k, 10 tasks, 3 repeats (48 cells).
Not run here (no accelerator, no ImageNet-R).

Each cell is ``configs/paper.py:dataset=imagenet_r,learner=...`` with ``mist.enabled`` on or
off, run seed k and class order (1993, 1, 2)[k]; RanPAC cells take the RanPAC file's freeze
rate, image learners their reference training (``configs/paper.py``). Needs the backbone file
and ImageNet-R prepared as for the paper config. A SLURM array job runs one cell per task::

  python -m mist_jax.study --config configs/studies/paper_imagenet_r.py --workdir runs/pr --list
  #SBATCH --array=0-47
  python -m mist_jax.study --config configs/studies/paper_imagenet_r.py --workdir runs/pr \
      --cell $SLURM_ARRAY_TASK_ID
  python -m mist_jax.study --config configs/studies/paper_imagenet_r.py --workdir runs/pr \
      --aggregate

Published single-run numbers (average / last accuracy): configs/paper.py's docstring.
"""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

_PAPER = Path(__file__).resolve().parents[1] / "paper.py"


def get_config() -> ml_collections.ConfigDict:
    paper = config_files.load_module(_PAPER)
    c = ml_collections.ConfigDict()
    c.base = paper.get_config("dataset=imagenet_r,learner=simplecil")
    c.base.unlock()
    learners = {name: ",".join(f"{k}={v}" for k, v in
                               paper.learner_settings("imagenet_r", name).items())
                for name in paper.FREEZE_RATE}
    c.variants = {}
    for name, overrides in learners.items():
        c.variants[name] = overrides + ",mist.enabled=False"
        c.variants[f"{name}_mist"] = overrides
    c.repeats = ((0, 1993), (1, 1), (2, 2))
    c.compare = tuple((f"{name}_mist", name) for name in learners)
    c.lock()
    return c
