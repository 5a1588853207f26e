"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' embeddings,
each standardised over the global batch, is pulled to the identity; no negatives, no
predictor, no momentum network. Follows the paper's code (facebookresearch/barlowtwins)."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("barlow_twins")
class BarlowTwins(base.PairwiseMethod):

  def check_config(self, config, fail):
    if not config.barlow_lambda >= 0:
      fail("barlow_lambda", config.barlow_lambda, "must be >= 0")
    if config.batch_size < 2:
      fail("batch_size", config.batch_size, "barlow_twins standardises over the batch: >= 2")

  def pairwise(self, z1, z2, batch, config, axis_name):
    del batch
    return losses.barlow_twins(z1, z2, config.barlow_lambda, axis_name)
