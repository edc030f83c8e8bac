"""colab/mist_jax_tpu.ipynb runs top to bottom (nbclient, a local ipykernel, CPU) with its
parameters cell replaced by the smoke settings: a tiny random ViT on MNIST-5k, MIST + baseline.

Needs the ``notebook`` extra (nbclient, nbformat, ipykernel); skipped without it.
"""

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "mist_jax_tpu.ipynb"


def test_notebook_is_valid_with_one_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SMOKE" in tagged[0].source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    # Where to install from is one marked cell, empty until the user sets it; no placeholder URL.
    marked = [c for c in nb.cells if "INSTALL_FROM = " in c.source and "EDIT ME" in c.source]
    assert len(marked) == 1 and 'INSTALL_FROM = ""' in marked[0].source
    assert not any("REPO_URL" in c.source or "github.com/mist-jax" in c.source for c in nb.cells)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_smoke_mode(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    workdir = tmp_path / "run"
    cell.source = (f'SMOKE = True\nBENCHMARK = "auto"\nDATA_FOLDER = ""\n'
                   f'WORKDIR = {str(workdir)!r}\n')
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the kernel inherits this environment
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "colab")}})
    client.execute()

    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "backend cpu" in text and "benchmark: smoke" in text
    assert "mist tuning step" in text  # the dry-run table, before training
    assert (workdir / "plan" / "plan.json").is_file()
    assert "average_accuracy" in text  # run_all's summary table
    figures = [o for c in nb.cells for o in c.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert len(figures) >= 2  # accuracy curve + mask coverage figure, and the acc matrix
    for run in ("mist", "baseline"):
        results = json.loads((workdir / run / "results.json").read_text())
        assert len(results["top1_curve"]) == 2
    assert (workdir / "accuracy_curve.png").is_file()
