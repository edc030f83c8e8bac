"""Supply and demand of images at the paper shape: how fast the host builds 224-px training
batches (today's in-thread path and grain with 0, 1, 2, ... workers) against how fast an
accelerator consumes them in MIST's tuning step and in feature extraction.

Supply: real photographs (matplotlib's ``grace_hopper.jpg`` and scikit-learn's ``china.jpg``
and ``flower.jpg``, both shipped in their wheels), cut and resized to ImageNet-R's typical sizes
(500 x 375 and the like) and written as JPEG (quality 90) into a temporary image folder; each
batch reads and decodes the files, RandomResizedCrop 224 + flip (the ``default`` train
transform), with the run's per-image seeds. ``host`` is the path the runner used before grain
(decode, crop and float32 in the training thread, ``data.batches.host_batches``); ``grain_wN``
is ``data.pipeline.pixel_batches`` with N worker processes (uint8 out; / 255 on the device).
Each path runs ``--epochs`` epochs after a warm-up pass; grain's workers start once for them
(``pipeline.EpochStream``, as in a run's phase), and that start-up is in the time.
``identical`` is true when every worker count gave the same bits (and equal to ``host`` after
the device finish).

Demand: FLOPs per image of the MIST tuning step and the feature step of paper.py's ImageNet-R
SimpleCIL run (ViT-B/16, 224 px, float32), from XLA's cost analysis of the compiled programs
(``runner.plan``), at ``--mfu`` of each accelerator's peak (``infra/accelerators.py``): the
images per second each would take, and the host cores needed to keep up at the measured
per-worker rate.

  python benchmarks/input_pipeline.py --image-size 224 --workers 0,1,2 --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (height, width) of the written photographs: ImageNet-R's common sizes.
SIZES = ((375, 500), (500, 375), (333, 500), (400, 400), (480, 640), (500, 333))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", default="0,1,2", help="grain worker counts to time")
    p.add_argument("--images", type=int, default=336, help="images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per path")
    p.add_argument("--batch", type=int, default=56)
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--no-demand", action="store_true", help="skip the ViT-B/16 compiles")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def photographs() -> list[np.ndarray]:
    """The shipped photographs as uint8 RGB arrays."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    return [hopper, *load_sample_images().images]


def write_folder(root: Path, n: int) -> list[str]:
    """n JPEG files: crops of the photographs resized to ``SIZES`` (cycled)."""
    from PIL import Image

    photos, paths = photographs(), []
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = SIZES[i % len(SIZES)]
        top = int(rng.integers(0, photo.shape[0] // 4))
        left = int(rng.integers(0, photo.shape[1] // 4))
        crop = Image.fromarray(photo[top:, left:]).resize((w, h), Image.BICUBIC)
        path = root / f"{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def supply(paths, args) -> tuple[dict, dict, bool]:
    """Steady images/s of each path over ``args.epochs`` epochs (after one untimed warm-up
    pass: page cache, imports), seconds to its first batch (grain: the workers' start-up, once
    per phase with ``pipeline.EpochStream``), and whether all gave the same batches."""
    from mist_jax.data import batches, pipeline, transforms
    from mist_jax.data.files import _FileImages
    from mist_jax.data.image_set import ImageSet

    n = len(paths)
    images = ImageSet(_FileImages(paths), np.zeros(n, np.int64), 1, ("photo",))
    tf = transforms.train_transform(args.image_size)
    idx = np.arange(n)

    def maker(e):
        return batches.batch_maker(images, idx, idx, args.batch, tf, (0, 1, e), (0, 2, e))

    rates, startup, outputs = {}, {}, {}

    def timed(name, batches_of_epoch):
        """Steady images/s after the first batch; the first batch's wait is the start-up."""
        t0 = time.perf_counter()
        out, first = [], None
        for e in range(args.epochs):
            for _, (x, _) in batches_of_epoch(e):
                out.append(x)
                if first is None:
                    first, images_first = time.perf_counter(), len(x)
        rates[name] = (args.epochs * n - images_first) / (time.perf_counter() - first)
        startup[name] = first - t0
        outputs[name] = out

    list(pipeline.pixel_batches(maker(0)))  # warm-up: page cache, imports
    timed("host", lambda e: batches.host_batches(images, idx, idx, args.batch, tf, (0, 1, e),
                                                 (0, 2, e)))
    for w in (int(x) for x in args.workers.split(",")):
        stream = pipeline.EpochStream(maker, args.epochs, w)
        timed(f"grain_w{w}", lambda e, stream=stream: stream(e, 0))
        stream.close()
    grain = [k for k in outputs if k != "host"]
    same = all(len(outputs[k]) == len(outputs[grain[0]]) and all(
        np.array_equal(a, b) for a, b in zip(outputs[k], outputs[grain[0]])) for k in grain)
    finish = pipeline.device_finish(tf.lut())
    same = same and all(np.array_equal(np.asarray(finish(a)), b)
                        for a, b in zip(outputs[grain[0]], outputs["host"]))
    return rates, startup, same


def demand(args) -> dict:
    """{accelerator: {program: images/s}} at ``args.mfu`` from XLA's FLOPs per image."""
    from configs import paper
    from mist_jax.infra import accelerators, programs, sharding
    from mist_jax.runner import plan

    cfg = paper.get_config("dataset=imagenet_r,learner=simplecil")
    mesh = sharding.MeshContext(sharding.make_mesh(1, 1))
    progs, _ = plan.run_programs(cfg, mesh, plan.dataset_size(cfg)[0])
    flops = {p.name: programs.analyse(p)["flops_per_image"] for p in progs
             if p.name in ("mist tuning step", "features")}
    return {name: {prog: acc.peak(cfg.model.dtype) * args.mfu / f for prog, f in flops.items()}
            for name, acc in accelerators.ACCELERATORS.items()}, flops


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), args.images)
        rates, startup, same = supply(paths, args)
    result = {"supply": rates, "startup_seconds": startup, "identical": same,
              "image_size": args.image_size,
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores, Python {platform.python_version()}"}
    print(f"\nSupply at {args.image_size} px ({args.epochs} epochs of {args.images} JPEGs, "
          f"batch {args.batch}; {result['machine']})")
    print("| path | images/s (steady) | x host | first batch after (s) |\n|---|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {r:.0f} | {r / rates['host']:.2f} | {startup[name]:.2f} |")
    print(f"identical batches for every worker count: {same}")
    if not args.no_demand:
        result["demand"], result["flops_per_image"] = demand(args)
        per_core = rates.get("grain_w1", rates["host"])
        print(f"\nDemand at {args.mfu:.0%} MFU (images/s; host cores at {per_core:.0f} "
              "images/s per worker)")
        print("| accelerator | MIST step | cores | features | cores |\n|---|---|---|---|---|")
        for acc, d in result["demand"].items():
            step, feat = d["mist tuning step"], d["features"]
            print(f"| {acc} | {step:.0f} | {step / per_core:.1f} | {feat:.0f} | "
                  f"{feat / per_core:.1f} |")
        result["cores_needed"] = {a: {p: v / per_core for p, v in d.items()}
                                  for a, d in result["demand"].items()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
