"""Barlow Twins, VICReg, SimSiam, MoCo v3 and NNCLR: their losses against float64 NumPy
transcriptions of the papers' equations and pseudo-code, finite-difference gradients, 4
devices against 1 on shards whose per-device statistics differ from the global batch's,
and the train step's state (momentum network, support set) across devices."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import augment
from cl_jax import losses
from cl_jax import methods
from cl_jax import models
from cl_jax import parallel
from cl_jax import train_step as train_step_lib
from configs import mnist_seed
from tests.test_methods import numeric_grad
from tests.test_methods import run_steps
from tests.test_methods import unit_rows


def barlow_numpy(z1, z2, lam):
  """Barlow Twins' eq. 1 with the paper's code's BatchNorm (biased variance, eps 1e-5)."""
  def bn(z):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  c = bn(z1).T @ bn(z2) / len(z1)
  d = c.shape[0]
  return sum((1 - c[i, i]) ** 2 if i == j else lam * c[i, j] ** 2
             for i in range(d) for j in range(d))


def vicreg_numpy(z1, z2, weights):
  """VICReg's Algorithm 1: mse, std hinge (unbiased variance, eps 1e-4), off-diagonal
  covariance squares over d."""
  lam, mu, nu = weights
  n, d = z1.shape
  sim = np.mean((z1 - z2) ** 2)
  std = sum(np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4))) for z in (z1, z2))
  cov = 0.0
  for z in (z1, z2):
    c = (z - z.mean(0)).T @ (z - z.mean(0)) / (n - 1)
    cov += sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
  return lam * sim + mu * std + nu * cov


def ctr_numpy(q, k, t):
  """MoCo v3's ctr without its 2t: cross-entropy of q_i against every k, label i."""
  q, k = unit_rows(q), unit_rows(k)
  total = 0.0
  for i in range(len(q)):
    logits = [q[i] @ k[j] / t for j in range(len(k))]
    total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
  return total / len(q)


def nearest_numpy(z, support):
  z = unit_rows(z)
  return np.stack([support[int(np.argmax([row @ s for s in support]))] for row in z])


def simsiam_numpy(p1, p2, z1, z2):
  def d(p, z):
    return -np.mean(np.sum(unit_rows(p) * unit_rows(z), axis=1))
  return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def hard_inputs(n, d, seed, constant_column=True):
  """Two views with columns at very different scales (std 5 and 0.05: the variance hinge
  off and on), an offset, and optionally one constant column (zero variance: the eps
  boundary)."""
  rng = np.random.default_rng(seed)
  scales = np.linspace(0.05, 5.0, d)
  z1 = rng.normal(size=(n, d)) * scales + 3.0
  z2 = z1 + 0.3 * rng.normal(size=(n, d)) * scales
  if constant_column:
    z1[:, 0] = z2[:, 0] = 1.5
  return z1, z2


@pytest.mark.parametrize("n,d", [(8, 4), (24, 6)])
def test_barlow_and_vicreg_match_numpy(n, d):
  # Without the constant column for Barlow: its exact 1.0 would swamp the other terms.
  z1, z2 = hard_inputs(n, d, seed=n, constant_column=False)
  # float32 standardisation and products of ~1e2-sized sums: 1e-5 relative.
  np.testing.assert_allclose(losses.barlow_twins(jnp.float32(z1), jnp.float32(z2), 0.0051),
                             barlow_numpy(z1, z2, 0.0051), rtol=2e-5)
  z1, z2 = hard_inputs(n, d, seed=n)
  np.testing.assert_allclose(
      losses.vicreg(jnp.float32(z1), jnp.float32(z2), (25.0, 25.0, 1.0)),
      vicreg_numpy(z1, z2, (25.0, 25.0, 1.0)), rtol=2e-5)


def test_barlow_of_identical_uncorrelated_columns_is_almost_zero():
  """Two views equal, columns centred and orthogonal: C is the identity up to the eps's
  shrinkage of the diagonal (1e-5 / variance), so the loss is ~1e-10; lambda = 1 would
  not change that, a constant embedding gives d (below)."""
  x = np.random.default_rng(0).normal(size=(16, 4))
  z = np.linalg.qr(x - x.mean(0))[0] * 4.0  # orthogonal columns, each of mean 0
  got = float(losses.barlow_twins(jnp.float32(z), jnp.float32(z), 0.0051))
  assert got < 1e-6, got  # float32 rounding of C's entries: ~1e-7 each
  constant = np.ones((16, 4))
  # Zero variance: every standardised entry is 0, C = 0, the loss d (each diagonal term 1).
  np.testing.assert_allclose(
      losses.barlow_twins(jnp.float32(constant), jnp.float32(constant), 0.0051), 4.0)


def test_mocov3_nnclr_and_simsiam_terms_match_numpy():
  rng = np.random.default_rng(3)
  q, k, p, z = (rng.normal(size=(10, 6)) for _ in range(4))
  support = unit_rows(rng.normal(size=(40, 6)))
  for t in (0.2, 0.1):
    # Logits up to 1 / 0.1: 1e-5 relative.
    np.testing.assert_allclose(losses.cross_view_infonce(jnp.float32(q), jnp.float32(k), t),
                               ctr_numpy(q, k, t), rtol=2e-5)
  np.testing.assert_array_equal(losses.nearest_neighbours(jnp.float32(q), jnp.float32(support)),
                                np.float32(nearest_numpy(q, support)))
  np.testing.assert_allclose(
      0.5 * (losses.negative_cosine(jnp.float32(p), jnp.float32(k)) +
             losses.negative_cosine(jnp.float32(q), jnp.float32(z))),
      simsiam_numpy(p, q, z, k), rtol=1e-5)


def test_nearest_neighbour_ties_go_to_the_first_row():
  """Each query is exactly as near two distinct rows; the first of the two is kept."""
  support = jnp.float32([[1, 0], [0, 1], [-1, 0], [0, -1]])
  got = losses.nearest_neighbours(jnp.float32([[1, 1], [-2, 2], [-3, -3], [0, 0]]), support)
  # The zero query ties all four rows (every similarity 0).
  np.testing.assert_array_equal(got, support[np.array([0, 1, 2, 0])])


LOSSES = {
    "barlow_twins": (lambda a, b, ax=None: losses.barlow_twins(a, b, 0.0051, ax),
                     lambda a, b: barlow_numpy(a, b, 0.0051)),
    "vicreg": (lambda a, b, ax=None: losses.vicreg(a, b, (25.0, 25.0, 1.0), ax),
               lambda a, b: vicreg_numpy(a, b, (25.0, 25.0, 1.0))),
    "mocov3": (lambda a, b, ax=None: losses.cross_view_infonce(a, b, 0.2, ax),
               lambda a, b: ctr_numpy(a, b, 0.2)),
}


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_match_finite_differences(name):
  z1, z2 = hard_inputs(6, 3, seed=7)
  z1[:, 0] += np.linspace(-0.5, 0.5, 6)  # the gradient at the eps boundary is not the point here
  ours, reference = LOSSES[name]
  for wrt in (0, 1):
    grad = jax.grad(ours, argnums=wrt)(jnp.float32(z1), jnp.float32(z2))
    if wrt == 0:
      expected = numeric_grad(lambda x: reference(x, z2), z1)
    else:
      expected = numeric_grad(lambda x: reference(z1, x), z2)
    # float32 gradients against float64 central differences (truncation ~1e-10); the scale
    # is the largest entry's.
    np.testing.assert_allclose(grad, expected, rtol=1e-3,
                               atol=1e-4 * np.max(np.abs(expected)))


def sharded_problem(seed=5):
  """Linear embeddings of a batch of 32 whose 4 device shards are shifted and scaled
  differently: a per-device mean, variance, covariance or cross-correlation is far from the
  global one."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(12, 6)).astype(np.float32)
  shard = np.repeat(np.arange(4), 8)[:, None]
  x1 = rng.normal(size=(32, 12)) * (1 + shard) + 2.0 * shard
  x2 = x1 + 0.5 * rng.normal(size=(32, 12))
  return w, {"x1": x1.astype(np.float32), "x2": x2.astype(np.float32)}


def four_device_loss_and_grad(name, w, batch, statistics_axis):
  """LOSSES[name] of x @ w on 4 devices, its loss and gradient pmean'd as the train step
  does; `statistics_axis=None` computes the loss's statistics per device instead."""
  ours, _ = LOSSES[name]

  def per_device(w, batch, rng):
    del rng
    axis = parallel.AXIS if statistics_axis else None
    loss, grad = jax.value_and_grad(
        lambda w: ours(batch["x1"] @ w, batch["x2"] @ w, axis))(w)
    loss, grad = jax.lax.pmean((loss, grad), parallel.AXIS)
    return grad, {"loss": loss}
  dp = parallel.DataParallel(per_device, "shard_map", jax.devices()[:4])
  grad, metrics = dp.step(dp.put_state(w), batch, jax.random.key(0))
  return float(metrics["loss"]), dp.get_state(grad)


@pytest.mark.parametrize("name", LOSSES)
def test_four_devices_equal_one_and_per_device_statistics_do_not(name):
  """Barlow's cross-correlation, VICReg's variance and covariance and MoCo v3's keys span
  the global batch: 4 devices equal 1 device holding it. The same loss with its statistics
  per device (what solo-learn's #253 / lightly's #1177 got wrong) is checked to be far off,
  so the equality could fail."""
  w, batch = sharded_problem()
  ours, _ = LOSSES[name]
  expected_loss, expected_grad = jax.value_and_grad(
      lambda w: ours(batch["x1"] @ w, batch["x2"] @ w))(w)
  loss, grad = four_device_loss_and_grad(name, w, batch, statistics_axis=True)
  # float32 sums in another order: 1e-5 relative.
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4,
                             atol=1e-5 * np.max(np.abs(expected_grad)))
  local_loss, local_grad = four_device_loss_and_grad(name, w, batch, statistics_axis=False)
  assert abs(local_loss - expected_loss) > 0.05 * abs(expected_loss), (local_loss, expected_loss)
  assert np.max(np.abs(local_grad - expected_grad)) > 0.05 * np.max(np.abs(expected_grad))


def sgd_config(method, **fields):
  config = mnist_seed.get_config()
  config.method = method
  config.optimizer, config.learning_rate = "sgd", 0.1  # SGD: parameter errors stay linear
  for name, value in fields.items():
    config[name] = value
  return config


STEP_CONFIGS = {
    # BatchNorm in the projector too: its statistics and Barlow's both span the devices.
    # Its loss starts near 50: at SGD 0.1 the steps are so large that rounding grows to 2e-4
    # of the loss by step 3.
    "barlow_twins": lambda: sgd_config("barlow_twins", learning_rate=0.001),
    "mocov3": lambda: sgd_config("mocov3", temperature=0.2),
    # 48 rows, 32 a step: the second step wraps around.
    "nnclr": lambda: sgd_config("nnclr", temperature=0.2, queue_size=48),
    "simsiam": lambda: sgd_config("simsiam"),
}
# BatchNorm in every head layer (the projector's output without scale and offset): its
# statistics span the devices too.
HEAD_BATCH_NORM = {"head_norm": "batch", "head_output_norm": "batch", "predictor_norm": "batch"}


@pytest.mark.parametrize("name", STEP_CONFIGS)
def test_train_steps_on_four_devices_equal_one(name):
  """Three train steps: losses, parameters and the method's state (momentum network, the
  support set wrapping around on the second step) equal on 4 devices and on 1."""
  config = STEP_CONFIGS[name]()
  config.model.head_norm = "batch"
  if name in ("mocov3", "simsiam"):
    for field, value in HEAD_BATCH_NORM.items():
      config.model[field] = value
  assert_four_devices_equal_one(config)


def assert_four_devices_equal_one(config):
  """Three train steps of `config` on 4 devices and on 1: the same losses, parameters, BN
  averages and method state; returns the one-device run's last state."""
  states_one, losses_one = run_steps(config, 1)
  states_four, losses_four = run_steps(config, 4)
  # float32 sums in another order, through 3 SGD steps. Absolute tolerances, scaled to
  # each tree's largest entry: losses near 0 (SimSiam's symmetrised cosines start at
  # ~6e-3) and small parameters carry the rounding of large ones (seen on two x86 CPUs:
  # 1.1e-7 on a loss of 5.8e-3, 1.3e-6 on a parameter of 1.9e-3 in a leaf up to 0.33).
  np.testing.assert_allclose(losses_four, losses_one, rtol=1e-5,
                             atol=1e-5 * np.max(np.abs(losses_one)))
  one, four = states_one[-1], states_four[-1]
  for label in ("params", "batch_stats", "method_state"):
    for got, expected in zip(jax.tree.leaves(getattr(four, label)),
                             jax.tree.leaves(getattr(one, label))):
      np.testing.assert_allclose(got, expected, rtol=1e-4,
                                 atol=max(1e-6, 1e-5 * float(np.max(np.abs(expected)))),
                                 err_msg=label)
  return one


def test_nnclr_first_step_puts_the_view1_projections_in_the_support_set():
  """Rows 0-31 of the support set after step 0 are the unit view-1 projections of the
  network before its update; the rest is the random start."""
  config = STEP_CONFIGS["nnclr"]()
  model = models.create_model(config)
  initial = train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, 10, 10), jax.random.key(0), (28, 28, 1),
      config)
  states, _ = run_steps(config, 1, num_steps=1)
  support = states[0].method_state["support_set"]
  images = (np.random.default_rng(6).random((32, 28, 28, 1)) * 255).astype(np.uint8)
  keys = train_step_lib.example_keys(jax.random.fold_in(jax.random.key(1), 0),
                                     jnp.arange(32, dtype=jnp.int32))
  view1, _ = augment.two_views(images, keys, config.augment)
  _, projections = model.apply({"params": initial.params}, view1)  # no BN: train is eval
  np.testing.assert_allclose(support[:32], unit_rows(np.asarray(projections, np.float64)),
                             atol=1e-5)
  np.testing.assert_array_equal(support[32:], np.asarray(initial.method_state["support_set"])[32:])
  assert int(states[0].method_state["support_next"]) == 32


def fresh_state(config):
  model = models.create_model(config)
  return model, train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, 10, 10), jax.random.key(0), (28, 28, 1),
      config)


def random_views(n=8, seed=2):
  rng = np.random.default_rng(seed)
  return tuple(jnp.float32(rng.random((n, 28, 28, 1))) for _ in range(2))


def method_loss(name, config, state, view1, view2, local_views=None):
  value, _ = methods.get(name).loss(state.params, state=state, view1=view1, view2=view2,
                                    batch=None, config=config, axis_name=None,
                                    schedule_steps=10, local_views=local_views)
  return float(value)


def test_mocov3_contrasts_each_views_queries_with_the_other_views_keys():
  """The method's loss from the model's outputs: 2t [ctr(q1, k2) + ctr(q2, k1)] with q the
  online predictions and k the momentum network's projections. Pairing a view with its own
  keys (a trivial positive) or dropping the 2t gives another value."""
  config = sgd_config("mocov3", temperature=0.2)
  model, state = fresh_state(config)
  view1, view2 = random_views()
  q1, q2 = (np.asarray(model.apply({"params": state.params}, v, predict=True)[1], np.float64)
            for v in (view1, view2))
  momentum = {"params": state.method_state["momentum_params"]}
  k1, k2 = (np.asarray(model.apply(momentum, v)[1], np.float64) for v in (view1, view2))
  t = config.temperature
  expected = 2 * t * (ctr_numpy(q1, k2, t) + ctr_numpy(q2, k1, t))
  got = method_loss("mocov3", config, state, view1, view2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 logits up to 5
  same_view = 2 * t * (ctr_numpy(q1, k1, t) + ctr_numpy(q2, k2, t))
  assert abs(same_view - expected) > 1e-3 and abs(expected / (2 * t) - expected) > 1e-3


def test_nnclr_contrasts_each_views_neighbours_with_the_other_views_predictions():
  """The method's loss from the model's outputs: [ctr(NN(z1), p2) + ctr(NN(z2), p1)] / 2,
  NN the nearest row of the support set. Pairing a neighbour with its own view's
  predictions gives another value."""
  config = sgd_config("nnclr", temperature=0.2, queue_size=64)
  model, state = fresh_state(config)
  view1, view2 = random_views()
  (z1, p1), (z2, p2) = (
      jax.tree.map(lambda x: np.asarray(x, np.float64),
                   model.apply({"params": state.params}, v, predict="both")[1])
      for v in (view1, view2))
  support = np.asarray(state.method_state["support_set"], np.float64)
  n1, n2 = nearest_numpy(z1, support), nearest_numpy(z2, support)
  t = config.temperature
  expected = 0.5 * (ctr_numpy(n1, p2, t) + ctr_numpy(n2, p1, t))
  np.testing.assert_allclose(method_loss("nnclr", config, state, view1, view2), expected,
                             rtol=1e-5)
  same_view = 0.5 * (ctr_numpy(n1, p1, t) + ctr_numpy(n2, p2, t))
  assert abs(same_view - expected) > 1e-3


def test_simsiam_gradient_does_not_flow_into_its_targets():
  """SimSiam's step: the gradient equals that of the loss with the projections fed back as
  constants (their stop-gradient), and differs from the loss without it."""
  config = sgd_config("simsiam")
  model = models.create_model(config)
  state = train_step_lib.create_train_state(
      model, train_step_lib.create_optimizer(config, 10, 10), jax.random.key(0), (28, 28, 1),
      config)
  rng = np.random.default_rng(2)
  view1, view2 = (jnp.float32(rng.random((8, 28, 28, 1))) for _ in range(2))
  method = methods.get("simsiam")
  grad, _ = jax.grad(functools.partial(method.loss, state=state, view1=view1, view2=view2,
                                       batch=None, config=config, axis_name=None,
                                       schedule_steps=10, local_views=None),
                     has_aux=True)(state.params)

  def loss(params, targets):
    (_, p1), (_, p2) = (model.apply({"params": params}, v, predict="both")[1]
                        for v in (view1, view2))
    return 0.5 * (losses.negative_cosine(p1, targets[1]) + losses.negative_cosine(p2, targets[0]))
  targets = [model.apply({"params": state.params}, v)[1] for v in (view1, view2)]
  expected = jax.grad(loss)(state.params, targets)
  through = jax.grad(lambda p: loss(p, [model.apply({"params": p}, v)[1]
                                        for v in (view1, view2)]))(state.params)
  for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  difference = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(expected), jax.tree.leaves(through)))
  assert difference > 1e-4
