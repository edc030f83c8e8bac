r"""Embedded learners study: SimpleCIL, RanPAC, L2P, DualPrompt, CODA-Prompt, APER, EASE and
SLCA, each with and without MIST, on embedded_main's stream, one repeat: seed 0 and the authors'
order 1993 (16 cells).

The stream and settings are embedded_main's (configs/default.py with 40 training images per
class and RanPAC's M = 2000), so the SimpleCIL and RanPAC rows match that study's first repeat.
The image learners use their module defaults (pool sizes, prompt lengths, layers, optimizers;
5 epochs at batch 16, EASE and SLCA 3) and configs/default.py's L2P prompt length of 1 token
at 56 px. Every ``*_mist`` variant is compared (paired) with the same learner alone. One repeat
shows what each learner does on this stream and what it costs; it is not evidence of a
difference between methods. For error bars add repeats, e.g.
``--config.repeats="((0, 1993), (1, 1), (2, 2))"``.

All MIST variants share one MIST trajectory per repeat (``mist.cache_dir``): MIST's work
does not depend on the learner, the first ``*_mist`` cell tunes and the others reuse it; each
cell's ``wall_minutes`` counts the reused MIST time, so it is what a run of its own costs.
embedded_main's cache holds the same trajectories; pass it to skip the tuning altogether:

Command::

  .venv/bin/python -m mist_jax.study --config configs/studies/embedded_learners.py \
      --workdir runs/embedded_learners \
      [--config.base.mist.cache_dir=runs/embedded_main/_mist_cache]

Cost on a 2-core CPU (2026-11-30 to 12-01, jax 0.10.2, reusing embedded_main's cache): the 16
cells' ``wall_minutes`` sum to 152 min, 9.25 of each ``*_mist`` cell but SLCA's being reused
MIST time that was not spent (about 87 min of compute; the cells ran in four sittings, the SLCA
pair last). Alone: SimpleCIL 0.6, RanPAC 0.7, DualPrompt 5.0, APER 4.9, SLCA 5.8, L2P 7.2,
CODA-Prompt 8.9 (alongside unit tests), EASE 9.0. MIST afresh on this stream took about 5.2
min there. A run of its own on the embedded default (60 images per class), each learner with
and without MIST: ``benchmarks/learner_wall.py`` (docs/results.md; 4.6-6.9 min with MIST on the faster
machine of 2026-12-01).
"""

from pathlib import Path

import ml_collections

from mist_jax.infra import config_files

_common = config_files.load_module(Path(__file__).resolve().parents[1] / "common.py")

LEARNERS = ("simplecil", "ranpac", "l2p", "dualprompt", "coda_prompt", "aper", "ease", "slca")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = _common.default_config()
    c.base.learner.ranpac.num_projections = 2000  # as embedded_main
    c.base.data.train_per_class = 40  # as embedded_main
    c.variants = {}
    for name in LEARNERS:
        c.variants[name] = f"learner.name={name},mist.enabled=False"
        c.variants[f"{name}_mist"] = f"learner.name={name}"
    c.repeats = ((0, 1993),)
    c.compare = tuple((f"{name}_mist", name) for name in LEARNERS)
    c.lock()
    return c
