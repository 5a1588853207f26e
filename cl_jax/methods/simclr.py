"""SimCLR: NT-Xent over the global batch (every other view is a negative)."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("simclr")
class SimCLR(base.PairwiseMethod):

  def pairwise(self, z1, z2, batch, config, axis_name):
    return losses.nt_xent(z1, z2, config.temperature, axis_name)
