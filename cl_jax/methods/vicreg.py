"""VICReg (Bardes, Ponce & LeCun 2022): invariance between the views' embeddings, a hinge
on each dimension's standard deviation and a penalty on the covariances, both over the
global batch; no negatives, no predictor. Follows the paper's Algorithm 1 and its code
(facebookresearch/vicreg, which gathers the embeddings of every GPU)."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("vicreg")
class VICReg(base.PairwiseMethod):

  def check_config(self, config, fail):
    weights = tuple(config.vicreg_weights)
    if len(weights) != 3 or not all(w >= 0 for w in weights):
      fail("vicreg_weights", weights, "must be three weights >= 0")
    if config.batch_size < 2:
      fail("batch_size", config.batch_size, "vicreg's variance needs 2 or more images")

  def pairwise(self, z1, z2, batch, config, axis_name):
    del batch
    return losses.vicreg(z1, z2, tuple(config.vicreg_weights), axis_name)
