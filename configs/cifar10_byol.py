"""BYOL on CIFAR-10 with ResNet-18: solo-learn's recipe (scripts/pretrain/cifar/byol.yaml).

  python -m cl_jax.train --config configs/cifar10_byol.py --workdir runs/cifar10_byol

solo-learn reports **92.58%** top-1 of its online linear classifier after these
1000 epochs (README, "Results / CIFAR-10"). configs/cifar10.py's data, encoder,
schedule and comparison notes, with BYOL's parts: a 4096-256 projector and a
4096-256 predictor, each with BN; the target's EMA rate from 0.99 to 1 along a
cosine; LARS at 1.0 x batch / 256, weight decay 1e-5; and BYOL's asymmetric
views (solo-learn's augmentations/asymmetric.yaml: solarization 0.0 / 0.2, no
blur at 32x32). Not run here (no CIFAR-10 on this machine).
"""

from cl_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")


def get_config():
  """Returns the CIFAR-10 BYOL config."""
  config = cifar10.get_config()
  config.method = "byol"
  config.momentum = 0.99
  config.model.projection_hidden = (4096,)
  config.model.projection_dim = 256
  config.model.predictor_norm = "batch"
  config.learning_rate = 1.0
  config.weight_decay = 1e-5
  config.augment.solarize_probability = (0.0, 0.2)
  return config
