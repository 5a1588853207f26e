"""MoCo v3 on MNIST: the default config's data, views, encoder and schedule, with a
predictor, a momentum network whose EMA rate rises from 0.99 to 1, keys of the global batch
as negatives at t = 0.2 (the paper's and solo-learn's CIFAR value), and the paper's head
shapes (BatchNorm after every hidden layer and the projector's output).

  python -m cl_jax.train --config configs/mnist_mocov3.py --workdir runs/mnist_mocov3
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the MoCo v3 config."""
  config = mnist.get_config()
  config.method = "mocov3"
  config.temperature = 0.2
  config.momentum = 0.99  # the starting EMA rate (solo-learn's CIFAR base_tau), cosine to 1
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 128
  config.model.head_norm = "batch"
  config.model.head_output_norm = "batch"
  config.model.predictor_norm = "batch"
  return config
