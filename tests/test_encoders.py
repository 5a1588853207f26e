"""cl_jax.encoders: parameter counts against torchvision's and timm's, the blocks' forward
passes against NumPy transcriptions (float64), global-batch BatchNorm of the ResNets on 4
devices against 1, and the width measured from the encoder."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import default_config
from cl_jax import encoders
from cl_jax import models
from cl_jax import train_step
from tests.test_batch_norm import assert_four_devices_equal_one, run_steps


def model_config(encoder, **fields):
  config = default_config.get_config().model
  config.encoder = encoder
  config.update(fields)
  return config


def build(encoder, dtype=jnp.float32, **fields):
  return encoders.get(encoder)(model_config(encoder, **fields), dtype, "xla", None)


def count_params(module, shape):
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                             jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


# Published totals minus the classifier: torchvision's resnet18 11,689,512 - fc (512 x 1000
# + 1000) and resnet50 25,557,032 - (2048 x 1000 + 1000); the CIFAR stem swaps the 7x7x3x64
# conv (9,408) for a 3x3x3x64 one (1,728); timm's vit_tiny_patch16_224 5,717,416 - head
# (192 x 1000 + 1000) and vit_small_patch16_224 22,050,664 - (384 x 1000 + 1000). SimpleCNN:
# the replaced PyTorch example's 160 + 4,640 + 200,832.
@pytest.mark.parametrize("encoder, stem, shape, expected, width", [
    ("resnet18", "imagenet", (224, 224, 3), 11_176_512, 512),
    ("resnet50", "imagenet", (224, 224, 3), 23_508_032, 2048),
    ("resnet18", "cifar", (32, 32, 3), 11_168_832, 512),
    ("vit_tiny", "cifar", (224, 224, 3), 5_524_416, 192),
    ("vit_small", "cifar", (224, 224, 3), 21_665_664, 384),
    ("simple_cnn", "cifar", (28, 28, 1), 205_632, 128),
])
def test_parameter_counts_and_widths_are_the_published_ones(encoder, stem, shape, expected,
                                                             width):
  module = build(encoder, resnet_stem=stem)
  assert count_params(module, shape) == expected
  features = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0],
                            jax.ShapeDtypeStruct((2,) + shape, jnp.float32))
  assert features.shape == (2, width)


def np_conv(x, kernel, stride, padding):
  """NHWC x HWIO cross-correlation with symmetric zero padding (PyTorch's Conv2d), float64."""
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  size = kernel.shape[0]
  out_h = (x.shape[1] - size) // stride + 1
  out_w = (x.shape[2] - size) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for i in range(size):
    for j in range(size):
      patch = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
      out += patch @ kernel[i, j]
  return out


def np_batch_norm(x, params):
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]


def apply_block(block_class, features, x, rng):
  """A stride-2 block in training mode, its parameters moved off their initial values (BN
  scales and offsets away from 1 and 0, so that a missing one shows); returns (output,
  the parameters in float64)."""
  norm = lambda name=None: models.batch_norm(jnp.float32, None, True, 0.9, name=name)
  block = block_class(features, 2, norm, jnp.float32, jax.lax.Precision.HIGHEST)
  variables = block.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape), variables["params"])
  got, _ = block.apply({**variables, "params": params}, x, mutable=["batch_stats"])
  return np.asarray(got), jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def test_a_strided_basic_block_matches_numpy():
  """torchvision's BasicBlock with a stride-2 projection shortcut, training-mode BN: the
  padding is symmetric as PyTorch's (XLA's "SAME" would pad a stride-2 conv at the end only
  and shift every output by a pixel), on inputs with exact zeros (after a ReLU)."""
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(4, 8, 8, 3)), 0)
  got, p = apply_block(encoders.BasicBlock, 6, x, rng)
  y = np.maximum(np_batch_norm(np_conv(x, p["Conv_0"]["kernel"], 2, 1), p["BatchNorm_0"]), 0)
  y = np_batch_norm(np_conv(y, p["Conv_1"]["kernel"], 1, 1), p["BatchNorm_1"])
  shortcut = np_batch_norm(np_conv(x, p["shortcut_conv"]["kernel"], 2, 0), p["shortcut_norm"])
  expected = np.maximum(shortcut + y, 0)
  assert got.shape == (4, 4, 4, 6)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # float32


def test_a_strided_bottleneck_matches_numpy():
  """torchvision's Bottleneck (v1.5): the stride on the 3x3 conv, not the first 1x1."""
  rng = np.random.default_rng(4)
  x = np.maximum(rng.normal(size=(4, 8, 8, 6)), 0)
  got, p = apply_block(encoders.Bottleneck, 3, x, rng)
  y = np.maximum(np_batch_norm(np_conv(x, p["Conv_0"]["kernel"], 1, 0), p["BatchNorm_0"]), 0)
  y = np.maximum(np_batch_norm(np_conv(y, p["Conv_1"]["kernel"], 2, 1), p["BatchNorm_1"]), 0)
  y = np_batch_norm(np_conv(y, p["Conv_2"]["kernel"], 1, 0), p["BatchNorm_2"])
  shortcut = np_batch_norm(np_conv(x, p["shortcut_conv"]["kernel"], 2, 0), p["shortcut_norm"])
  assert got.shape == (4, 4, 4, 12)
  np.testing.assert_allclose(got, np.maximum(shortcut + y, 0), rtol=1e-5, atol=1e-5)


def np_max_pool_3x3_stride_2(x):
  """PyTorch's MaxPool2d(3, 2, padding=1): the padding never wins (it is -inf)."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  return np.max([x[:, i:i + 2 * out_h:2, j:j + 2 * out_w:2] for i in range(3) for j in range(3)],
                axis=0)


def test_the_imagenet_stem_matches_numpy():
  """7x7 conv, stride 2, padding 3; BN; ReLU; 3x3 max pool, stride 2, padding 1 (PyTorch's
  padding is -inf: the ReLU's exact zeros on the border must win over it), then the first
  block; on a 16x16 input."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 16, 16, 3))
  module = build("resnet18", resnet_stem="imagenet", width=4, dtype=jnp.float32)
  module = module.clone(precision=jax.lax.Precision.HIGHEST)
  variables = module.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape), variables["params"])
  _, state = module.apply({**variables, "params": params}, x, train=True,
                          mutable=["intermediates", "batch_stats"],
                          capture_intermediates=lambda mdl, _: isinstance(mdl, encoders.BasicBlock))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  stem = np.maximum(np_batch_norm(np_conv(x, p["stem_conv"]["kernel"], 2, 3), p["stem_norm"]), 0)
  pooled = np_max_pool_3x3_stride_2(stem)
  assert pooled.shape == (2, 4, 4, 4)
  # The first block keeps the shape (stride 1, same width): its output from the pooled stem.
  b = p["BasicBlock_0"]
  y = np.maximum(np_batch_norm(np_conv(pooled, b["Conv_0"]["kernel"], 1, 1), b["BatchNorm_0"]), 0)
  y = np_batch_norm(np_conv(y, b["Conv_1"]["kernel"], 1, 1), b["BatchNorm_1"])
  expected = np.maximum(pooled + y, 0)
  got = state["intermediates"]["BasicBlock_0"]["__call__"][0]
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_the_imagenet_stem_halves_twice_and_the_cifar_stem_keeps_the_size():
  x = jnp.zeros((2, 64, 64, 3))
  for stem, side in (("imagenet", 16), ("cifar", 64)):
    module = build("resnet18", resnet_stem=stem, width=4)
    variables = module.init(jax.random.key(0), x)
    _, state = module.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"],
                            capture_intermediates=lambda mdl, _: isinstance(mdl, nn.BatchNorm))
    first = state["intermediates"]["stem_norm"]["__call__"][0]
    assert first.shape[1] == (32 if stem == "imagenet" else 64)  # before the max pool
    last_stage = state["intermediates"]["BasicBlock_0"]["BatchNorm_0"]["__call__"][0]
    assert last_stage.shape[1] == side


def np_layer_norm(x, params):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * params["scale"] + params["bias"]


def np_vit_block(x, p, heads):
  """timm's Block: x + proj(softmax(q k^T / sqrt(d)) v) of LN(x), then x + fc2(GELU(fc1(LN(x))))
  with the exact (erf) GELU."""
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  a = p["MultiHeadDotProductAttention_0"]
  h = np_layer_norm(x, p["LayerNorm_0"])
  q, k, v = (np.einsum("btd,dhk->bthk", h, a[n]["kernel"]) + a[n]["bias"]
             for n in ("query", "key", "value"))
  logits = np.einsum("bqhk,bthk->bhqt", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhqt,bthk->bqhk", weights, v)
  x = x + np.einsum("bqhk,hkd->bqd", attended, a["out"]["kernel"]) + a["out"]["bias"]
  h = np_layer_norm(x, p["LayerNorm_1"]) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return x + h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def test_a_vit_matches_numpy():
  """Patch embedding, class token, position embeddings, 2 blocks of 2 heads, final LN; the
  class token's output is the feature. 16x16 images in 4x4 patches: 17 tokens."""
  rng = np.random.default_rng(1)
  x = rng.random((3, 16, 16, 3))
  module = encoders.ViT(width=8, depth=2, heads=2, patch_size=4,
                        precision=jax.lax.Precision.HIGHEST)
  params = module.init(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape), params)
  got = module.apply({"params": params}, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tokens = np_conv(x, p["patch_embedding"]["kernel"], 4, 0) + p["patch_embedding"]["bias"]
  tokens = tokens.reshape(3, 16, 8)
  tokens = np.concatenate([np.broadcast_to(p["cls_token"], (3, 1, 8)), tokens], axis=1)
  tokens = tokens + p["position_embedding"]
  assert p["position_embedding"].shape == (1, 17, 8)
  for i in range(2):
    tokens = np_vit_block(tokens, p[f"EncoderBlock_{i}"], heads=2)
  expected = np_layer_norm(tokens, p["final_norm"])[:, 0]
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)  # float32


@pytest.mark.parametrize("encoder", ["resnet18", "vit_tiny"])
def test_outputs_are_float32_under_bfloat16(encoder):
  config = default_config.get_config()
  config.model.encoder, config.model.width, config.model.vit_depth = encoder, 8, 1
  config.model.patch_size, config.dtype = 4, "bfloat16"
  model = models.create_model(config)
  x = jnp.asarray(np.random.default_rng(2).random((2, 8, 8, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  features, projections = model.apply(variables, x)
  assert features.dtype == projections.dtype == jnp.float32
  assert features.shape == (2, 8 if encoder == "vit_tiny" else 64)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_moco_queue_width_is_measured_from_the_model():
  """Without a head the queue holds encoder features: a ResNet of width 8 gives 64, whatever
  dense_features (a SimpleCNN field) says."""
  config = default_config.get_config()
  config.method, config.queue_size = "moco", 16
  config.model.encoder, config.model.width, config.model.projection_dim = "resnet18", 8, 0
  model = models.create_model(config)
  tx = train_step.create_optimizer(config, 10, 10)
  state = train_step.create_train_state(model, tx, jax.random.key(0), (8, 8, 3), config)
  assert state.method_state["queue"].shape == (16, 64)


def colour_batch(count=96, shape=(16, 16, 3)):
  """Colour images with exact zeros (a black border) and a per-image offset, so that the
  statistics of each device's shard differ from the global batch's."""
  rng = np.random.default_rng(3)
  images = rng.integers(0, 200, (count,) + shape)
  images += (np.arange(count) * 50 // count)[:, None, None, None]
  images[:, :2] = 0
  return images.astype(np.uint8), (np.arange(count) % 10).astype(np.int32)


def test_resnet_batch_norm_spans_the_global_batch():
  """A tiny ResNet-18 (BatchNorm after every conv) on 4 devices equals 1 device for the same
  global batch: losses, gradients, parameters and running averages (the tolerances of
  tests/test_batch_norm.py). Per-device statistics fail it."""
  config = default_config.get_config()
  config.model.encoder, config.model.width = "resnet18", 4
  config.model.head_norm = "batch"
  config.optimizer, config.learning_rate = "sgd", 0.05
  config.augment.flip_probability = 0.5
  config.augment.brightness, config.augment.saturation = 0.4, 0.4
  images, labels = colour_batch()
  initial, one, losses_one = run_steps(config, images, labels, 1, num_steps=2)
  _, four, losses_four = run_steps(config, images, labels, 4, num_steps=2)
  assert_four_devices_equal_one(config, initial, one, losses_one, four, losses_four)
