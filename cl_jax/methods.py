"""The methods behind `config.method`: each one's loss on the two views and the state it carries.

All methods share the data, the two-view augmentation, the data-parallel step
(`train_step.train_step`), checkpoints and evaluation:

- simclr: NT-Xent over the global batch (every other view is a negative).
- supcon: supervised contrastive; every view with the anchor's class label is a
  positive (uses labels: an upper reference for the self-supervised methods).
- triplet, margin: batch-hard triplet and Hadsell's pairwise margin loss, with
  the other view of the same image as the positive.
- moco: MoCo v2; a momentum (EMA) copy of encoder + head makes the keys; the
  negatives are a queue of earlier keys from the whole global batch.
- byol: an online network with a predictor regresses a momentum (EMA) target
  network's projection of the other view; no negatives.
"""

import math

import jax
import jax.numpy as jnp
import optax

from cl_jax import losses

METHODS = ("simclr", "moco", "byol", "supcon", "triplet", "margin")
MOMENTUM_METHODS = ("moco", "byol")


def initial_state(config, params, key):
  """The method's extra state fields (for `ContrastiveState`), from the initial parameters."""
  extras = {}
  if config.method in MOMENTUM_METHODS:
    # MoCo and BYOL both start the copy equal; own buffers, as the step donates the state.
    extras["momentum_params"] = jax.tree.map(jnp.copy, params)
  if config.method == "moco":
    # Random unit keys, as MoCo starts: the first queue_size / 2N steps see them.
    extras["queue"] = losses.l2_normalize(
        jax.random.normal(key, (config.queue_size, config.model.projection_dim or
                                config.model.dense_features), jnp.float32))
    extras["queue_next"] = jnp.zeros((), jnp.int32)
  return extras


def _two_views_through(apply_fn, params, view1, view2, predict=False):
  """One forward pass of both views; returns their outputs (projections or predictions)."""
  _, outputs = apply_fn({"params": params}, jnp.concatenate([view1, view2]), predict=predict)
  return jnp.split(outputs, 2)


def loss(params, state, view1, view2, batch, config, axis_name):
  """The method's loss on this device's share of the batch; returns (loss, MoCo's new keys).

  Differentiated with respect to `params` only: the momentum network and the
  queue are constants of the step. The new keys (None except for MoCo) are
  this device's [2n, d] unit keys, views 1 then views 2.
  """
  method = config.method
  if method == "byol":
    p1, p2 = _two_views_through(state.apply_fn, params, view1, view2, predict=True)
    t1, t2 = jax.lax.stop_gradient(
        _two_views_through(state.apply_fn, state.momentum_params, view1, view2))
    return losses.byol_regression(p1, t2) + losses.byol_regression(p2, t1), None
  z1, z2 = _two_views_through(state.apply_fn, params, view1, view2)
  if method == "moco":
    k1, k2 = jax.lax.stop_gradient(
        _two_views_through(state.apply_fn, state.momentum_params, view1, view2))
    value = 0.5 * (losses.queue_infonce(z1, k2, state.queue, config.temperature) +
                   losses.queue_infonce(z2, k1, state.queue, config.temperature))
    return value, losses.l2_normalize(jnp.concatenate([k1, k2]))
  if method == "supcon":
    return losses.supervised_contrastive(z1, z2, batch["label"], config.temperature,
                                         axis_name), None
  if method == "triplet":
    return losses.batch_hard_triplet(z1, z2, batch["index"], config.margin, axis_name), None
  if method == "margin":
    return losses.margin_contrastive(z1, z2, batch["index"], config.margin, axis_name), None
  return losses.nt_xent(z1, z2, config.temperature, axis_name), None


def momentum(config, step, total_steps):
  """EMA rate of the momentum network at (0-based) `step`.

  MoCo: constant `config.momentum`. BYOL: increased from `config.momentum` to 1
  along a cosine over the run, 1 - (1 - m) (cos(pi step / total_steps) + 1) / 2.
  """
  if config.method == "byol":
    return 1.0 - (1.0 - config.momentum) * (jnp.cos(math.pi * step / total_steps) + 1.0) / 2.0
  return config.momentum


def update_state(state, step, new_keys, config, total_steps, axis_name):
  """After the optimizer step: the EMA of the new parameters, and MoCo's enqueue.

  Updating the copy from the parameters just updated is MoCo's and BYOL's order
  (MoCo updates the key encoder from the query encoder before computing the next
  keys). The queue takes the keys of the whole global batch, all views 1 then all
  views 2 in example order, so its contents do not depend on the device count.
  """
  if config.method not in MOMENTUM_METHODS:
    return state
  rate = momentum(config, step, total_steps)
  state = state.replace(momentum_params=optax.incremental_update(
      state.params, state.momentum_params, 1.0 - rate))
  if config.method == "moco":
    k1, k2 = jnp.split(new_keys, 2)
    if axis_name is not None:
      k1 = jax.lax.all_gather(k1, axis_name, tiled=True)
      k2 = jax.lax.all_gather(k2, axis_name, tiled=True)
    keys = jnp.concatenate([k1, k2])
    queue = jax.lax.dynamic_update_slice_in_dim(state.queue, keys, state.queue_next, axis=0)
    state = state.replace(queue=queue,
                          queue_next=(state.queue_next + len(keys)) % config.queue_size)
  return state
