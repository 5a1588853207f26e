"""Train state, optimizer and the per-device train step shared by every method."""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cl_jax import augment
from cl_jax import methods
from cl_jax import online_probe
from cl_jax import parallel


def peak_learning_rate(config):
  """config.learning_rate, times batch_size / 256 with `lr_batch_scaling` (SimCLR's rule)."""
  scale = config.batch_size / 256 if config.lr_batch_scaling else 1.0
  return config.learning_rate * scale


# Parameters that weight decay and LARS's trust ratio leave alone, by name: biases and the
# normalisations' scales and offsets (SimCLR's and solo-learn's exclusion), and a ViT's
# class token and position embeddings (timm's `no_weight_decay`). By name, not by rank:
# Flax's attention biases are 2-D (heads x head width).
_NOT_DECAYED = ("bias", "scale", "cls_token", "position_embedding")


def decays(params):
  """True for the parameters that weight decay and LARS's trust ratio apply to: the
  kernels of convolutions and dense layers."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) not in _NOT_DECAYED, params)


def clipped_lars_scaling(eta, weight_decay, schedule):
  """solo-learn's LARS before its momentum and learning rate: for a weight w with gradient g
  (biases and normalisation parameters excluded, `decays`) and both norms non-zero, the
  update (g + wd w) * min(eta |w| / (|g| + wd |w|) / lr, 1) at the step's learning rate lr;
  otherwise g as it is."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = schedule(state.count) if callable(schedule) else schedule
    def scale(g, w, decayed):
      if not decayed:
        return g
      w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
      ratio = eta * w_norm / (g_norm + weight_decay * w_norm)
      adaptive = jnp.minimum(ratio / lr, 1.0)
      return jnp.where((w_norm > 0) & (g_norm > 0), (g + weight_decay * w) * adaptive, g)
    updates = jax.tree.map(scale, updates, params, decays(params))
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)


class FrozenForState(NamedTuple):
  count: jax.Array  # updates seen, frozen ones included
  inner: Any  # the wrapped optimizer's state, untouched while frozen


def frozen_for(inner, steps):
  """`inner`, but its first `steps` updates are zeros and leave its state as it was: the
  parameters stay as they are, as if they had no gradient (PyTorch's `p.grad = None`, which
  SwAV's and solo-learn's code use), so neither weight decay nor momentum moves them and
  Adam's moments and bias correction start when they do."""
  def init(params):
    return FrozenForState(count=jnp.zeros([], jnp.int32), inner=inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    frozen = state.count < steps
    updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
    kept = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, new_inner)
    return updates, FrozenForState(count=optax.safe_increment(state.count), inner=kept)
  return optax.GradientTransformation(init, update)


def learning_rate_schedule(config, steps_per_epoch, schedule_steps):
  """An optional linear warm-up, then a cosine decay to 0 at `schedule_steps` (or constant)."""
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  peak = peak_learning_rate(config)
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps, max(schedule_steps, warmup_steps + 1))
  if warmup_steps > 0:
    return optax.linear_schedule(0.0, peak, warmup_steps)
  return peak


def _optimizer(config, schedule):
  if config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decays)
  if config.optimizer == "sgd":
    return optax.sgd(schedule, momentum=0.9)
  if config.optimizer == "lars" and config.lars_clip:
    return optax.chain(clipped_lars_scaling(config.lars_trust_coefficient, config.weight_decay,
                                            schedule),
                       optax.trace(decay=0.9), optax.scale_by_learning_rate(schedule))
  if config.optimizer == "lars":
    return optax.lars(schedule, weight_decay=config.weight_decay, weight_decay_mask=decays,
                      trust_coefficient=config.lars_trust_coefficient, trust_ratio_mask=decays,
                      momentum=0.9)
  return optax.adam(schedule)


def create_optimizer(config, steps_per_epoch, schedule_steps):
  """Adam, AdamW, SGD or LARS (momentum 0.9) on `learning_rate_schedule`; the parameters
  the method freezes (`Method.frozen_parameters`) get their own copy of it, `frozen_for`
  their first steps, whose schedule runs `steps` ahead so that both follow the run's
  step."""
  schedule = learning_rate_schedule(config, steps_per_epoch, schedule_steps)
  frozen = methods.get(config.method).frozen_parameters(config, schedule_steps)
  if frozen is None:
    return _optimizer(config, schedule)
  name, steps = frozen
  ahead = (lambda count: schedule(count + steps)) if callable(schedule) else schedule
  labels = lambda params: {
      key: jax.tree.map(lambda _, key=key: "frozen" if key == name else "trained", tree)
      for key, tree in params.items()}
  return optax.multi_transform({"trained": _optimizer(config, schedule),
                                "frozen": frozen_for(_optimizer(config, ahead), steps)}, labels)


class ContrastiveState(train_state.TrainState):
  """TrainState plus BatchNorm's running averages, the method's own state and the online
  probe's."""
  batch_stats: Any = None  # BatchNorm running averages (None: the model has no BatchNorm).
  method_state: Any = None  # A dict owned by `config.method` (None: the method keeps none).
  probe: Any = None  # The online linear probe's params and optimizer state (None: no probe).


def run_keys(seed):
  """A run's (initialisation, shuffling, augmentation) keys, from its seed alone."""
  return tuple(jax.random.split(jax.random.key(seed), 3))


def initial_variables(model, key, image_shape):
  """The Flax variables a run starts from (parameters, and BN averages where the model has
  BatchNorm; the predictor's too where it has one) and the shapes of what a zero image
  gives: (variables, (features, what the loss reads: projections, predictions or
  prototype scores))."""
  uses_outputs = model.predictor is not None or model.prototypes is not None
  outputs, variables = model.init_with_output(
      key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), predict=uses_outputs)
  return variables, jax.tree.map(jnp.shape, outputs)


def create_train_state(model, tx, key, image_shape, config=None, num_classes=None):
  """Initialises parameters and BN averages (float32), optimizer state,
  `config.method`'s own state and, given `num_classes` and a positive
  `config.online_probe_learning_rate`, the online probe. `config=None` gives SimCLR's
  state (no method state, no probe)."""
  variables, (feature_shape, embedding_shape) = initial_variables(model, key, image_shape)
  params, batch_stats = variables["params"], variables.get("batch_stats")
  method_state = probe = None
  if config is not None:
    method_state = methods.get(config.method).initial_state(
        config, params, batch_stats, jax.random.fold_in(key, 1), embedding_shape[-1])
    if num_classes and config.online_probe_learning_rate > 0:
      probe = online_probe.init(feature_shape[-1], num_classes, config.online_probe_learning_rate)
  return ContrastiveState.create(apply_fn=model.apply, params=params, tx=tx,
                                 batch_stats=batch_stats, method_state=method_state,
                                 probe=probe)


def eval_variables(state_or_tree):
  """The Flax variables that evaluation applies the model with: the parameters and, where the
  model has BatchNorm, its running averages. Takes a state or a checkpoint's tree."""
  get = state_or_tree.get if isinstance(state_or_tree, dict) else (
      lambda name: getattr(state_or_tree, name))
  variables = {"params": get("params")}
  if get("batch_stats") is not None:
    variables["batch_stats"] = get("batch_stats")
  return variables


def example_keys(rng, indices):
  """One key per example, from the step key and the example's dataset index."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def train_step(state, batch, rng, *, config, axis_name=None, schedule_steps=None):
  """One step of `config.method` on this device's shard of the global batch.

  Args:
    state: replicated ContrastiveState.
    batch: {"image": uint8 [n, H, W, C], "index": int32 [n] dataset indices,
      "label": int32 [n] class labels, -1 where hidden (read by supcon and the online
      probe)}.
    rng: the step's key (the same on every device).
    config: the run config (static).
    axis_name: the devices' named axis, or None on a single device.
    schedule_steps: the schedule's length (the momentum and DINO's temperature schedules).
  Returns:
    (new state, {"loss", "grad_norm", "param_norm"} and, with the online probe,
    {"probe_loss", "probe_accuracy"}), identical on every device.
  """
  keys = example_keys(rng, batch["index"])
  view1, view2 = augment.two_views(batch["image"], keys, config.augment)
  method = methods.get(config.method)
  loss_fn = functools.partial(method.loss, state=state, view1=view1, view2=view2, batch=batch,
                              config=config, axis_name=axis_name, schedule_steps=schedule_steps,
                              local_views=augment.local_views(batch["image"], keys,
                                                              config.augment))
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # Equal shards: the mean of per-device means is the global mean.
    loss, grads = jax.lax.pmean((loss, grads), axis_name)
  step = state.step
  state = state.apply_gradients(grads=grads)
  if aux["batch_stats"] is not None:  # global-batch statistics: the same on every device
    state = state.replace(batch_stats=aux["batch_stats"])
  state = method.after_step(state, step, aux, config, schedule_steps, axis_name)
  # param_norm lets the loop refuse to checkpoint parameters that overflowed.
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(state.params)}
  if state.probe is not None:  # on this step's features, before the encoder's update
    labels = jnp.concatenate([batch["label"], batch["label"]])  # views 1, then views 2
    probe, probe_metrics = online_probe.update(state.probe, aux["features"], labels,
                                               config.online_probe_learning_rate, axis_name)
    state = state.replace(probe=probe)
    metrics.update(probe_metrics)
  return state, metrics


def data_parallel(config, devices, schedule_steps):
  """`train_step` mapped over `devices` (parallel.DataParallel, config.parallel)."""
  return parallel.DataParallel(
      functools.partial(train_step, config=config, axis_name=parallel.AXIS,
                        schedule_steps=schedule_steps),
      config.parallel, devices)


@functools.partial(jax.jit, static_argnums=2)
def epoch_permutation(shuffle_key, epoch, num_examples):
  """The order in which epoch `epoch` visits the pre-training examples."""
  return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples)
