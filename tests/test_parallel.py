"""Cross-device parity: N simulated CPU devices against one device holding the global batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import augment
from cl_jax import losses
from cl_jax import models
from cl_jax import parallel
from cl_jax import train_step as train_step_lib
from configs import mnist_seed

# float32 sums in a different order across devices: 1e-5 relative, as the issue asks.
RTOL = 1e-5


def linear_embedding_loss(w, batch, axis_name):
  return losses.nt_xent(batch["x1"] @ w, batch["x2"] @ w, 0.2, axis_name)


def per_device_loss_and_grad(w, batch, rng, loss_fn=linear_embedding_loss):
  del rng
  loss, grad = jax.value_and_grad(loss_fn)(w, batch, parallel.AXIS)
  loss, grad = jax.lax.pmean((loss, grad), parallel.AXIS)
  return grad, {"loss": loss}


def linear_problem(n=32, d_in=12, d_out=6):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(d_in, d_out)).astype(np.float32)
  batch = {"x1": rng.normal(size=(n, d_in)).astype(np.float32),
           "x2": rng.normal(size=(n, d_in)).astype(np.float32)}
  return w, batch


@pytest.mark.parametrize("mode", parallel.MODES)
@pytest.mark.parametrize("num_devices", [2, 4, 8])
def test_nt_xent_loss_and_gradient_match_one_device(mode, num_devices):
  w, batch = linear_problem()
  loss, grad = jax.jit(jax.value_and_grad(linear_embedding_loss), static_argnums=2)(
      w, batch, None)
  dp = parallel.DataParallel(per_device_loss_and_grad, mode, jax.devices()[:num_devices])
  grad_n, metrics = dp.step(dp.put_state(w), batch, jax.random.key(0))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=RTOL)
  np.testing.assert_allclose(dp.get_state(grad_n), grad, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("num_devices", [4, 8])
def test_sharded_nt_xent_gradient_matches_finite_differences_of_the_global_loss(num_devices):
  """The product's per-device NT-Xent (all-gathered negatives, pmean of local gradients)
  against central differences of the global-batch loss in float64 NumPy. Negatives
  treated as constants on other devices (no gradient back through the gather) would
  miss (N-1)/N of the negative terms' gradient paths and fail by far more than 1e-3."""
  from tests.test_losses import ntxent_numpy, numeric_grad  # pylint: disable=g-import-not-at-top
  w, batch = linear_problem()
  dp = parallel.DataParallel(per_device_loss_and_grad, "shard_map",
                             jax.devices()[:num_devices])
  grad, _ = dp.step(dp.put_state(w), batch, jax.random.key(0))
  x1, x2 = (batch[k].astype(np.float64) for k in ("x1", "x2"))
  expected = numeric_grad(lambda v: ntxent_numpy(x1 @ v, x2 @ v, 0.2), w.astype(np.float64))
  # float32 against float64 differences: 1e-4 relative to the gradient's scale.
  np.testing.assert_allclose(dp.get_state(grad), expected, rtol=1e-3,
                             atol=1e-4 * np.abs(expected).max())


def test_views_are_the_same_on_one_and_on_n_devices():
  config = mnist_seed.get_config()
  images = (np.random.default_rng(5).random((16, 28, 28, 1)) * 255).astype(np.uint8)
  index = np.arange(100, 116, dtype=np.int32)
  rng = jax.random.key(3)

  def views(_, batch, rng):
    keys = train_step_lib.example_keys(rng, batch["index"])
    view1, view2 = augment.two_views(batch["image"], keys, config.augment)
    return None, {"view1": view1, "view2": view2}

  one = jax.jit(views)(None, {"image": images, "index": index}, rng)[1]
  dp = parallel.DataParallel(views, "shard_map", jax.devices()[:4])
  # Gather the per-device views through out_specs P() by all-gathering them.
  def gathered(state, batch, rng):
    _, out = views(state, batch, rng)
    return state, jax.tree.map(lambda v: jax.lax.all_gather(v, parallel.AXIS, tiled=True), out)
  dp = parallel.DataParallel(gathered, "shard_map", jax.devices()[:4])
  _, many = dp.step(dp.put_state(np.zeros(())), {"image": images, "index": index}, rng)
  np.testing.assert_allclose(many["view1"], one["view1"], atol=1e-6)
  np.testing.assert_allclose(many["view2"], one["view2"], atol=1e-6)


def run_train_steps(config, mode, num_devices, num_steps=3):
  """A few SimCLR steps, with the online probe, on fixed random images whose first 8 have no
  label (the first device's whole shard on 4 devices); returns host params and losses, and
  the probe's parameters and losses."""
  model = models.create_model(config)
  tx = train_step_lib.create_optimizer(config, steps_per_epoch=10, schedule_steps=10)
  state = train_step_lib.create_train_state(model, tx, jax.random.key(0), (28, 28, 1), config,
                                            num_classes=10)
  step_fn = functools.partial(train_step_lib.train_step, config=config,
                              axis_name=parallel.AXIS)
  dp = parallel.DataParallel(step_fn, mode, jax.devices()[:num_devices])
  state = dp.put_state(state)
  images = (np.random.default_rng(6).random((num_steps, 32, 28, 28, 1)) * 255).astype(np.uint8)
  labels = np.random.default_rng(7).integers(0, 10, (num_steps, 32)).astype(np.int32)
  labels[:, :8] = -1
  losses_seen, probe_losses = [], []
  for step in range(num_steps):
    batch = {"image": images[step], "index": np.arange(32, dtype=np.int32) + 32 * step,
             "label": labels[step]}
    state, metrics = dp.step(state, batch, jax.random.fold_in(jax.random.key(1), step))
    losses_seen.append(float(metrics["loss"]))
    probe_losses.append(float(metrics["probe_loss"]))
  host = dp.get_state(state)
  return host.params, losses_seen, host.probe["params"], probe_losses


def sgd_config():
  config = mnist_seed.get_config()
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  return config


@pytest.fixture(scope="module")
def one_device_runs():
  return {name: run_train_steps(make(), "shard_map", 1)
          for name, make in (("adam", mnist_seed.get_config), ("sgd", sgd_config))}


@pytest.mark.parametrize("mode,num_devices", [("shard_map", 4), ("pmap", 4)])
def test_train_steps_match_one_device(one_device_runs, mode, num_devices):
  # SGD: parameter differences are lr times gradient differences, so RTOL holds.
  params, losses_seen, probe, probe_losses = run_train_steps(sgd_config(), mode, num_devices)
  params_1, losses_1, probe_1, probe_losses_1 = one_device_runs["sgd"]
  np.testing.assert_allclose(losses_seen, losses_1, rtol=RTOL)
  for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)
  # The probe's loss is over the global batch's labelled rows: a probe trained per device
  # (or a mean of per-device means) gives other losses after the first step (log 10).
  np.testing.assert_allclose(probe_losses, probe_losses_1, rtol=RTOL)
  for got, expected in zip(jax.tree.leaves(probe), jax.tree.leaves(probe_1)):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # Adam steps of 1e-3
  # Adam divides by sqrt(v): for near-zero gradient entries the update direction
  # amplifies summation-order noise, and a max-pool window whose two largest inputs
  # are within rounding of each other can pick its winner differently (one input's
  # gradient goes to its neighbour). Either moves an entry by at most one step of
  # lr = 1e-3 per step; seen here: all but 1 of 200,704 dense weights within 3e-5,
  # that one 1.7e-4 apart. A wrong negative set or key changes the losses (RTOL)
  # and most parameters.
  params, losses_seen, _, _ = run_train_steps(mnist_seed.get_config(), mode, num_devices)
  params_1, losses_1, _, _ = one_device_runs["adam"]
  np.testing.assert_allclose(losses_seen, losses_1, rtol=RTOL)
  for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(params_1)):
    difference = np.abs(np.asarray(got) - np.asarray(expected))
    assert difference.max() <= 3 * 1e-3, difference.max()  # 3 steps of lr
    assert np.mean(difference > 1e-4) <= 1e-4, np.mean(difference > 1e-4)
