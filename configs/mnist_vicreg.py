"""VICReg on MNIST: the default config's data, views, encoder and schedule, with a wider
projector (BatchNorm after its hidden layer, as the paper's) and the paper's weights
(invariance 25, variance 25, covariance 1).

The paper's expander is 8192-8192-8192 on ImageNet, solo-learn's CIFAR one 2048-2048;
512-512 here for a 128-wide encoder (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_vicreg.py --workdir runs/mnist_vicreg
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the VICReg config."""
  config = mnist.get_config()
  config.method = "vicreg"
  config.vicreg_weights = (25.0, 25.0, 1.0)  # the paper's lambda, mu, nu
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 512
  config.model.head_norm = "batch"
  return config
