"""Encoders and projection heads (Flax linen)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x):
  """2x2 max pooling with stride 2 (floor), as reshape + max.

  Equivalent to `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is a cheap
  elementwise select instead of XLA's select-and-scatter, which dominates the
  backward pass of small CNNs on CPU.
  """
  batch, height, width, channels = x.shape
  x = x[:, :height // 2 * 2, :width // 2 * 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class CNNEncoder(nn.Module):
  """Conv(3x3) -> [norm] -> ReLU -> maxpool blocks, then one dense layer + ReLU.

  With the defaults this is SimpleCNN, the reference architecture.
  """
  conv_features: Sequence[int] = (16, 32)
  convs_per_block: int = 1
  dense_features: int = 128
  norm: str = "none"  # "none" or "layer" (LayerNorm over H, W, C per example).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for features in self.conv_features:
      for _ in range(self.convs_per_block):
        x = nn.Conv(features, (3, 3), padding="SAME", dtype=self.dtype)(x)
        if self.norm == "layer":
          x = nn.LayerNorm(reduction_axes=(-3, -2, -1), dtype=self.dtype)(x)
        x = nn.relu(x)
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.dense_features, dtype=self.dtype)(x))


class ProjectionHead(nn.Module):
  """MLP between encoder and loss: Dense+ReLU per hidden size, then a linear output."""
  hidden_features: Sequence[int] = (128,)
  out_features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for features in self.hidden_features:
      x = nn.relu(nn.Dense(features, dtype=self.dtype)(x))
    return nn.Dense(self.out_features, dtype=self.dtype)(x)


class ContrastiveModel(nn.Module):
  """Encoder plus optional projection head; returns (features, projections).

  Features (encoder output) are what evaluation uses; projections feed the loss.
  Without a head, projections are the features. Outputs are float32 whatever
  the compute dtype, so the loss is always computed in float32.
  """
  encoder: nn.Module
  head: nn.Module | None = None

  def __call__(self, x):
    features = self.encoder(x)
    projections = features if self.head is None else self.head(features)
    return features.astype(jnp.float32), projections.astype(jnp.float32)


def create_model(config):
  """Builds the model described by `config.model` with compute dtype `config.dtype`."""
  dtype = jnp.dtype(config.dtype)
  m = config.model
  encoder = CNNEncoder(conv_features=tuple(m.conv_features), convs_per_block=m.convs_per_block,
                       dense_features=m.dense_features, norm=m.norm, dtype=dtype)
  head = None
  if m.projection_dim > 0:
    head = ProjectionHead(hidden_features=tuple(m.projection_hidden), out_features=m.projection_dim,
                          dtype=dtype)
  return ContrastiveModel(encoder=encoder, head=head)
