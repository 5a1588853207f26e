"""SwAV (Caron et al. 2020): the projections of each view are scored against learned
prototypes; each view's scores, turned into equal-share assignments by Sinkhorn-Knopp over
the global batch (and a queue of earlier projections when the batch is small), are the
targets of the other view's softmax of its scores (swapped prediction). Follows the paper's
Algorithm 1 and solo-learn's implementation: 3 Sinkhorn iterations at epsilon 0.05, the
assignments are constants, the prototypes are frozen for the first epochs, and the queue
(filled from the first step) joins the assignments from a given epoch on, once full. With multi-crop
(`augment.local_crops`) each global view's assignments are also predicted from every local
view's scores; only the global views are assigned."""

import functools

import jax
import jax.numpy as jnp

from cl_jax import losses
from cl_jax.methods import base


def _prototype_scores(module, unit_projections):
  return module.prototypes(unit_projections)


@base.register("swav")
class SwAV(base.Method):
  uses_prototypes = True
  uses_local_views = True

  def check_config(self, config, fail):
    for field in ("swav_temperature", "swav_sinkhorn_epsilon"):
      if config[field] <= 0:
        fail(field, config[field], "must be positive")
    if not isinstance(config.swav_sinkhorn_iterations, int) or config.swav_sinkhorn_iterations < 1:
      fail("swav_sinkhorn_iterations", config.swav_sinkhorn_iterations,
           "must be a positive integer")
    if not isinstance(config.swav_queue_size, int) or config.swav_queue_size < 0:
      fail("swav_queue_size", config.swav_queue_size, "must be 0 (no queue) or a positive integer")
    for field in ("swav_queue_start_epochs", "swav_freeze_prototypes_epochs"):
      if config[field] < 0:
        fail(field, config[field], "must be >= 0")
    if config.model.projection_dim <= 0:
      fail("model.projection_dim", config.model.projection_dim,
           "swav needs a projection head (> 0) before its prototypes")

  def frozen_parameters(self, config, schedule_steps):
    """The prototypes, for the first swav_freeze_prototypes_epochs (SwAV's
    `freeze_prototypes_niters`; solo-learn sets their gradient to None)."""
    return base.frozen_prototypes(config.swav_freeze_prototypes_epochs, config, schedule_steps)

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    """Per view, a queue of earlier unit projections (zeros until filled) and its next row;
    None without a queue."""
    del params, batch_stats, key, embedding_width
    if config.swav_queue_size == 0:
      return None
    return {"queue": jnp.zeros((2, config.swav_queue_size, config.model.projection_dim),
                               jnp.float32),
            "queue_next": jnp.zeros((), jnp.int32)}

  def queue_start_step(self, config, steps_per_epoch, local_batch, axis_name):
    """The first step whose assignments read the queue: from swav_queue_start_epochs on, and
    not before the queue is full (its zero rows would take a share of every prototype)."""
    global_batch = local_batch if axis_name is None else local_batch * jax.lax.axis_size(
        axis_name)
    filled = -(-config.swav_queue_size // global_batch)  # steps, rounded up
    return max(config.swav_queue_start_epochs * steps_per_epoch, filled)

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch
    steps_per_epoch = schedule_steps / config.num_epochs
    (z1, p1), (z2, p2), batch_stats, features = base.forward_views(
        state, params, state.batch_stats, view1, view2, axis_name, predict="both")
    sinkhorn = functools.partial(losses.sinkhorn_knopp, epsilon=config.swav_sinkhorn_epsilon,
                                 iterations=config.swav_sinkhorn_iterations, axis_name=axis_name)
    assignments = []
    for view, view_scores in enumerate((p1, p2)):
      view_scores = jax.lax.stop_gradient(view_scores)
      if state.method_state is None:
        assignments.append(sinkhorn(view_scores))
        continue
      # The queue scored by the current prototypes, as the paper's code does. One Sinkhorn
      # a step, with or without the queue (the same branch on every device: the step is
      # replicated, so the collectives inside match).
      queue_scores = state.apply_fn({"params": jax.lax.stop_gradient(params)},
                                    state.method_state["queue"][view], method=_prototype_scores)
      assignments.append(jax.lax.cond(
          state.step >= self.queue_start_step(config, steps_per_epoch, p1.shape[0], axis_name),
          lambda s, q: sinkhorn(s, shared_scores=q), lambda s, q: sinkhorn(s),
          view_scores, queue_scores))
    scores = jnp.stack([p1, p2])
    if local_views is not None:  # predicted from, never assigned
      scores = jnp.concatenate([scores, base.forward_local_views(
          state, params, state.batch_stats, local_views, axis_name, predict=True)])
    value = losses.cross_view_cross_entropy(jnp.stack(assignments),
                                            scores / config.swav_temperature)
    unit = jax.lax.stop_gradient(jnp.stack([losses.l2_normalize(z1), losses.l2_normalize(z2)]))
    return value, {"batch_stats": batch_stats, "features": features, "unit_projections": unit}

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """Each view's unit projections of the global batch into its queue, in example order."""
    del step, config, schedule_steps
    if state.method_state is None:
      return state
    m = dict(state.method_state)
    queues = []
    for view in range(2):
      queue, queue_next = base.enqueue(m["queue"][view], m["queue_next"],
                                       losses.gather(aux["unit_projections"][view], axis_name))
      queues.append(queue)
    m["queue"], m["queue_next"] = jnp.stack(queues), queue_next
    return state.replace(method_state=m)
