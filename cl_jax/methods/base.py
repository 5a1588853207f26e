"""What every method is made of, the registry that finds one by name, and shared parts."""

import math

import jax
import jax.numpy as jnp
import optax

from cl_jax import losses

REGISTRY = {}


def register(name):
  """Class decorator: registers one instance of a `Method` subclass as `config.method=name`."""
  def decorate(cls):
    cls.name = name
    REGISTRY[name] = cls()
    return cls
  return decorate


def enqueue(queue, queue_next, keys):
  """Writes `keys` [K, d] into the ring buffer `queue` [Q, d] from row `queue_next`, wrapping
  past the end; returns (queue, next row). With K > Q only the newest Q keys are kept."""
  size, count = queue.shape[0], keys.shape[0]
  dropped = max(count - size, 0)  # static: shapes are known at trace time
  rows = (queue_next + dropped + jnp.arange(count - dropped)) % size
  return queue.at[rows].set(keys[dropped:], unique_indices=True), (queue_next + count) % size


def random_unit_queue(key, size, width):
  """A queue of random unit vectors, as MoCo starts its queue and NNCLR its support set."""
  return losses.l2_normalize(jax.random.normal(key, (size, width), jnp.float32))


def check_queue_size(config, fail):
  """A ring buffer of `config.queue_size` rows (MoCo's queue, NNCLR's support set)."""
  if config.queue_size <= 0:
    fail("queue_size", config.queue_size, "must be a positive integer")


def frozen_prototypes(epochs, config, schedule_steps):
  """`Method.frozen_parameters` of a head's prototypes for its first `epochs` epochs of
  the schedule (None when that is no step)."""
  steps = math.ceil(epochs * schedule_steps / config.num_epochs)
  return ("prototypes", steps) if steps > 0 else None


class Method:
  """One method: its loss, its state, its update after each step, its config checks and
  the model parts it adds. Subclasses override what they need."""
  name = None
  uses_predictor = False  # the model gets a predictor after the projection head (model.predictor_*)
  uses_labels = False  # the loss reads class labels: pre-training leaves the validation split out
  uses_prototypes = False  # prototypes after the head (model.prototypes), scored with predict=True
  uses_local_views = False  # the loss reads multi-crop's local views (augment.local_crops)

  def check_config(self, config, fail):
    """Checks the fields this method reads; `fail(field, value, message)` raises."""

  def frozen_parameters(self, config, schedule_steps):
    """(top-level parameter name, steps): the optimizer leaves that subtree and its own
    state untouched for the first `steps` steps, as if it had no gradient; None: nothing
    is frozen."""
    del config, schedule_steps
    return None

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    """The method's own state (`ContrastiveState.method_state`): a dict of arrays, or None.
    Its keys are top-level keys of the checkpoint. `embedding_width`: the width of what the
    loss reads (the projections, or the encoder's features without a head), measured."""
    del config, params, batch_stats, key, embedding_width
    return None

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    """This device's loss, differentiated with respect to `params` only (`schedule_steps`:
    the run's length in steps, for schedules within the loss; `local_views`: multi-crop's
    [L, n, s, s, C] views, or None, always None unless `uses_local_views`). Returns (loss, aux):
    aux["batch_stats"] is the online network's updated BatchNorm averages (None without
    BN) and aux["features"] its encoder's features of both views (`forward_views`'s, read
    by the online probe); other aux keys are the method's own, read by `after_step`."""
    raise NotImplementedError

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """After the optimizer step (0-based `step`): updates the method's state."""
    del step, aux, config, schedule_steps, axis_name
    return state


def forward(state, params, batch_stats, images, axis_name, predict=False):
  """`images` through the network in one training-mode pass: (the encoder's features, the
  outputs `ContrastiveModel` gives for `predict`, updated BatchNorm averages or None). With
  BN, the statistics are over this pass's images of the global batch (all devices of
  `axis_name`), as SimCLR's global BN."""
  if batch_stats is None:
    features, outputs = state.apply_fn({"params": params}, images, predict=predict,
                                       train=True, axis_name=axis_name)
    return features, outputs, None
  (features, outputs), updates = state.apply_fn(
      {"params": params, "batch_stats": batch_stats}, images, predict=predict, train=True,
      axis_name=axis_name, mutable=["batch_stats"])
  return features, outputs, updates["batch_stats"]


def forward_views(state, params, batch_stats, view1, view2, axis_name, predict=False):
  """Both views through the network in one training-mode pass (`forward`); returns (outputs
  of view 1, of view 2, updated BatchNorm averages or None, the encoder's features of views
  1 then 2 as constants: what the online probe trains on). The outputs are the
  projections, the predictions with `predict=True`, or (projections, predictions) with
  `predict="both"`. BN's statistics are over both views."""
  features, outputs, new_stats = forward(state, params, batch_stats,
                                         jnp.concatenate([view1, view2]), axis_name, predict)
  n = view1.shape[0]
  out1, out2 = jax.tree.map(lambda x: x[:n], outputs), jax.tree.map(lambda x: x[n:], outputs)
  return out1, out2, new_stats, jax.lax.stop_gradient(features)


def forward_local_views(state, params, batch_stats, local_views, axis_name, predict=False):
  """Multi-crop's local views [L, n, ...] through the network in one training-mode pass of
  their own (they may be smaller than the global views: DINO's multi-crop wrapper runs each
  resolution apart); returns their outputs [L, n, ...] for `predict` (as `forward`). BN
  normalises with these views' statistics; the running averages keep the global views'
  pass, not this one's."""
  count, n = local_views.shape[:2]
  _, outputs, _ = forward(state, params, batch_stats,
                          local_views.reshape((count * n,) + local_views.shape[2:]), axis_name,
                          predict)
  return outputs.reshape((count, n) + outputs.shape[1:])


class PairwiseMethod(Method):
  """A loss over the global batch's views, from the projections of both views."""

  def pairwise(self, z1, z2, batch, config, axis_name):
    raise NotImplementedError

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del schedule_steps, local_views
    z1, z2, batch_stats, features = forward_views(state, params, state.batch_stats, view1,
                                                  view2, axis_name)
    return self.pairwise(z1, z2, batch, config, axis_name), {"batch_stats": batch_stats,
                                                             "features": features}


class MomentumMethod(Method):
  """A method with a momentum network: an EMA of the online parameters (MoCo's key network,
  BYOL's target) that keeps its own BatchNorm averages, as both papers do."""

  def check_config(self, config, fail):
    if not 0 <= config.momentum < 1:
      fail("momentum", config.momentum, "must be in [0, 1)")

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    del config, key, embedding_width
    # Starts equal to the online network; own buffers, as the step donates the state.
    state = {"momentum_params": jax.tree.map(jnp.copy, params)}
    if batch_stats is not None:
      state["momentum_batch_stats"] = jax.tree.map(jnp.copy, batch_stats)
    return state

  def momentum_rate(self, config, step, schedule_steps):
    """EMA rate at (0-based) `step`; constant `config.momentum` unless overridden."""
    del step, schedule_steps
    return config.momentum

  def momentum_outputs(self, state, view1, view2, axis_name, predict=False):
    """The momentum network's outputs for both views and `predict` (constants of the step)
    and its updated BatchNorm averages (None without BN)."""
    m = state.method_state
    out1, out2, stats, _ = forward_views(state, m["momentum_params"],
                                         m.get("momentum_batch_stats"), view1, view2, axis_name,
                                         predict)
    return jax.lax.stop_gradient(out1), jax.lax.stop_gradient(out2), stats

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """The EMA of the parameters just updated (MoCo's and BYOL's order) and the momentum
    network's own BN averages from this step's forward pass."""
    del axis_name
    rate = self.momentum_rate(config, step, schedule_steps)
    m = dict(state.method_state)
    m["momentum_params"] = optax.incremental_update(state.params, m["momentum_params"], 1.0 - rate)
    if aux.get("momentum_batch_stats") is not None:
      m["momentum_batch_stats"] = aux["momentum_batch_stats"]
    return state.replace(method_state=m)


class CosineMomentumMethod(MomentumMethod):
  """A momentum network whose EMA rate rises from `config.momentum` to 1 along a cosine
  (BYOL's schedule; MoCo v3's and DINO's too)."""

  def momentum_rate(self, config, step, schedule_steps):
    return cosine_to_one(config.momentum, step, schedule_steps)


class PredictorMomentumMethod(CosineMomentumMethod):
  """The cosine-scheduled momentum network and a predictor on the online network (BYOL,
  MoCo v3)."""
  uses_predictor = True


def cosine_to_one(start, step, schedule_steps):
  """1 - (1 - start) (cos(pi step / schedule_steps) + 1) / 2: from `start` to 1."""
  return 1.0 - (1.0 - start) * (jnp.cos(math.pi * step / schedule_steps) + 1.0) / 2.0
