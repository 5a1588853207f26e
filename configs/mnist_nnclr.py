"""NNCLR on MNIST: the default config's data, views, encoder and schedule, with a support
set of 16,384 earlier projections whose nearest neighbours are the positives, a predictor
with BatchNorm, and t = 0.2 (solo-learn's CIFAR value; the paper's ImageNet one is 0.1).

The paper's support set is 98,304 on ImageNet, solo-learn's 65,536 on CIFAR (more than its
50,000 images); 16,384 here, about a quarter of MNIST's training set (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_nnclr.py --workdir runs/mnist_nnclr
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the NNCLR config."""
  config = mnist.get_config()
  config.method = "nnclr"
  config.temperature = 0.2
  config.queue_size = 16384  # the support set
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 128
  config.model.head_norm = "batch"
  config.model.predictor_norm = "batch"
  return config
