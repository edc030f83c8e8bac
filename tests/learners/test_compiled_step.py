"""An image learner's compiled step belongs to that learner object: two learners that differ
only in their model or preprocessing (compare=False fields, so equal as dataclasses) each
train with their own, and nothing keeps a learner's model alive after it is gone."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from mist_jax.learners.images import fit_on_images
from mist_jax.models import tiny_vit
from support.prompt_learner import PromptHead


def _task():
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.rand(6, 32, 32, 3), jnp.float32)
    labels = jnp.asarray([0, 1, 0, 1, 0, 1], jnp.int32)
    return images, labels


def _first_epoch_loss(learner, backbone, key):
    """fit_on_images' loss of a one-batch, one-epoch task: the loss at the initial params."""
    images, labels = _task()
    state = learner.init(key, learner.model.width)
    # A non-zero head (PromptHead starts at zero: every input would give the loss log 2).
    kernel = jax.random.normal(key, state.params["kernel"].shape)
    state = state.replace(params=dict(state.params, kernel=kernel))
    _, losses, _ = fit_on_images(learner, state, backbone, lambda e, b: [(images, labels)][b:],
                                 (0, 2))
    want = learner.loss(state.params, state, backbone, images, labels, jnp.asarray([0, 2]))
    return losses[0], float(want)


def test_learners_equal_as_dataclasses_do_not_share_a_compiled_step():
    model = tiny_vit(image_size=32)
    backbone = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    plain = PromptHead(epochs=1, batch_size=6, num_classes=2, model=model,
                       preprocess=lambda x: x)
    shifted = PromptHead(epochs=1, batch_size=6, num_classes=2, model=model,
                         preprocess=lambda x: 2.0 * x - 1.0)
    assert plain == shifted  # model and preprocess are compare=False
    got, want = _first_epoch_loss(plain, backbone, jax.random.key(1))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # With a step shared by equal learners this is plain's loss on the unshifted pixels.
    got, want = _first_epoch_loss(shifted, backbone, jax.random.key(1))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_learner_and_its_model_are_freed_after_use():
    model = tiny_vit(image_size=32)
    backbone = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    # length=3: unequal to the learners of the other test, whatever ran before in this process.
    learner = PromptHead(epochs=1, batch_size=6, num_classes=2, length=3, model=model,
                         preprocess=lambda x: x)
    _first_epoch_loss(learner, backbone, jax.random.key(1))
    gone = weakref.ref(model)
    del learner, model
    gc.collect()
    assert gone() is None
