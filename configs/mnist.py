"""Default SimCLR-on-MNIST config (the one the README runs).

  python -m cl_jax.train --config configs/mnist.py --workdir runs/mnist

The reference set-up (configs/mnist_seed.py: SimpleCNN, batch 128, Adam 1e-3,
t = 0.5, crop 0.8-1.0, rotation 10) plus the augmentations that make views of
one digit differ the way handwriting does: a random slant (shear) and a small
elastic distortion; 20 epochs with a cosine learning-rate decay after one
warm-up epoch; and temperature 1.0 instead of 0.5 (the online k-NN monitor
ends ~0.7 points higher on 3 seeds; docs/tuning.md has the runs and a
hypothesis why).
docs/results.md has the numbers of record, docs/tuning.md what each change
bought.
"""

from cl_jax import config_files

mnist_seed = config_files.sibling(__file__, "mnist_seed")


def get_config():
  """Returns the default config."""
  config = mnist_seed.get_config()
  config.augment.shear_degrees = 15.0
  config.augment.elastic_alpha = 1.5
  config.augment.elastic_grid = 4
  config.num_epochs = 20
  config.lr_schedule = "cosine"
  config.warmup_epochs = 1.0
  config.temperature = 1.0
  return config
