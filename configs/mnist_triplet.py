"""Batch-hard triplet loss on MNIST, self-supervised (the positive is the other view),
on the default config's data, views, encoder and schedule.

  python -m cl_jax.train --config configs/mnist_triplet.py --workdir runs/mnist_triplet
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the triplet config."""
  config = mnist.get_config()
  config.method = "triplet"
  config.margin = 0.5  # distance between unit vectors (0 to 2)
  return config
