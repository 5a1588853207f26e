"""Supervised contrastive: every view with the anchor's class label is a positive (uses
labels: an upper reference for the self-supervised methods)."""

from cl_jax import losses
from cl_jax.methods import base


@base.register("supcon")
class SupCon(base.PairwiseMethod):
  uses_labels = True

  def pairwise(self, z1, z2, batch, config, axis_name):
    return losses.supervised_contrastive(z1, z2, batch["label"], config.temperature, axis_name)
