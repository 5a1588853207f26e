"""BYOL: an online network with a predictor regresses a momentum (EMA) target network's
projection of the other view; no negatives. The target's EMA rate rises from
`config.momentum` to 1 along a cosine over the run."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("byol")
class BYOL(base.PredictorMomentumMethod):

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch, config, schedule_steps, local_views
    p1, p2, batch_stats, features = base.forward_views(state, params, state.batch_stats, view1,
                                                       view2, axis_name, predict=True)
    t1, t2, momentum_stats = self.momentum_outputs(state, view1, view2, axis_name)
    value = losses.byol_regression(p1, t2) + losses.byol_regression(p2, t1)
    return value, {"batch_stats": batch_stats, "momentum_batch_stats": momentum_stats,
                   "features": features}
