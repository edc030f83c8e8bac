"""Step time of MIST sparse tuning vs dense fine-tuning on a ViT-S/16 with the MI loss.

Prints a table of median (and min) step times after compilation, timed round-robin, for:
  dense           plain torch-style SGD (momentum 0.9, wd 5e-4, head lr 1e-2), same loss
  mist reference  sparse_tuning (drop 0.9, overlap decay, frozen) + the same SGD
  mist strict     as reference, final update masked by the step's live mask
  scoring         one steady-state MI-Fisher step (grad + squared accumulate, donated sum)
plus the optimizer update alone (no forward/backward) for the three optimizers.

Every step: two views (mist_jax.mist.augment) -> ViT -> Dense(128) -> L2-normalise -> MI loss.

Example (2-core CPU, a few minutes):
  python benchmarks/sparse_step.py --image-size 112 --batch 8 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from mist_jax.models.normalize import l2_normalize
from mist_jax.mist import augment, inner, masks, objectives, optim, sensitivity
from mist_jax.infra import trees
from mist_jax.models.vit import ViT


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8, help="images per step (2x views)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (after 1 warm-up)")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--mlp", type=int, default=1536)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--select-rate", type=float, default=0.1)
    return p.parse_args()


def interleaved_times(fns: dict, steps: int) -> dict:
    """(median, min) seconds per call of each fn, timing them round-robin (one call each per
    round) so that load from other processes on a shared machine hits every row alike."""
    for fn in fns.values():
        fn()  # compile + warm-up
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def _runner(step, params, tx, arg, task):
    """A no-argument closure running one donated step on its own copy of params/state, the
    optimizer started on ``task`` = (mask, count, frozen, key)."""
    carry = [jax.tree.map(jnp.copy, params), optim.start_task(tx.init(params), params, *task)]

    def run():
        carry[0], carry[1], *_ = step(carry[0], carry[1], arg)
        jax.block_until_ready(carry[0])

    return run


def main():
    args = parse_args()
    model = ViT(width=args.width, depth=args.depth, num_heads=args.heads, mlp_dim=args.mlp,
                patch_size=args.patch, image_size=args.image_size)
    k_init, k_head, k_img, k_aug, k_cnt = jax.random.split(jax.random.key(0), 5)
    images = jax.random.uniform(k_img, (args.batch, args.image_size, args.image_size, 3))
    labels = jnp.arange(args.batch, dtype=jnp.int32) % max(args.batch // 2, 1)
    params = {
        "backbone": model.init(k_init, images[:1])["params"],
        "head": {"kernel": 0.02 * jax.random.normal(k_head, (args.width, 128)),
                 "bias": jnp.zeros(128)},
    }
    n_params = sum(x.size for x in jax.tree.leaves(params))
    batch = (images, labels, k_aug)

    def loss_fn(p, batch):
        x, y, key = batch
        feats = model.apply({"params": p["backbone"]}, augment.two_views(key, x))
        z = l2_normalize(feats @ p["head"]["kernel"] + p["head"]["bias"], convention="mist")
        return objectives.supervised_nt_xent(z, y)

    # A realistic MIST configuration: 10% random selection, counts from two earlier tasks,
    # 0.05% frozen.
    mask = masks.select("random", args.select_rate, params=params, seed=0)
    count = jax.tree.map(
        lambda p, exempt: jnp.zeros(p.shape, jnp.int32) if exempt
        else jax.random.randint(k_cnt, p.shape, 0, 3, jnp.int32),
        params, trees.exempt_tree(params, masks.DEFAULT_EXEMPT))
    frozen = masks.select_top(masks.random_scores(params, seed=1), 0.0005)

    optimizers = {
        "dense": inner.inner_optimizer("sgd"),
        "mist reference": optim.mist_optimizer(sparsity="reference"),
        "mist strict": optim.mist_optimizer(sparsity="strict"),
    }
    task = (mask, count, frozen, 0)  # the dense optimizer has no sparse state to set
    step_fns, update_fns = {}, {}
    grads = jax.tree.map(jnp.ones_like, params)
    for name, tx in optimizers.items():
        def train_step(p, s, batch, tx=tx):
            loss, grads = jax.value_and_grad(loss_fn)(p, batch)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        def update_only(p, s, grads, tx=tx):
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        step_fns[name] = _runner(jax.jit(train_step, donate_argnums=(0, 1)), params, tx, batch,
                                 task)
        update_fns[f"  update only: {name}"] = _runner(
            jax.jit(update_only, donate_argnums=(0, 1)), params, tx, grads, task)

    # Steady state of the scoring pass: the jitted grad + squared-accumulate step that
    # fisher_scores runs for every batch after the first, on a donated running sum.
    first, accumulate = sensitivity.compile_steps(loss_fn, 2)
    acc = [first(params, batch, frozen)]

    def run_score():
        acc[0] = accumulate(acc[0], params, batch, frozen)
        jax.block_until_ready(acc[0])

    step_fns["scoring (grad + squared accumulate)"] = run_score
    results = interleaved_times(step_fns, args.steps)
    results.update(interleaved_times(update_fns, max(args.steps, 10)))

    print(f"ViT width {args.width} depth {args.depth} heads {args.heads} mlp {args.mlp} "
          f"patch {args.patch}, image {args.image_size}, batch {args.batch} images "
          f"({2 * args.batch} views), {n_params / 1e6:.1f}M params, "
          f"{jax.devices()[0].device_kind}, "
          f"median of {args.steps} interleaved steps")
    print(f"{'step':<40} {'median ms':>10} {'vs dense':>9} {'min ms':>8} {'vs dense':>9}")
    order = ["dense", "mist reference", "mist strict", "scoring (grad + squared accumulate)",
             "  update only: dense", "  update only: mist reference", "  update only: mist strict"]
    for name in order:
        base = results["  update only: dense" if name.startswith("  update") else "dense"]
        med, low = results[name]
        print(f"{name:<40} {1e3 * med:>10.1f} {med / base[0]:>8.2f}x {1e3 * low:>8.1f} "
              f"{low / base[1]:>8.2f}x")


if __name__ == "__main__":
    main()
