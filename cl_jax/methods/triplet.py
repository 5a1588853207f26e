"""Triplet loss with the other view of the same image as the positive; the negatives are
mined by `config.triplet_mining`."""

from cl_jax import losses
from cl_jax.methods import base

# config.triplet_mining -> loss(z1, z2, labels, margin, axis_name).
MINING = {
    "batch_hard": losses.batch_hard_triplet,  # Hermans et al.: hardest positive and negative
    "semi_hard": losses.semi_hard_triplet,  # FaceNet: nearest negative farther than the positive
    "batch_all": losses.batch_all_triplet,  # Hermans et al.: every violating triplet ("BA≠0")
    "soft_margin": lambda z1, z2, labels, margin, axis_name: losses.soft_margin_triplet(
        z1, z2, labels, axis_name),  # Hermans et al.'s soft margin (no margin)
}


@base.register("triplet")
class Triplet(base.PairwiseMethod):

  def check_config(self, config, fail):
    if config.triplet_mining not in MINING:
      fail("triplet_mining", config.triplet_mining, f"allowed: {', '.join(MINING)}")
    if config.triplet_mining != "soft_margin" and not config.margin > 0:
      fail("margin", config.margin, "must be > 0")
    if config.batch_size < 2:
      fail("batch_size", config.batch_size, "triplet needs 2 or more images (negatives)")

  def pairwise(self, z1, z2, batch, config, axis_name):
    # The other view of the same image is the only positive: labels are dataset indices.
    return MINING[config.triplet_mining](z1, z2, batch["index"], config.margin, axis_name)
