"""MoCo v2: a momentum (EMA) copy of encoder + head makes the keys; the negatives are a
queue of earlier keys from the whole global batch."""

import jax.numpy as jnp

from cl_jax import losses
from cl_jax.methods import base


@base.register("moco")
class MoCo(base.MomentumMethod):

  def check_config(self, config, fail):
    super().check_config(config, fail)
    base.check_queue_size(config, fail)

  def initial_state(self, config, params, batch_stats, key, embedding_width):
    state = super().initial_state(config, params, batch_stats, key, embedding_width)
    # Random unit keys, as MoCo starts: the first queue_size / 2N steps see them.
    state["queue"] = base.random_unit_queue(key, config.queue_size, embedding_width)
    state["queue_next"] = jnp.zeros((), jnp.int32)
    return state

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch, schedule_steps, local_views
    z1, z2, batch_stats, features = base.forward_views(state, params, state.batch_stats, view1,
                                                       view2, axis_name)
    k1, k2, momentum_stats = self.momentum_outputs(state, view1, view2, axis_name)
    queue = state.method_state["queue"]
    value = 0.5 * (losses.queue_infonce(z1, k2, queue, config.temperature) +
                   losses.queue_infonce(z2, k1, queue, config.temperature))
    return value, {"batch_stats": batch_stats, "momentum_batch_stats": momentum_stats,
                   "features": features,
                   "keys": losses.l2_normalize(jnp.concatenate([k1, k2]))}

  def after_step(self, state, step, aux, config, schedule_steps, axis_name):
    """The EMA, then the keys of the whole global batch into the queue: all views 1 then all
    views 2 in example order, so its contents do not depend on the device count."""
    state = super().after_step(state, step, aux, config, schedule_steps, axis_name)
    k1, k2 = (losses.gather(k, axis_name) for k in jnp.split(aux["keys"], 2))
    m = dict(state.method_state)
    m["queue"], m["queue_next"] = base.enqueue(m["queue"], m["queue_next"],
                                               jnp.concatenate([k1, k2]))
    return state.replace(method_state=m)
