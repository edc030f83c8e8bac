"""SLCA's classifier alignment (Zhang et al. ICCV 2023, code GengDavid/SLCA
``_compute_class_mean`` and ``_stage2_compact_classifier``): per-class Gaussian statistics of
the features, features sampled from them, and the logit-normalised cross-entropy the
classifier is re-trained with. Pure functions, jit-able."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-7  # the reference's logit-norm epsilon
_MEAN_SHRINK = 0.1  # s_c = 1 - 0.1 + 0.1 (t_c + 1) / T (reference: 0.9 + decay)


@functools.partial(jax.jit, static_argnums=3)
def class_statistics(features: jax.Array, labels: jax.Array, start: int, num: int,
                     cov_reg: float) -> tuple[jax.Array, jax.Array]:
    """Mean and covariance of classes start..start+num-1 (reference ``_compute_class_mean``).

    Args: features float32[N, D], labels int32[N] in [start, start + num) (every class with
    >= 2 samples), ``cov_reg`` added to the covariance diagonal.
    Returns: ``(means float32[num, D], covs float32[num, D, D])``: ``np.mean`` and the unbiased
    (ddof=1, ``torch.cov``) covariance + cov_reg * I, two-pass (centred) in float32.
    """
    onehot = jax.nn.one_hot(labels - start, num, dtype=jnp.float32)  # [N, K]
    counts = onehot.sum(axis=0)
    means = jnp.dot(onehot.T, features, precision=_HIGHEST) / counts[:, None]
    centred = features - means[labels - start]
    covs = jnp.einsum("nk,nd,ne->kde", onehot, centred, centred, precision=_HIGHEST)
    eye = jnp.eye(features.shape[1], dtype=jnp.float32)
    return means, covs / (counts - 1)[:, None, None] + cov_reg * eye


def sample_features(key: jax.Array, means: jax.Array, chols: jax.Array, num: int) -> jax.Array:
    """float32[K, num, D]: ``num`` draws per class from N(means[k], chols[k] chols[k]^T)
    (``MultivariateNormal(mean, cov).sample``: mean + L eps, eps ~ N(0, I)).
    means float32[K, D], chols float32[K, D, D] lower Cholesky factors."""
    eps = jax.random.normal(key, (means.shape[0], num, means.shape[1]), jnp.float32)
    return means[:, None] + jnp.einsum("kne,kde->knd", eps, chols, precision=_HIGHEST)


def alignment_loss(head: dict, features: jax.Array, labels: jax.Array, task_of_class: jax.Array,
                   num_tasks: int, tau: float) -> jax.Array:
    """CA cross-entropy (reference ``_stage2_compact_classifier``), float32 scalar.

    Args: head ``{"kernel": float32[D, S], "bias": float32[S]}`` of the S seen classes,
    features float32[B, D], labels int32[B], task_of_class int32[S] in [0, num_tasks),
    ``tau`` > 0: logits z are divided by tau times the mean over tasks of ``||z_task||_2 +
    1e-7`` (gradient through the norms, as the reference); 0: plain CE.
    """
    z = features @ head["kernel"] + head["bias"]
    if tau > 0:
        members = jax.nn.one_hot(task_of_class, num_tasks, dtype=jnp.float32)  # [S, T]
        norms = jnp.sqrt(jnp.dot(z * z, members, precision=_HIGHEST)) + _NORM_EPS
        z = z / (tau * norms.mean(axis=-1, keepdims=True))
    return optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()


@functools.partial(jax.jit, static_argnames=("num_seen", "num_tasks", "epochs", "samples",
                                             "learning_rate", "momentum", "weight_decay", "tau"))
def align_classifier(head: dict, means: jax.Array, covs: jax.Array, task_of_class: jax.Array,
                     key: jax.Array, *, num_seen: int, num_tasks: int, epochs: int,
                     samples: int, learning_rate: float, momentum: float, weight_decay: float,
                     tau: float) -> dict:
    """Classifier alignment of the first ``num_seen`` classes (reference
    ``_stage2_compact_classifier``); the other columns are returned unchanged.

    Each of ``epochs`` epochs draws ``samples`` features per class from N(s_c mu_c, Sigma_c)
    (s_c = 0.9 + 0.1 (t_c + 1) / num_tasks), shuffles them and takes ``num_seen`` SGD steps
    (momentum, coupled weight decay, cosine learning rate per epoch) of ``alignment_loss`` on
    batches of ``samples``.

    Args: head ``{"kernel": float32[D, C], "bias": float32[C]}``, means float32[C, D], covs
    float32[C, D, D] (positive definite for seen classes), task_of_class int32[C], key: raw
    PRNG key. Returns: the aligned head (same shapes; NaN if a covariance is not positive
    definite: callers check).
    """
    s, d = num_seen, means.shape[1]
    tasks = task_of_class[:s]
    sub = {"kernel": head["kernel"][:, :s], "bias": head["bias"][:s]}
    shrink = 1.0 - _MEAN_SHRINK + _MEAN_SHRINK * (tasks + 1) / num_tasks
    centres, chols = means[:s] * shrink[:, None], jnp.linalg.cholesky(covs[:s])
    schedule = lambda count: learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * (count // s) / epochs))
    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum))

    def step(carry, batch):
        params, opt_state = carry
        grads = jax.grad(alignment_loss)(params, *batch, tasks, num_tasks, tau)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry, e):
        sample_key, perm_key = jax.random.split(jax.random.fold_in(key, e))
        x = sample_features(sample_key, centres, chols, samples).reshape(s * samples, d)
        y = jnp.repeat(jnp.arange(s, dtype=jnp.int32), samples)
        perm = jax.random.permutation(perm_key, s * samples)
        batches = (x[perm].reshape(s, samples, d), y[perm].reshape(s, samples))
        return jax.lax.scan(step, carry, batches)[0], None

    sub = jax.lax.scan(epoch, (sub, tx.init(sub)), jnp.arange(epochs))[0][0]
    return {"kernel": head["kernel"].at[:, :s].set(sub["kernel"]),
            "bias": head["bias"].at[:s].set(sub["bias"])}
