"""The authors' ablation procedures (mist_jax/mist/ablations.py): each per-step mask against a NumPy
transcription of the official loops, the task-restricted cross-entropy by hand, and a run."""


import jax
import numpy as np
import pytest

from configs import default as default_config  # noqa: E402
from mist_jax.mist import ablations  # noqa: E402
from mist_jax.runner import train


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(40, 10)).astype(np.float32),
            "b": rng.normal(size=(30,)).astype(np.float32),
            "c": rng.normal(size=(3,)).astype(np.float32)}


def _kept(tree):
    return {k: np.asarray(v) != 0 for k, v in tree.items()}


def test_rand_keeps_max_1_int_rate_n_random_elements_per_tensor_each_step():
    tx = ablations.step_mask("rand", 0.05, seed=3)
    ones = jax.tree.map(np.ones_like, _tree())
    state = tx.init(ones)
    first, state = tx.update(ones, state)
    second, _ = tx.update(ones, state)
    for k, n in (("a", 400), ("b", 30), ("c", 3)):
        assert _kept(first)[k].sum() == max(1, int(0.05 * n)), k
    assert not np.array_equal(_kept(first)["a"], _kept(second)["a"])  # redrawn every step
    again, _ = tx.update(ones, tx.init(ones))
    assert np.array_equal(_kept(again)["a"], _kept(first)["a"])  # seeded


def test_l2_keeps_each_tensors_largest_weights_and_none_where_k_is_0():
    params, grads = _tree(0), jax.tree.map(np.ones_like, _tree(0))
    out, _ = ablations.step_mask("l2", 0.05).update(grads, ablations.step_mask("l2", 0.05).init(params),
                                               params)
    for k in ("a", "b"):
        w = np.abs(params[k]).reshape(-1)
        top = np.sort(w)[::-1][int(0.05 * w.size) - 1]  # torch.topk(...)[0][-1]
        np.testing.assert_array_equal(_kept(out)[k].reshape(-1), w >= top)
    assert not _kept(out)["c"].any()  # int(0.05 * 3) = 0: the official loop zeroes the grad


def test_grad_keeps_the_largest_gradients_over_all_tensors_at_once():
    grads = _tree(1)
    tx = ablations.step_mask("grad", 0.1)
    out, _ = tx.update(grads, tx.init(grads))
    flat = np.concatenate([np.abs(v).reshape(-1) for v in grads.values()])
    top = np.sort(flat)[::-1][int(0.1 * flat.size) - 1]
    for k, v in grads.items():
        np.testing.assert_array_equal(_kept(out)[k], np.abs(v) >= top)
        np.testing.assert_array_equal(np.asarray(out[k])[_kept(out)[k]], v[_kept(out)[k]])
    assert sum(m.sum() for m in _kept(out).values()) == int(0.1 * flat.size)


def test_bad_modes_and_rates_are_refused():
    with pytest.raises(ValueError, match="rand"):
        ablations.step_mask("mist", 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ablations.step_mask("grad", 0.0)


def test_loss_is_cross_entropy_over_the_tasks_classes_only():
    class Identity:
        @staticmethod
        def apply(variables, x):
            return x

    loss_fn = ablations.make_loss_fn(Identity, lambda x: x, num_classes=6)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 5)).astype(np.float32)
    head = {"kernel": rng.normal(size=(5, 6)).astype(np.float32),
            "bias": rng.normal(size=(6,)).astype(np.float32)}
    labels = np.array([2, 3, 3, 2], np.int32)
    got = loss_fn({"backbone": {}, "head": head}, (feats, labels, None, np.array([2, 4])))
    logits = (feats @ head["kernel"] + head["bias"])[:, 2:4].astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -np.mean(log_p[np.arange(4), labels - 2])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["grad"])
def test_a_run_tunes_with_the_procedure_and_keeps_no_bookkeeping(tmp_path, mode):
    cfg = default_config.get_config("smoke")
    with cfg.unlocked():
        cfg.compare_baseline = False
        cfg.mist.spr = mode
        cfg.mist.select_rate = 0.05
    run = train.Run(cfg, tmp_path / mode, progress=False)
    before = jax.device_get(run.params["backbone"])
    results = run.run()
    assert all(t["spr"] == mode and t["steps"] > 0 for t in results["tasks"])
    assert len(results["tasks"][0]["mi_loss_per_epoch"]) == cfg.mist.epochs  # no scoring pass
    moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(
        jax.tree.leaves(jax.device_get(run.params["backbone"])), jax.tree.leaves(before))]
    assert max(moved) > 0
    assert not any(np.asarray(f).any() for f in jax.tree.leaves(run.mist_state.frozen))
    assert not any(np.asarray(c).any() for c in jax.tree.leaves(run.mist_state.count))
    assert run.params["head"]["kernel"].shape[-1] == 10  # a classifier over the 10 classes
