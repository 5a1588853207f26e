"""cl_jax.augment against scipy.ndimage and a NumPy crop-and-resize reference."""

import collections
import math

import jax
import numpy as np
import pytest
import scipy.ndimage

from cl_jax import augment
from cl_jax import default_config

warp = jax.jit(augment.warp_affine)


def augment_config(scale=(0.5, 1.0), degrees=20.0, shear=10.0, elastic_alpha=1.0, **others):
  """The default config's views with these warp settings and any other field overridden."""
  config = default_config.get_config().augment
  config.update({"crop_scale": scale, "rotation_degrees": degrees, "shear_degrees": shear,
                 "elastic_alpha": elastic_alpha, "elastic_grid": 4, **others})
  return config


def random_image(seed=0, shape=(28, 28, 1)):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def crop_resize_numpy(image, top, left, crop_h, crop_w, out_size=None):
  """Bilinear crop-and-resize to `out_size` (None: the image's), zero outside, written
  pixel by pixel.

  Output pixel (i, j) of an (H', W') output has its centre at (i + 0.5, j + 0.5) in output
  edge coordinates; it samples the input at top + (i + 0.5) * crop_h / H' - 0.5 (and
  likewise for columns) in pixel-centre coordinates.
  """
  height, width = image.shape
  out_h, out_w = out_size or (height, width)
  padded = np.zeros((height + 2, width + 2))
  padded[1:-1, 1:-1] = image
  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    for j in range(out_w):
      y = top + (i + 0.5) * crop_h / out_h - 0.5
      x = left + (j + 0.5) * crop_w / out_w - 0.5
      y0, x0 = int(np.floor(y)), int(np.floor(x))
      fy, fx = y - y0, x - x0
      value = 0.0
      for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
          r, c = y0 + dy + 1, x0 + dx + 1
          if 0 <= r < height + 2 and 0 <= c < width + 2:
            value += wy * wx * padded[r, c]
      out[i, j] = value
  return out


def test_identity_reproduces_input_exactly():
  image = random_image()
  matrix = augment.affine_matrix(28, 28, (0.0, 0.0, 28.0, 28.0), 0.0)
  np.testing.assert_array_equal(warp(image, matrix), image)  # exact: weights are 1 and 0


@pytest.mark.parametrize("degrees", [3.0, -10.0, 25.0, 90.0])
def test_rotation_matches_scipy(degrees):
  image = random_image(1)
  matrix = augment.affine_matrix(28, 28, (0.0, 0.0, 28.0, 28.0), np.deg2rad(degrees))
  got = np.asarray(warp(image, matrix))[..., 0]
  # grid-constant: bilinear with zeros outside, the same convention as ours, so
  # the whole image (border included) agrees; plain "constant" agrees away from it.
  expected = scipy.ndimage.rotate(image[..., 0].astype(np.float64), degrees, reshape=False,
                                  order=1, mode="grid-constant", cval=0.0)
  np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 coordinates
  interior = scipy.ndimage.rotate(image[..., 0].astype(np.float64), degrees, reshape=False,
                                  order=1, mode="constant", cval=0.0)
  np.testing.assert_allclose(got[6:-6, 6:-6], interior[6:-6, 6:-6], atol=1e-5)


@pytest.mark.parametrize("box", [(2.0, 3.0, 24.0, 22.0), (0.5, 4.25, 14.0, 20.0),
                                 (0.0, 0.0, 28.0, 28.0), (10.0, 1.0, 17.5, 26.9)])
def test_crop_resize_matches_numpy(box):
  image = random_image(2)
  got = np.asarray(warp(image, augment.affine_matrix(28, 28, box, 0.0)))[..., 0]
  np.testing.assert_allclose(got, crop_resize_numpy(image[..., 0], *box), atol=1e-5)


@pytest.mark.parametrize("box,out_size", [((2.0, 3.0, 9.0, 12.0), (12, 16)),
                                          ((0.0, 0.0, 28.0, 28.0), (10, 10)),
                                          ((20.0, 21.0, 8.0, 7.0), (5, 3))])
def test_crop_resize_to_another_size_matches_numpy(box, out_size):
  """Multi-crop's local views: a crop resized to a size other than the image's, down and up
  and at the image's bottom-right corner."""
  image = random_image(3)
  got = np.asarray(augment.warp_affine(image, augment.affine_matrix(*out_size, box, 0.0),
                                       out_size=out_size))[..., 0]
  np.testing.assert_allclose(got, crop_resize_numpy(image[..., 0], *box, out_size), atol=1e-5)


def test_local_views_are_crops_of_their_scale_from_keys_of_their_own():
  """Each local view is `random_view` at the local crop scale and size from its own key
  (fold_in(example key, 2 + l)), and on a ramp image (value = column / 100, no rotation,
  shear or elastic) its slope gives the crop's width: within the local scale's range, far
  below the global views' crops (0.8-1)."""
  config = augment_config(scale=(0.8, 1.0), degrees=0.0, shear=0.0, elastic_alpha=0.0,
                          local_crops=3, local_crop_scale=(0.05, 0.2), local_crop_size=12)
  cols = np.broadcast_to(np.arange(28, dtype=np.float32), (28, 28))
  images = np.stack([np.uint8(np.round(cols * 9))[..., None]] * 4)  # 0 to 243
  keys = jax.random.split(jax.random.key(3), 4)
  views = np.asarray(jax.jit(lambda i, k: augment.local_views(i, k, config))(images, keys))
  assert views.shape == (3, 4, 12, 12, 1)
  for l in range(3):
    expected = augment.random_view(jax.random.fold_in(keys[1], augment.LOCAL_VIEW_KEYS + l),
                                   images[1], config, 0, (0.05, 0.2), (12, 12))
    np.testing.assert_allclose(views[l, 1], expected, atol=1e-6)  # jitted and vmapped: 1 ulp
  # Away from the crop's edges the ramp's slope per output pixel is (9 / 255) crop_w / 12.
  widths = (views[:, :, 6, 7, 0] - views[:, :, 6, 5, 0]) / 2 * 12 * 255 / 9
  areas = widths ** 2 / 784  # crop_h ~ crop_w: aspect within 3/4-4/3
  assert np.all(areas < 0.2 * 4 / 3 + 1e-3) and np.all(areas > 0.05 * 3 / 4 - 1e-3), areas
  assert np.ptp(areas) > 0.01  # drawn, not one fixed crop
  assert augment.local_views(images, keys, augment_config()) is None  # off by default


def torchvision_crop_params(rng, height, width, scale, ratio):
  """torchvision's `RandomResizedCrop.get_params` (v0.20), transcribed with a NumPy RNG."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = int(rng.integers(0, height - h + 1))
      j = int(rng.integers(0, width - w + 1))
      return i, j, h, w
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w = width
    h = height
  return (height - h) // 2, (width - w) // 2, h, w


def total_variation(a, b):
  """Total variation distance between the empirical distributions of two samples of tuples."""
  cells = set(a) | set(b)
  count_a, count_b = collections.Counter(a), collections.Counter(b)
  return 0.5 * sum(abs(count_a[c] / len(a) - count_b[c] / len(b)) for c in cells)


@pytest.mark.parametrize("height,width,scale,ratio", [
    (28, 28, (0.8, 1.0), (3 / 4, 4 / 3)),   # the MNIST default: most draws do not fit
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),  # SimCLR's law at CIFAR size
    (20, 36, (0.5, 1.0), (1.0, 1.5)),       # a wide image: some fall back to the centre crop
])
def test_crop_law_matches_torchvision(height, width, scale, ratio):
  """20,000 boxes against 20,000 from the NumPy transcription of torchvision's sampler.

  Where a draw does not fit, torchvision draws again (up to 10 times) and then takes
  the centre crop (so its mean area at the default (0.8, 1.0) is 0.873, not 0.9: the
  redraws favour the smaller areas that fit). The sampler before this test clipped the
  draw to the image instead: boxes of fractional pixels, clipped widths torchvision
  never draws, 3% of them below the minimum area; the whole-pixel check and the laws of
  (h, w) catch it (its mean area, 0.871, is within the tolerance below). Tolerances: the empirical laws of (h, w), (top, h) and
  (left, w) within 1.5 times + 0.01 the total variation between two samples of the
  reference itself (the noise of the comparison), the mean area within 5 standard errors.
  """
  draws = 20000
  keys = jax.random.split(jax.random.key(0), draws)
  boxes = jax.jit(jax.vmap(lambda k: augment.sample_crop_box(k, height, width, scale,
                                                             ratio)))(keys)
  top, left, crop_h, crop_w = (np.asarray(b) for b in boxes)
  for values in (top, left, crop_h, crop_w):
    np.testing.assert_array_equal(values, np.round(values))  # whole pixels, as torchvision
  ours = list(zip(top.astype(int), left.astype(int), crop_h.astype(int), crop_w.astype(int)))
  assert all(0 <= i and 0 <= j and i + h <= height and j + w <= width for i, j, h, w in ours)
  reference, again = ([torchvision_crop_params(rng, height, width, scale, ratio)
                       for _ in range(draws)]
                      for rng in (np.random.default_rng(1), np.random.default_rng(2)))
  for name, part in (("(h, w)", lambda b: b[2:]), ("(top, h)", lambda b: (b[0], b[2])),
                     ("(left, w)", lambda b: (b[1], b[3]))):
    noise = total_variation([part(b) for b in reference], [part(b) for b in again])
    distance = total_variation([part(b) for b in ours], [part(b) for b in reference])
    assert distance < 1.5 * noise + 0.01, (name, distance, noise)
  area = crop_h * crop_w / (height * width)
  reference_area = np.array([h * w for _, _, h, w in reference]) / (height * width)
  tolerance = 5 * reference_area.std() * math.sqrt(2 / draws)
  assert abs(area.mean() - reference_area.mean()) < tolerance, (area.mean(),
                                                                reference_area.mean())


@pytest.mark.parametrize("height,width,ratio,expected", [
    (28, 28, (1.2, 1.5), (2, 0, 23, 28)),  # never fits: the widest crop of ratio 1.2, centred
    (28, 28, (0.5, 0.8), (0, 3, 28, 22)),  # the tallest of ratio 0.8: w = round(28 * 0.8)
    (20, 36, (1.0, 1.5), (0, 3, 20, 30)),  # wide image: h = 20, w = round(20 * 1.5)
])
def test_crop_fallback_is_torchvisions_centre_crop(height, width, ratio, expected):
  """scale (1, 1): no attempt fits (whole-image area at another aspect ratio), so every
  box is torchvision's fallback, the same for every key and for the transcription."""
  keys = jax.random.split(jax.random.key(0), 50)
  boxes = jax.vmap(lambda k: augment.sample_crop_box(k, height, width, (1.0, 1.0), ratio))(keys)
  assert {tuple(int(v) for v in box) for box in zip(*(np.asarray(b) for b in boxes))} == {
      expected}
  assert torchvision_crop_params(np.random.default_rng(0), height, width, (1.0, 1.0),
                                 ratio) == expected


def test_sampled_angles_respect_the_config():
  config = augment_config(scale=(0.3, 0.6), degrees=15.0)
  keys = jax.random.split(jax.random.key(0), 500)
  _, angles = jax.vmap(lambda k: augment.sample_crop_and_angle(
      k, 28, 28, config.crop_scale, config.crop_ratio, config.rotation_degrees))(keys)
  assert np.abs(np.rad2deg(np.asarray(angles))).max() <= 15.0 + 1e-4
  assert np.rad2deg(np.asarray(angles)).std() > 5  # actually spread over the range


def test_views_differ_per_example_and_per_view():
  """The replaced example warped a whole batch with one crop; here each example draws its own."""
  config = augment_config()
  image = (random_image(3) * 255).astype(np.uint8)
  images = np.repeat(image[None], 16, axis=0)  # same image 16 times
  keys = jax.random.split(jax.random.key(1), 16)
  view1, view2 = jax.jit(lambda i, k: augment.two_views(i, k, config))(images, keys)
  view1, view2 = np.asarray(view1), np.asarray(view2)
  distinct = {view1[i].tobytes() for i in range(16)}
  assert len(distinct) == 16
  assert all(not np.array_equal(view1[i], view2[i]) for i in range(16))


def test_views_depend_only_on_each_examples_key():
  config = augment_config()
  images = (np.random.default_rng(4).random((8, 28, 28, 1)) * 255).astype(np.uint8)
  keys = jax.random.split(jax.random.key(2), 8)
  two_views = jax.jit(lambda i, k: augment.two_views(i, k, config))
  full = two_views(images, keys)
  half = two_views(images[4:], keys[4:])
  # Same per-example computation on a sub-batch; only XLA's vectorisation may differ.
  np.testing.assert_allclose(full[0][4:], half[0], atol=1e-6)
  np.testing.assert_allclose(full[1][4:], half[1], atol=1e-6)


@pytest.mark.parametrize("degrees", [8.0, -15.0])
def test_shear_matches_scipy_affine_transform(degrees):
  """Slant about the centre: input col = col + tan(shear) * (row - centre row)."""
  image = random_image(5)
  shear = np.deg2rad(degrees)
  got = np.asarray(warp(image, augment.affine_matrix(28, 28, (0.0, 0.0, 28.0, 28.0), 0.0,
                                                     shear)))[..., 0]
  matrix = np.array([[1.0, 0.0], [np.tan(shear), 1.0]])
  centre = np.array([13.5, 13.5])
  expected = scipy.ndimage.affine_transform(image[..., 0].astype(np.float64), matrix,
                                            offset=centre - matrix @ centre, order=1,
                                            mode="grid-constant", cval=0.0)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_constant_displacement_is_a_shift_with_zero_fill():
  image = random_image(6)
  displacement = np.broadcast_to(np.array([2.0, -3.0], np.float32), (28, 28, 2))
  identity = augment.affine_matrix(28, 28, (0.0, 0.0, 28.0, 28.0), 0.0)
  got = np.asarray(jax.jit(augment.warp_affine)(image, identity, displacement))
  expected = np.zeros_like(image)
  expected[:26, 3:] = image[2:, :25]  # out[r, c] = in[r + 2, c - 3]
  np.testing.assert_array_equal(got, expected)  # integer offsets: exact


def test_elastic_field_is_smooth_and_scaled():
  fields = jax.vmap(lambda k: augment.elastic_displacement(k, 28, 28, 2.0, 4))(
      jax.random.split(jax.random.key(0), 200))
  fields = np.asarray(fields)
  # Bicubic upsampling of N(0, 2^2) lattice values: spread of the same order...
  assert 1.0 < fields.std() < 2.5
  # ...and smooth: neighbouring pixels move almost together.
  assert np.abs(np.diff(fields, axis=1)).mean() < 0.2 * np.abs(fields).mean()


def digit_like_image():
  """Exact-zero background, saturated strokes (1.0) and a grey edge: the values where
  clipping and the contrast's mean matter."""
  image = np.zeros((28, 28, 1), np.float32)
  image[6:22, 12:16] = 1.0
  image[6:22, 11] = 0.5
  image[6:22, 16] = 0.25
  return image


def test_brightness_scales_each_view_without_moving_it():
  """With only brightness on, a view is its un-jittered self times one factor (clipped):
  same crop, angle, shear and elastic field, so the jitter draws from its own key."""
  image = (digit_like_image() * 255).astype(np.uint8)
  images = np.repeat(image[None], 32, axis=0)
  keys = jax.random.split(jax.random.key(5), 32)
  def first_views(config):
    views = jax.jit(lambda i, k: augment.two_views(i, k, config))(images, keys)
    return np.asarray(views[0], np.float64)
  plain, bright = first_views(augment_config()), first_views(augment_config(brightness=0.5))
  factors = []
  for p, b in zip(plain, bright):
    unclipped = (p > 1e-3) & (b < 1 - 1e-6)
    ratio = b[unclipped] / p[unclipped]
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-4)  # one factor per view
    np.testing.assert_array_equal(b[p == 0], 0.0)  # the background stays black
    factors.append(ratio.mean())
  assert 0.5 - 1e-4 <= min(factors) and max(factors) <= 1.5 + 1e-4
  assert np.std(factors) > 0.1  # views draw different factors
