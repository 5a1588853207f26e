"""Hadsell's pairwise margin loss, with the other view of the same image as the positive."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("margin")
class Margin(base.PairwiseMethod):

  def check_config(self, config, fail):
    if not config.margin > 0:
      fail("margin", config.margin, "must be > 0")
    if config.batch_size < 2:
      fail("batch_size", config.batch_size, "margin needs 2 or more images (negatives)")

  def pairwise(self, z1, z2, batch, config, axis_name):
    # The other view of the same image is the only positive: labels are dataset indices.
    return losses.margin_contrastive(z1, z2, batch["index"], config.margin, axis_name)
