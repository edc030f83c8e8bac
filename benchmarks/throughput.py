"""Images per second of MIST's three passes per device count, and model FLOPs utilisation.

For each device count n, a fresh process builds a ("data", "fsdp") mesh of n devices
(mist_jax/infra/sharding.py) and times, after compilation, with the batch already on the devices:
  scoring   one MI-Fisher pass (sensitivity.fisher_scores: grad + squared accumulate)
  mist step the jitted sparse-tuning step of mist.Tuner (two views, MI loss, masked SGD)
  features  the jitted feature extraction of train.Run (test-time forward)
FLOPs per call come from XLA's cost analysis of the unpartitioned program; MFU = FLOPs / time /
(n x peak) with the dense bf16 peak of the accelerator (none on CPU, where only TFLOP/s is shown).

On CPU the n devices are fake (XLA_FLAGS=--xla_force_host_platform_device_count=n) and share
the same cores: the table then shows the cost of partitioning, not a speed-up. On a GPU / TPU
host the counts are 1, 2, 4, ... up to all local devices.

Examples:
  python benchmarks/throughput.py                                   # CPU: tiny ViT, 1/2/4/8
  python benchmarks/throughput.py --model s14 --image-size 56 --batch 32
  python benchmarks/throughput.py --model b16 --image-size 224 --batch 256 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODELS = {  # width, depth, heads, mlp, patch, layerscale
    "tiny": (32, 2, 2, 64, 8, False),
    "s14": (384, 12, 6, 1536, 14, True),  # the embedded DINOv2 ViT-S/14
    "b16": (768, 12, 12, 3072, 16, False),  # the paper's ViT-B/16
}
# Dense bf16 peak FLOP/s per device (jax.Device.device_kind substring -> peak).
PEAK_FLOPS = {
    "TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6": 918e12,
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
    "T4": 65e12, "V100": 125e12,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="global images per step (2x views)")
    p.add_argument("--steps", type=int, default=3, help="timed calls per pass (median)")
    p.add_argument("--devices", default="1,2,4,8", help="CPU: fake device counts to try")
    p.add_argument("--fsdp", type=int, default=1, help="fsdp axis size (<= device count)")
    p.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="per-device peak TFLOP/s for the MFU columns (default: the table of "
                        "accelerators below; give it for other devices, e.g. a CPU's measured "
                        "matmul peak)")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _median_seconds(fn, steps: int) -> float:
    fn()  # compile + warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops(fn, *args) -> float:
    """FLOPs of one call of the unpartitioned ``fn`` (``programs.program_flops``: XLA's cost
    analysis, the jaxpr count on GPU; 0.0 if the backend gives none)."""
    import jax

    from mist_jax.infra import programs

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    try:
        return programs.program_flops(jax.jit(fn), abstract)[0]
    except Exception:  # pylint: disable=broad-except; some backends have no cost model
        return 0.0


def worker(args) -> dict:
    """Time the three passes on a mesh of ``args.worker`` devices; returns one table row."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from mist_jax.mist import masks, sensitivity
    from mist_jax.mist import tuner as tuner_module
    from mist_jax import mist
    from mist_jax.infra import sharding
    from mist_jax.models.vit import ViT

    n = args.worker
    devices = jax.devices()[:n]
    if len(devices) < n:
        raise ValueError(f"{n} devices requested, {len(jax.devices())} present.")
    ctx = sharding.MeshContext(sharding.make_mesh(n // args.fsdp, args.fsdp, devices))
    width, depth, heads, mlp, patch, ls = MODELS[args.model]
    model = ViT(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch,
                image_size=args.image_size, layerscale=ls, dtype=jnp.dtype(args.dtype),
                remat=args.remat)
    b, s = args.batch, args.image_size
    rng = np.random.default_rng(0)
    images = rng.random((b, s, s, 3), np.float32)
    labels = (np.arange(b) % max(b // 4, 1)).astype(np.int32)
    x1 = np.zeros((1, s, s, 3), np.float32)
    backbone = jax.jit(model.init)(jax.random.key(0), x1)["params"]
    params = ctx.place({"backbone": backbone,
                        "head": mist.init_head(jax.random.key(1), width, 128)})
    batch = ctx.put_batch((images, labels, jax.random.key(2)), b)
    loss_fn = mist.make_loss_fn(model, lambda x: x)
    cfg = ml_collections.ConfigDict(dict(
        sparsity="reference", drop_rate=0.9, overlap_decay=0.9, learning_rate=1e-4,
        momentum=0.9, weight_decay=5e-4, head_learning_rate=1e-2, selection_units="official",
        freeze_rate=0.0, optimizer="sgd", selector="fisher"))
    tuner = mist.Tuner(loss_fn, cfg, params, ctx)
    p_sh = ctx.shardings(params)

    def score():
        jax.block_until_ready(sensitivity.fisher_scores(loss_fn, params, [batch], shardings=p_sh,
                                                        steps=tuner.score_steps))

    mask = masks.select("random", 0.1, params=params, seed=0)
    state = masks.init_mist_state(params)
    carry = [ctx.place(jax.tree.map(jnp.array, params)), None]
    carry[1] = tuner.init(carry[0], mask, state.count, state.frozen, jax.random.key(0))
    step = tuner.step
    step_flops = _flops(tuner_module._train_step(loss_fn, tuner.tx),  # pylint: disable=protected-access
                        params, carry[1], batch)

    def train_step():
        carry[0], carry[1], loss, _ = step(carry[0], carry[1], batch)
        jax.block_until_ready(loss)

    feat_fn = jax.jit(lambda p, x: model.apply({"params": p}, x),
                      in_shardings=(p_sh["backbone"], None), out_shardings=ctx.replicated)
    feat_flops = _flops(lambda p, x: model.apply({"params": p}, x), params["backbone"], batch[0])

    def features():
        jax.block_until_ready(feat_fn(params["backbone"], batch[0]))

    t_score = _median_seconds(score, args.steps)
    t_step = _median_seconds(train_step, args.steps)
    t_feat = _median_seconds(features, args.steps)
    kind = devices[0].device_kind
    peak = args.peak_tflops * 1e12 or next(
        (v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)
    mfu = lambda f, t: (f / t / (n * peak)) if (peak and f) else None
    return {"devices": n, "mesh": dict(ctx.mesh.shape), "kind": kind,
            "backend": jax.default_backend(),
            "scoring": b / t_score, "step": b / t_step, "features": b / t_feat,
            "step_tflops": step_flops / t_step / 1e12, "step_mfu": mfu(step_flops, t_step),
            "features_tflops": feat_flops / t_feat / 1e12,
            "features_mfu": mfu(feat_flops, t_feat)}


def _counts(args) -> tuple[list[int], bool]:
    """Device counts to try and whether they are fake CPU devices."""
    import jax

    if jax.default_backend() == "cpu":
        return [int(c) for c in args.devices.split(",")], True
    total = jax.local_device_count()
    counts, c = [], 1
    while c <= total:
        counts.append(c)
        c *= 2
    return counts, False


def main(argv=None) -> list[dict] | None:
    """Print the table; returns its rows (one dict per device count)."""
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    counts, fake = _counts(args)
    rows = []
    for n in counts:
        env = dict(os.environ)
        if fake:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
               "--worker", str(n)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"worker with {n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
    width, depth, heads, mlp, patch, _ = MODELS[args.model]
    print(f"ViT {args.model} (width {width}, depth {depth}, patch {patch}) at {args.image_size} "
          f"px, global batch {args.batch} ({2 * args.batch} views in the MI passes), "
          f"{args.dtype} compute, remat {args.remat}, mesh fsdp {args.fsdp}; "
          f"{rows[0]['kind']} ({'fake CPU devices, ' if fake else ''}{os.cpu_count()} "
          f"host cores, {platform.processor() or platform.machine()}); median of {args.steps}")
    print("| devices | mesh (data x fsdp) | scoring img/s | MIST step img/s | features img/s "
          "| step TFLOP/s | step MFU | features MFU |")
    print("|---|---|---|---|---|---|---|---|")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    for r in rows:
        m = r["mesh"]
        print(f"| {r['devices']} | {m['data']} x {m['fsdp']} | {r['scoring']:.1f} | "
              f"{r['step']:.1f} | {r['features']:.1f} | {r['step_tflops']:.3f} | "
              f"{pct(r['step_mfu'])} | {pct(r['features_mfu'])} |")
    return rows


if __name__ == "__main__":
    main()
