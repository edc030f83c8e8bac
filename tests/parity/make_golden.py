"""Write the golden files of the parity test with the PyTorch transcription (torch_mist.py).

Run (torch is NOT a dependency of mist-jax; see README.md here):
    /tmp/torchvenv/bin/python tests/parity/make_golden.py

A 2-block ViT (width 48, 3 heads, patch 4, 16x16 images, fused qkv) learns two tasks of three
classes of deterministic smooth random images with MIST (mi_epochs 3 = 1 scoring + 2 update
epochs, select 0.1, drop 0.9), once with the SimpleCIL file's freeze rule and SimpleCIL, once
with the RanPAC file's freeze rule and RanPAC (M = 64). Every random input of the official loop
(batch orders, second views, keep masks, W_rand, the CP-loader order) is drawn here with numpy
and saved. Writes tests/parity/golden/{simplecil,ranpac}.npz.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import torch_mist as tm  # noqa: E402

OUT = Path(__file__).parent / "golden"
CFG = dict(image=16, patch=4, dim=48, depth=2, heads=3, hidden=96, tasks=2, classes_per_task=3,
           train_per_class=8, test_per_class=5, batch=8, mi_epochs=3, select_rate=0.1,
           drop_rate=0.9, num_projections=64, seed=0)


# --------------------------------------------------------------------------- inputs
def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (align_corners=True) resize of an HWC image to size x size."""
    h, w, _ = img.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def make_images(rng, n_classes: int, per_class: int, size: int, templates) -> tuple:
    """Noisy, shifted, brightness-jittered copies of each class's smooth template (uint8)."""
    xs, ys = [], []
    for c in range(n_classes):
        for _ in range(per_class):
            img = np.roll(templates[c], rng.integers(-1, 2, 2), axis=(0, 1))
            img = img * rng.uniform(0.5, 1.5) + rng.normal(0, 0.5, img.shape)
            xs.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def second_view(rng, img: np.ndarray) -> np.ndarray:
    """A simclr_aug-like view (flip p .5, gray p .25, resized crop scale (.3, 1)), uint8."""
    x = img.astype(np.float64) / 255
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.25:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    s = x.shape[0]
    area, ratio = rng.uniform(0.3, 1.0) * s * s, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(s, max(2, round(np.sqrt(area * ratio)))))
    ch = int(min(s, max(2, round(np.sqrt(area / ratio)))))
    top, left = rng.integers(0, s - ch + 1), rng.integers(0, s - cw + 1)
    x = _upsample(x[top:top + ch, left:left + cw], s)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def to_torch(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] (the JAX side uses the same x / 255 in float32)."""
    return torch.from_numpy(images_u8.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2)


def build_net(cfg: dict) -> tm.Net:
    """Seeded ViT (backbone values rounded to float16, stored exactly) + default-init head."""
    torch.manual_seed(cfg["seed"])
    vit = tm.ViT(cfg["image"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["hidden"])
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                v = 1 + 0.1 * r
            elif name.endswith("bias") or name in ("cls_token", "pos_embed"):
                v = 0.1 * r
            else:  # Linear [out, in] / Conv [out, in, k, k]
                v = r / np.sqrt(p[0].numel())
            p.copy_(v.half().float())
    return tm.Net(vit, cfg["dim"])  # simclr: nn.Linear default init from the global seed


# --------------------------------------------------------------------------- bookkeeping
def timm_name(name: str) -> str:
    return name.removeprefix("convnet.")


def pack(d: dict, names: list) -> np.ndarray:
    return np.packbits(np.concatenate([d[n].numpy().astype(bool).ravel() for n in names]))


def qkv_shares(masks: dict, dim: int, depth: int) -> list:
    """Selected share of q, k, v rows of each fused qkv weight: fused != per-leaf selection."""
    out = []
    for i in range(depth):
        m = masks[f"convnet.blocks.{i}.attn.qkv.weight"].float()
        out.append([round(float(m[j * dim:(j + 1) * dim].mean()), 4) for j in range(3)])
    return out


def threshold_margin(scores: dict, q: float) -> float:
    """Smallest relative gap around the quantile threshold over non-exempt tensors."""
    gaps = []
    for name, s in scores.items():
        if tm.exempt(name):
            continue
        flat = s.flatten().double()
        t = torch.quantile(s.flatten(), q).double()
        below, above = flat[flat < t], flat[flat >= t]
        if len(below):
            gaps.append(float((above.min() - below.max()) / above.min()))
    return min(gaps)


def run(learner: str, cfg: dict, data: dict) -> dict:
    """Both tasks with MIST (freeze rule of the learner's file), then the learner; a dict."""
    net = build_net(cfg)
    names = [n for n, _ in net.named_parameters()]
    out = {f"init/{timm_name(n)}": p.detach().numpy().copy() for n, p in net.named_parameters()}
    out.update({k: v.astype(np.float16) for k, v in out.items() if "simclr" not in k})  # exact
    state = tm.init_state(net)
    cpt, nt = cfg["classes_per_task"], cfg["tasks"]
    total = cpt * nt
    if learner == "ranpac":
        rp = tm.RanPAC(torch.from_numpy(data["w_rand"]), total)
    protos = torch.zeros(0, cfg["dim"])
    acc = np.full((nt, nt), np.nan)
    shapes = {n: p.shape for n, p in net.named_parameters()}
    offsets = np.cumsum([0] + [int(np.prod(shapes[n])) for n in names])
    losses = []
    for t in range(nt):
        x, y = to_torch(data["train_x"][t]), torch.from_numpy(data["train_y"][t])
        epochs = []
        for e in range(cfg["mi_epochs"]):
            x2 = to_torch(data["views2"][t, e])
            order = data["order"][t, e]
            epochs.append([(x[idx], x2[idx], y[idx]) for idx in
                           np.split(order, len(order) // cfg["batch"])])
        keeps = []
        for bits in data["keep"][t].reshape(-1, data["keep"].shape[-1]):
            flat = np.unpackbits(bits)[:offsets[-1]].astype(bool)
            keeps.append({n: torch.from_numpy(flat[offsets[i]:offsets[i + 1]].reshape(shapes[n]))
                          for i, n in enumerate(names)})
        res = tm.mist_run(net, state, epochs, keeps, cfg["select_rate"], learner)
        losses.append(res["losses"])
        print(f"[{learner}] task {t}: losses {np.round(res['losses'], 4).tolist()}")
        shares = qkv_shares(res["masks"], cfg["dim"], cfg["depth"])
        print(f"  qkv mask shares (q, k, v) per block: {shares}")
        print(f"  min relative gap at the selection threshold: "
              f"{threshold_margin(res['scores'], 1 - cfg['select_rate']):.2e}")
        for rule, q in tm.FREEZE_Q.items():
            n = sum(int((s >= torch.quantile(s.flatten(), q)).sum())
                    for k, s in res["scores"].items() if not tm.exempt(k))
            print(f"  elements the {rule} freeze rule freezes this task: {n}")
        for n in names:
            out[f"task{t}/scores/{timm_name(n)}"] = res["scores"][n].numpy()
            out[f"task{t}/params/{timm_name(n)}"] = net.state_dict()[n].numpy().copy()
        out[f"task{t}/mask"] = pack(res["masks"], names)
        out[f"task{t}/frozen"] = pack(state["frozen"], names)
        out[f"task{t}/count"] = np.concatenate(
            [state["overlap"][n].numpy().astype(np.int8).ravel() for n in names])
        # The learner on the tuned backbone (test-mode features of the task's training images).
        classes = list(range(t * cpt, (t + 1) * cpt))
        if learner == "simplecil":
            protos = tm.simplecil_fit(protos, tm.features(net, x), y, classes)
            out[f"task{t}/prototypes"] = protos.numpy().copy()
        else:
            perm = torch.from_numpy(data["cp_order"][t].astype(np.int64))
            rp.replace_fc(tm.features(net, x)[perm], y[perm], (t + 1) * cpt)
            best = np.sort(rp.ridge_losses)
            print(f"  ridge {rp.ridge:g}; runner-up validation loss "
                  f"{best[1] / best[0] - 1:.1%} higher")
            ev = torch.linalg.eigvalsh((rp.G + float(rp.ridge) * torch.eye(len(rp.G))).double())
            print(f"  condition number of G + ridge I: {float(ev[-1] / ev[0]):.3g}")
            out.update({f"task{t}/W": rp.weight.numpy().copy(), f"task{t}/G": rp.G.numpy().copy(),
                        f"task{t}/Q": rp.Q.numpy().copy(), f"task{t}/ridge": np.float64(rp.ridge),
                        f"task{t}/ridge_losses": rp.ridge_losses.astype(np.float32)})
        margins = []
        for j in range(t + 1):
            f = tm.features(net, to_torch(data["test_x"][j]))
            logits = tm.cosine_logits(f, protos) if learner == "simplecil" else rp.logits(f)
            pred = logits.argmax(1).numpy()
            top2 = logits.topk(2, dim=1).values
            margins.append(float((top2[:, 0] - top2[:, 1]).min() / logits.abs().max()))
            acc[t, j] = 100.0 * np.sum(pred == data["test_y"][j]) / len(pred)
        print(f"  accuracy row: {acc[t].tolist()}; min relative top-1 margin {min(margins):.1e}")
    out["loss"] = np.array(losses, np.float32)  # [task, epoch, batch]
    out["acc_matrix"] = acc
    meta = dict(CFG, learner=learner, freeze_rule=learner, torch_version=torch.__version__,
                names=[timm_name(n) for n in names],
                shapes={timm_name(n): list(shapes[n]) for n in names})
    out["meta"] = np.array(json.dumps(meta))
    return out


def make_inputs(cfg: dict) -> dict:
    """Images, labels, batch orders, second views, keep masks, W_rand and CP orders."""
    rng = np.random.default_rng(cfg["seed"])
    s, cpt, nt = cfg["image"], cfg["classes_per_task"], cfg["tasks"]
    templates = [_upsample(rng.uniform(0, 1, (4, 4, 3)), s) for _ in range(cpt * nt)]
    data = {k: [] for k in ("train_x", "train_y", "test_x", "test_y")}
    for t in range(nt):
        tt = templates[t * cpt:(t + 1) * cpt]
        for split, per in (("train", cfg["train_per_class"]), ("test", cfg["test_per_class"])):
            x, y = make_images(rng, cpt, per, s, tt)
            data[f"{split}_x"].append(x)
            data[f"{split}_y"].append(y + t * cpt)
    data = {k: np.stack(v) for k, v in data.items()}
    n = data["train_x"].shape[1]
    data["order"] = np.stack([[rng.permutation(n) for _ in range(cfg["mi_epochs"])]
                              for _ in range(nt)]).astype(np.int16)
    data["views2"] = np.stack([[[second_view(rng, img) for img in data["train_x"][t]]
                                for _ in range(cfg["mi_epochs"])] for t in range(nt)])
    total = sum(p.numel() for p in build_net(cfg).parameters())
    steps = (cfg["mi_epochs"] - 1) * (n // cfg["batch"])
    keep = rng.random((nt, steps, total)) < 1 - cfg["drop_rate"]
    data["keep"] = np.packbits(keep, axis=-1).reshape(nt, cfg["mi_epochs"] - 1,
                                                       n // cfg["batch"], -1)
    torch.manual_seed(cfg["seed"] + 2)
    data["w_rand"] = torch.randn(cfg["dim"], cfg["num_projections"]).numpy()
    data["cp_order"] = np.stack([rng.permutation(n) for _ in range(nt)]).astype(np.int16)
    return data


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = make_inputs(CFG)
    OUT.mkdir(exist_ok=True)
    for learner in ("simplecil", "ranpac"):
        out = run(learner, CFG, data)
        keys = ["train_x", "train_y", "test_x", "test_y", "order", "views2", "keep"]
        keys += ["w_rand", "cp_order"] if learner == "ranpac" else []
        out.update({k: data[k] for k in keys})
        path = OUT / f"{learner}.npz"
        np.savez_compressed(path, **out)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
