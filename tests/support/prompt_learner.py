"""A prompt-tuning learner in one file: the plug-in example of ``mist_jax.learners``.

Prompt tokens (L2P / VPT-shallow) inserted after CLS of the frozen backbone and a linear head
on the mean of their outputs, trained with cross-entropy over the task's classes (L2P's train
mask). Everything else (batches, optimizer loop, evaluation, checkpoints) is the runner's.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import optax
from flax import struct

from mist_jax.learners import ImageLearner, register
from mist_jax.models.extensions import Extensions, init_prompts


@struct.dataclass
class PromptState:
    params: dict  # {"prompts": float32[P, D], "kernel": float32[D, C], "bias": float32[C]}


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class PromptHead(ImageLearner):
    name: ClassVar[str] = "prompt_head"
    length: int = 4  # P prompt tokens

    def init(self, key, feature_dim):
        return PromptState({"prompts": init_prompts(key, self.model, self.length),
                            "kernel": jnp.zeros((feature_dim, self.num_classes)),
                            "bias": jnp.zeros((self.num_classes,))})

    def logits(self, state, backbone, images):
        p = state.params
        tokens = self.model.apply({"params": backbone}, self.preprocess(images),
                                  ext=Extensions(prompts=p["prompts"]), tokens="prompts")
        return tokens.mean(axis=1) @ p["kernel"] + p["bias"]

    def loss(self, params, state, backbone, images, labels, task_range):
        logits = self.logits(state.replace(params=params), backbone, images)
        classes = jnp.arange(logits.shape[-1])
        in_task = (classes >= task_range[0]) & (classes < task_range[1])
        logits = jnp.where(in_task, logits, -jnp.inf)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
