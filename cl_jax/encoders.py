"""Encoders by name (`config.model.encoder`): the registry, ResNets and Vision Transformers.

Each entry builds a Flax module `encoder(x, train, axis_name) -> features [N, D]` from
`config.model`. The width D is whatever the encoder computes; the model around it
measures it (`train_step.create_train_state`), nothing reads it from the config. BatchNorm, where an encoder has it,
is `models.batch_norm`: training-mode statistics over the global batch.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cl_jax import models

REGISTRY = {}

# torchvision's initialisation of a ResNet's convolutions (kaiming_normal_, fan_out, relu),
# and timm's of a ViT's linear layers (trunc_normal_(std=0.02), whose cut at +-2 is in
# absolute units, 100 standard deviations: a normal; biases 0).
_RESNET_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_VIT_DENSE_INIT = nn.initializers.normal(0.02)


def register(name, uses_custom_kernels=False, uses_patches=False, fixed_input_size=False):
  """Decorator: registers `build(model_config, dtype, kernels, precision) -> nn.Module` as
  `config.model.encoder=name`. `uses_custom_kernels`: it runs `model.kernels="cpu"`;
  `uses_patches`: a ViT, whose heads are one per 64 of width and whose patches of
  `model.patch_size` must tile the images; `fixed_input_size`: its parameters fit one
  image size (a flatten into a dense layer, one grid of position embeddings), so every
  view it sees has the images' size."""
  def decorate(build):
    build.uses_custom_kernels = uses_custom_kernels
    build.uses_patches = uses_patches
    build.fixed_input_size = fixed_input_size
    REGISTRY[name] = build
    return build
  return decorate


def get(name):
  """The builder of encoder `name`; ValueError naming the registered ones otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"config.model.encoder={name!r}; allowed: {', '.join(REGISTRY)}")
  return REGISTRY[name]


def _conv(features, kernel, strides, padding, dtype, precision, name=None):
  # PyTorch's explicit symmetric padding, not "SAME" (which pads a stride-2 conv at the
  # end only): the same outputs as torchvision's layers from the same weights.
  return nn.Conv(features, (kernel, kernel), (strides, strides), ((padding, padding),) * 2,
                 use_bias=False, kernel_init=_RESNET_CONV_INIT, dtype=dtype,
                 precision=precision, name=name)


class ResidualBlock(nn.Module):
  """What torchvision's two blocks share: their fields and the 1x1 conv + BN shortcut
  where the shape changes."""
  features: int
  strides: int
  norm: Callable
  dtype: Any
  precision: Any

  def conv(self, features, kernel, strides, padding, name=None):
    return _conv(features, kernel, strides, padding, self.dtype, self.precision, name=name)

  def output(self, x, y):
    """ReLU(shortcut(x) + y)."""
    if x.shape != y.shape:
      x = self.norm(name="shortcut_norm")(
          self.conv(y.shape[-1], 1, self.strides, 0, name="shortcut_conv")(x))
    return nn.relu(x + y)


class BasicBlock(ResidualBlock):
  """torchvision's BasicBlock: two 3x3 convs with BN."""

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, 3, self.strides, 1)(x)))
    y = self.norm()(self.conv(self.features, 3, 1, 1)(y))
    return self.output(x, y)


class Bottleneck(ResidualBlock):
  """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 conv): 1x1, 3x3, 1x1
  (4x the width), each with BN."""

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.features, 1, 1, 0)(x)))
    y = nn.relu(self.norm()(self.conv(self.features, 3, self.strides, 1)(y)))
    y = self.norm()(self.conv(self.features * 4, 1, 1, 0)(y))
    return self.output(x, y)


class ResNet(nn.Module):
  """torchvision's ResNet without its classifier: features are the globally average-pooled
  last stage. `stem="imagenet"`: 7x7 conv, stride 2, then a 3x3 max pool, stride 2;
  `stem="cifar"`: one 3x3 conv, stride 1, no pool (SimCLR's CIFAR-10 variant)."""
  stage_sizes: Sequence[int]
  block: Any
  width: int = 64
  stem: str = "cifar"
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train=False, axis_name=None):
    def norm(name=None):
      return models.batch_norm(self.dtype, axis_name, train, self.bn_momentum, name=name)
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, 3, self.dtype, self.precision, name="stem_conv")(x)
    else:
      x = _conv(self.width, 3, 1, 1, self.dtype, self.precision, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_norm")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for index in range(blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = self.block(self.width * 2 ** stage, strides, norm, self.dtype, self.precision)(x)
    return jnp.mean(x, axis=(1, 2))


class EncoderBlock(nn.Module):
  """A pre-norm Transformer block as timm's ViT: x + attention(LN(x)), x + MLP(LN(x))."""
  heads: int
  mlp_dim: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x):
    norm = lambda: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
    dense = lambda features: nn.Dense(features, dtype=self.dtype, precision=self.precision,
                                      kernel_init=_VIT_DENSE_INIT)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                        precision=self.precision,
                                        kernel_init=_VIT_DENSE_INIT)(norm()(x))
    x = x + y
    y = dense(self.mlp_dim)(norm()(x))
    y = dense(x.shape[-1])(nn.gelu(y, approximate=False))
    return x + y


class ViT(nn.Module):
  """timm's VisionTransformer without its classifier: patch embedding, a class token and
  learned position embeddings, `depth` blocks, a final LayerNorm; features are the class
  token's output. The position embeddings are sized by the input's patch grid."""
  width: int = 192
  depth: int = 12
  heads: int = 3
  patch_size: int = 16
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train=False, axis_name=None):
    del train, axis_name  # no BatchNorm, no dropout
    x = x.astype(self.dtype)
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), (p, p), "VALID", dtype=self.dtype, precision=self.precision,
                name="patch_embedding")(x)
    x = x.reshape(x.shape[0], -1, self.width)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(self.dtype),
                         x], axis=1)
    position = self.param("position_embedding", nn.initializers.truncated_normal(0.02),
                          (1, x.shape[1], self.width))
    x = x + position.astype(self.dtype)
    for _ in range(self.depth):
      x = EncoderBlock(self.heads, 4 * self.width, self.dtype, self.precision)(x)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm")(x)[:, 0]


@register("simple_cnn", uses_custom_kernels=True, fixed_input_size=True)
def simple_cnn(m, dtype, kernels, precision):
  """The replaced example's SimpleCNN (with the defaults) or any `models.CNNEncoder`."""
  return models.CNNEncoder(conv_features=tuple(m.conv_features),
                           convs_per_block=m.convs_per_block, dense_features=m.dense_features,
                           norm=m.norm, bn_momentum=m.bn_momentum, dtype=dtype, kernels=kernels,
                           precision=precision)


def _width(m, default):
  return default if m.width == -1 else m.width


def _resnet(stage_sizes, block):
  def build(m, dtype, kernels, precision):
    del kernels
    return ResNet(stage_sizes=stage_sizes, block=block, width=_width(m, 64), stem=m.resnet_stem,
                  bn_momentum=m.bn_momentum, dtype=dtype, precision=precision)
  return build


register("resnet18")(_resnet((2, 2, 2, 2), BasicBlock))
register("resnet50")(_resnet((3, 4, 6, 3), Bottleneck))


def _vit(width):
  def build(m, dtype, kernels, precision):
    del kernels
    chosen = _width(m, width)
    return ViT(width=chosen, depth=12 if m.vit_depth == -1 else m.vit_depth,
               heads=vit_heads(chosen), patch_size=m.patch_size, dtype=dtype,
               precision=precision)
  return build


def vit_heads(width):
  """Attention heads of a ViT of `width`: heads of width 64 (DeiT's and timm's sizes), at
  least one."""
  return max(1, width // 64)


register("vit_tiny", uses_patches=True, fixed_input_size=True)(_vit(192))
register("vit_small", uses_patches=True, fixed_input_size=True)(_vit(384))

ENCODERS = tuple(REGISTRY)
