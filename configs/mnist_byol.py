"""BYOL on MNIST: the default config's data, views, encoder and schedule, with a
predictor on the online network and an EMA target network; no negatives.

Batch normalisation (global-batch statistics) after the hidden layer of the
projector and of the predictor, where BYOL puts it: without it BYOL collapses
partially here (89.48% k-NN at 5 epochs against 98.12% with it; docs/tuning.md).
Projector and predictor 1,024 wide before their 64-d outputs (16x, the ratio of the
paper's 4096 -> 256 and of solo-learn's CIFAR config), chosen on the validation split
(docs/tuning.md, "BYOL's heads").

  python -m cl_jax.train --config configs/mnist_byol.py --workdir runs/mnist_byol
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the BYOL config."""
  config = mnist.get_config()
  config.method = "byol"
  config.momentum = 0.99  # the target's starting EMA rate, raised to 1 along a cosine
  config.model.head_norm = "batch"  # BN in the projector (the target's too) ...
  config.model.predictor_norm = "batch"  # ... and in the predictor, as the paper
  config.model.projection_hidden = (1024,)  # the predictor's hidden layer too (its default)
  return config
