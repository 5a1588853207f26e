"""SimSiam (Chen & He 2021): each view's prediction regresses the other view's projection,
which is a constant (stop-gradient); no negatives, no momentum network. Its Algorithm 1:
L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2, D the negative cosine."""

import jax

from cl_jax import losses
from cl_jax.methods import base


@base.register("simsiam")
class SimSiam(base.Method):
  uses_predictor = True

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch, config, schedule_steps, local_views
    (z1, p1), (z2, p2), batch_stats, features = base.forward_views(
        state, params, state.batch_stats, view1, view2, axis_name, predict="both")
    z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
    value = 0.5 * (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1))
    return value, {"batch_stats": batch_stats, "features": features}
