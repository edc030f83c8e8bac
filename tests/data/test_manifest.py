"""Split manifests: a run writes one; ``manifest check`` passes on the same data and names the
first differing image on a changed copy. Expected ids are derived here from the folder's own
files, not from the manifest code."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mist_jax.data import manifest, tasks
from mist_jax.runner import train
from support.runs import smoke

ROOT = Path(__file__).resolve().parents[2]


def _folder(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(
                    d / f"img_{i}.png")
    return root


def _cfg(root: Path):
    return smoke(**{"data.name": f"folder:{root}", "data.init_cls": 2, "data.increment": 2,
                    "data.train_per_class": 0, "data.test_per_class": 0})


def test_manifest_lists_each_tasks_files_with_their_class(tmp_path):
    root = _folder(tmp_path / "data")
    cfg = _cfg(root)
    m = manifest.of_data(tasks.load_data(cfg))
    assert m["dataset"] == f"folder:{root}"
    order = m["class_order"]
    assert sorted(order) == [f"class_{c}" for c in range(4)]
    for t, task in enumerate(m["tasks"]):
        mine = order[2 * t:2 * t + 2]
        want_train = sorted(f"train/{c}/img_{i}.png" for c in mine for i in range(3))
        assert sorted(i for i, _ in task["train"]) == want_train
        assert sorted(i for i, _ in task["test"]) == sorted(
            f"test/{c}/img_{i}.png" for c in mine for i in range(2))
        assert all(name == image.split("/")[1] for image, name in task["train"] + task["test"])
    assert manifest.digest(m) == m["digest"] and len(m["digest"]) == 64


def test_run_writes_the_manifest_and_check_passes_then_names_a_changed_image(tmp_path):
    root = _folder(tmp_path / "data")
    cfg = _cfg(root)
    train.Run(cfg, tmp_path / "run", progress=False).run()
    path = tmp_path / "run" / manifest.FILENAME
    saved = json.loads(path.read_text())
    assert saved == manifest.of_data(tasks.load_data(cfg))
    assert manifest.check(path, cfg) == []
    # Another copy of the data set in which one training image of class_0 has another name.
    (root / "train" / "class_0" / "img_1.png").rename(root / "train" / "class_0" / "img_9.png")
    found = manifest.check(path, cfg)
    assert len(found) == 2 and found[0].startswith("task ")
    assert "not here" in found[0] and "'train/class_0/img_1.png' (class_0)" in found[0]
    assert "not in the manifest" in found[1] and "'train/class_0/img_9.png'" in found[1]
    cli = [sys.executable, "-m", "mist_jax.data.manifest", "check", str(path), "--config",
           str(ROOT / "configs" / "default.py") + ":smoke", f"--config.data.name=folder:{root}",
           "--config.data.init_cls=2", "--config.data.increment=2",
           "--config.data.train_per_class=0", "--config.data.test_per_class=0"]
    proc = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "img_9.png" in proc.stdout, proc.stdout + proc.stderr
    (root / "train" / "class_0" / "img_9.png").rename(root / "train" / "class_0" / "img_1.png")
    proc = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "the same split" in proc.stdout, proc.stdout + proc.stderr


def test_check_refuses_a_file_that_is_not_a_manifest(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{}")
    import pytest
    with pytest.raises(ValueError, match="not a split manifest"):
        manifest.check(bad, smoke())


def test_tuning_cache_is_not_reused_after_the_data_changed(tmp_path):
    """mist.cache_dir is keyed by the split's digest too: the same config on a changed copy of
    the image folder tunes again instead of reusing the old tuning."""
    root = _folder(tmp_path / "data")
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.mist.cache_dir = str(tmp_path / "cache")
        cfg.data.increment, cfg.data.init_cls = 4, 4  # one task: quick
    train.Run(cfg, tmp_path / "a", progress=False).run()
    again = train.Run(cfg, tmp_path / "b", progress=False).run()
    assert again["tasks"][0].get("mist_reused_seconds", 0) > 0  # same data: reused
    (root / "train" / "class_0" / "img_1.png").rename(root / "train" / "class_0" / "img_9.png")
    changed = train.Run(cfg, tmp_path / "c", progress=False).run()
    assert "mist_reused_seconds" not in changed["tasks"][0]


def test_tuning_cache_is_not_reused_after_a_file_was_replaced_under_its_name(tmp_path):
    """The split's ids stay the same when an image is overwritten in place; the cache is keyed
    by the files' sizes and modification times too, so the run tunes again."""
    import os

    root = _folder(tmp_path / "data")
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.mist.cache_dir = str(tmp_path / "cache")
        cfg.data.increment, cfg.data.init_cls = 4, 4
    train.Run(cfg, tmp_path / "a", progress=False).run()
    target = root / "train" / "class_2" / "img_0.png"
    before = json.loads((tmp_path / "a" / manifest.FILENAME).read_text())["digest"]
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(1, 10**9))  # a different mtime whatever the clock's resolution
    changed = train.Run(cfg, tmp_path / "b", progress=False).run()
    assert json.loads((tmp_path / "b" / manifest.FILENAME).read_text())["digest"] == before
    assert "mist_reused_seconds" not in changed["tasks"][0]
