"""Split manifests: exactly which images a run trained and tested on, checkable anywhere.

Every run writes ``split_manifest.json`` into its workdir: the data set's name, the class order
(class names), and per task and split the image identifiers (``ImageSet.ids``: a file's path
below an image folder's root, or ``"<TFDS split>/<record>"``) with their class names, plus one
SHA-256 ``digest`` of all of it. Two labs whose manifests have the same digest trained and
tested on the same images in the same tasks; for the data sets TFDS splits 80/20 with a seed
(ImageNet-R / -A) this is what makes their numbers comparable.

Check a local copy against a manifest (exit 0: the same split; 1: the first differences)::

  python -m mist_jax.data.manifest check runs/x/mist/split_manifest.json \\
      --config configs/default.py [--config.data.data_dir=...]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import ml_collections

from mist_jax.data.tasks import TaskData

FILENAME = "split_manifest.json"


def of_data(data: TaskData) -> dict:
    """The manifest of a run's images: ``{"dataset", "class_order", "tasks": [{"task",
    "classes", "train": [[id, class name], ...], "test": [...]}], "digest"}``."""
    names = data.train.class_names
    tasks = []
    for t, (lo, hi) in enumerate(data.ranges):
        idx, labels = data.task(t)
        seen = data.seen(hi)
        test = seen[data.test_labels[seen] >= lo]
        tasks.append({
            "task": t, "classes": [lo, hi],
            "train": [[i, names[data.order[y]]] for i, y in
                      zip(data.train.image_ids(idx), labels)],
            "test": [[i, names[data.order[y]]] for i, y in
                     zip(data.test.image_ids(data.test_idx[test]), data.test_labels[test])]})
    manifest = {"dataset": data.train.name, "class_order": [names[c] for c in data.order],
                "tasks": tasks}
    return dict(manifest, digest=digest(manifest))


def digest(manifest: dict) -> str:
    """SHA-256 of the manifest without its ``digest`` key (sorted-key compact JSON)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def differences(expected: dict, actual: dict, limit: int = 5) -> list[str]:
    """Up to `limit` human-readable differences of `actual` from `expected` (empty: same)."""
    out = []
    for key in ("dataset", "class_order"):
        if expected[key] != actual[key]:
            out.append(f"{key}: the manifest has {_short(expected[key])}, this copy "
                       f"{_short(actual[key])}")
    if len(expected["tasks"]) != len(actual["tasks"]):
        out.append(f"{len(expected['tasks'])} tasks in the manifest, {len(actual['tasks'])} here")
    for want, got in zip(expected["tasks"], actual["tasks"]):
        for split in ("train", "test"):
            a, b = [tuple(x) for x in want[split]], [tuple(x) for x in got[split]]
            where = f"task {want['task']} {split}"
            missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            if missing:
                out.append(f"{where}: {len(missing)} image(s) of the manifest not here, first "
                           f"{missing[0][0]!r} ({missing[0][1]})")
            if extra:
                out.append(f"{where}: {len(extra)} image(s) here not in the manifest, first "
                           f"{extra[0][0]!r} ({extra[0][1]})")
            if not missing and not extra and a != b:
                n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                out.append(f"{where}: the same images in another order (first at position "
                           f"{n}: {a[n][0]!r} in the manifest, {b[n][0]!r} here)")
    return out[:limit]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check(path: str | Path, cfg: ml_collections.ConfigDict) -> list[str]:
    """Differences between the manifest at `path` and the split `cfg` gives on this machine.
    Raises: FileNotFoundError / ValueError from loading the data (the data set is missing or
    unreadable), ValueError for a file that is not a manifest."""
    from mist_jax.data import tasks

    try:
        expected = json.loads(Path(path).read_text())
        expected["tasks"], expected["class_order"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a split manifest ({e}); runs write one as "
                         f"<workdir>/<run>/{FILENAME}.") from e
    return differences(expected, of_data(tasks.load_data(cfg)))


def main(argv: list[str]) -> None:
    from absl import flags

    cfg = flags.FLAGS.config
    if len(argv) != 3 or argv[1] != "check" or cfg is None:
        raise SystemExit("usage: python -m mist_jax.data.manifest check MANIFEST "
                         "--config CONFIG [--config.key=value ...]")
    try:
        found = check(argv[2], cfg)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if found:
        print(f"{argv[2]}: a different split on this machine:\n  " + "\n  ".join(found))
        sys.exit(1)
    print(f"{argv[2]}: the same split (digest "
          f"{json.loads(Path(argv[2]).read_text())['digest'][:16]}...).")


if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "The run's config file (configs/*.py).")
    app.run(main)
