"""MoCo v3 (Chen, Xie & He 2021): an online network with a predictor and a momentum (EMA)
copy of encoder + head; each view's query is contrasted with the other view's keys of the
whole global batch (no queue), symmetrised. Follows the paper's Algorithm 1 and its code
(facebookresearch/moco-v3): ctr(q, k) = CrossEntropy(q k^T / t, own example) * 2t, and the
EMA rate rises from `config.momentum` to 1 along a cosine."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("mocov3")
class MoCoV3(base.PredictorMomentumMethod):

  def loss(self, params, state, view1, view2, batch, config, axis_name,
           schedule_steps, local_views):
    del batch, schedule_steps, local_views
    q1, q2, batch_stats, features = base.forward_views(state, params, state.batch_stats, view1,
                                                       view2, axis_name, predict=True)
    k1, k2, momentum_stats = self.momentum_outputs(state, view1, view2, axis_name)
    t = config.temperature
    value = 2 * t * (losses.cross_view_infonce(q1, k2, t, axis_name) +
                     losses.cross_view_infonce(q2, k1, t, axis_name))
    return value, {"batch_stats": batch_stats, "momentum_batch_stats": momentum_stats,
                   "features": features}
