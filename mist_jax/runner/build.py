"""What a run is made of, built from its config: the backbone, the learner, MIST's tuner."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mist_jax import learners, mist
from mist_jax.data import get_preprocess
from mist_jax.infra import seeds, sharding, trees
from mist_jax.mist import ablations, fish
from mist_jax.models import load_pretrained, pretrained, tiny_vit
from mist_jax.models.pretrained import abstract_pretrained


def build_backbone(cfg: ml_collections.ConfigDict):
    """-> (ViT module, float32 params, preprocess fn) for ``config.model``.

    ``model.source = "tiny"`` is a 2-block random ViT for smoke tests (no pre-training).
    """
    return _backbone(cfg, abstract=False)


def abstract_backbone(cfg: ml_collections.ConfigDict):
    """``build_backbone``'s (model, params, preprocess) with params as ``jax.ShapeDtypeStruct``s
    (float32): no weights are read for ``tiny`` or a named source (``runner/plan.py``'s dry
    run). Raises: ValueError as ``build_backbone``."""
    return _backbone(cfg, abstract=True)


def _backbone(cfg: ml_collections.ConfigDict, abstract: bool):
    m = cfg.model
    kw = dict(dtype=jnp.dtype(m.dtype), remat=m.remat)
    if m.source == "tiny":
        model = tiny_vit(image_size=cfg.data.image_size, **kw)
        x = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3))
        init = jax.eval_shape if abstract else lambda f, *a: jax.jit(f)(*a)  # 1 compile
        params = init(model.init, seeds.key(cfg.seed, "backbone"), x)["params"]
    elif abstract:
        model, params = abstract_pretrained(m.source, cfg.data.image_size, **kw)
    else:
        model, params = load_pretrained(m.source, image_size=cfg.data.image_size, **kw)
    size, patch = cfg.data.image_size, model.patch_size
    if size % patch:
        raise ValueError(f"data.image_size={size} is not a multiple of the model's patch size "
                         f"{patch} (the last {size % patch} px would be dropped); use e.g. "
                         f"{max(patch, size - size % patch)} or {size - size % patch + patch}.")
    return model, params, get_preprocess(m.preprocess)


def backbone_provenance(cfg: ml_collections.ConfigDict, params: Any) -> dict:
    """``{"name", "source", "sha256"}`` of a run's backbone for results.json: the checkpoint's
    name (``model.source``), the file its weights were read from (None for ``tiny``, built from
    the seed) and ``trees.sha256`` of the initial params (as resampled to the run's size), so
    two runs can tell they started from the same weights whatever format those came in.
    Raises: FileNotFoundError as ``pretrained.source_file``."""
    source = cfg.model.source
    path = None if source == "tiny" else str(pretrained.source_file(source).resolve())
    return {"name": source, "source": path, "sha256": trees.sha256(params)}


def build_learner(cfg: ml_collections.ConfigDict, **run: Any) -> learners.Learner:
    """The registered learner ``config.learner.name`` from its block ``config.learner.<name>``.

    ``run``: what the run knows (``num_classes``, ``num_tasks``, ``model``, ``preprocess``).
    The name and the block's presence are checked by ``validate.check_config``.
    Raises: ValueError for an unknown learner or a bad key.
    """
    return learners.get_learner(cfg.learner.name, cfg.learner[cfg.learner.name], **run)


def build_tuner(mist_cfg: ml_collections.ConfigDict, model, preprocess, params,
                mesh: sharding.MeshContext, out_dim: int):
    """The backbone tuner of ``config.mist``: a ``mist.Tuner`` (with a ``fish.FishScorer``
    for ``selector="fish"``), or for ``spr = rand | l2 | grad`` the authors' ablation
    procedure (``ablations.SprTuner``). ``out_dim``: the head's width (classes for CE losses)."""
    if ablations.requested(mist_cfg):
        return ablations.SprTuner(ablations.make_loss_fn(model, preprocess, out_dim), mist_cfg, params,
                            mesh)
    loss_fn = mist.make_loss_fn(model, preprocess, mist_cfg.objective, mist_cfg.temperature,
                                out_dim)
    scorer = (fish.FishScorer(model, preprocess, mist_cfg.temperature, mesh.replicated)
              if mist_cfg.selector == "fish" else None)
    return mist.Tuner(loss_fn, mist_cfg, params, mesh, fish=scorer)
