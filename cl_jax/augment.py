"""On-device view augmentation, per example: a random resized crop, rotation and shear as
one affine warp (optionally with an elastic distortion added to the sampling grid), then
SimCLR's and BYOL's colour ops: horizontal flip, colour jitter, random grayscale, Gaussian
blur, solarization. Each op is torchvision's formula on float images in [0, 1]."""

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

  The output, (height, width) pixels, shows the crop `crop_box = (top, left, crop_h,
  crop_w)` (in pixel edge coordinates of the input) resized to its size, then rotated
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


def warp_affine(image, matrix, displacement=None, out_size=None):
  """Bilinear warp of one image [H, W, C] by `matrix` into an output of `out_size`
  (rows, cols; None = the image's); samples outside the image read as 0.

  `displacement` ([rows, cols, 2] input pixels, optional) is added to the sampling
  position of each output pixel after the affine map (an elastic distortion).
  """
  height, width, channels = image.shape
  out_h, out_w = out_size or (height, width)
  rows, cols = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32),
                            jnp.arange(out_w, dtype=jnp.float32), indexing="ij")
  coords = _matmul(matrix, jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(out_h * out_w)]))
  if displacement is not None:
    coords = coords + displacement.reshape(out_h * out_w, 2).T
  row_in, col_in = coords
  row0, col0 = jnp.floor(row_in), jnp.floor(col_in)
  flat = image.reshape(height * width, channels)
  out = jnp.zeros((out_h * out_w, channels), image.dtype)
  for dr in (0, 1):
    for dc in (0, 1):
      r, c = row0 + dr, col0 + dc
      weight = (1 - jnp.abs(row_in - r)) * (1 - jnp.abs(col_in - c))
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      index = jnp.clip(r, 0, height - 1).astype(jnp.int32) * width + jnp.clip(
          c, 0, width - 1).astype(jnp.int32)
      out = out + jnp.where(inside, weight, 0.0)[:, None] * flat[index]
  return out.reshape(out_h, out_w, channels)


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


# ITU-R 601-2 luma, torchvision's `rgb_to_grayscale` (and PIL's "L" conversion).
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def luma(image):
  """[H, W, 1] grayscale of an image [H, W, C] in [0, 1]: the image itself with one channel."""
  if image.shape[-1] == 1:
    return image
  return jnp.tensordot(image, jnp.array(LUMA_WEIGHTS, image.dtype), axes=([-1], [0]))[..., None]


def _blend(image, other, factor):
  """torchvision's `_blend`: factor * image + (1 - factor) * other, clipped to [0, 1]."""
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
  return _blend(image, 0.0, factor)


def adjust_contrast(image, factor):
  """Blends with the mean of the image's luma (torchvision's `adjust_contrast`)."""
  return _blend(image, jnp.mean(luma(image)), factor)


def adjust_saturation(image, factor):
  """Blends with the pixels' luma; a one-channel image is returned as it is (torchvision)."""
  if image.shape[-1] == 1:
    return image
  return _blend(image, luma(image), factor)


def rgb_to_hsv(image):
  """torchvision's `_rgb2hsv` on [..., 3] in [0, 1]: hue in [0, 1), saturation, value."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc, minc = jnp.max(image, axis=-1), jnp.min(image, axis=-1)
  gray = maxc == minc  # hue and saturation 0; divisors kept away from 0
  chroma = maxc - minc
  saturation = chroma / jnp.where(gray, 1.0, maxc)
  divisor = jnp.where(gray, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hue = jnp.where(maxc == r, bc - gc,
                  jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  return jnp.stack([jnp.mod(hue / 6.0 + 1.0, 1.0), saturation, maxc], axis=-1)


def hsv_to_rgb(hsv):
  """torchvision's `_hsv2rgb`, the inverse of `rgb_to_hsv`."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.floor(h * 6.0)
  f = h * 6.0 - sector
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = sector.astype(jnp.int32) % 6
  table = jnp.stack([jnp.stack(c, axis=-1) for c in
                     ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], axis=-1)
  return jnp.take_along_axis(table, sector[..., None, None], axis=-2)[..., 0, :]


def adjust_hue(image, shift):
  """Rotates the hue by `shift` turns (torchvision's `adjust_hue`); one channel: unchanged."""
  if image.shape[-1] == 1:
    return image
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
  return hsv_to_rgb(hsv)


# ColorJitter's adjustments, in the numbering of its random order, and their strengths.
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
JITTER_FIELDS = ("brightness", "contrast", "saturation", "hue")


def colour_jitter(image, factors, order, active=(True,) * len(JITTER_OPS)):
  """torchvision's ColorJitter with drawn `factors` (brightness, contrast, saturation, hue
  shift) applied in `order`, a permutation of 0..3 indexing JITTER_OPS; an op that is not
  `active` (strength 0: torchvision skips it) leaves the image as it is."""
  branches = [(lambda im, op=op, f=f: op(im, f)) if on else (lambda im: im)
              for op, f, on in zip(JITTER_OPS, factors, active)]
  for position in range(len(JITTER_OPS)):
    image = jax.lax.switch(order[position], branches, image)
  return image


def sample_jitter(key, config):
  """ColorJitter's draws: factors uniform in [max(0, 1 - s), 1 + s] for brightness, contrast
  and saturation, a hue shift uniform in +-hue, and a random order of the four."""
  k_factors, k_order = jax.random.split(key)
  keys = jax.random.split(k_factors, 4)
  def factor(k, strength):
    return jax.random.uniform(k, minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)
  factors = (factor(keys[0], config.brightness), factor(keys[1], config.contrast),
             factor(keys[2], config.saturation),
             jax.random.uniform(keys[3], minval=-config.hue, maxval=config.hue))
  return factors, jax.random.permutation(k_order, len(JITTER_OPS))


def blur_kernel_size(height, width):
  """SimCLR's Gaussian blur kernel: 10% of the image side, odd, at least 3."""
  return max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)


def gaussian_blur(image, sigma, kernel_size):
  """torchvision's `gaussian_blur`: a separable Gaussian of `kernel_size` taps (weights
  exp(-x^2 / 2 sigma^2), normalised) with reflect padding (edge pixel not repeated)."""
  half = kernel_size // 2
  x = jnp.arange(-half, half + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (x / sigma) ** 2)
  weights = weights / jnp.sum(weights)
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((half, half), (0, 0), (0, 0)), mode="reflect")
  image = sum(w * padded[i:i + height] for i, w in enumerate(weights))
  padded = jnp.pad(image, ((0, 0), (half, half), (0, 0)), mode="reflect")
  return sum(w * padded[:, i:i + width] for i, w in enumerate(weights))


def solarize(image, threshold=0.5):
  """Pixels at or above `threshold` become 1 - pixel (BYOL's solarization)."""
  return jnp.where(image >= threshold, 1.0 - image, image)


# What each colour op folds into the view's key. The warp uses split(key, 3); under JAX's
# partitionable threefry fold_in(key, i) is split(key, i + 1)[i], so from 3 on no op
# draws the warp's bits, and a config with an op off draws the views it always drew.
OP_KEYS = {"jitter": 3, "flip": 4, "grayscale": 5, "blur": 6, "solarize": 7}


def op_key(key, op):
  """The key of colour op `op` of the view whose key is `key`."""
  return jax.random.fold_in(key, OP_KEYS[op])


def _applies(key, probability):
  return jax.random.uniform(key) < probability


def random_view(key, image, config, view=0, crop_scale=None, out_size=None):
  """View number `view` (0 or 1: the pairs of `config` are per view) of a uint8 image
  [H, W, C], as float32 in [0, 1]: a crop of an area fraction in `crop_scale` (None:
  `config.crop_scale`) resized to `out_size` (rows, cols; None: the image's)."""
  height, width, _ = image.shape
  out_h, out_w = out_size or (height, width)
  k_affine, k_shear, k_elastic = jax.random.split(key, 3)
  crop_box, angle = sample_crop_and_angle(
      k_affine, height, width, crop_scale or config.crop_scale, config.crop_ratio,
      config.rotation_degrees)
  shear = jnp.deg2rad(jax.random.uniform(k_shear, minval=-config.shear_degrees,
                                         maxval=config.shear_degrees))
  displacement = None
  if config.elastic_alpha > 0:
    displacement = elastic_displacement(k_elastic, out_h, out_w, config.elastic_alpha,
                                        config.elastic_grid)
  view_image = warp_affine(data.to_float(image),
                           affine_matrix(out_h, out_w, crop_box, angle, shear), displacement,
                           (out_h, out_w))
  if config.flip_probability > 0:
    view_image = jnp.where(_applies(op_key(key, "flip"), config.flip_probability),
                           view_image[:, ::-1], view_image)
  if any(config[f] > 0 for f in JITTER_FIELDS):
    k_apply, k_jitter = jax.random.split(op_key(key, "jitter"))
    jittered = colour_jitter(view_image, *sample_jitter(k_jitter, config),
                             active=[config[f] > 0 for f in JITTER_FIELDS])
    if config.jitter_probability < 1:
      jittered = jnp.where(_applies(k_apply, config.jitter_probability), jittered, view_image)
    view_image = jittered
  if config.grayscale_probability > 0 and view_image.shape[-1] > 1:
    view_image = jnp.where(_applies(op_key(key, "grayscale"), config.grayscale_probability),
                           jnp.broadcast_to(luma(view_image), view_image.shape), view_image)
  if config.blur_probability[view] > 0:
    k_apply, k_sigma = jax.random.split(op_key(key, "blur"))
    sigma = jax.random.uniform(k_sigma, minval=config.blur_sigma[0], maxval=config.blur_sigma[1])
    blurred = gaussian_blur(view_image, sigma, blur_kernel_size(out_h, out_w))
    view_image = jnp.where(_applies(k_apply, config.blur_probability[view]), blurred, view_image)
  if config.solarize_probability[view] > 0:
    view_image = jnp.where(_applies(op_key(key, "solarize"), config.solarize_probability[view]),
                           solarize(view_image), view_image)
  return view_image


def two_views(images, keys, config):
  """Two independent random views of each image; `keys` holds one key per example.

  Each example's views depend only on its own key, so they do not change with
  the number of devices the batch is split over.
  """
  def views_of(image, key):
    key1, key2 = jax.random.split(key)
    return random_view(key1, image, config, 0), random_view(key2, image, config, 1)
  return jax.vmap(views_of)(images, keys)


# Multi-crop's local view l of an example draws from fold_in(its key, LOCAL_VIEW_KEYS + l):
# never from split(key)'s two, so adding local views leaves the global views as they were.
LOCAL_VIEW_KEYS = 2


def local_views(images, keys, config):
  """Multi-crop's `config.local_crops` local views of each image (DINO's and SwAV's): crops
  of an area fraction in `local_crop_scale`, resized to `local_crop_size` square (0: the
  image's size), with the first view's colour settings; [L, n, s, s, C] float32, or None
  without local crops. Like `two_views`, each depends on its example's key only."""
  if config.local_crops == 0:
    return None
  height, width, _ = images.shape[1:]
  size = (config.local_crop_size,) * 2 if config.local_crop_size else (height, width)

  def views_of(image, key):
    return jnp.stack([random_view(jax.random.fold_in(key, LOCAL_VIEW_KEYS + l), image, config,
                                  0, tuple(config.local_crop_scale), size)
                      for l in range(config.local_crops)])
  return jnp.swapaxes(jax.vmap(views_of)(images, keys), 0, 1)
