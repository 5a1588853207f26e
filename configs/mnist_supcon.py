"""Supervised contrastive learning on MNIST (uses the labels): an upper reference for
the self-supervised methods, on the default config's data, views, encoder and schedule.

  python -m cl_jax.train --config configs/mnist_supcon.py --workdir runs/mnist_supcon
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the SupCon config."""
  config = mnist.get_config()
  config.method = "supcon"
  config.temperature = 0.1  # the SupCon paper's
  return config
