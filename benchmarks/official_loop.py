"""The authors' MIST loop (github.com/zhwhu/MIST) on a stream exported by official_compare.py.

Runs under a PyTorch venv, never under mist-jax's (torch is not a dependency of mist-jax):

  python -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm numpy pillow scipy tqdm
  /tmp/torchvenv/bin/python benchmarks/official_loop.py --official PATH/TO/MIST \
      --stream W/stream.npz --weights W/backbone_timm.npz --learner simplecil --spr mist \
      --seed 0 --out W/official.json

``models/simplecil_mist.py`` / ``models/ranpac_mist.py`` are imported from the checkout as
they are and driven as its ``trainer.py`` drives them (``incremental_train``, ``eval_task``,
``after_task`` per task). The shims (each only where this machine or this stream needs one):

1. CUDA -> CPU: ``Tensor.cuda`` / ``Module.cuda`` return self, ``.to('cuda')`` goes to the CPU.
2. ``diffdist`` (multi-GPU gathering, unused here) is an empty module.
3. ``utils.inc_net.get_convnet`` returns timm's ``vit_small_patch14_dinov2`` at the stream's
   image size with the weights of ``--weights`` (mist-jax's converted DINOv2-S/14, written by
   ``mist_jax.models.convert.timm.to_timm``), normalising with the ImageNet mean / std inside
   its forward (mist-jax's ``model.preprocess="imagenet"``; the official ViT-B takes [0, 1]).
4. The second view's ``RandomResizedCropLayer(size=[224, 224, 3])`` is given the stream's size.
5. ``utils.data_manager.DataManager`` is replaced by ``Stream`` (the exported images, labels
   already in class order; the official ``build_transform`` at the stream's size:
   RandomResizedCrop(scale 0.05-1) + flip for training, Resize(256/224) + CenterCrop for test).
6. Module globals ``num_workers = 0``; the backbone's learning rate is ``--backbone-lr`` (the
   files hard-code 1e-4; the embedded default uses 1e-5); ``mi_epochs``, ``select_rate``,
   ``drop_rate``, ``batch_size``, ``M`` come from ``args`` as in the exps/*.json files.
7. ``torch.manual_seed(seed)`` instead of the trainer's fixed ``torch.manual_seed(1)``, so the
   repeats are independent draws; ``np.random.seed(seed)`` as ``DataManager`` does.

Observers (no effect on the computation): the MI loss of every step (a wrapper around
``Supervised_NT_xent_n``), the task's mask (growth of ``overlap_mask``), the backbone before
and after the task, and the scoring pass's batches of task 0 (``--record-scoring``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of github.com/zhwhu/MIST")
    p.add_argument("--stream", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--learner", choices=("simplecil", "ranpac"), required=True)
    p.add_argument("--spr", choices=("mist", "none"), default="mist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mi-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone-lr", type=float, default=1e-5)
    p.add_argument("--num-projections", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record-scoring", default="", help="npz: task 0's scoring batches, the "
                   "initial projection head and the official task-0 mask")
    p.add_argument("--out", required=True)
    return p.parse_args()


def shim_cuda(torch):
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    cpu = lambda d: "cpu" if isinstance(d, str) and d.startswith("cuda") else d
    tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

    def t_to(self, *a, **k):
        return tensor_to(self, *[cpu(x) for x in a], **{n: cpu(v) for n, v in k.items()})

    def m_to(self, *a, **k):
        return module_to(self, *[cpu(x) for x in a], **{n: cpu(v) for n, v in k.items()})

    torch.Tensor.to, torch.nn.Module.to = t_to, m_to


def backbone_factory(torch, weights: str, size: int):
    import timm

    state = {k: torch.from_numpy(v) for k, v in np.load(weights).items()}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def get_convnet(args, pretrained=False):
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                  img_size=size)
        model.load_state_dict(state, strict=True)
        plain = model.forward
        model.forward = lambda x: plain((x - mean) / std)
        model.out_dim = model.embed_dim
        return model.eval()

    return get_convnet


class Stream:
    """``utils.data_manager.DataManager``'s interface over the exported stream."""

    def __init__(self, z, size: int):
        from torchvision import transforms as T

        self.z, self._increments = z, [int(b - a) for a, b in z["ranges"]]
        self.trsf = {
            "train": T.Compose([T.RandomResizedCrop(size, scale=(0.05, 1.0),
                                                    ratio=(3 / 4, 4 / 3)),
                                T.RandomHorizontalFlip(p=0.5), T.ToTensor()]),
            "test": T.Compose([T.Resize(int(256 / 224 * size), interpolation=3),
                               T.CenterCrop(size), T.ToTensor()])}

    nb_tasks = property(lambda self: len(self._increments))

    def get_task_size(self, task):
        return self._increments[task]

    def get_total_classnum(self):
        return sum(self._increments)

    def get_dataset(self, indices, source, mode, **_):
        from torch.utils.data import Dataset
        from PIL import Image

        x, y = self.z[f"{source}_images"], self.z[f"{source}_labels"]
        keep = np.isin(y, indices)
        order = np.argsort(y[keep], kind="stable")  # class by class, as DataManager
        images, labels, trsf = x[keep][order], y[keep][order], self.trsf[mode]

        class Images(Dataset):
            def __len__(self):
                return len(labels)

            def __getitem__(self, i):
                return i, trsf(Image.fromarray(images[i])), int(labels[i])

        ds = Images()
        ds.labels = labels
        return ds


def flat_backbone(net) -> dict:
    return {n: p.detach().numpy().copy() for n, p in net.convnet.named_parameters()}


def main():
    a = parse_args()
    import torch

    torch.set_num_threads(a.threads)
    shim_cuda(torch)
    sys.modules["diffdist"] = types.ModuleType("diffdist")
    sys.modules["diffdist.functional"] = types.ModuleType("diffdist.functional")
    sys.path.insert(0, a.official)
    z = np.load(a.stream)
    size = int(z["image_size"])
    import utils.inc_net as inc_net
    import utils.tao as tao

    inc_net.get_convnet = backbone_factory(torch, a.weights, size)
    mod = __import__(f"models.{a.learner}_mist", fromlist=["Learner"])
    mod.num_workers = 0
    losses, recorded = [], {"x": [], "x2": [], "y": []}
    loss_fn = mod.Supervised_NT_xent_n

    def observed_loss(sim_matrix, labels, **k):
        value = loss_fn(sim_matrix, labels=labels, **k)
        losses.append(float(value.detach()))
        if scoring():
            recorded["y"].append(labels.numpy().copy())
        return value

    mod.Supervised_NT_xent_n = observed_loss

    class Optim:
        lr_scheduler = torch.optim.lr_scheduler

        @staticmethod
        def SGD(groups, **kw):  # noqa: N802 - torch's name
            groups = [dict(groups[0], lr=a.backbone_lr)] + list(groups[1:])
            return torch.optim.SGD(groups, **kw)

    mod.optim = Optim
    if a.learner == "simplecil":
        mod.batch_size = a.batch_size
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)  # as DataManager._setup_data does (the second view's crops draw here)
    args = {"device": ["cpu"], "memory_size": 0, "spr": a.spr, "mi_epochs": a.mi_epochs,
            "select_rate": 0.1, "drop_rate": 0.9, "batch_size": a.batch_size,
            "use_RP": True, "M": a.num_projections, "convnet_type": "vit_small_dinov2"}
    learner = mod.Learner(args)
    crop = learner.simclr_aug[2]
    assert isinstance(crop, tao.RandomResizedCropLayer)
    crop.size = [size, size, 3]
    aug = learner.simclr_aug
    # task 0's scoring epoch: the first len(train_loader) steps of the run
    scoring = lambda: bool(a.record_scoring) and len(recorded["y"]) < len(learner.train_loader) \
        and learner._cur_task == 0

    def observed_aug(x):
        out = aug(x)
        if scoring():
            recorded["x"].append(x.numpy().copy())
            recorded["x2"].append(out.detach().numpy().copy())
        return out

    learner.simclr_aug = observed_aug
    init_head = {n: p.detach().numpy().copy()
                 for n, p in learner._network.simclr.named_parameters()}
    stream, tasks, acc = Stream(z, size), [], []
    ranges = [tuple(int(v) for v in r) for r in z["ranges"]]
    count_before = {n: m.clone() for n, m in learner.overlap_mask.items()}
    for t in range(stream.nb_tasks):
        before, start, n0 = flat_backbone(learner._network), time.perf_counter(), len(losses)
        learner.incremental_train(stream)
        y_pred, y_true = learner._eval_cnn(learner.test_loader)
        learner.after_task()
        seconds = time.perf_counter() - start
        after = flat_backbone(learner._network)
        diff = {n: after[n] - before[n] for n in after}
        changed = sum(int(np.count_nonzero(d)) for d in diff.values())
        total = sum(d.size for d in diff.values())
        mask = {n: (learner.overlap_mask[n] - count_before[n]).numpy().astype(bool)
                for n in learner.overlap_mask if n.startswith("convnet.")}
        count_before = {n: m.clone() for n, m in learner.overlap_mask.items()}
        np.savez_compressed(f"{a.out}.mask{t}.npz", **{n[len("convnet."):]: np.packbits(m)
                                                        for n, m in mask.items()})
        steps = len(losses) - n0
        per_epoch = (np.array(losses[n0:]).reshape(a.mi_epochs, -1).mean(1).tolist()
                     if steps else [None])
        row = [100.0 * float(np.mean(y_pred[(y_true >= lo) & (y_true < hi), 0]
                                     == y_true[(y_true >= lo) & (y_true < hi)]))
               for lo, hi in ranges[:t + 1]]
        acc.append(row)
        tasks.append({"scoring_loss": per_epoch[0], "mi_loss_per_epoch": per_epoch[1:],
                      "seconds": seconds,
                      "changed_fraction": changed / total,
                      "change_norm": float(np.sqrt(sum(float((d ** 2).sum())
                                                       for d in diff.values())))})
        print(f"task {t}: {seconds:.1f} s, accuracy {row}", flush=True)
    if a.record_scoring:
        np.savez_compressed(a.record_scoring, x=np.concatenate(recorded["x"]),
                            x2=np.concatenate(recorded["x2"]),
                            y=np.concatenate(recorded["y"]),
                            batch=np.array([len(v) for v in recorded["y"]]),
                            **{"head/" + n: v for n, v in init_head.items()})
    fresh = inc_net.get_convnet(args)  # the pre-trained backbone, for the features check
    with torch.no_grad():
        probe = torch.from_numpy(z["probe"]).permute(0, 3, 1, 2)
        probe_features = fresh(probe).numpy()
    json.dump({"acc_matrix": acc, "tasks": tasks, "probe_features": probe_features.tolist(),
               "versions": {"torch": torch.__version__, "timm": __import__("timm").__version__,
                            "python": sys.version.split()[0]},
               "shims": "benchmarks/official_loop.py docstring, items 1-7"},
              open(a.out, "w"))


if __name__ == "__main__":
    main()
