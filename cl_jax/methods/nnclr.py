"""NNCLR (Dwibedi et al. 2021): each view's positive is the nearest neighbour of its
projection in a support set (a queue of earlier view-1 projections of the global batch),
contrasted with the other view's predictions of the whole global batch; symmetrised.
Follows the paper's eq. 2 and solo-learn's implementation: the neighbours are constants,
the support set is filled with the global batch's view-1 projections after each step."""

import jax
import jax.numpy as jnp

from cl_jax import losses
from cl_jax.methods import base


@base.register("nnclr")
class NNCLR(base.Method):
  uses_predictor = True

  def check_config(self, config, fail):
    base.check_queue_size(config, fail)

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    del params, batch_stats
    return {"support_set": base.random_unit_queue(key, config.queue_size, embedding_width),
            "support_next": jnp.zeros((), jnp.int32)}

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch, schedule_steps, local_views
    (z1, p1), (z2, p2), batch_stats, features = base.forward_views(
        state, params, state.batch_stats, view1, view2, axis_name, predict="both")
    support = state.method_state["support_set"]
    # Rows of the support set: constants of the step.
    neighbour1 = losses.nearest_neighbours(z1, support)
    neighbour2 = losses.nearest_neighbours(z2, support)
    t = config.temperature
    value = 0.5 * (losses.cross_view_infonce(neighbour1, p2, t, axis_name) +
                   losses.cross_view_infonce(neighbour2, p1, t, axis_name))
    return value, {"batch_stats": batch_stats, "features": features,
                   "view1_projections": losses.l2_normalize(jax.lax.stop_gradient(z1))}

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """The global batch's view-1 projections into the support set, in example order."""
    del step, config, schedule_steps
    m = dict(state.method_state)
    m["support_set"], m["support_next"] = base.enqueue(
        m["support_set"], m["support_next"], losses.gather(aux["view1_projections"], axis_name))
    return state.replace(method_state=m)
