"""The README's Python example runs as written (with a two-batch toy stream of real shapes)."""

import re
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_example_runs():
    block = re.search(r"## Using it\n[^`]*```python\n(.*?)```", README.read_text(), re.S).group(1)
    rng = np.random.RandomState(0)
    batches = [(rng.rand(4, 56, 56, 3).astype(np.float32), np.array([0, 1, 0, 1], np.int32),
                jax.random.key(i)) for i in range(2)]
    scope = {"batches": batches}
    sys.path.insert(0, str(ROOT))  # "run from the repository root"
    try:
        exec(compile(block, "README.md", "exec"), scope)
    finally:
        sys.path.remove(str(ROOT))
    mask, state, stats = scope["mask"], scope["state"], scope["stats"]
    assert stats["steps"] == 2 * 4  # 2 batches in each of the 4 update epochs
    assert all(np.isfinite(stats["mi_loss_per_epoch"]))
    # 10% of each scored tensor selected; exempt tensors (biases, norms, head) fully selected.
    q = np.asarray(mask["backbone"]["encoderblock_0"]["mlp"]["fc1"]["kernel"]).mean()
    assert abs(q - 0.1) < 0.01
    assert np.asarray(mask["head"]["kernel"]).all()
    assert int(np.asarray(state.count["backbone"]["encoderblock_0"]["mlp"]["fc1"]["kernel"]).sum()) > 0
