"""Barlow Twins on MNIST: the default config's data, views, encoder and schedule, with a
wider projector (BatchNorm after its hidden layer, as the paper's) whose embeddings' cross-
correlation over the global batch is pulled to the identity.

The paper's projector is 8192-8192-8192 on ImageNet, solo-learn's CIFAR one 2048-2048;
512-512 here for a 128-wide encoder (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_barlow_twins.py --workdir runs/mnist_barlow_twins
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the Barlow Twins config."""
  config = mnist.get_config()
  config.method = "barlow_twins"
  config.barlow_lambda = 0.0051  # the paper's (and solo-learn's) off-diagonal weight
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 512
  config.model.head_norm = "batch"
  return config
