"""Train state, optimizer and the per-device SimCLR train step."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cl_jax import augment
from cl_jax import losses


def create_optimizer(config, steps_per_epoch, total_steps):
  """Adam, AdamW or SGD (momentum 0.9) with an optional linear warm-up and cosine decay."""
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1))
  elif warmup_steps > 0:
    schedule = optax.linear_schedule(0.0, config.learning_rate, warmup_steps)
  else:
    schedule = config.learning_rate
  if config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return optax.sgd(schedule, momentum=0.9)
  return optax.adam(schedule)


def create_train_state(model, tx, key, image_shape):
  """Initialises parameters (float32) and optimizer state."""
  params = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def example_keys(rng, indices):
  """One key per example, from the step key and the example's dataset index."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def simclr_loss_fn(params, apply_fn, view1, view2, temperature, axis_name):
  """NT-Xent of the projections of two views, both through one forward pass."""
  _, projections = apply_fn({"params": params}, jnp.concatenate([view1, view2]))
  z1, z2 = jnp.split(projections, 2)
  return losses.nt_xent(z1, z2, temperature, axis_name)


def train_step(state, batch, rng, *, config, axis_name=None):
  """One SimCLR step on this device's shard of the global batch.

  Args:
    state: replicated TrainState.
    batch: {"image": uint8 [n, H, W, C], "index": int32 [n] dataset indices}.
    rng: the step's key (the same on every device).
    config: the run config (static).
    axis_name: the devices' named axis, or None on a single device.
  Returns:
    (new state, {"loss", "grad_norm", "param_norm"}), identical on every device.
  """
  keys = example_keys(rng, batch["index"])
  view1, view2 = augment.two_views(batch["image"], keys, config.augment)
  loss_fn = functools.partial(simclr_loss_fn, apply_fn=state.apply_fn, view1=view1,
                              view2=view2, temperature=config.temperature,
                              axis_name=axis_name)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  if axis_name is not None:
    # Equal shards: the mean of per-device means is the global mean.
    loss, grads = jax.lax.pmean((loss, grads), axis_name)
  state = state.apply_gradients(grads=grads)
  # param_norm lets the loop refuse to checkpoint parameters that overflowed.
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(state.params)}
  return state, metrics
