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


def _byol_loss(params, state, view1, view2, batch, config, axis_name):
  del batch, config, axis_name
  p1, p2 = _two_views_through(state.apply_fn, params, view1, view2, predict=True)
  t1, t2 = jax.lax.stop_gradient(
      _two_views_through(state.apply_fn, state.momentum_params, view1, view2))
  return losses.byol_regression(p1, t2) + losses.byol_regression(p2, t1), None


def _moco_loss(params, state, view1, view2, batch, config, axis_name):
  del batch, axis_name
  z1, z2 = _two_views_through(state.apply_fn, params, view1, view2)
  k1, k2 = jax.lax.stop_gradient(
      _two_views_through(state.apply_fn, state.momentum_params, view1, view2))
  value = 0.5 * (losses.queue_infonce(z1, k2, state.queue, config.temperature) +
                 losses.queue_infonce(z2, k1, state.queue, config.temperature))
  return value, losses.l2_normalize(jnp.concatenate([k1, k2]))


def _pairwise_loss(pairwise, label_key):
  """A loss over the global batch's views from the projections of both views: `pairwise(z1,
  z2, labels, config, axis_name)` with `labels = batch[label_key]` (None: not used)."""
  def method_loss(params, state, view1, view2, batch, config, axis_name):
    z1, z2 = _two_views_through(state.apply_fn, params, view1, view2)
    labels = batch[label_key] if label_key else None
    return pairwise(z1, z2, labels, config, axis_name), None
  return method_loss


# Each method's loss(params, state, view1, view2, batch, config, axis_name) -> (loss, new keys).
_LOSSES = {
    "simclr": _pairwise_loss(
        lambda z1, z2, _, c, axis: losses.nt_xent(z1, z2, c.temperature, axis), None),
    "moco": _moco_loss,
    "byol": _byol_loss,
    "supcon": _pairwise_loss(
        lambda z1, z2, y, c, axis: losses.supervised_contrastive(z1, z2, y, c.temperature, axis),
        "label"),
    # The other view of the same image is the only positive: labels are dataset indices.
    "triplet": _pairwise_loss(
        lambda z1, z2, i, c, axis: losses.batch_hard_triplet(z1, z2, i, c.margin, axis), "index"),
    "margin": _pairwise_loss(
        lambda z1, z2, i, c, axis: losses.margin_contrastive(z1, z2, i, c.margin, axis), "index"),
}
METHODS = tuple(_LOSSES)


def loss(params, state, view1, view2, batch, config, axis_name):
  """The method's loss on this device's share of the batch; returns (loss, MoCo's new keys).

  Differentiated with respect to `params` only: the momentum network and the
  queue are constants of the step. The new keys (None except for MoCo) are
  this device's [2n, d] unit keys, views 1 then views 2. An unknown
  `config.method` raises ValueError (also when the config was never validated).
  """
  if config.method not in _LOSSES:
    raise ValueError(f"config.method={config.method!r}; allowed: {', '.join(METHODS)}")
  return _LOSSES[config.method](params, state, view1, view2, batch, config, axis_name)


def momentum(config, step, schedule_steps):
  """EMA rate of the momentum network at (0-based) `step`.

  MoCo: constant `config.momentum`. BYOL: increased from `config.momentum` to 1
  along a cosine over the run, 1 - (1 - m) (cos(pi step / schedule_steps) + 1) / 2.
  """
  if config.method == "byol":
    return 1.0 - (1.0 - config.momentum) * (jnp.cos(math.pi * step / schedule_steps) + 1.0) / 2.0
  return config.momentum


def update_state(state, step, new_keys, config, schedule_steps, axis_name):
  """After the optimizer step: the EMA of the new parameters, and MoCo's enqueue.

  Updating the copy from the parameters just updated is MoCo's and BYOL's order
  (MoCo updates the key encoder from the query encoder before computing the next
  keys). The queue takes the keys of the whole global batch, all views 1 then all
  views 2 in example order, so its contents do not depend on the device count.
  """
  if config.method not in MOMENTUM_METHODS:
    return state
  rate = momentum(config, step, schedule_steps)
  state = state.replace(momentum_params=optax.incremental_update(
      state.params, state.momentum_params, 1.0 - rate))
  if config.method == "moco":
    k1, k2 = jnp.split(new_keys, 2)
    if axis_name is not None:
      k1 = jax.lax.all_gather(k1, axis_name, tiled=True)
      k2 = jax.lax.all_gather(k2, axis_name, tiled=True)
    queue, queue_next = enqueue(state.queue, state.queue_next, jnp.concatenate([k1, k2]))
    state = state.replace(queue=queue, queue_next=queue_next)
  return state


def enqueue(queue, queue_next, keys):
  """Writes `keys` [K, d] into the ring buffer `queue` [Q, d] from row `queue_next`, wrapping
  past the end; returns (queue, next row). With K > Q only the newest Q keys are kept."""
  size, count = queue.shape[0], keys.shape[0]
  dropped = max(count - size, 0)  # static: shapes are known at trace time
  rows = (queue_next + dropped + jnp.arange(count - dropped)) % size
  return queue.at[rows].set(keys[dropped:], unique_indices=True), (queue_next + count) % size
