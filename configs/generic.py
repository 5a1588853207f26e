"""SimCLR with SimpleCNN for any TFDS image-classification dataset: views that do not assume handwriting.

  python -m cl_jax.train --config configs/generic.py --config.dataset=NAME --workdir runs/NAME

configs/mnist.py's model, loss and schedule (but its temperature of before, 0.5)
without its handwriting views (shear, elastic distortion), and with what SimCLR's
paper (Chen et al. 2020, section 3) found a crop needs beside it: a colour
distortion, here grayscale brightness and contrast. Without it the two views of
an image share its intensity histogram, and telling images apart by that is
easier than by what they show. The crop
goes down to half the image (SimCLR's ImageNet crops go down to 8%; on 28x28
digits half is about where a crop still shows the whole stroke structure).
docs/tuning.md has the run of this config on MNIST.
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the generic config."""
  config = mnist.get_config()
  config.augment.shear_degrees = 0.0  # No slant: it imitates handwriting.
  config.augment.elastic_alpha = 0.0  # No elastic distortion: it imitates handwriting.
  config.augment.crop_scale = (0.5, 1.0)  # Crops of half the image's area to all of it.
  config.augment.brightness = 0.4  # SimCLR's colour jitter strength 0.5 (0.8 * 0.5) ...
  config.augment.contrast = 0.4  # ... for brightness and contrast alike.
  config.temperature = 0.5  # What this config was measured with (mnist.py's 1.0 came later).
  return config
