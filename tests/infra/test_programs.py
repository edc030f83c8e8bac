"""infra/programs.py: XLA's cost analysis against a hand count of a ViT's matmuls, and
jax.export for cpu / cuda / tpu checked against the jitted step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mist_jax import mist
from mist_jax.infra import programs
from mist_jax.mist import masks
from mist_jax.mist import tuner as tuner_module
from mist_jax.models.vit import ViT

CFG = dict(sparsity="reference", drop_rate=0.5, overlap_decay=0.9, learning_rate=1e-2,
           momentum=0.9, weight_decay=5e-4, head_learning_rate=1e-2, selection_units="official",
           freeze_rate=0.0, optimizer="sgd", selector="fisher")


def vit_forward_flops(width, depth, mlp, patch, size):
    """2 x the multiply-adds of a ViT's matmuls per image: patch embedding, q/k/v, QK^T, AV,
    the output projection and the MLP (layer norms, softmax and GELU left out)."""
    n = (size // patch) ** 2
    tokens = n + 1
    macs = n * patch * patch * 3 * width
    macs += depth * (tokens * width * 3 * width + 2 * tokens * tokens * width
                     + tokens * width * width + 2 * tokens * width * mlp)
    return 2 * macs


def _tuner(width=128, depth=2, heads=4, mlp=512, patch=8, size=64):
    model = ViT(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=patch,
                image_size=size)
    x = jnp.zeros((1, size, size, 3))
    params = {"backbone": model.init(jax.random.key(0), x)["params"],
              "head": mist.init_head(jax.random.key(1), width, 128)}
    loss_fn = mist.make_loss_fn(model, lambda v: v)
    return mist.Tuner(loss_fn, ml_collections.ConfigDict(CFG), params), params, loss_fn


def _batch(b, size, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.random((b, size, size, 3), np.float32)),
            jnp.asarray(np.arange(b) % 4, jnp.int32), jax.random.key(seed))


def test_tuning_step_flops_match_two_views_forward_and_backward():
    tuner, params, _ = _tuner()
    b = 8
    opt = jax.eval_shape(tuner.tx.init, params)
    row = programs.analyse(programs.Program(
        "mist tuning step", tuner.step,
        (programs.abstract(params), opt, programs.abstract(_batch(b, 64))), b, 1))
    # Two views, each forward + backward (2x forward): 6x the forward per image.
    expected = 6 * vit_forward_flops(128, 2, 512, 8, 64)
    assert row["flops_per_image"] == pytest.approx(expected, rel=0.25)
    assert row["argument_bytes"] >= programs.device_bytes(params) + programs.device_bytes(opt)
    assert row["peak_bytes_per_device"] == (row["argument_bytes"] + row["output_bytes"]
                                            - row["alias_bytes"] + row["temp_bytes"])


def test_matmul_jaxpr_flops_are_two_multiply_adds():
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32)
    w = jax.ShapeDtypeStruct((256, 512), jnp.float32)
    assert programs.jaxpr_flops(jax.jit(jnp.matmul), (x, w)) == 2 * 64 * 256 * 512


def test_on_gpu_the_step_flops_come_from_the_jaxpr(monkeypatch):
    """XLA:GPU counts cuBLAS matmuls as ~0 (an H200 reported 5.9 of 212 GFLOP per image):
    on a GPU backend the row takes the jaxpr count, split over the devices, and says so."""
    tuner, params, _ = _tuner()
    b, devices = 8, 2
    opt = jax.eval_shape(tuner.tx.init, params)
    program = programs.Program("mist tuning step", tuner.step,
                               (programs.abstract(params), opt, programs.abstract(_batch(b, 64))),
                               b, 1)
    monkeypatch.setattr(programs.jax, "default_backend", lambda: "gpu")
    row = programs.analyse(program, devices)
    assert row["flops_source"] == "jaxpr"
    expected = 6 * vit_forward_flops(128, 2, 512, 8, 64)
    assert row["flops_per_image"] == pytest.approx(expected, rel=0.25)
    assert row["flops_per_step"] * devices == pytest.approx(row["flops_per_image"] * b)


def test_device_bytes_counts_one_shard_per_device():
    mesh = jax.make_mesh((1,), ("x",))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tree = {"a": jax.ShapeDtypeStruct((4, 8), jnp.float32, sharding=sh),
            "b": jax.ShapeDtypeStruct((3,), jnp.bool_)}
    assert programs.device_bytes(tree) == 4 * 8 * 4 + 3
    # A PRNG key (a batch's view key) is not counted as data.
    assert programs.device_bytes(dict(tree, key=jax.random.key(0))) == 4 * 8 * 4 + 3


def test_export_for_cpu_cuda_tpu_and_the_cpu_one_runs_like_the_jitted_step(tmp_path):
    tuner, params, loss_fn = _tuner(width=32, mlp=64, heads=2, size=32)
    mask = masks.select("random", 0.5, params=params, seed=0)
    state = masks.init_mist_state(params)
    opt_state = tuner.init(params, mask, state.count, state.frozen, jax.random.key(3))
    batch = _batch(4, 32, seed=1)
    args = (params, opt_state, batch)
    prog = programs.Program("mist tuning step", tuner.step, programs.abstract(args), 4, 1)
    paths = programs.export(prog, ("cpu", "cuda", "tpu"), tmp_path)
    assert [p.name for p in paths] == [f"mist_tuning_step.{p}.jax_exported"
                                       for p in ("cpu", "cuda", "tpu")]
    assert all(p.stat().st_size > 1000 for p in paths)
    exported = jax.export.deserialize(paths[0].read_bytes())
    assert exported.platforms == ("cpu",)
    got = exported.call(*jax.tree.leaves(args))
    want = jax.tree.leaves(jax.jit(tuner_module._train_step(loss_fn, tuner.tx))(*args))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
