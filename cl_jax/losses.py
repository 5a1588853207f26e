"""Contrastive losses."""

import jax
import jax.numpy as jnp

# Keeps normalisation finite for zero-norm embeddings (their cosine similarity is 0).
_NORM_EPS = 1e-12


def l2_normalize(x, axis=-1):
  """x / max(||x||, eps), finite (with finite gradient) at x = 0."""
  sq_norm = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def nt_xent(z1, z2, temperature, axis_name=None):
  """NT-Xent (SimCLR's InfoNCE) over the global batch, averaged over local anchors.

  `z1[i]` and `z2[i]` are the two views of example i held by this device. With
  `axis_name`, views from all devices along that axis are gathered, so every
  view in the global batch (2N of them) is a candidate; the anchors are the 2n
  local views. For anchor i with positive p(i):

    loss_i = -log( exp(s_ip / t) / sum_{k != i} exp(s_ik / t) ),

  s = cosine similarity. Returns the mean over local anchors; since every device
  holds the same number, the mean over devices (`pmean`) is the global loss and
  `pmean` of per-device gradients is its gradient (gradients from other
  devices' anchors come back through the transpose of `all_gather`).
  Computed in float32 whatever the input dtype.
  """
  z1 = l2_normalize(z1.astype(jnp.float32))
  z2 = l2_normalize(z2.astype(jnp.float32))
  local_n = z1.shape[0]
  if axis_name is None:
    all1, all2, offset = z1, z2, 0
  else:
    all1 = jax.lax.all_gather(z1, axis_name, tiled=True)
    all2 = jax.lax.all_gather(z2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * local_n
  global_n = all1.shape[0]
  candidates = jnp.concatenate([all1, all2])  # [2N, d]: view 1 of all, then view 2.
  anchors = jnp.concatenate([z1, z2])  # [2n, d]
  logits = anchors @ candidates.T / temperature  # [2n, 2N]

  local = offset + jnp.arange(local_n)
  self_index = jnp.concatenate([local, local + global_n])
  positive_index = jnp.concatenate([local + global_n, local])
  columns = jnp.arange(2 * global_n)
  logits = jnp.where(columns[None, :] == self_index[:, None], -jnp.inf, logits)
  positive = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)
