"""On-device view augmentation: per-example random resized crop, rotation and shear as one
affine warp, optionally with an elastic distortion added to the sampling grid, then
optionally a random brightness and contrast (grayscale colour jitter)."""

import functools
import math

import jax
import jax.numpy as jnp

from cl_jax import data

# Sampling coordinates in float32 whatever the backend's default matmul precision: bf16
# passes (TPU) would put a pixel coordinate of 27 off by ~0.1 pixel.
_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def affine_matrix(height, width, crop_box, angle, shear=0.0):
  """2x3 matrix mapping output pixel (row, col, 1) to input (row, col).

  The output shows the crop `crop_box = (top, left, crop_h, crop_w)` (in pixel
  edge coordinates of the input) resized to (height, width), then rotated
  counter-clockwise by `angle` radians about the image centre (the convention of
  `scipy.ndimage.rotate`), sampled along columns slanted by `shear` radians
  (col_in = col + tan(shear) * row, about the centre). Identity for crop
  (0, 0, height, width), angle 0 and shear 0.
  """
  top, left, crop_h, crop_w = crop_box
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  scale_y, scale_x = crop_h / height, crop_w / width
  # Rotating the output counter-clockwise means sampling the crop at the output
  # coordinates rotated the other way (rows grow downwards).
  rotation = jnp.array([[cos, sin], [-sin, cos]])
  slant = jnp.array([[1.0, 0.0], [jnp.tan(shear), 1.0]])
  linear = _matmul(_matmul(jnp.diag(jnp.stack([scale_y, scale_x])), rotation), slant)
  out_centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
  in_centre = jnp.stack([top + crop_h / 2 - 0.5, left + crop_w / 2 - 0.5])
  offset = in_centre - _matmul(linear, out_centre)
  return jnp.concatenate([linear, offset[:, None]], axis=1)


def warp_affine(image, matrix, displacement=None):
  """Bilinear warp of one image [H, W, C] by `matrix`; samples outside read as 0.

  `displacement` ([H, W, 2] input pixels, optional) is added to the sampling
  position of each output pixel after the affine map (an elastic distortion).
  """
  height, width, channels = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  coords = _matmul(matrix, jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(height * width)]))
  if displacement is not None:
    coords = coords + displacement.reshape(height * width, 2).T
  row_in, col_in = coords
  row0, col0 = jnp.floor(row_in), jnp.floor(col_in)
  flat = image.reshape(height * width, channels)
  out = jnp.zeros((height * width, channels), image.dtype)
  for dr in (0, 1):
    for dc in (0, 1):
      r, c = row0 + dr, col0 + dc
      weight = (1 - jnp.abs(row_in - r)) * (1 - jnp.abs(col_in - c))
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      index = jnp.clip(r, 0, height - 1).astype(jnp.int32) * width + jnp.clip(
          c, 0, width - 1).astype(jnp.int32)
      out = out + jnp.where(inside, weight, 0.0)[:, None] * flat[index]
  return out.reshape(height, width, channels)


# torchvision's RandomResizedCrop draws (area, aspect) this many times before it falls back
# to a centre crop.
CROP_ATTEMPTS = 10


def sample_crop_box(key, height, width, scale, ratio):
  """torchvision's `RandomResizedCrop.get_params`, all attempts drawn at once: up to
  CROP_ATTEMPTS draws of an area fraction uniform in `scale` and a log aspect ratio
  (width / height) uniform in log `ratio`, each rounded to whole pixels (half to even, as
  Python's round); the first that fits the image is taken, at an integer offset uniform
  over the positions where it fits; if none fits, the centre crop of the largest size
  whose aspect is within `ratio`. Returns (top, left, crop_h, crop_w) as float32 pixels."""
  k_scale, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(k_scale, (CROP_ATTEMPTS,), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (CROP_ATTEMPTS,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  widths = jnp.round(jnp.sqrt(area * aspect))
  heights = jnp.round(jnp.sqrt(area / aspect))
  fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
  first = jnp.argmax(fits)  # the first attempt that fits (0 when none does)
  # The fallback, computed in Python: it depends on the shapes and `ratio` only.
  if width / height < min(ratio):
    fallback_w, fallback_h = width, round(width / min(ratio))
  elif width / height > max(ratio):
    fallback_w, fallback_h = round(height * max(ratio)), height
  else:
    fallback_w, fallback_h = width, height
  found = fits.any()
  crop_h = jnp.where(found, heights[first], fallback_h)
  crop_w = jnp.where(found, widths[first], fallback_w)
  # randint(0, height - h + 1) in torchvision; the fallback is centred.
  top = jnp.where(found, jnp.floor(jax.random.uniform(k_top) * (height - crop_h + 1)),
                  (height - fallback_h) // 2)
  left = jnp.where(found, jnp.floor(jax.random.uniform(k_left) * (width - crop_w + 1)),
                   (width - fallback_w) // 2)
  return tuple(x.astype(jnp.float32) for x in (top, left, crop_h, crop_w))


def sample_crop_and_angle(key, height, width, scale, ratio, max_degrees):
  """A random resized crop box (`sample_crop_box`) and a rotation angle in radians, uniform
  in +-max_degrees."""
  k_crop, k_angle = jax.random.split(key)
  crop_box = sample_crop_box(k_crop, height, width, scale, ratio)
  angle = jnp.deg2rad(jax.random.uniform(k_angle, minval=-max_degrees, maxval=max_degrees))
  return crop_box, angle


def elastic_displacement(key, height, width, alpha, grid):
  """Smooth random displacement field [H, W, 2]: N(0, alpha^2) pixel offsets on a
  grid x grid lattice, upsampled bicubically (a cheap elastic distortion)."""
  coarse = alpha * jax.random.normal(key, (grid, grid, 2))
  return jax.image.resize(coarse, (height, width, 2), method="cubic")


def jitter_intensity(image, brightness_factor, contrast_factor):
  """torchvision's `adjust_brightness` then `adjust_contrast` of a grayscale image in [0, 1].

  Brightness scales every pixel; contrast blends the image with its mean; each result
  is clipped to [0, 1] (a factor of 1 leaves the image unchanged). One channel, as the
  datasets here have: for RGB torchvision blends with the luma mean instead. The order
  is fixed (torchvision's ColorJitter draws one) and the jitter always applies (SimCLR
  applies its colour jitter with probability 0.8).
  """
  image = jnp.clip(image * brightness_factor, 0.0, 1.0)
  mean = jnp.mean(image)
  return jnp.clip(contrast_factor * image + (1 - contrast_factor) * mean, 0.0, 1.0)


def sample_intensity_factors(key, brightness, contrast):
  """Brightness and contrast factors, uniform in [max(0, 1 - s), 1 + s] (torchvision's law)."""
  k_brightness, k_contrast = jax.random.split(key)
  def factor(k, strength):
    return jax.random.uniform(k, minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)
  return factor(k_brightness, brightness), factor(k_contrast, contrast)


def intensity_key(key):
  """The key of a view's intensity jitter: `fold_in(key, 3)`, which no other draw of the
  view uses (under JAX's partitionable threefry it is `split(key, 4)[3]`, and the warp
  uses `split(key, 3)`), so configs without jitter draw the views they always drew."""
  return jax.random.fold_in(key, 3)


def random_view(key, image, config):
  """One random view of a uint8 image [H, W, C], as float32 in [0, 1]."""
  height, width, _ = image.shape
  k_affine, k_shear, k_elastic = jax.random.split(key, 3)
  crop_box, angle = sample_crop_and_angle(
      k_affine, height, width, config.crop_scale, config.crop_ratio, config.rotation_degrees)
  shear = jnp.deg2rad(jax.random.uniform(k_shear, minval=-config.shear_degrees,
                                         maxval=config.shear_degrees))
  displacement = None
  if config.elastic_alpha > 0:
    displacement = elastic_displacement(k_elastic, height, width, config.elastic_alpha,
                                        config.elastic_grid)
  view = warp_affine(data.to_float(image),
                     affine_matrix(height, width, crop_box, angle, shear), displacement)
  if config.brightness > 0 or config.contrast > 0:
    factors = sample_intensity_factors(intensity_key(key), config.brightness,
                                       config.contrast)
    view = jitter_intensity(view, *factors)
  return view


def two_views(images, keys, config):
  """Two independent random views of each image; `keys` holds one key per example.

  Each example's views depend only on its own key, so they do not change with
  the number of devices the batch is split over.
  """
  def views_of(image, key):
    key1, key2 = jax.random.split(key)
    return random_view(key1, image, config), random_view(key2, image, config)
  return jax.vmap(views_of)(images, keys)
