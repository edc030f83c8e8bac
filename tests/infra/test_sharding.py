"""Sharded MIST (mist_jax/infra/sharding.py): layout rules, batch placement, and the
equivalence of 1 device, 8 data-parallel devices and a 4 x 2 data x FSDP mesh.

The multi-device runs execute in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this process's JAX may already be
initialised with 1 device); the worker is this file run as a script.

Tolerances of the equivalence test (the same seed on every mesh): scores allclose rtol 1e-4
(float32 gradients summed in another order), masks / counts / frozen flags identical, MI loss
per epoch allclose rtol 1e-5, tuned parameters within 4 S float32 ulps of max(|p|, 0.1) after
S steps (derived where it is asserted; a learning rate that moves them by more than 1e-3),
accuracies identical (every prediction is an argmax over features equal to ~1e-6).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MESHES = {"1 device": (1, 1), "8 data": (8, 1), "4 data x 2 fsdp": (4, 2)}


def _worker(out_dir: str) -> None:
    """Run the smoke experiment on each mesh of MESHES and save what the test compares."""
    import jax

    from configs import default as default_config
    from mist_jax.infra import trees
    from mist_jax.mist import masks, tuner
    from mist_jax.runner import train

    assert jax.device_count() == 8, jax.devices()
    recorded = {}
    score, select = tuner.score, masks.select

    def record_scores(*a, **k):
        out = score(*a, **k)
        recorded.setdefault("scores", []).append(jax.tree.map(np.asarray, out.carry))
        return out

    def record_mask(*a, **k):
        out = select(*a, **k)
        recorded.setdefault("mask", []).append(jax.tree.map(np.asarray, out))
        return out

    tuner.score, masks.select = record_scores, record_mask
    for name, (data, fsdp) in MESHES.items():
        cfg = default_config.get_config("smoke")
        with cfg.unlocked():
            cfg.compare_baseline = False
            cfg.data.train_per_class = 8  # 40 images per task: 5 full batches of 8
            cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
            cfg.mesh.fsdp_min_size = 1  # shard every leaf of the tiny ViT that divides
            # A learning rate that moves the selected weights far beyond the 1e-6 tolerance.
            cfg.mist.learning_rate = 1e-2
        recorded.clear()
        t0 = time.perf_counter()
        run = train.Run(cfg, Path(out_dir) / name.replace(" ", "_"), progress=False)
        init = jax.device_get(run.params)
        res = run.run()
        flat = lambda tree: {trees.path_str(p): np.asarray(x)
                             for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
        arrays = {}
        for kind, tree in (("params", run.params), ("init", init), ("count", run.mist_state.count),
                           ("frozen", run.mist_state.frozen),
                           *((f"scores{t}", s) for t, s in enumerate(recorded["scores"])),
                           *((f"mask{t}", m) for t, m in enumerate(recorded["mask"]))):
            arrays.update({f"{kind}:{k}": v for k, v in flat(tree).items()})
        specs = {trees.path_str(p): str(x.sharding.spec)
                 for p, x in jax.tree_util.tree_flatten_with_path(run.params)[0]}
        np.savez(Path(out_dir) / f"{name}.npz", **arrays)
        summary = {k: res[k] for k in ("acc_matrix", "top1_curve")}
        summary.update(losses=[t["mi_loss_per_epoch"] for t in res["tasks"]], specs=specs,
                       steps=sum(t["steps"] for t in res["tasks"]),
                       seconds=time.perf_counter() - t0)
        (Path(out_dir) / f"{name}.json").write_text(json.dumps(summary))


# ---------------------------------------------------------------------- in-process unit tests
def _context(data=4, fsdp=2, **kw):
    from jax.sharding import AbstractMesh

    from mist_jax.infra import sharding

    mesh = AbstractMesh((data, fsdp), (sharding.DATA, sharding.FSDP))
    return sharding.MeshContext(mesh, **kw)


def test_rules_shard_largest_divisible_axis_and_replicate_small_or_matching_leaves():
    from jax.sharding import PartitionSpec as P

    ctx = _context(fsdp_min_size=100)
    # fc1 kernel [384, 1536]: the largest axis divisible by 2 is axis 1.
    assert ctx.spec("backbone/encoderblock_0/mlp/fc1/kernel", (384, 1536)) == P(None, "fsdp")
    # query kernel [384, 6, 64]: axis 0 (384) is the largest divisible one.
    assert ctx.spec("backbone/encoderblock_0/attn/query/kernel", (384, 6, 64)) == P("fsdp")
    # Equal sizes: the first axis; no divisible axis: replicated.
    assert ctx.spec("backbone/x", (64, 64)) == P("fsdp")
    assert ctx.spec("backbone/x", (3, 5, 7, 9)) == P()
    # Below fsdp_min_size (100 elements): replicated.
    assert ctx.spec("backbone/encoder_norm/scale", (64,)) == P()
    # The default rules replicate the projection head whatever its size.
    assert ctx.spec("head/kernel", (384, 128)) == P()
    # Optimizer-state paths embed the param path, so the head rule covers its momentum too.
    assert ctx.spec("1/inner_states/head/inner_state/0/trace/head/kernel", (384, 128)) == P()
    # One fsdp device: nothing is sharded.
    assert _context(8, 1).spec("backbone/encoderblock_0/mlp/fc1/kernel", (384, 1536)) == P()


def test_rules_must_cover_every_leaf_and_be_well_formed():
    ctx = _context(rules=((r"kernel$", "fsdp"),))
    with pytest.raises(ValueError, match="No mesh rule matches.*bias"):
        ctx.spec("backbone/encoderblock_0/mlp/fc1/bias", (1536,))
    with pytest.raises(ValueError, match="kind in"):
        _context(rules=((r".*", "shard"),))


def test_mesh_from_config_on_one_device_and_bad_sizes():
    import jax

    from configs import default as default_config
    from mist_jax.infra import sharding

    ctx = sharding.from_config(default_config.get_config("smoke"))
    assert dict(ctx.mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    assert ctx.batch_shards == jax.device_count()
    with pytest.raises(ValueError, match="mesh.fsdp=3"):
        sharding.make_mesh(-1, 3, devices=jax.devices() * 2)
    with pytest.raises(ValueError, match="does not fit"):
        sharding.make_mesh(2 * jax.device_count(), 1)


def test_distributed_init_only_when_asked(monkeypatch):
    from mist_jax.infra import sharding

    for var in ("JAX_COORDINATOR_ADDRESS", "MIST_JAX_DISTRIBUTED", "JAX_NUM_PROCESSES"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        sharding.initialize_distributed()


def test_put_batch_and_place_keep_values():
    import jax
    import jax.numpy as jnp

    from mist_jax.infra import sharding

    ctx = sharding.MeshContext(sharding.make_mesh())
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.arange(6, dtype=np.int32)
    key = jax.random.key(3)
    rows = ctx.local_rows(6)
    gx, gy, gk = ctx.put_batch((x[rows], y[rows], key), 6)
    np.testing.assert_array_equal(np.asarray(gx), x)
    np.testing.assert_array_equal(np.asarray(gy), y)
    np.testing.assert_array_equal(jax.random.key_data(gk), jax.random.key_data(key))
    tree = {"backbone": {"kernel": np.ones((8, 4), np.float32)}, "head": {"bias": jnp.zeros(3)}}
    placed = ctx.place(tree)
    np.testing.assert_array_equal(np.asarray(placed["backbone"]["kernel"]), np.ones((8, 4)))
    assert placed["head"]["bias"].sharding == ctx.replicated


def _smoke(**overrides):
    from configs import default as default_config

    cfg = default_config.get_config("smoke")
    with cfg.unlocked():
        cfg.compare_baseline = False
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            cfg[section][key] = value
    return cfg


def test_unchanged_backbone_computes_each_test_feature_once(tmp_path):
    from mist_jax.runner import train

    run = train.Run(_smoke(**{"mist.enabled": False}), tmp_path / "base", progress=False)
    featurized = []
    features = run.evaluator.features

    def counting(backbone, split, idx, labels, embed=None):
        featurized.extend(idx.tolist() if split == "test" else [])
        return features(backbone, split, idx, labels, embed)

    run.evaluator.features = counting
    out = run.run()
    # 2 tasks x 5 classes x 4 test images: each image once (no cache: 20 + 40 = 60).
    assert sorted(featurized) == sorted(run.data.test_idx.tolist())
    seen = run.data.test_labels < 10
    backbone = run.params["backbone"]
    direct = features(backbone, "test", run.data.test_idx[seen], run.data.test_labels[seen])
    np.testing.assert_allclose(run.evaluator.test_features(run.state, np.flatnonzero(seen)),
                               direct, atol=1e-5)
    assert len(out["top1_curve"]) == 2


@pytest.mark.slow
def test_bfloat16_compute_runs_end_to_end_with_float32_params(tmp_path):
    import jax

    from mist_jax.runner import train

    run = train.Run(_smoke(**{"model.dtype": "bfloat16"}), tmp_path / "bf16", progress=False)
    out = run.run()
    assert run.model.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(run.params)} == {np.dtype("float32")}
    losses = [l for t in out["tasks"] for l in t["mi_loss_per_epoch"]]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert all(0.09 < t["selected_fraction"] < 0.11 for t in out["tasks"])
    feats = run.evaluator.features(run.params["backbone"], "test", run.data.test_idx[:4],
                                   run.data.test_labels[:4])
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


# ---------------------------------------------------------------------- 8 fake devices
@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh_runs")
    # 8 fake CPU devices; cheaper LLVM optimisation (the same for every mesh) halves compile time.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                         "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    proc = subprocess.run([sys.executable, __file__, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = {}
    for name in MESHES:
        runs[name] = json.loads((out / f"{name}.json").read_text())
        with np.load(out / f"{name}.npz") as f:
            runs[name]["arrays"] = {k: f[k] for k in f.files}
    return runs


def test_mist_moved_the_backbone_far_beyond_the_mesh_tolerance(mesh_runs):
    for name, run in mesh_runs.items():
        a = run["arrays"]
        moved = max(np.abs(a[k] - a["init:" + k.split(":", 1)[1]]).max()
                    for k in a if k.startswith("params:backbone/"))
        assert moved > 1e-3, (name, moved)  # 1000x the 1e-6 the meshes are compared at


def test_meshes_are_really_sharded(mesh_runs):
    specs = mesh_runs["4 data x 2 fsdp"]["specs"]
    assert specs["backbone/encoderblock_0/mlp/fc1/kernel"] == "P(None, 'fsdp')"
    assert specs["head/kernel"] == "P()"
    assert set(mesh_runs["8 data"]["specs"].values()) == {"P()"}


def test_same_seed_same_scores_masks_losses_and_accuracy_on_every_mesh(mesh_runs):
    ref = mesh_runs["1 device"]
    assert len(ref["losses"]) == 2 and all(np.isfinite(l).all() for l in ref["losses"])
    for name in ("8 data", "4 data x 2 fsdp"):
        run = mesh_runs[name]
        np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-5, err_msg=name)
        assert run["acc_matrix"] == ref["acc_matrix"], name
        assert run["top1_curve"] == ref["top1_curve"], name
        a, b = ref["arrays"], run["arrays"]
        assert a.keys() == b.keys()
        for k in a:
            kind = k.split(":")[0]
            if kind.startswith("scores"):
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-12, err_msg=f"{name} {k}")
            elif kind in ("params", "init"):
                # Each of the run's S SGD steps rounds p + lr * u once, and u comes from sums
                # of per-example gradients that each mesh reassociates: a step may put the
                # result a few float32 ulps of max(|p|, 0.1) apart (0.1 bounds the scale of
                # lr * u at lr 1e-2), and the S steps' differences add up (momentum carries
                # them on, it does not amplify them). So |b - a| <= 4 S eps max(|a|, 0.1):
                # 8e-6 at |p| = 1.65 with S = 10, where one machine measured 1.07e-6.
                bound = 4 * ref["steps"] * np.finfo(np.float32).eps * np.maximum(np.abs(a[k]), 0.1)
                excess = np.abs(b[k].astype(np.float64) - a[k]) - bound
                assert excess.max(initial=0) <= 0, (name, k, float(excess.max()))
            else:  # mask{t}, count, frozen: discrete, must be identical
                np.testing.assert_array_equal(b[k], a[k], err_msg=f"{name} {k}")


if __name__ == "__main__":
    _worker(sys.argv[1])
