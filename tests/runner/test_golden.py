"""The runner's numbers never change by accident: every registered learner with and without
MIST, run through the CLI on the smoke config, gives exactly the accuracy matrix, top-1 curve
and forgetting recorded from the code before the package was reorganised
(tests/golden/make_golden.py, commit named in each file).

Exact equality holds because a run is deterministic on one machine and these numbers are
accuracies of 4 test images per class (multiples of 5%): a different summation order may move
a logit by an ulp, but flips a prediction only on an exact tie.
"""

import json
from pathlib import Path

import pytest

from golden import make_golden

GOLDEN = Path(make_golden.__file__).resolve().parent


@pytest.mark.parametrize("learner,mist", make_golden.cells(),
                         ids=[make_golden.cell_name(*c) for c in make_golden.cells()])
def test_smoke_results_equal_the_golden_record(tmp_path, learner, mist):
    want = json.loads((GOLDEN / f"{make_golden.cell_name(learner, mist)}.json").read_text())
    got = make_golden.run_cell(learner, mist, tmp_path)
    for key in make_golden.KEYS:
        assert got[key] == want[key], key
