"""cl_jax.models: pooling against Flax's reduce_window pooling; SimpleCNN's shape and size."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import models
from configs import mnist_seed


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (1, 7, 7, 2), (3, 14, 9, 1)])
def test_max_pool_matches_flax_value_and_gradient(shape):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(models.max_pool_2x2(x), reference(x))  # exact: a max
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=reference(x).shape), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x) * cotangent))(x)
  grad_reference = jax.grad(lambda x: jnp.sum(reference(x) * cotangent))(x)
  np.testing.assert_array_equal(grad, grad_reference)  # exact: no ties in random normals


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
