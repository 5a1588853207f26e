"""SimCLR on CIFAR-100 with ResNet-18: configs/cifar10.py on the other dataset, as
solo-learn runs it ("change here for cifar100" in scripts/pretrain/cifar/simclr.yaml).

  python -m cl_jax.train --config configs/cifar100.py --workdir runs/cifar100

solo-learn reports **65.78%** top-1 of its online linear classifier after 1000
epochs (README, "Results / CIFAR-100"; BYOL 70.46%). Not run here (no CIFAR-100
on this machine).
"""

from cl_jax import config_files

cifar10 = config_files.sibling(__file__, "cifar10")


def get_config():
  """Returns the CIFAR-100 SimCLR config."""
  config = cifar10.get_config()
  config.dataset = "cifar100"
  return config
