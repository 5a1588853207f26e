"""SimCLR for any 28x28x1 TFDS image-classification dataset: views that do not assume handwriting.

  python -m cl_jax.train --config configs/generic.py --config.dataset=NAME --workdir runs/NAME

configs/mnist.py's schedule and model without its handwriting views (shear,
elastic distortion), plus the two things SimCLR's paper found a crop needs
beside it (Chen et al. 2020, section 3): a crop covering as little as half the
image, and a colour distortion, here grayscale brightness and contrast.
Without the intensity jitter the two views of an image share its intensity
histogram, and telling images apart by it is easier than by their content.
docs/tuning.md has the measurements (on MNIST with these views).
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the generic config."""
  config = mnist.get_config()
  config.augment.shear_degrees = 0.0  # handwriting views off
  config.augment.elastic_alpha = 0.0
  config.augment.crop_scale = (0.5, 1.0)  # at least half the image's area
  config.augment.brightness = 0.4  # SimCLR's colour jitter at strength 0.5: 0.8 * 0.5
  config.augment.contrast = 0.4
  return config
