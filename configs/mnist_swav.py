"""SwAV on MNIST: the default config's data, views, encoder and schedule, with the paper's
projector shape scaled to a 128-wide encoder (one hidden layer of 512 with BatchNorm, a
128-wide output; solo-learn's CIFAR 2048 and 128) scored against 1,024 prototypes
(solo-learn's CIFAR 3,000), temperature 0.1, 3 Sinkhorn iterations at epsilon 0.05, no
queue (the paper's queue is for batches below 256; one published CIFAR config leaves it out
as better on small datasets: chosen on the validation split against solo-learn's queue of
3,840 joining after the first epoch or half way, docs/tuning.md); the prototypes frozen for
the first quarter epoch (the paper: its first epoch of 400 or 800). Two views: multi-crop
(`augment.local_crops`) with 28-pixel local crops failed DINO here (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_swav.py --workdir runs/mnist_swav
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the SwAV config."""
  config = mnist.get_config()
  config.method = "swav"
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 128
  config.model.head_norm = "batch"
  config.model.prototypes = 1024
  config.swav_temperature = 0.1
  config.swav_sinkhorn_epsilon = 0.05
  config.swav_sinkhorn_iterations = 3
  config.swav_queue_size = 0  # no queue: the Sinkhorn assignments of the global batch alone
  config.swav_freeze_prototypes_epochs = 0.25
  return config
