"""SimCLR's and BYOL's colour ops in cl_jax.augment against NumPy transcriptions of
torchvision's formulas (torchvision cannot be installed here), Python's colorsys for the
hue and scipy.ndimage for the blur, on inputs where the edge cases show: saturated and
exact-zero pixels, gray pixels, ties between channels, hue wrap-around, image borders."""

import collections
import colorsys
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from cl_jax import augment
from tests.test_augment import augment_config

LUMA = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale


def np_luma(image):
  return image if image.shape[-1] == 1 else (image @ LUMA)[..., None]


def np_blend(image, other, factor):
  return np.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def np_brightness(image, factor):
  return np_blend(image, 0.0, factor)


def np_contrast(image, factor):
  return np_blend(image, np_luma(image).mean(), factor)


def np_saturation(image, factor):
  return image if image.shape[-1] == 1 else np_blend(image, np_luma(image), factor)


def np_hue(image, shift):
  """Through Python's colorsys, an HSV implementation independent of torchvision's."""
  if image.shape[-1] == 1:
    return image
  out = np.empty_like(image)
  for index in np.ndindex(image.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*image[index])
    out[index] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return out


NP_OPS = (np_brightness, np_contrast, np_saturation, np_hue)


def edge_case_image():
  """8x8 RGB: saturated primaries and secondaries (channel ties at the maximum), gray
  pixels (hue undefined), black and white, hues just below 1 and just above 0 (the
  wrap-around), and random colours."""
  rng = np.random.default_rng(0)
  image = rng.random((8, 8, 3))
  special = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0, 0, 0),
             (1, 1, 1), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (1, 0, 0.05), (1, 0.05, 0),
             (0.9, 0.3, 0.3), (0.3, 0.3, 0.9), (1, 1, 0.999), (0.6, 0.6, 0.2)]
  for i, colour in enumerate(special):
    image[i // 8, i % 8] = colour
  return image


def gray_image():
  image = np.zeros((8, 8, 1))
  image[2:6, 3:5] = 1.0
  image[2:6, 2] = 0.5
  return image


def to_jax(image):
  return jnp.asarray(image, jnp.float32)


@pytest.mark.parametrize("index, factor", [(0, 0.0), (0, 0.6), (0, 1.4), (1, 0.0), (1, 0.5),
                                           (1, 1.8), (2, 0.0), (2, 0.3), (2, 1.6),
                                           (3, -0.5), (3, -0.1), (3, 0.08), (3, 0.5)])
@pytest.mark.parametrize("image_fn", [edge_case_image, gray_image])
def test_each_jitter_op_matches_its_reference(index, factor, image_fn):
  """float32 against float64: 2e-6 absolute (values in [0, 1]; the HSV round trip divides
  by the chroma, which is >= 0.001 here: the pixel (1, 1, 0.999))."""
  image = image_fn()
  got = np.asarray(jax.jit(augment.JITTER_OPS[index])(to_jax(image), factor))
  np.testing.assert_allclose(got, NP_OPS[index](image, factor), atol=2e-6)
  assert got.shape == image.shape and got.min() >= 0.0 and got.max() <= 1.0


def test_hue_round_trip_is_the_identity_and_shifts_wrap():
  image = edge_case_image()
  hsv = np.asarray(augment.rgb_to_hsv(to_jax(image)))
  reference = np.array([colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3)]).reshape(hsv.shape)
  np.testing.assert_allclose(hsv, reference, atol=2e-6)
  np.testing.assert_allclose(np.asarray(augment.hsv_to_rgb(jnp.asarray(hsv))), image, atol=2e-6)
  # A whole turn changes nothing; half a turn twice is a whole turn.
  np.testing.assert_allclose(np.asarray(augment.adjust_hue(to_jax(image), 1.0)), image, atol=2e-6)
  twice = augment.adjust_hue(augment.adjust_hue(to_jax(image), 0.5), 0.5)
  np.testing.assert_allclose(np.asarray(twice), image, atol=4e-6)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_colour_jitter_applies_the_ops_in_the_drawn_order(order):
  """The order matters (brightness then contrast is not contrast then brightness where
  pixels clip), so a wrong order shows."""
  image = edge_case_image()
  factors = (1.5, 0.6, 1.4, 0.2)
  expected = image
  for index in order:
    expected = NP_OPS[index](expected, factors[index])
  got = jax.jit(augment.colour_jitter)(to_jax(image), factors, jnp.array(order))
  np.testing.assert_allclose(np.asarray(got), expected, atol=4e-6)
  other = tuple(reversed(order))
  different = jax.jit(augment.colour_jitter)(to_jax(image), factors, jnp.array(other))
  assert np.abs(np.asarray(different) - expected).max() > 1e-2


def test_inactive_jitter_ops_leave_the_image_exactly():
  """Strength 0 skips the op (torchvision): no HSV round trip's rounding."""
  image = to_jax(edge_case_image())
  got = augment.colour_jitter(image, (1.0, 1.0, 1.0, 0.0), jnp.array([3, 2, 1, 0]),
                              active=(False,) * 4)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(image))


def test_jitter_draws_follow_torchvision_laws():
  """Factors uniform in [max(0, 1 - s), 1 + s], hue uniform in +-h, and the order a uniform
  permutation of the four: each of the 24 within 30% of its expected count (4,800 draws,
  200 each; a standard error is 7%)."""
  config = augment_config(brightness=0.4, contrast=1.5, saturation=0.2, hue=0.1)
  keys = jax.random.split(jax.random.key(2), 4800)
  factors, orders = jax.vmap(lambda k: augment.sample_jitter(k, config))(keys)
  for values, (low, high) in zip(factors, [(0.6, 1.4), (0.0, 2.5), (0.8, 1.2), (-0.1, 0.1)]):
    values = np.asarray(values)
    assert values.min() >= low and values.max() <= high
    assert abs(values.mean() - (low + high) / 2) < 0.03 * (high - low)
    assert abs(values.std() - (high - low) / math.sqrt(12)) < 0.03 * (high - low)
  counts = collections.Counter(map(tuple, np.asarray(orders).tolist()))
  assert set(counts) == set(itertools.permutations(range(4)))
  assert all(abs(c - 200) < 60 for c in counts.values())


@pytest.mark.parametrize("sigma, size", [(0.1, 3), (0.8, 3), (1.3, 5), (2.0, 9)])
def test_gaussian_blur_matches_scipy(sigma, size):
  """torchvision's blur (reflect padding, the edge pixel not repeated) is scipy's
  gaussian_filter with mode="mirror" and the kernel truncated at (size - 1) / 2 pixels;
  an impulse on the border and a bright edge show the padding. float32: 1e-6."""
  image = np.zeros((12, 10, 3))
  image[0, 0] = 1.0
  image[5, :, 1] = 1.0
  image[:, 9, 2] = 0.7
  image += np.random.default_rng(1).random(image.shape) * 0.1
  half = size // 2
  expected = scipy.ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="mirror",
                                           truncate=half / sigma)
  got = jax.jit(augment.gaussian_blur, static_argnums=2)(to_jax(image), sigma, size)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
  constant = augment.gaussian_blur(jnp.full((6, 6, 1), 0.25), sigma, size)
  np.testing.assert_allclose(np.asarray(constant), 0.25, atol=1e-7)


@pytest.mark.parametrize("height, width, expected", [(224, 224, 23), (96, 96, 9),
                                                     (32, 32, 3), (28, 28, 3), (100, 60, 7)])
def test_blur_kernel_is_a_tenth_of_the_side_and_odd(height, width, expected):
  assert augment.blur_kernel_size(height, width) == expected  # SimCLR: 23 at 224


def test_solarize_and_grayscale_formulas():
  image = np.array([[[0.0, 0.4999, 0.5]], [[0.5001, 0.75, 1.0]]])
  np.testing.assert_allclose(np.asarray(augment.solarize(to_jax(image))),
                             np.where(image >= 0.5, 1 - image, image), atol=1e-7)
  colour = edge_case_image()
  np.testing.assert_allclose(np.asarray(augment.luma(to_jax(colour))), np_luma(colour),
                             atol=1e-6)
  one_channel = gray_image()
  np.testing.assert_array_equal(np.asarray(augment.luma(to_jax(one_channel))), one_channel)


def colour_images(count=64):
  rng = np.random.default_rng(3)
  return rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def views(images, config, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(images))
  v1, v2 = jax.jit(lambda i, k: augment.two_views(i, k, config))(images, keys)
  return np.asarray(v1, np.float64), np.asarray(v2, np.float64)


def test_each_op_applies_with_its_probability_per_view():
  """BYOL's per-view pairs: blur (1.0, 0.1) and solarize (0.0, 0.2); flip 0.5, grayscale
  0.2; measured by which views differ from the same config with the op off (same keys, so
  the same crop). 512 views: within 0.07 of each probability (3.5 standard errors at 0.5)."""
  images = colour_images(512)
  plain = augment_config(degrees=0.0, shear=0.0, elastic_alpha=0.0)
  def fraction_changed(**op):
    base, with_op = views(images, plain), views(images, augment_config(
        degrees=0.0, shear=0.0, elastic_alpha=0.0, **op))
    return [np.mean(np.abs(a - b).reshape(len(images), -1).max(axis=1) > 1e-6)
            for a, b in zip(base, with_op)]
  for op, expected in [({"flip_probability": 0.5}, (0.5, 0.5)),
                       ({"grayscale_probability": 0.2}, (0.2, 0.2)),
                       ({"blur_probability": (1.0, 0.1)}, (1.0, 0.1)),
                       ({"solarize_probability": (0.0, 0.2)}, (0.0, 0.2)),
                       ({"brightness": 0.4, "jitter_probability": 0.8}, (0.8, 0.8))]:
    for got, want in zip(fraction_changed(**op), expected):
      assert abs(got - want) < 0.07, (op, got, want)


def test_a_flipped_view_is_the_same_view_mirrored():
  images = colour_images(32)
  config = dict(degrees=10.0, shear=0.0, elastic_alpha=0.0)
  base = views(images, augment_config(**config))[0]
  flipped = views(images, augment_config(flip_probability=1.0, **config))[0]
  np.testing.assert_array_equal(flipped, base[:, :, ::-1])


def test_one_channel_views_skip_colour_only_ops():
  """Grayscale, saturation and hue leave a one-channel view exactly as it is."""
  images = (np.random.default_rng(4).random((16, 12, 12, 1)) * 255).astype(np.uint8)
  base = views(images, augment_config())
  colour_only = views(images, augment_config(grayscale_probability=1.0, saturation=0.8,
                                             hue=0.5))
  for a, b in zip(base, colour_only):
    np.testing.assert_array_equal(a, b)


def test_op_keys_are_used_by_no_other_draw():
  """`augment.op_key` of every op, and what the ops split it into, are none of the warp's
  keys nor each other's (fold_in(key, 1) would be split(key, 3)[1] under partitionable
  threefry: the same random bits drawn twice)."""
  def data_of(keys):
    return {tuple(np.asarray(jax.random.key_data(k))) for k in keys}
  for seed in range(10):
    key = jax.random.key(seed)
    warp_keys = list(jax.random.split(key, 3))
    used = [key] + warp_keys + list(jax.random.split(warp_keys[0], 4)) + list(
        jax.random.split(warp_keys[0], 2))
    op_keys = []
    for op in augment.OP_KEYS:
      folded = augment.op_key(key, op)
      halves = list(jax.random.split(folded))
      op_keys += [folded] + halves + list(jax.random.split(halves[1])) + list(
          jax.random.split(jax.random.split(halves[1])[0], 4))
    assert len(data_of(op_keys)) == len(op_keys)
    assert not data_of(used) & data_of(op_keys)


def test_turning_an_op_on_leaves_the_others_draws_alone():
  """Adding grayscale and solarization to a config with flip and blur changes no view
  that neither new op touched: the flip and blur draw from their own keys."""
  images = colour_images(64)
  base = dict(degrees=0.0, shear=0.0, elastic_alpha=0.0, flip_probability=0.5,
              blur_probability=(0.5, 0.5))
  before = views(images, augment_config(**base))[0]
  after = views(images, augment_config(grayscale_probability=0.3,
                                       solarize_probability=(0.3, 0.3), **base))[0]
  same = np.all(np.abs(before - after).reshape(64, -1) < 1e-7, axis=1)
  assert 0.3 < same.mean() < 0.7  # about (1 - 0.3)^2 = 0.49 untouched by the new ops
