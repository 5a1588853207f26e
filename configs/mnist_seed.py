"""The reference set-up of the PyTorch example this project replaces, defects fixed.

SimpleCNN, batch 128, 10 epochs, Adam 1e-3, temperature 0.5, crop 0.8-1.0,
rotation +-10 degrees; per-example views, correct NT-Xent targets, projection
head. These are the library defaults, spelled out so the file says what it runs.

  python -m cl_jax.train --config configs/mnist_seed.py --workdir runs/mnist_seed
"""

from cl_jax import default_config


def get_config():
  """Returns the reference config."""
  config = default_config.get_config()
  config.model.conv_features = (16, 32)
  config.model.convs_per_block = 1
  config.model.dense_features = 128
  config.model.norm = "none"
  config.batch_size = 128
  config.num_epochs = 10
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.lr_schedule = "constant"
  config.warmup_epochs = 0.0
  config.temperature = 0.5
  config.augment.crop_scale = (0.8, 1.0)
  config.augment.rotation_degrees = 10.0
  return config
