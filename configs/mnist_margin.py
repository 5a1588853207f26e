"""The pairwise margin (contrastive) loss of Hadsell et al. on MNIST, self-supervised
(the positive is the other view), on the default config's data, views, encoder and schedule.

  python -m cl_jax.train --config configs/mnist_margin.py --workdir runs/mnist_margin
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the margin-loss config."""
  config = mnist.get_config()
  config.method = "margin"
  config.margin = 1.4  # ~sqrt(2): negatives are pushed until about orthogonal
  return config
