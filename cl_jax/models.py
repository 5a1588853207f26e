"""Encoders and projection heads (Flax linen)."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cl_jax import losses
from cl_jax import methods

# Below this many input channels a 3x3 conv runs as shifted / im2col matmuls.
_IM2COL_MAX_CHANNELS = 8


def _corners(x):
  """The four inputs of each 2x2 window, in row-major order: [(0,0), (0,1), (1,0), (1,1)]."""
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  return [x[:, i:height:2, j:width:2] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2 max pooling with stride 2 (odd edges dropped), NHWC.

  The values and the gradient of `nn.max_pool(x, (2, 2), (2, 2))`. The VJP
  sends each output's gradient to one input of its window, the first maximum
  in row-major order, as XLA's select-and-scatter does (its `>=` select keeps
  the first maximum it scans), but in one fused elementwise pass: select-and-
  scatter dominates the backward pass of small CNNs on CPU. One winner rather
  than every tied input: ties are the rule on MNIST (the background is exactly
  0, so after a conv every background window holds four equal values), and
  giving each tied input the whole gradient multiplies it by up to 4. One
  winner rather than an equal split, so that this kernel and XLA's give the
  same gradients and a run does not depend on which one a backend uses.
  """
  # Strided slices and elementwise maxima: XLA:CPU fuses this with the conv
  # and ReLU before it, where a windowed reduce-max does not vectorise.
  c00, c01, c10, c11 = _corners(x)
  return jnp.maximum(jnp.maximum(c00, c01), jnp.maximum(c10, c11))


def _max_pool_fwd(x):
  return max_pool_2x2(x), x


def _max_pool_bwd(x, grad):
  y = max_pool_2x2(x)
  taken = jnp.zeros(y.shape, bool)  # an earlier input of the window already won
  shares = []
  for corner in _corners(x):
    wins = (corner == y) & ~taken
    taken = taken | wins
    shares.append(jnp.where(wins, grad, 0).astype(x.dtype))
  # [N, H/2, 2, W/2, 2, C] -> [N, H, W, C]: interleave the corners back.
  top = jnp.stack(shares[:2], axis=3)
  bottom = jnp.stack(shares[2:], axis=3)
  batch, height, width, channels = x.shape
  grad_x = jnp.stack([top, bottom], axis=2).reshape(
      batch, height // 2 * 2, width // 2 * 2, channels)
  return (jnp.pad(grad_x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _taps(x):
  """The 9 shifted views of zero-padded x [N, H, W, C] that a 3x3 SAME conv sums over."""
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)]


def _xla_conv3x3(x, kernel, precision=None):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", precision=precision,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col(x):
  """[N, H, W, 9 * C] patches of a 3x3 SAME conv, tap-major (matches HWIO reshaped)."""
  return jnp.concatenate(_taps(x), axis=-1)


@jax.custom_vjp
def conv3x3(x, kernel):
  """3x3 SAME convolution, stride 1, NHWC x HWIO; the values of `lax.conv_general_dilated`.

  Written for XLA:CPU speed. With few input channels (the first layer) the
  forward pass is a sum of 9 shifted matmuls and the kernel gradient one
  im2col matmul (7x and 2x faster than XLA's convolutions for one channel);
  with more, the forward pass is XLA's conv and the kernel gradient 9 tap-wise
  matmuls (2x faster than XLA's transposed conv; an im2col copy would cost
  more than it saves).
  """
  channels, features = kernel.shape[2:]
  if channels < _IM2COL_MAX_CHANNELS:
    return sum(tap @ k for tap, k in zip(_taps(x), kernel.reshape(9, channels, features)))
  return _xla_conv3x3(x, kernel)


def _conv3x3_fwd(x, kernel):
  return conv3x3(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, grad):
  x, kernel = residuals
  channels, features = kernel.shape[2:]
  grad_rows = grad.reshape(-1, features)
  if channels < _IM2COL_MAX_CHANNELS:
    grad_kernel = _im2col(x).reshape(-1, 9 * channels).T @ grad_rows
  else:
    grad_kernel = jnp.stack([tap.reshape(-1, channels).T @ grad_rows for tap in _taps(x)])
  # XLA drops this when x needs no gradient (the first layer).
  grad_x = jax.vjp(lambda x: _xla_conv3x3(x, kernel), x)[1](grad)[0]
  return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


# config.model.kernels: which implementation of the 3x3 conv and the 2x2 max pool.
KERNELS = ("auto", "xla", "cpu")


def resolve_kernels(kernels, backend=None):
  """"auto" -> "cpu" (the custom VJPs above, written for XLA:CPU) on the CPU backend, else
  "xla" (`lax.conv_general_dilated` / `nn.max_pool`: cuDNN, the TPU's MXU, XLA's fusions)."""
  if kernels == "auto":
    return "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"
  return kernels


def precision_of(name):
  """config.matmul_precision -> a `jax.lax.Precision`, or None for the backend's default."""
  return None if name == "default" else jax.lax.Precision[name.upper()]


class Conv3x3(nn.Module):
  """`nn.Conv(features, (3, 3), padding="SAME")` (same parameters and init).

  `kernels="cpu"` computes it with `conv3x3`'s custom VJP (no precision
  argument: XLA:CPU computes float32 products in float32), `"xla"` with
  `lax.conv_general_dilated` at `precision`. Both have the same parameters, so
  checkpoints move between them.
  """
  features: int
  dtype: Any = jnp.float32
  kernels: str = "cpu"
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if self.kernels == "cpu":
      return conv3x3(x, kernel) + bias
    return _xla_conv3x3(x, kernel, self.precision) + bias


def batch_norm(dtype, axis_name, train, momentum, name=None, affine=True):
  """BatchNorm whose training-mode statistics are over the global batch: every device of
  the mapped axis `axis_name` (None: this call's batch only). Statistics and running
  averages are float32 whatever `dtype`; running averages decay by `momentum` a step.
  `affine=False`: no learned scale and offset (SimSiam's and MoCo v3's output BN)."""
  return nn.BatchNorm(use_running_average=not train, axis_name=axis_name if train else None,
                      momentum=momentum, epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                      force_float32_reductions=True, use_scale=affine, use_bias=affine,
                      name=name)


class CNNEncoder(nn.Module):
  """Conv(3x3) -> [norm] -> ReLU -> maxpool blocks, then one dense layer + ReLU.

  With the defaults this is SimpleCNN, the reference architecture.
  """
  conv_features: Sequence[int] = (16, 32)
  convs_per_block: int = 1
  dense_features: int = 128
  norm: str = "none"  # "none", "layer" (LayerNorm over H, W, C per example) or "batch"
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  kernels: str = "cpu"  # "cpu" or "xla" (resolve_kernels)
  precision: Any = None  # of the "xla" convs and of the dense layer; None = the backend's

  @nn.compact
  def __call__(self, x, train=False, axis_name=None):
    x = x.astype(self.dtype)
    pool = max_pool_2x2 if self.kernels == "cpu" else (
        lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))
    for features in self.conv_features:
      for _ in range(self.convs_per_block):
        x = Conv3x3(features, dtype=self.dtype, kernels=self.kernels, precision=self.precision)(x)
        if self.norm == "layer":
          x = nn.LayerNorm(reduction_axes=(-3, -2, -1), dtype=self.dtype)(x)
        elif self.norm == "batch":
          x = batch_norm(self.dtype, axis_name, train, self.bn_momentum)(x)
        x = nn.relu(x)
      x = pool(x)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.dense_features, dtype=self.dtype, precision=self.precision)(x))


class ProjectionHead(nn.Module):
  """MLP between encoder and loss: Dense -> [BatchNorm] -> ReLU per hidden size, then a
  linear output, optionally batch-normalised without scale and offset (SimCLR's and BYOL's
  heads with `norm="batch"`; SimSiam's and MoCo v3's with `output_norm="batch"` too)."""
  hidden_features: Sequence[int] = (128,)
  out_features: int = 64
  norm: str = "none"  # "none" or "batch" (after each hidden Dense)
  output_norm: str = "none"  # "none" or "batch" (after the output Dense, no scale or offset)
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, train=False, axis_name=None):
    for features in self.hidden_features:
      x = nn.Dense(features, dtype=self.dtype, precision=self.precision)(x)
      if self.norm == "batch":
        x = batch_norm(self.dtype, axis_name, train, self.bn_momentum)(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_features, dtype=self.dtype, precision=self.precision)(x)
    if self.output_norm == "batch":
      x = batch_norm(self.dtype, axis_name, train, self.bn_momentum, affine=False)(x)
    return x


class Prototypes(nn.Module):
  """Scores of `count` prototypes: the cosine similarity of each input row with each
  prototype vector (DINO's last layer, weight-normalised with its norm fixed at 1; SwAV's
  prototypes, normalised here in every forward pass rather than after every step). In
  float32 at HIGHEST precision: scores are divided by temperatures of 0.1 and below."""
  count: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.count))
    return jnp.matmul(losses.l2_normalize(x.astype(jnp.float32)),
                      losses.l2_normalize(kernel, axis=0), precision=losses.HIGHEST)


class ContrastiveModel(nn.Module):
  """Encoder, optional projection head, optional predictor (BYOL, SimSiam, MoCo v3, NNCLR)
  and optional prototypes (DINO, SwAV).

  Returns (features, projections), or (features, predictions) with
  `predict=True`, or (features, (projections, predictions)) with `predict="both"`
  (SimSiam's and NNCLR's losses read both). With prototypes, `predict=True` gives
  their scores instead of predictions (DINO's and SwAV's losses read them), and
  `predict="both"` (projections, scores) (SwAV's queue keeps projections). Features
  (encoder output) are what evaluation uses, beside the projections;
  projections (or predictions, or scores) feed the loss. Without a head, projections are
  the features. Outputs are float32 whatever the compute dtype, so the loss is
  always computed in float32. `train=True` normalises with the batch's
  statistics (over the devices of `axis_name`) and updates the running
  averages (`mutable=["batch_stats"]`); else the running averages are used.
  """
  encoder: nn.Module
  head: nn.Module | None = None
  predictor: nn.Module | None = None
  prototypes: nn.Module | None = None  # after the head: scored with predict=True

  def __call__(self, x, predict=False, train=False, axis_name=None):
    features = self.encoder(x, train, axis_name)
    projections = features if self.head is None else self.head(features, train, axis_name)
    if self.prototypes is not None and (predict or self.is_initializing()):  # DINO, SwAV
      scores = self.prototypes(projections)
      outputs = (projections, scores) if predict == "both" else scores if predict else projections
    elif predict:
      predictions = self.predictor(projections, train, axis_name)
      outputs = (projections, predictions) if predict == "both" else predictions
    else:
      outputs = projections
    return features.astype(jnp.float32), jax.tree.map(lambda x: x.astype(jnp.float32), outputs)


def create_model(config, backend=None):
  """Builds `config.model`: the encoder `model.encoder` names, the projection head (plus a
  predictor or prototypes for methods that use them), with compute dtype `config.dtype`, the kernels
  `config.model.kernels` resolves to on `backend` (None: JAX's default backend) and the
  matmul precision `config.matmul_precision`. The head takes whatever width the encoder
  gives."""
  from cl_jax import encoders  # pylint: disable=g-import-not-at-top  (encoders builds on this module)
  dtype = jnp.dtype(config.dtype)
  m = config.model
  precision = precision_of(config.matmul_precision)
  encoder = encoders.get(m.encoder)(m, dtype, resolve_kernels(m.kernels, backend), precision)
  head = predictor = None
  if m.projection_dim > 0:
    head = ProjectionHead(hidden_features=tuple(m.projection_hidden), out_features=m.projection_dim,
                          norm=m.head_norm, output_norm=m.head_output_norm,
                          bn_momentum=m.bn_momentum, dtype=dtype, precision=precision)
  method = methods.get(config.method)
  prototypes = Prototypes(m.prototypes) if method.uses_prototypes else None
  if method.uses_predictor:  # projection_dim -> projection_dim
    hidden = tuple(m.predictor_hidden) or tuple(m.projection_hidden)
    predictor = ProjectionHead(hidden_features=hidden,
                               out_features=m.projection_dim, norm=m.predictor_norm,
                               bn_momentum=m.bn_momentum, dtype=dtype, precision=precision)
  return ContrastiveModel(encoder=encoder, head=head, predictor=predictor, prototypes=prototypes)
