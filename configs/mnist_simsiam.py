"""SimSiam on MNIST: the default config's data, views, encoder and schedule, with the
paper's head shapes: BatchNorm after every projector layer, its output's without scale and
offset, and a bottleneck predictor (hidden a quarter of its output, BN after it).

The paper's projector is 2048 wide with a 512 predictor bottleneck; 512 with 128 here for a
128-wide encoder (docs/tuning.md).

  python -m cl_jax.train --config configs/mnist_simsiam.py --workdir runs/mnist_simsiam
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the SimSiam config."""
  config = mnist.get_config()
  config.method = "simsiam"
  config.model.projection_hidden = (512,)
  config.model.projection_dim = 512
  config.model.head_norm = "batch"
  config.model.head_output_norm = "batch"
  config.model.predictor_hidden = (128,)
  config.model.predictor_norm = "batch"
  return config
