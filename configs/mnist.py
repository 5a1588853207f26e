"""Default SimCLR-on-MNIST config (the one the README runs).

  python -m cl_jax.train --config configs/mnist.py --workdir runs/mnist

Starts from the library defaults (the reference set-up, configs/mnist_seed.py)
and changes what improves the embedding; docs/results.md measures each change.
"""

from cl_jax import default_config


def get_config():
  """Returns the default config."""
  config = default_config.get_config()
  return config
