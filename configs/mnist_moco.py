"""MoCo v2 on MNIST: the default config's data, views, encoder and schedule, with a
momentum key network and a queue of 4,096 negatives (16 steps of 2 x 128 keys).

  python -m cl_jax.train --config configs/mnist_moco.py --workdir runs/mnist_moco
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the MoCo v2 config."""
  config = mnist.get_config()
  config.method = "moco"
  config.temperature = 0.2  # MoCo v2's
  config.momentum = 0.99  # the key network's EMA rate (MoCo's 0.999 suits ~100x longer runs)
  config.queue_size = 4096
  return config
