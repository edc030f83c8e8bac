"""MIST step time: mist-jax vs a PyTorch implementation of the same step, on this CPU.

One step = second view of each image (flip / grayscale / resized crop) -> ViT-S/16 over the 2B
views -> Dense(128) -> L2-normalise -> MI loss (Supervised_NT_xent_n) -> backward ->
grad *= mask * Bernoulli(0.1) * 0.9 ** count, frozen zeroed -> SGD(momentum 0.9, wd 5e-4;
backbone lr 1e-4, head lr 1e-2). The PyTorch side is the authors' recipe written in plain torch
with timm's ViT layout (fused qkv, scaled_dot_product_attention, LayerNorm eps 1e-6, exact
GELU); timm itself is not imported because it needs torchvision, which has no CPU wheel for
this machine's torch. torch is a benchmark-only dependency: run the torch half in its own venv.

  python benchmarks/torch_compare.py --torch-python /path/to/venv-with-torch/bin/python

prints a table of median step times (after warm-up) and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=("jax", "torch", "both"), default="both")
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter with torch installed (for --framework both)")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8, help="images per step (2x views)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


WIDTH, DEPTH, HEADS, MLP, PATCH, PROJ = 384, 12, 6, 1536, 16, 128


def time_jax(a) -> list[float]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mist_jax.mist import masks, optim, tuner
    from mist_jax import mist
    from mist_jax.models.vit import ViT

    model = ViT(WIDTH, DEPTH, HEADS, MLP, PATCH, a.image_size)
    x = jnp.zeros((1, a.image_size, a.image_size, 3))
    params = {"backbone": model.init(jax.random.key(0), x)["params"],
              "head": mist.init_head(jax.random.key(1), WIDTH, PROJ)}
    loss_fn = mist.make_loss_fn(model, lambda v: v)
    mask = masks.select("random", 0.1, params=params, seed=0)
    state = masks.init_mist_state(params)
    tx = optim.mist_optimizer()
    step = jax.jit(tuner._train_step(loss_fn, tx), donate_argnums=(0, 1))
    opt_state = optim.start_task(tx.init(params), params, mask, state.count, state.frozen, 0)
    rng = np.random.RandomState(0)
    batch = (jnp.asarray(rng.rand(a.batch, a.image_size, a.image_size, 3), jnp.float32),
             jnp.asarray(rng.randint(0, 4, a.batch), jnp.int32), jax.random.key(2))
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        params, opt_state, loss, _ = step(params, opt_state, batch)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return times[1:]


def time_torch(a) -> list[float]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
            self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
            self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
            x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            g = a.image_size // PATCH
            self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
            self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
            self.pos = nn.Parameter(torch.randn(1, 1 + g * g, WIDTH) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
            self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
            return self.norm(self.blocks(x))[:, 0]

    def second_view(x):
        n, _, h, w = x.shape
        flip = torch.rand(n, 1, 1, 1) < 0.5
        x = torch.where(flip, x.flip(3), x)
        gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand(-1, 3, -1, -1)
        x = torch.where(torch.rand(n, 1, 1, 1) < 0.25, gray, x)
        out = []
        for img in x:
            s = float(torch.empty(1).uniform_(0.3, 1.0)) ** 0.5
            ch, cw = max(1, int(h * s)), max(1, int(w * s))
            i, j = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
            out.append(F.interpolate(img[None, :, i:i + ch, j:j + cw], (h, w), mode="bilinear"))
        return torch.cat(out)

    def nt_xent(z, labels, tau=0.07, eps=1e-8):  # Supervised_NT_xent_n of the authors' code
        b = len(labels)
        s = z @ z.T
        s = s - s.max(1, keepdim=True)[0].detach()
        e = torch.exp(s / tau) * (1 - torch.eye(2 * b))
        l = -torch.log(e / (e.sum(1, keepdim=True) + eps) + eps)
        y = torch.cat([labels, labels])
        m = (y[:, None] == y[None]).float()
        w = m / (m.sum(1, keepdim=True) + eps)
        idx = torch.arange(b)
        return (l[idx, idx + b].sum() + l[idx + b, idx].sum()) / (2 * b) + (w * l).sum() / b

    vit, head = ViT(), nn.Linear(WIDTH, PROJ)
    params = list(vit.parameters()) + list(head.parameters())
    masks = [torch.rand_like(p) < 0.1 for p in params]
    counts = [torch.zeros_like(p) for p in params]
    frozen = [torch.zeros_like(p, dtype=torch.bool) for p in params]
    opt = torch.optim.SGD([{"params": vit.parameters(), "lr": 1e-4},
                           {"params": head.parameters(), "lr": 1e-2}],
                          momentum=0.9, weight_decay=5e-4)
    x = torch.rand(a.batch, 3, a.image_size, a.image_size)
    y = torch.randint(0, 4, (a.batch,))
    times = []
    for _ in range(a.steps + 1):
        t0 = time.perf_counter()
        views = torch.cat([x, second_view(x)])
        loss = nt_xent(F.normalize(head(vit(views)), dim=1), y)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p, m, c, f in zip(params, masks, counts, frozen):
                keep = m & (torch.rand_like(p) < 0.1) & ~f
                p.grad.mul_(keep * 0.9 ** c)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main():
    a = parse_args()
    if a.framework != "both":
        print(json.dumps((time_jax if a.framework == "jax" else time_torch)(a)))
        return
    common = ["--image-size", str(a.image_size), "--batch", str(a.batch),
              "--steps", str(a.steps), "--threads", str(a.threads)]
    res = {}
    for fw, py in (("jax", sys.executable), ("torch", a.torch_python)):
        out = subprocess.run([py, __file__, "--framework", fw, *common], capture_output=True,
                             text=True, check=True).stdout
        res[fw] = statistics.median(json.loads(out.strip().splitlines()[-1]))
    print(f"ViT-S/16 {a.image_size}px, batch {a.batch} ({2 * a.batch} views), "
          f"{a.threads} threads, median of {a.steps} steps")
    print(f"{'implementation':<16}{'step ms':>10}")
    for fw, t in res.items():
        print(f"{'mist-jax' if fw == 'jax' else 'PyTorch':<16}{1000 * t:>10.1f}")
    print(f"mist-jax speed-up: {res['torch'] / res['jax']:.2f}x")


if __name__ == "__main__":
    main()
