"""Golden parity: mist-jax against a PyTorch transcription of the official MIST code.

The golden files ``golden/{simplecil,ranpac}.npz`` were written by ``make_golden.py`` with
``torch_mist.py`` (a line-by-line transcription of the official ``_mist_run``, ``masked_update``,
``Supervised_NT_xent_n`` and both learners, on a small timm-layout ViT); see README.md here.
This test needs only jax: it feeds mist-jax the golden inputs (initial weights, batches, second
views, per-step keep masks, W_rand) and compares with the golden values, never with mist-jax's
own output. Each task starts from the golden state before it (params, counts, frozen flags),
so every comparison is made on identical inputs; the learners are chained over the tasks on
mist-jax's own tuned backbones.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mist_jax.mist import inner, masks, optim, sensitivity
from mist_jax import mist
from mist_jax.infra import trees
from mist_jax.data.preprocess import preprocess_identity
from mist_jax.learners import RanPAC, SimpleCIL
from mist_jax.learners import ranpac as ranpac_lib
from mist_jax.models import pretrained
from mist_jax.models.convert.timm import from_timm

GOLDEN = Path(__file__).parent / "golden"
FREEZE_RATE = {"simplecil": 0.0, "ranpac": 0.0005}  # quantile(s, 1) vs quantile(s, 1 - 0.0005)


class Golden:
    """One golden file, with its arrays converted into mist-jax trees."""

    def __init__(self, learner: str):
        self.z = np.load(GOLDEN / f"{learner}.npz")
        self.meta = json.loads(str(self.z["meta"]))
        self.learner, self.names = learner, self.meta["names"]
        self.shapes = {n: tuple(s) for n, s in self.meta["shapes"].items()}
        self.offsets = np.cumsum([0] + [int(np.prod(self.shapes[n])) for n in self.names])

    def flat(self, prefix: str) -> dict:
        return {n: self.z[prefix + n] for n in self.names}

    def split(self, flat_values: np.ndarray) -> dict:
        """One array over all parameters (golden name order) -> {timm name: array}."""
        o = self.offsets
        return {n: flat_values[o[i]:o[i + 1]].reshape(self.shapes[n])
                for i, n in enumerate(self.names)}

    def bits(self, key_or_bits) -> dict:
        bits = self.z[key_or_bits] if isinstance(key_or_bits, str) else key_or_bits
        return self.split(np.unpackbits(bits)[:self.offsets[-1]].astype(bool))

    def tree(self, flat: dict) -> dict:
        """timm-named arrays (any dtype) -> {"backbone": mist-jax ViT tree, "head": Dense}."""
        backbone = {k: v for k, v in flat.items() if not k.startswith("simclr.")}
        return {"backbone": from_timm(backbone, self.meta["heads"]),
                "head": {"kernel": flat["simclr.weight"].T, "bias": flat["simclr.bias"]}}

    def images(self, key: str, t: int) -> np.ndarray:
        return self.z[key][t].astype(np.float32) / np.float32(255)

    def batches(self, t: int, e: int) -> list:
        """Epoch e of task t: [(views float32[2B, S, S, 3] = [x; x2], labels int32[B])]."""
        x = self.images("train_x", t)
        x2 = self.z["views2"][t, e].astype(np.float32) / np.float32(255)
        y, order = self.z["train_y"][t].astype(np.int32), self.z["order"][t, e]
        return [(np.concatenate([x[i], x2[i]]), y[i])
                for i in np.split(order, len(order) // self.meta["batch"])]

    def keeps(self, t: int) -> list:
        bits = self.z["keep"][t]
        return [jax.tree.map(jnp.asarray, self.tree(self.bits(b)))
                for b in bits.reshape(-1, bits.shape[-1])]

    def before(self, t: int) -> tuple:
        """(params, MistState) at the start of task t."""
        if t == 0:
            params = self.tree({k: v.astype(np.float32) for k, v in self.flat("init/").items()})
            return params, masks.init_mist_state(params)
        params = self.tree(self.flat(f"task{t - 1}/params/"))
        count = self.tree({k: v.astype(np.int32) for k, v in
                           self.split(self.z[f"task{t - 1}/count"]).items()})
        frozen = self.tree(self.bits(f"task{t - 1}/frozen"))
        return params, masks.MistState(count=count, frozen=frozen)


def _train_step(loss_fn, tx, params, opt_state, batch, keep):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params, keep=keep)
    return optax.apply_updates(params, updates), opt_state, loss


def _ranpac_fit(g: Golden, t: int, state, feats: np.ndarray, labels: np.ndarray):
    """RanPAC on the golden CP-loader order. ``RanPAC.fit_task`` shuffles with its own key, so
    its 80/20 ridge split cannot be given the golden order: the ridge search is checked with
    ``ridge_validation_losses`` on that order, the fit is made with that ridge alone."""
    order = g.z["cp_order"][t]
    h = np.asarray(ranpac_lib.project(jnp.asarray(feats[order]), state.w_rand), np.float64)
    cpt = g.meta["classes_per_task"]
    y = np.eye(cpt)[labels[order] - t * cpt]
    ridge = ranpac_lib.RIDGES[int(np.argmin(ranpac_lib.ridge_validation_losses(h, y)))]
    learner = RanPAC(num_projections=g.meta["num_projections"], ridges=(ridge,))
    return learner, learner.fit_task(state, feats[order], labels[order], (t * cpt, (t + 1) * cpt))


def run_mist_jax(g: Golden) -> dict:
    """Both tasks of MIST + the learner in mist-jax on the golden inputs."""
    params0, _ = g.before(0)
    model = pretrained.infer_vit(params0["backbone"])
    loss_fn = mist.make_view_loss_fn(model, preprocess_identity, temperature=0.07)
    loss_jit = jax.jit(loss_fn)
    feat_fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    nt, cpt = g.meta["tasks"], g.meta["classes_per_task"]
    out = {k: [] for k in ("loss", "scores", "mask", "state", "params", "fit")}
    acc = np.full((nt, nt), np.nan)
    if g.learner == "simplecil":
        learner = SimpleCIL()
        lstate = learner.init(jax.random.key(0), g.meta["dim"])
    else:
        learner = RanPAC(num_projections=g.meta["num_projections"])
        lstate = learner.init(jax.random.key(0), g.meta["dim"]).replace(
            w_rand=jnp.asarray(g.z["w_rand"]))
    for t in range(nt):
        params, state = g.before(t)
        epochs = [g.batches(t, e) for e in range(g.meta["mi_epochs"])]
        losses = [[float(loss_jit(params, b)) for b in epochs[0]]]
        n = len(epochs[0])
        scores = sensitivity.fisher_scores(loss_fn, params, epochs[0], frozen=state.frozen)
        mask = masks.select("fisher", g.meta["select_rate"], scores=scores, units="official")
        sgd = inner.inner_optimizer("sgd", learning_rate=1e-4, momentum=0.9, weight_decay=5e-4,
                                    head_learning_rate=1e-2)
        tx = optim.mist_optimizer(drop_rate=g.meta["drop_rate"], overlap_decay=0.9, inner=sgd)
        opt_state = optim.start_task(tx.init(params), params, mask, state.count, state.frozen, 0)
        step = jax.jit(functools.partial(_train_step, loss_fn, tx))
        keeps = iter(g.keeps(t))
        for batches in epochs[1:]:
            losses.append([])
            for batch in batches:
                params, opt_state, loss = step(params, opt_state, batch, next(keeps))
                losses[-1].append(float(loss))
        state = masks.update_after_task(state, mask, scores, FREEZE_RATE[g.learner],
                                        units="official")
        out["loss"].append(losses)
        out["scores"].append(jax.tree.map(lambda s: np.asarray(s) / n ** 2, scores))
        out["mask"].append(mask)
        out["state"].append(state)
        out["params"].append(params)
        feats = np.asarray(feat_fn(params["backbone"], g.images("train_x", t)))
        labels = g.z["train_y"][t]
        if g.learner == "simplecil":
            lstate = learner.fit_task(lstate, feats, labels, (t * cpt, (t + 1) * cpt))
        else:
            learner, lstate = _ranpac_fit(g, t, lstate, feats, labels)
        out["fit"].append(lstate)
        for j in range(t + 1):
            logits = learner.logits(lstate, feat_fn(params["backbone"], g.images("test_x", j)))
            pred = np.asarray(jnp.argmax(logits, axis=1))
            acc[t, j] = 100.0 * np.sum(pred == g.z["test_y"][j]) / len(pred)
    out["acc"] = acc
    return out


@pytest.fixture(scope="module", params=["simplecil", "ranpac"])
def case(request):
    g = Golden(request.param)
    return g, run_mist_jax(g)


def _leaves(tree) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {trees.path_str(p): np.asarray(v) for p, v in flat}


def _assert_trees(actual, expected, what: str, rtol: float = 0.0, scale_atol: float = 0.0,
                  floor: float = 0.0):
    """Leafwise: exact (default) or |a - e| <= rtol |e| + scale_atol * max(max|e| of that leaf,
    floor * max|e| over all leaves)."""
    exp = _leaves(expected)
    top = max(np.abs(e).max() for e in exp.values())
    for path, a in _leaves(actual).items():
        e = exp[path]
        if rtol or scale_atol:
            atol = scale_atol * max(np.abs(e).max(), floor * top)
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what}: {path}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what}: {path}")


def test_mi_loss_per_step(case):
    g, run = case
    np.testing.assert_allclose(np.array(run["loss"]), g.z["loss"], rtol=1e-5)


def test_fisher_scores(case):
    """Official scale sum_b g_b^2 / N^2. The key biases' gradient is zero in exact arithmetic
    (softmax is invariant to a shift shared by all keys): their scores, ~1e-15 of the largest,
    are roundoff and are held to 1e-4 x 1e-6 of the task's largest score instead."""
    g, run = case
    for t, scores in enumerate(run["scores"]):
        _assert_trees(scores, g.tree(g.flat(f"task{t}/scores/")), f"scores task {t}",
                      rtol=1e-4, scale_atol=1e-4, floor=1e-6)


def test_selected_masks(case):
    g, run = case
    for t, mask in enumerate(run["mask"]):
        _assert_trees(mask, g.tree(g.bits(f"task{t}/mask")), f"mask task {t}")


def test_counts_and_frozen_after_each_task(case):
    g, run = case
    for t, state in enumerate(run["state"]):
        count = g.tree({k: v.astype(np.int32) for k, v in g.split(g.z[f"task{t}/count"]).items()})
        _assert_trees(state.count, count, f"count after task {t}")
        _assert_trees(state.frozen, g.tree(g.bits(f"task{t}/frozen")), f"frozen after task {t}")


def test_params_after_update_steps(case):
    g, run = case
    for t, params in enumerate(run["params"]):
        _assert_trees(params, g.tree(g.flat(f"task{t}/params/")), f"params after task {t}",
                      rtol=1e-5, scale_atol=1e-5)


def test_learner(case):
    g, run = case
    for t, lstate in enumerate(run["fit"]):
        if g.learner == "simplecil":
            np.testing.assert_allclose(lstate.prototypes, g.z[f"task{t}/prototypes"], rtol=1e-4,
                                       atol=1e-4 * np.abs(g.z[f"task{t}/prototypes"]).max())
            continue
        assert lstate.ridges[-1] == g.z[f"task{t}/ridge"], "ridge chosen on the golden 80/20 split"
        k = lstate.q.shape[1]
        for name, a, e in (("G", lstate.gram, g.z[f"task{t}/G"]),
                           ("Q", lstate.q, g.z[f"task{t}/Q"][:, :k]),
                           ("W", lstate.weight, g.z[f"task{t}/W"])):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(),
                                       err_msg=f"RanPAC {name} after task {t}")


def test_accuracy_matrix(case):
    g, run = case
    np.testing.assert_array_equal(run["acc"], g.z["acc_matrix"])


# --------------------------------------------------------------------------- deviations caught
def test_per_leaf_selection_misses_golden_masks():
    """The official quantile is over the fused qkv tensor: per-leaf q/k/v quantiles differ."""
    g = Golden("simplecil")
    scores = g.tree(g.flat("task0/scores/"))
    golden = _leaves(g.tree(g.bits("task0/mask")))
    official = _leaves(masks.select_top(scores, g.meta["select_rate"], units="official"))
    leaf = _leaves(masks.select_top(scores, g.meta["select_rate"], units="leaf"))
    assert all(np.array_equal(official[k], golden[k]) for k in golden)
    assert not np.array_equal(leaf["backbone/encoderblock_0/attn/query/kernel"],
                              golden["backbone/encoderblock_0/attn/query/kernel"])


@pytest.mark.parametrize("learner, wrong_rate", [("simplecil", 0.0005), ("ranpac", 0.0)])
def test_other_files_freeze_rule_misses_golden(learner, wrong_rate):
    """SimpleCIL's file freezes quantile(s, 1) (the max), RanPAC's the top 0.05%: not swappable."""
    g = Golden(learner)
    params, state = g.before(0)
    mask, scores = g.tree(g.bits("task0/mask")), g.tree(g.flat("task0/scores/"))
    golden = _leaves(g.tree(g.bits("task0/frozen")))
    right = _leaves(masks.update_after_task(state, mask, scores, FREEZE_RATE[learner]).frozen)
    wrong = _leaves(masks.update_after_task(state, mask, scores, wrong_rate).frozen)
    assert all(np.array_equal(right[k], golden[k]) for k in golden)
    assert any(not np.array_equal(wrong[k], golden[k]) for k in golden)


def test_head_init_matches_torch_linear_default():
    """init_head draws like nn.Linear (uniform +-1/sqrt(in), bias too); LeCun normal would not."""
    g = Golden("simplecil")
    w, b = g.z["init/simclr.weight"], g.z["init/simclr.bias"]
    bound = 1 / np.sqrt(w.shape[1])
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound and np.abs(b).min() > 0
    head = mist.init_head(jax.random.key(0), w.shape[1], w.shape[0])
    kernel, bias = np.asarray(head["kernel"]), np.asarray(head["bias"])
    assert kernel.shape == w.T.shape and bias.shape == b.shape
    for ours, theirs in ((kernel, w), (bias, b)):
        assert np.abs(ours).max() <= bound
        assert abs(ours.std() / theirs.std() - 1) < 0.15
    lecun = nn.Dense(w.shape[0]).init(jax.random.key(0), jnp.zeros((1, w.shape[1])))["params"]
    assert np.abs(np.asarray(lecun["kernel"])).max() > bound or not np.any(lecun["bias"])
