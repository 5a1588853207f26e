"""LARS (optax's and solo-learn's clipped variant) and the learning-rate batch scaling,
against NumPy transcriptions of the update rules (You et al. 2017; solo-learn's
solo/utils/lars.py), float64 references, float32 updates: 1e-6 relative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import default_config
from cl_jax import train_step


def lars_config(clip, lr=0.4, wd=1e-4, eta=0.02):
  config = default_config.get_config()
  config.optimizer, config.learning_rate, config.weight_decay = "lars", lr, wd
  config.lars_trust_coefficient, config.lars_clip = eta, clip
  return config


def tree(rng):
  """A conv kernel and a dense kernel (decayed, trust-ratio scaled), biases and BN scale and
  offset (excluded), and a kernel of zeros (norm 0: left to plain momentum SGD)."""
  return {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
          "dense": {"kernel": 0.01 * rng.normal(size=(6, 5)), "bias": rng.normal(size=5)},
          "norm": {"scale": 1 + 0.1 * rng.normal(size=4), "bias": rng.normal(size=4)},
          "zero": {"kernel": np.zeros((2, 3))}}


def numpy_lars(params, grads_per_step, lrs, wd, eta, clip, momentum=0.9):
  """Both rules with momentum, at learning rate lrs[t] in step t. optax's: u = g + wd w
  scaled by eta |w| / |u|, buffer of lr u; solo-learn's: u = (g + wd w) min(eta |w| /
  (|g| + wd |w|) / lr, 1) (1 at lr = 0), buffer of u, step lr buffer. Leaves named
  "kernel" are decayed; the others (biases, BN) and zero-norm ones take u = g."""
  params = jax.tree.map(np.array, params)
  buffers = jax.tree.map(np.zeros_like, params)
  for grads, lr in zip(grads_per_step, lrs):
    def step(path, w, g, buf):
      decayed = path[-1].key == "kernel"
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      u = g
      if decayed and w_norm > 0 and g_norm > 0:
        if clip:
          ratio = eta * w_norm / (g_norm + wd * w_norm)
          u = (g + wd * w) * (min(ratio / lr, 1.0) if lr > 0 else 1.0)
        else:
          u = g + wd * w
          u = u * eta * w_norm / np.linalg.norm(u)
      elif decayed and not clip:
        u = g + wd * w  # optax decays every masked weight; its trust ratio is 1 at norm 0
      if clip:
        buf[...] = momentum * buf + u
        w -= lr * buf
      else:
        buf[...] = momentum * buf + lr * u
        w -= buf
    jax.tree_util.tree_map_with_path(step, params, grads, buffers)
  return params


@pytest.mark.parametrize("clip, lr", [(False, 0.4), (True, 0.4), (True, 1e-4)])
def test_lars_matches_its_update_rule(clip, lr):
  """Two steps at a constant rate (the momentum shows in the second). The clip's two
  branches: with lr = 0.4 the trust ratio (about 0.02) is below the learning rate, so it
  scales the step; with lr = 1e-4 it is above, so min(ratio / lr, 1) = 1 and the step
  is (g + wd w)."""
  rng = np.random.default_rng(0)
  params = tree(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(2)]
  config = lars_config(clip, lr=lr)
  tx = train_step.create_optimizer(config, steps_per_epoch=10, schedule_steps=100)
  lrs = [lr, lr]
  got = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  state = tx.init(got)
  for g in grads:
    updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, got)
    got = jax.tree.map(lambda p, u: p + u, got, updates)
  expected = numpy_lars(params, grads, lrs, config.weight_decay, config.lars_trust_coefficient,
                        clip)
  for path, value in jax.tree_util.tree_flatten_with_path(expected)[0]:
    leaf = got
    for key in path:
      leaf = leaf[key.key]
    np.testing.assert_allclose(np.asarray(leaf), value, rtol=1e-6, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  # Excluded leaves moved by plain momentum SGD, lr (1.9 g1 + g2) after two steps (float32
  # parameters near 1: 1e-6 absolute); the trust-ratio-scaled kernels did not.
  bias_step = params["conv"]["bias"] - np.asarray(got["conv"]["bias"])
  np.testing.assert_allclose(bias_step, lr * (1.9 * grads[0]["conv"]["bias"] +
                                              grads[1]["conv"]["bias"]), atol=1e-6)
  kernel_step = params["conv"]["kernel"] - np.asarray(got["conv"]["kernel"])
  plain = lr * (1.9 * grads[0]["conv"]["kernel"] + grads[1]["conv"]["kernel"])
  if lr > 0.01:
    assert np.abs(kernel_step - plain).max() > 0.5 * np.abs(plain).max()


@pytest.mark.parametrize("clip", [False, True])
def test_lars_under_a_warm_up_reads_each_steps_rate(clip):
  """A linear warm-up from 0 (the CIFAR configs'): the clip compares the trust ratio with
  the current step's rate (0, then 0.04, 0.08: against the peak 0.4 it would differ),
  and the rate scales before the momentum (optax's) or after it (solo-learn's), which
  differ once the rate changes."""
  rng = np.random.default_rng(5)
  params = tree(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(3)]
  config = lars_config(clip, lr=0.4)
  config.warmup_epochs = 1.0  # 10 steps of 0.04
  tx = train_step.create_optimizer(config, steps_per_epoch=10, schedule_steps=100)
  got = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  state = tx.init(got)
  for g in grads:
    updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, got)
    got = jax.tree.map(lambda p, u: p + u, got, updates)
  expected = numpy_lars(params, grads, [0.0, 0.04, 0.08], config.weight_decay,
                        config.lars_trust_coefficient, clip)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7),
               got, expected)


@pytest.mark.parametrize("encoder", ["simple_cnn", "resnet18", "vit_tiny"])
def test_the_masks_exclude_biases_normalisation_and_vit_embeddings(encoder):
  """On each encoder's real parameters (with a BN head): exactly the convolution and dense
  kernels decay. Flax's attention biases are 2-D, so a rule by rank would decay them."""
  config = default_config.get_config()
  config.model.encoder, config.model.width, config.model.vit_depth = encoder, 8, 1
  config.model.patch_size, config.model.head_norm = 4, "batch"
  from cl_jax import models  # pylint: disable=g-import-not-at-top
  params = models.create_model(config).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  mask = train_step.decays(params)
  for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
    name = path[-1].key
    assert decayed == (name == "kernel"), jax.tree_util.keystr(path)
  names = {path[-1].key for path, _ in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert "kernel" in names and "bias" in names and "scale" in names


@pytest.mark.parametrize("scaling, batch, expected", [(False, 512, 0.3), (True, 256, 0.3),
                                                      (True, 512, 0.6), (True, 64, 0.075)])
def test_learning_rate_batch_scaling(scaling, batch, expected):
  """The schedule's peak is learning_rate * batch_size / 256 with lr_batch_scaling."""
  config = default_config.get_config()
  config.learning_rate, config.batch_size, config.lr_batch_scaling = 0.3, batch, scaling
  config.optimizer, config.lr_schedule, config.warmup_epochs = "sgd", "cosine", 1.0
  assert train_step.peak_learning_rate(config) == pytest.approx(expected)
  # SGD with momentum: the 11th update (the end of the warm-up: the peak), read from a step
  # whose momentum buffer is still zero.
  params = {"w": jnp.ones(3)}
  sgd = train_step.create_optimizer(config, 10, 100)
  state = sgd.init(params)
  for _ in range(10):
    _, state = sgd.update({"w": jnp.zeros(3)}, state, params)
  updates, _ = sgd.update({"w": jnp.ones(3)}, state, params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -expected, rtol=1e-6)


def test_adamw_decays_kernels_only():
  """With a zero gradient AdamW's update is the decoupled decay alone, -lr wd w: on the
  kernels, and nothing on biases and normalisation parameters."""
  config = default_config.get_config()
  config.optimizer, config.learning_rate, config.weight_decay = "adamw", 0.1, 0.5
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), tree(np.random.default_rng(7)))
  tx = train_step.create_optimizer(config, 10, 100)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
    leaf = params
    for key in path:
      leaf = leaf[key.key]
    expected = -0.1 * 0.5 * np.asarray(leaf) if path[-1].key == "kernel" else 0.0
    np.testing.assert_allclose(np.asarray(update), expected, rtol=1e-6, atol=1e-8)
