"""SimCLR with SimpleCNN for any TFDS image-classification dataset: views that do not assume handwriting.

  python -m cl_jax.train --config configs/generic.py --config.dataset=NAME --workdir runs/NAME

Rebuilt on 2026-12-02 (docs/tuning.md, "A generic recipe that learns"): the
recipe before it trained for 20 epochs and its features ended barely above the
same encoder at its random initialisation, because its views were too close to
each other to need anything a class shares. What SimCLR's small-image recipes
(Chen et al. 2020, appendix B.9; solo-learn's and lightly's CIFAR configs) do,
scaled to this encoder:
- views far apart: crops down to a fifth of the image (SimCLR's CIFAR crops go
  to 8%), a colour (here intensity) jitter applied with probability 0.8, and
  horizontal flips;
- BatchNorm over the global batch in the encoder and the head (SimCLR's);
- a lower temperature, 0.2 (solo-learn's CIFAR SimCLR), and batch 256.
Flips are a per-dataset choice: objects, clothing and scenes look the same
mirrored, characters do not (--config.augment.flip_probability=0 for digits
and letters).
"""

from cl_jax import config_files

mnist = config_files.sibling(__file__, "mnist")


def get_config():
  """Returns the generic config."""
  config = mnist.get_config()  # 20 epochs, Adam 1e-3, one warm-up epoch, cosine decay
  config.augment.shear_degrees = 0.0  # No slant: it imitates handwriting.
  config.augment.elastic_alpha = 0.0  # No elastic distortion: it imitates handwriting.
  config.augment.crop_scale = (0.2, 1.0)  # Crops of a fifth of the image's area to all of it.
  config.augment.flip_probability = 0.5  # SimCLR's; 0 for characters (a per-dataset choice).
  config.augment.brightness = 0.4  # SimCLR's colour jitter strength 0.5 (0.8 * 0.5) ...
  config.augment.contrast = 0.4  # ... for brightness and contrast alike ...
  config.augment.jitter_probability = 0.8  # ... applied to 80% of the views (SimCLR's).
  config.model.norm = "batch"  # BatchNorm after each conv, statistics over the global batch.
  config.model.head_norm = "batch"  # BatchNorm in the projection head's hidden layer (SimCLR's).
  config.batch_size = 256  # More negatives a step than the seed's 128.
  config.temperature = 0.2  # solo-learn's CIFAR SimCLR; sharper than mnist.py's 1.0.
  return config
