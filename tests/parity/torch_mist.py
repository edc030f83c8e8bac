"""Plain-PyTorch transcription of the official MIST code (github.com/zhwhu/MIST, commit b5414d8).

Only torch is used (no timm, no torchvision); everything is float32 as in the official code.
Used by ``make_golden.py`` to write the golden files; never imported by the test suite.

What transcribes what:

* ``ViT``: timm ``VisionTransformer`` (the layout of ``vit_base_patch16_224``, num_classes=0)
  at a small size, with timm's parameter names (``patch_embed.proj``, ``cls_token``,
  ``pos_embed``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``):
  pre-LN, LayerNorm eps 1e-6, exact erf GELU, fused qkv with bias; the feature is the CLS token
  after the final norm.
* ``Net``: utils/inc_net.py ``SimpleVitNet(args, True, is_clr=True)``: ``convnet`` plus the
  projection head ``simclr = nn.Linear(D, 128)`` (PyTorch default init);
  ``forward(x, is_clr=True) -> (features, simclr, None)``. The cosine classifier ``fc`` gets no
  gradient from the MI loss and is left out.
* ``normalize``, ``get_similarity_matrix``, ``supervised_nt_xent_n``:
  utils/contrastive_learning.py ``normalize``, ``get_similarity_matrix``, ``Supervised_NT_xent_n``.
* ``mist_run``: models/simplecil_mist.py and models/ranpac_mist.py ``Learner._mist_run`` with
  ``masked_update`` and the SGD of ``_sparse_training`` / ``_stage1_training`` (backbone lr 1e-4,
  head lr 1e-2, momentum 0.9, weight decay 5e-4, rebuilt every task). The two files differ only
  in the freeze rule after the task: ``freeze_rule="simplecil"`` is ``torch.quantile(s, 1)``,
  ``"ranpac"`` is ``torch.quantile(s, 1 - 0.0005)``.
* ``simplecil_fit`` / ``cosine_logits``: simplecil_mist.py ``replace_fc`` and convs/linears.py
  ``CosineLinear.forward`` (sigma = 1).
* ``RanPAC``: ranpac_mist.py ``setup_RP``, ``replace_fc``, ``optimise_ridge_parameter`` and
  ``CosineLinear.forward`` with ``use_RP`` (sigma = 1).

Randomness of the official loop is turned into inputs so another implementation can be fed
the same: the batches (order of each epoch), the second views ``simclr_aug(inputs)``, the
per-step Bernoulli keep masks of ``masked_update`` and, for RanPAC, ``W_rand`` and the shuffled
order of ``train_loader_for_CPs``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Substrings of parameter names that the official loop always selects and never counts or
#: freezes ('fc.weight' / 'fc.sigma' are the cosine classifier, absent here).
EXEMPT = ("fc.weight", "fc.sigma", "bias", "norm", "simclr")
FREEZE_Q = {"ranpac": 1 - 0.0005, "simplecil": 1.0}


def exempt(name: str) -> bool:
    return any(k in name for k in EXEMPT)


# --------------------------------------------------------------------------- the network
class Attention(nn.Module):
    """timm ``Attention`` (fused qkv, qkv_bias=True), written without fused SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """timm ViT, class token, no pooling head: images float[N, 3, S, S] -> CLS float[N, D]."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, num_heads: int, hidden: int):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class Net(nn.Module):
    """``SimpleVitNet(is_clr=True)`` without its classifier: ``convnet`` + ``simclr`` head."""

    def __init__(self, convnet: ViT, dim: int):
        super().__init__()
        self.convnet = convnet
        self.simclr = nn.Linear(dim, 128)

    def forward(self, x, is_clr=False):
        features = self.convnet(x)
        if is_clr:
            return features, self.simclr(features), None
        return features


# --------------------------------------------------------------------------- the MI loss
def normalize(x, dim=1, eps=1e-8):
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def get_similarity_matrix(outputs):
    return torch.mm(outputs, outputs.t())


def supervised_nt_xent_n(sim_matrix, labels, temperature=0.5, chunk=2, eps=1e-8):
    """``Supervised_NT_xent_n`` verbatim (single GPU)."""
    labels1 = labels.repeat(2)
    logits_max, _ = torch.max(sim_matrix, dim=1, keepdim=True)
    sim_matrix = sim_matrix - logits_max.detach()
    b = sim_matrix.size(0) // chunk
    eye = torch.eye(b * chunk)
    sim_matrix = torch.exp(sim_matrix / temperature) * (1 - eye)
    denom = torch.sum(sim_matrix, dim=1, keepdim=True)
    sim_matrix = -torch.log(sim_matrix / (denom + eps) + eps)
    labels1 = labels1.contiguous().view(-1, 1)
    mask1 = torch.eq(labels1, labels1.t()).float()
    mask1 = mask1 / (mask1.sum(dim=1, keepdim=True) + eps)
    loss1 = 2 * torch.sum(mask1 * sim_matrix) / (2 * b)
    return torch.sum(sim_matrix[:b, b:].diag() + sim_matrix[b:, :b].diag()) / (2 * b) + loss1


def mi_loss(net: Net, inputs, inputs2, targets):
    """The loss of one step of ``_mist_run``; ``inputs2`` is the fixed ``simclr_aug(inputs)``."""
    inputs_pair = torch.cat((inputs, inputs2), dim=0)
    _, simclr, _ = net(inputs_pair, is_clr=True)
    simclr = normalize(simclr)
    sim_matrix = 1 * get_similarity_matrix(simclr)
    return supervised_nt_xent_n(sim_matrix, labels=targets, temperature=0.07)


# --------------------------------------------------------------------------- one task of MIST
def init_state(net: Net) -> dict:
    """``self.frozen_masks`` and ``self.overlap_mask`` of the official ``Learner.__init__``."""
    return {
        "frozen": {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()},
        "overlap": {n: torch.zeros_like(p, dtype=torch.int32) for n, p in net.named_parameters()},
    }


def make_optimizer(net: Net, lr=1e-4, head_lr=1e-2, weight_decay=5e-4):
    """The SGD of ``_sparse_training`` (the classifier group is empty here: no grads)."""
    groups = [{"params": net.convnet.parameters(), "lr": lr, "weight_decay": weight_decay},
              {"params": net.simclr.parameters(), "lr": head_lr, "weight_decay": weight_decay}]
    return torch.optim.SGD(groups, lr=head_lr, momentum=0.9, weight_decay=weight_decay)


def masked_update(params: dict, masks: dict, frozen: dict, overlap: dict, keep: dict):
    """``masked_update``; ``keep[name]`` replaces ``torch.bernoulli(full_like(., 1 - drop))``."""
    for name, param in params.items():
        if param.grad is not None:
            random_mask = torch.zeros_like(param.grad)
            random_mask[masks[name] == 1] = keep[name][masks[name] == 1].float()
            final_mask = masks[name] * random_mask
            param.grad *= final_mask
            if overlap is not None and name in overlap:
                penalty_factors = 0.9 ** overlap[name]
                param.grad *= penalty_factors
            if "fc.weight" not in name and "fc.sigma" not in name and "bias" not in name \
                    and "norm" not in name:
                param.grad[frozen[name]] = 0


def mist_run(net: Net, state: dict, epochs: list, keeps: list, select_rate: float,
             freeze_rule: str) -> dict:
    """One task of ``_mist_run`` (mi_epochs = len(epochs)), updating ``net`` and ``state``.

    Args:
      net: the network (trained in place).
      state: ``init_state`` dict, updated in place after the task (frozen |=, overlap +=).
      epochs: one list of batches ``(inputs, inputs2, targets)`` per epoch; epoch 0 scores.
      keeps: one ``{name: bool tensor}`` per update step (epochs 1.. in order).
      select_rate: fraction selected per non-exempt tensor.
      freeze_rule: "simplecil" (quantile 1) or "ranpac" (quantile 1 - 0.0005).
    Returns:
      ``{"losses": [per epoch: [per step]], "scores": {name: tensor}, "masks": {name: bool}}``.
    """
    optimizer = make_optimizer(net)
    frozen_copy = {n: m.clone() for n, m in state["frozen"].items()}
    n_batches = len(epochs[0])
    losses = [[] for _ in epochs]
    # Epoch 1: MI-Fisher scores, no optimizer step.
    acc = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    net.train()
    for inputs, inputs2, targets in epochs[0]:
        loss = mi_loss(net, inputs, inputs2, targets)
        optimizer.zero_grad()
        loss.backward()
        for name, param in net.named_parameters():
            if param.grad is not None:
                param.grad[frozen_copy[name]] = 0
                acc[name] += param.grad ** 2 / n_batches
        losses[0].append(loss.item())
    scores = {name: a / n_batches for name, a in acc.items()}
    masks = {}
    for name, s in scores.items():
        if exempt(name):
            masks[name] = torch.ones_like(s, dtype=torch.bool)
        else:
            flat = s.view(-1)
            masks[name] = (flat >= torch.quantile(flat, 1 - select_rate)).view(s.size())
    # Epochs 2..mi_epochs: sparse tuning.
    step = 0
    for e in range(1, len(epochs)):
        net.train()
        for inputs, inputs2, targets in epochs[e]:
            loss = mi_loss(net, inputs, inputs2, targets)
            optimizer.zero_grad()
            loss.backward()
            for name, param in net.named_parameters():
                if param.grad is not None and "fc.weight" not in name and "fc.sigma" not in name \
                        and "norm" not in name and "simclr" not in name:
                    param.grad[frozen_copy[name]] = 0
            masked_update(dict(net.named_parameters()), masks, frozen_copy, state["overlap"],
                          keeps[step])
            optimizer.step()
            losses[e].append(loss.item())
            step += 1
    # After the task: freeze the top scores, count the selections (non-exempt tensors only).
    for name, s in scores.items():
        if not exempt(name):
            flat = s.view(-1)
            current = (flat >= torch.quantile(flat, FREEZE_Q[freeze_rule])).view(s.size())
            state["frozen"][name] |= current
    for name, m in masks.items():
        if not exempt(name):
            state["overlap"][name] += m
    return {"losses": losses, "scores": scores, "masks": masks}


# --------------------------------------------------------------------------- the learners
@torch.no_grad()
def features(net: Net, images, batch: int = 32):
    net.eval()
    return torch.cat([net(images[i:i + batch]) for i in range(0, len(images), batch)])


def simplecil_fit(protos: torch.Tensor, feats, labels, classes) -> torch.Tensor:
    """``replace_fc``: the prototype of each new class is its mean feature (appended rows)."""
    new = [feats[(labels == c).nonzero().squeeze(-1)].mean(0) for c in classes]
    return torch.cat([protos, torch.stack(new)])


def cosine_logits(feats, weight):
    return F.linear(F.normalize(feats, p=2, dim=1), F.normalize(weight, p=2, dim=1))


class RanPAC:
    """``setup_RP`` / ``replace_fc`` / ``optimise_ridge_parameter`` of ranpac_mist.py."""

    def __init__(self, w_rand: torch.Tensor, total_classnum: int):
        self.W_rand = w_rand
        m = w_rand.shape[1]
        self.Q, self.G = torch.zeros(m, total_classnum), torch.zeros(m, m)
        self.total_classnum, self.weight, self.ridge = total_classnum, None, None

    def optimise_ridge_parameter(self, features, y):
        ridges = 10.0 ** np.arange(-8, 9)
        n = int(features.shape[0] * 0.8)
        losses = []
        q_val = features[0:n, :].T @ y[0:n, :]
        g_val = features[0:n, :].T @ features[0:n, :]
        for ridge in ridges:
            wo = torch.linalg.solve(g_val + ridge * torch.eye(g_val.size(dim=0)), q_val).T
            losses.append(F.mse_loss(features[n::, :] @ wo.T, y[n::, :]))
        return ridges[np.argmin(np.array(losses))], np.array(losses)

    def replace_fc(self, features_f, labels, num_seen):
        """``features_f``/``labels`` in the shuffled order of ``train_loader_for_CPs``."""
        y = F.one_hot(labels, self.total_classnum).float()  # target2onehot
        features_h = F.relu(features_f @ self.W_rand)
        self.Q = self.Q + features_h.T @ y
        self.G = self.G + features_h.T @ features_h
        self.ridge, self.ridge_losses = self.optimise_ridge_parameter(features_h, y)
        wo = torch.linalg.solve(self.G + self.ridge * torch.eye(self.G.size(dim=0)), self.Q).T
        self.weight = wo[0:num_seen, :]

    def logits(self, feats):
        return F.linear(F.relu(feats @ self.W_rand), self.weight)
