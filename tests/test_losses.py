"""cl_jax.losses.nt_xent against independent references (NumPy from the formula, optax, SimCLR)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cl_jax import losses

# Jitted once per shape: eager op-by-op dispatch is slow and tests the same code.
nt_xent = jax.jit(losses.nt_xent, static_argnums=2)


def ntxent_numpy(z1, z2, temperature):
  """NT-Xent written from the formula, float64, one anchor at a time.

  loss_i = -log( exp(s_i,p(i)/t) / sum_{k != i} exp(s_ik/t) ), mean over all 2N anchors.
  """
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    positive = (i + n2 // 2) % n2
    logits = np.array([z[i] @ z[k] / temperature for k in range(n2) if k != i])
    top = logits.max()
    log_denominator = top + np.log(np.exp(logits - top).sum())
    total += -(z[i] @ z[positive] / temperature - log_denominator)
  return total / n2


def numeric_grad(f, x, eps=1e-6):
  """Central finite differences of scalar f at x (float64)."""
  grad = np.zeros_like(x, dtype=np.float64)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x, dtype=np.float64)
    step[index] = eps
    grad[index] = (f(x + step) - f(x - step)) / (2 * eps)
  return grad


def random_pair(n, d, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(n, d))


@pytest.mark.parametrize("n,d,temperature", [
    (1, 3, 0.5), (4, 8, 0.05), (8, 16, 0.1), (16, 5, 0.5), (32, 64, 1.0), (64, 128, 0.2)])
def test_value_matches_numpy_float32(n, d, temperature):
  z1, z2 = random_pair(n, d, seed=n + d)
  expected = ntxent_numpy(z1, z2, temperature)
  got = nt_xent(jnp.float32(z1), jnp.float32(z2), temperature)
  # float32 rounding of logits up to 1/t = 20: a few 1e-6 relative.
  np.testing.assert_allclose(got, expected, rtol=2e-5)


@pytest.mark.parametrize("n,d,temperature", [(3, 4, 0.5), (6, 5, 0.1), (4, 7, 1.0)])
def test_gradient_matches_finite_differences(n, d, temperature):
  z1, z2 = random_pair(n, d, seed=7 * n + d)
  grad1, grad2 = jax.grad(nt_xent, argnums=(0, 1))(
      jnp.float32(z1), jnp.float32(z2), temperature)
  ref1 = numeric_grad(lambda x: ntxent_numpy(x, z2, temperature), z1)
  ref2 = numeric_grad(lambda x: ntxent_numpy(z1, x, temperature), z2)
  # float32 gradients vs float64 central differences (truncation error ~1e-10).
  np.testing.assert_allclose(grad1, ref1, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(grad2, ref2, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_bfloat16_inputs(temperature):
  z1, z2 = random_pair(32, 64, seed=3)
  expected = ntxent_numpy(z1, z2, temperature)
  got = nt_xent(jnp.bfloat16(z1), jnp.bfloat16(z2), temperature)
  assert got.dtype == jnp.float32  # the loss is always computed in float32
  # bf16 keeps 8 bits of mantissa: cosines are off by ~4e-3, logits by ~4e-3/t;
  # the mean loss by at most that, relative 1e-2 of a loss of order 1-5 covers t >= 0.05.
  np.testing.assert_allclose(got, expected, rtol=1e-2, atol=0.1 * 0.05 / temperature)


@pytest.mark.parametrize("n,temperature", [(4, 0.1), (16, 0.5), (33, 0.07)])
def test_matches_optax_ntxent(n, temperature):
  """optax.losses.ntxent(embeddings, labels): positives are rows with equal labels.

  Mapping: embeddings = [z1; z2], labels = [0..n-1, 0..n-1], so each anchor has
  exactly one positive (its other view) and optax's denominator (negatives plus
  the positive) is our sum over k != i; both average over the 2n anchors.
  optax adds float32 eps inside the cosine, hence the tolerance.
  """
  z1, z2 = random_pair(n, 16, seed=n)
  labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
  expected = optax.losses.ntxent(jnp.float32(np.concatenate([z1, z2])), labels, temperature)
  got = nt_xent(jnp.float32(z1), jnp.float32(z2), temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def simclr_official_numpy(z1, z2, temperature, large_num=1e9):
  """SimCLR's `add_contrastive_loss` (tf2/objective.py), transcribed to NumPy.

  Cross-view logits ab/ba, same-view logits aa/bb with the diagonal masked by
  -LARGE_NUM, softmax cross-entropy with the positive at column i of [ab, aa],
  loss = mean_i(loss_a) + mean_i(loss_b). That sum of two means over N anchors
  each is twice our mean over all 2N anchors.
  """
  h1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  h2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  n = len(h1)
  masks = np.eye(n)
  logits_aa = h1 @ h1.T / temperature - masks * large_num
  logits_bb = h2 @ h2.T / temperature - masks * large_num
  logits_ab = h1 @ h2.T / temperature
  logits_ba = h2 @ h1.T / temperature

  def cross_entropy(logits):
    top = logits.max(axis=1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(n), np.arange(n)].mean()

  return (cross_entropy(np.concatenate([logits_ab, logits_aa], 1)) +
          cross_entropy(np.concatenate([logits_ba, logits_bb], 1)))


@pytest.mark.parametrize("n,temperature", [(5, 0.5), (20, 0.1)])
def test_official_simclr_is_twice_ours(n, temperature):
  z1, z2 = random_pair(n, 12, seed=11 * n)
  official = simclr_official_numpy(z1, z2, temperature)
  got = nt_xent(jnp.float32(z1), jnp.float32(z2), temperature)
  np.testing.assert_allclose(2 * got, official, rtol=2e-5)


def replaced_example_targets(n):
  """The replaced example's target construction, transcribed to NumPy.

  labels = cat([arange(N), arange(N)]); L = (labels[None] == labels[:, None]);
  logits diagonal masked (masked_fill(eye, -9e15)); target = L.argmax(axis=1).
  """
  labels = np.concatenate([np.arange(n), np.arange(n)])
  pair_labels = (labels[None, :] == labels[:, None]).astype(np.float32)
  return pair_labels.argmax(axis=1)


def test_replaced_example_targets_the_masked_diagonal_and_we_do_not():
  n, temperature = 8, 0.5
  targets = replaced_example_targets(n)
  # Anchors 0..N-1: argmax returns the first true entry, the anchor itself.
  np.testing.assert_array_equal(targets[:n], np.arange(n))
  # Anchors N..2N-1 get their real positive (i - N).
  np.testing.assert_array_equal(targets[n:], np.arange(n))

  z1, z2 = random_pair(n, 16, seed=0)
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -9e15)
  log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  example_loss = -log_softmax[np.arange(2 * n), targets].mean()
  assert example_loss > 4e15  # the 4.5e15 the example prints
  correct_targets = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  correct_loss = -log_softmax[np.arange(2 * n), correct_targets].mean()
  ours = nt_xent(jnp.float32(z1), jnp.float32(z2), temperature)
  np.testing.assert_allclose(ours, correct_loss, rtol=2e-5)
  assert ours < 10


def test_large_logits_are_stable():
  """t = 0.01 with identical embeddings: logits of 100 everywhere, loss = log(2N - 1)."""
  n = 16
  z = np.ones((n, 8), np.float32)
  loss, grads = jax.value_and_grad(nt_xent, argnums=(0, 1))(z, z, 0.01)
  np.testing.assert_allclose(loss, np.log(2 * n - 1), rtol=1e-5)
  assert all(np.isfinite(g).all() for g in grads)


def test_zero_norm_embeddings_are_finite():
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(6, 4)).astype(np.float32)
  z2 = z1.copy()
  z1[2] = 0.0
  z2[:] = 0.0
  loss, grads = jax.value_and_grad(nt_xent, argnums=(0, 1))(z1, z2, 0.1)
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in grads)
  # All-zero embeddings have cosine 0 with everything: loss = log(2N - 1).
  zeros = np.zeros((6, 4), np.float32)
  np.testing.assert_allclose(nt_xent(zeros, zeros, 0.1), np.log(11), rtol=1e-6)


def test_l2_normalize_matches_numpy():
  x = np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32)
  np.testing.assert_allclose(losses.l2_normalize(x), x / np.linalg.norm(x, axis=1, keepdims=True),
                             rtol=1e-6)
