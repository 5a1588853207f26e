"""cl_jax.models: pooling against Flax's reduce_window pooling; SimpleCNN's shape and size."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import models
from configs import mnist_seed


def flax_max_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def pool_inputs():
  """Inputs where a wrong tie rule shows: zeros, constant patches, repeated values, MNIST-like
  sparse images after a ReLU, odd edges, bf16; and random normals (no ties) for the rest."""
  rng = np.random.default_rng(0)
  patches = np.kron(rng.integers(0, 3, size=(2, 4, 4, 3)), np.ones((1, 3, 3, 1)))  # 12x12
  sparse = np.maximum(rng.normal(size=(2, 9, 11, 4)), 0)  # half exact zeros, odd edges
  rounded = np.round(rng.normal(size=(3, 14, 9, 2)))  # many equal small integers
  return {
      "zeros": np.zeros((1, 28, 28, 1)),
      "constant_patches": patches,
      "relu_sparse_odd": sparse,
      "rounded_integers": rounded,
      "normal": rng.normal(size=(2, 7, 7, 2)),
  }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(pool_inputs()))
def test_max_pool_matches_flax_value_and_gradient_with_ties(name, dtype):
  x = jnp.asarray(pool_inputs()[name], dtype)
  np.testing.assert_array_equal(models.max_pool_2x2(x), flax_max_pool(x))  # exact: a max
  cotangent = jnp.asarray(
      np.random.default_rng(1).normal(size=flax_max_pool(x).shape), dtype)
  grad = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x) * cotangent))(x)
  grad_reference = jax.grad(lambda x: jnp.sum(flax_max_pool(x) * cotangent))(x)
  # Exact: both pick one input per window and copy the cotangent into it.
  np.testing.assert_array_equal(grad, grad_reference)
  # Every window passes its whole cotangent to exactly one input.
  assert np.count_nonzero(np.asarray(grad, np.float32)) == np.count_nonzero(
      np.asarray(cotangent, np.float32))


def test_max_pool_bias_gradient_on_a_blank_image_against_finite_differences():
  """The issue's check: d/db sum(pool(relu(0 + b))) over a 28x28 blank image is 14*14 = 196."""
  f = lambda b: jnp.sum(models.max_pool_2x2(jax.nn.relu(jnp.zeros((1, 28, 28, 1)) + b)))
  step = 1e-2
  finite_difference = (f(0.5 + step) - f(0.5 - step)) / (2 * step)  # f is linear in b here
  np.testing.assert_allclose(finite_difference, 196, rtol=1e-4)
  np.testing.assert_allclose(jax.grad(f)(0.5), finite_difference, rtol=1e-4)


def test_max_pool_gradient_on_real_mnist_after_a_conv(mnist_data_dir):
  """A real MNIST batch through conv + bias + ReLU (every background window ties), then the
  pool: the gradient equals Flax's, and the bias gradient equals finite differences."""
  from cl_jax import data  # pylint: disable=g-import-not-at-top
  images = data.load_split("mnist", "test", mnist_data_dir, max_examples=16).images
  x = jnp.asarray(images, jnp.float32) / 255.0
  kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 1, 8)) / 3, jnp.float32)
  bias = jnp.asarray(np.linspace(0.05, 0.4, 8), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(16, 14, 14, 8)), jnp.float32)

  def loss(bias, pool):
    h = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(pool(jax.nn.relu(h + bias)) * cotangent)

  grad = jax.grad(loss)(bias, models.max_pool_2x2)
  np.testing.assert_array_equal(grad, jax.grad(loss)(bias, flax_max_pool))

  # Central differences of the same loss in float64 NumPy (after the conv): the loss is
  # piecewise linear in the bias, and a step of 1e-4 crosses (almost) no kink.
  h = np.asarray(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")),
                 np.float64)
  numpy_pool = lambda a: a.reshape(16, 14, 2, 14, 2, 8).max(axis=(2, 4))
  numpy_loss = lambda b: np.sum(numpy_pool(np.maximum(h + b, 0)) * np.asarray(cotangent, np.float64))
  step = 1e-4
  for channel in range(8):
    delta = np.zeros(8)
    delta[channel] = step
    b = np.asarray(bias, np.float64)
    fd = (numpy_loss(b + delta) - numpy_loss(b - delta)) / (2 * step)
    # float32 gradient sums of ~1,600 terms of size ~1: 1e-4 relative, 1e-3 absolute.
    np.testing.assert_allclose(grad[channel], fd, rtol=1e-4, atol=1e-3)


def test_simple_cnn_shapes_and_parameter_count():
  config = mnist_seed.get_config()
  model = models.create_model(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  features, projections = model.apply({"params": params}, jnp.zeros((5, 28, 28, 1)))
  assert features.shape == (5, 128) and projections.shape == (5, 64)
  # conv1 3*3*1*16+16, conv2 3*3*16*32+32, dense 7*7*32*128+128, head 128*128+128 + 128*64+64.
  expected = (9 * 16 + 16) + (9 * 16 * 32 + 32) + (7 * 7 * 32 * 128 + 128) + (
      128 * 128 + 128) + (128 * 64 + 64)
  assert sum(x.size for x in jax.tree.leaves(params)) == expected


def test_without_head_projections_are_features():
  config = mnist_seed.get_config()
  config.model.projection_dim = 0
  model = models.create_model(config)
  x = jnp.asarray(np.random.default_rng(0).random((3, 28, 28, 1)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  features, projections = model.apply({"params": params}, x)
  np.testing.assert_array_equal(features, projections)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  config = mnist_seed.get_config()
  config.dtype = "bfloat16"
  model = models.create_model(config)
  x = jnp.asarray(np.random.default_rng(0).random((3, 28, 28, 1)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  features, projections = model.apply({"params": params}, x)
  assert features.dtype == jnp.float32 and projections.dtype == jnp.float32
  reference = models.create_model(mnist_seed.get_config()).apply({"params": params}, x)[1]
  # bf16 activations: ~3 significant digits.
  np.testing.assert_allclose(projections, reference, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("channels,features,size", [(1, 16, 28), (3, 5, 9), (16, 32, 14)])
def test_conv3x3_matches_xla_conv_value_and_gradients(channels, features, size):
  rng = np.random.default_rng(channels)
  x = jnp.asarray(rng.normal(size=(4, size, size, channels)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, channels, features)), jnp.float32)
  reference = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # float32 sums of 9*C products in another order: 1e-5 relative to the output scale.
  np.testing.assert_allclose(models.conv3x3(x, kernel), reference(x, kernel), atol=1e-4)
  cotangent = jnp.asarray(rng.normal(size=(4, size, size, features)), jnp.float32)
  grads = jax.grad(lambda x, k: jnp.sum(models.conv3x3(x, k) * cotangent), (0, 1))(x, kernel)
  expected = jax.grad(lambda x, k: jnp.sum(reference(x, k) * cotangent), (0, 1))(x, kernel)
  np.testing.assert_allclose(grads[0], expected[0], atol=1e-4)
  # Kernel gradients sum 4*size^2 products: scale the tolerance with that.
  np.testing.assert_allclose(grads[1], expected[1], atol=1e-5 * 4 * size**2)


def test_conv3x3_module_matches_flax_conv():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 10, 3)), jnp.float32)
  ours = models.Conv3x3(7)
  flax_conv = nn.Conv(7, (3, 3), padding="SAME")
  params = ours.init(jax.random.key(0), x)
  flax_params = flax_conv.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
  np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), atol=1e-5)


def test_kernels_auto_resolves_per_backend():
  assert models.resolve_kernels("auto", "cpu") == "cpu"
  assert models.resolve_kernels("auto", "gpu") == "xla"
  assert models.resolve_kernels("auto", "tpu") == "xla"
  assert models.resolve_kernels("xla", "cpu") == "xla"


def test_cpu_and_xla_kernels_agree_on_real_mnist_with_ties(mnist_data_dir):
  """The same parameters through the custom CPU kernels and XLA's conv / max pool: the same
  values and gradients on a real MNIST batch (whose blank background ties every pool window;
  a tie rule that differed would put the conv biases' gradients off by up to 4x)."""
  from cl_jax import data  # pylint: disable=g-import-not-at-top
  from cl_jax import losses  # pylint: disable=g-import-not-at-top
  images = data.load_split("mnist", "train", mnist_data_dir, max_examples=64).images
  x = jnp.asarray(images, jnp.float32) / 255.0
  config = mnist_seed.get_config()
  built = {}
  for kernels in ("cpu", "xla"):
    config.model.kernels = kernels
    built[kernels] = models.create_model(config)
  params = built["cpu"].init(jax.random.key(0), x[:1])["params"]
  assert (jax.tree.structure(built["xla"].init(jax.random.key(0), x[:1])["params"]) ==
          jax.tree.structure(params))

  def loss(params, model):
    _, z = model.apply({"params": params}, x)
    return losses.nt_xent(z[:32], z[32:], 0.5)
  values = {k: m.apply({"params": params}, x) for k, m in built.items()}
  grads = {k: jax.grad(loss)(params, m) for k, m in built.items()}
  # float32 sums of the same products in another order: 1e-5 relative.
  for got, expected in zip(values["cpu"], values["xla"]):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  for path, expected in jax.tree_util.tree_leaves_with_path(grads["xla"]):
    got = grads["cpu"]
    for key in path:
      got = got[key.key]
    # Relative to the leaf's norm: rounding, ~1e-5; a different tie rule, ~1.
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert error < 1e-3, (jax.tree_util.keystr(path), error)


def all_equations(jaxpr):
  """The equations of `jaxpr` and of every jaxpr nested in them (pjit, custom_jvp, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (list, tuple)) else [value]):
        inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          yield from all_equations(inner)


@pytest.mark.parametrize("function", ["nt_xent", "queue_infonce", "warp_affine"])
def test_loss_and_warp_matmuls_ask_for_float32_precision(function):
  """The similarity logits and the warp's coordinates must not follow a backend's lower
  default (TF32 on GPUs, bf16 passes on TPUs): every dot in them is HIGHEST."""
  from cl_jax import augment, losses  # pylint: disable=g-import-not-at-top
  z = jnp.ones((4, 8))
  traced = {
      "nt_xent": lambda: jax.make_jaxpr(lambda a, b: losses.nt_xent(a, b, 0.5))(z, z),
      "queue_infonce": lambda: jax.make_jaxpr(
          lambda a, b, q: losses.queue_infonce(a, b, q, 0.2))(z, z, jnp.ones((6, 8))),
      "warp_affine": lambda: jax.make_jaxpr(
          lambda im, m: augment.warp_affine(im, m))(jnp.ones((28, 28, 1)), jnp.ones((2, 3))),
  }[function]()
  dots = [e for e in all_equations(traced.jaxpr) if e.primitive.name == "dot_general"]
  assert dots, "no matmul found"
  for eqn in dots:
    assert eqn.params["precision"] in ((jax.lax.Precision.HIGHEST,) * 2,
                                       jax.lax.Precision.HIGHEST), eqn.params["precision"]


def test_matmul_precision_reaches_the_convs_and_dense_layers():
  config = mnist_seed.get_config()
  config.model.kernels, config.matmul_precision = "xla", "highest"
  model = models.create_model(config)
  x = jnp.ones((2, 28, 28, 1))
  params = model.init(jax.random.key(0), x)
  eqns = all_equations(jax.make_jaxpr(lambda p: model.apply(p, x))(params).jaxpr)
  ops = [e for e in eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert len(ops) == 5  # two convs, the encoder's dense layer, two head layers
  for eqn in ops:
    assert eqn.params["precision"] in ((jax.lax.Precision.HIGHEST,) * 2,
                                       jax.lax.Precision.HIGHEST), eqn
