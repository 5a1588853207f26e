"""cl_jax.online_probe against a float64 NumPy transcription, on 4 devices against 1, and
inside the train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from cl_jax import models
from cl_jax import online_probe
from cl_jax import train_step as train_step_lib
from configs import mnist_seed


def reference(kernel, bias, features, labels):
  """float64 mean cross-entropy over the rows with a label >= 0, its analytic gradient
  X^T (softmax - onehot) / count, and the accuracy on those rows."""
  x = features.astype(np.float64)
  logits = x @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  rows = labels >= 0
  count = max(rows.sum(), 1)
  onehot = np.eye(kernel.shape[1])[np.maximum(labels, 0)]
  loss = -np.sum(np.log(p[np.arange(len(labels)), np.maximum(labels, 0)])[rows]) / count
  delta = (p - onehot) * rows[:, None] / count
  accuracy = np.sum((np.argmax(logits, axis=1) == labels)[rows]) / count
  return loss, {"kernel": x.T @ delta, "bias": delta.sum(0)}, accuracy


def problem(n=64, width=12, classes=5, seed=0):
  """ReLU-like features (a third exactly zero, one row all zero), labels with -1 rows and
  non-zero parameters."""
  rng = np.random.default_rng(seed)
  features = np.maximum(rng.normal(size=(n, width)), 0).astype(np.float32)
  features[3] = 0.0
  labels = rng.integers(0, classes, n).astype(np.int32)
  labels[rng.random(n) < 0.3] = -1
  params = {"kernel": rng.normal(size=(width, classes)).astype(np.float32) * 0.5,
            "bias": rng.normal(size=classes).astype(np.float32) * 0.1}
  return params, features, labels


def test_loss_gradient_and_accuracy_match_numpy_and_finite_differences():
  params, features, labels = problem()
  loss, grads, accuracy = online_probe.loss_and_grads(params, features, labels)
  want_loss, want_grads, want_accuracy = reference(
      params["kernel"].astype(np.float64), params["bias"].astype(np.float64), features, labels)
  # float32 against float64: a loss of ~2 to 1e-6, gradients of ~0.1 to 1e-6.
  assert float(loss) == pytest.approx(want_loss, rel=1e-6)
  assert float(accuracy) == pytest.approx(want_accuracy, abs=1e-7)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(grads[name], want_grads[name], atol=1e-6)
  # The analytic gradient against central differences of the float64 loss (h = 1e-6).
  kernel, bias = params["kernel"].astype(np.float64), params["bias"].astype(np.float64)
  for (i, j) in ((0, 0), (5, 3), (11, 4)):
    step = np.zeros_like(kernel)
    step[i, j] = 1e-6
    numeric = (reference(kernel + step, bias, features, labels)[0]
               - reference(kernel - step, bias, features, labels)[0]) / 2e-6
    assert numeric == pytest.approx(want_grads["kernel"][i, j], abs=1e-7)


def test_rows_without_a_label_change_nothing():
  params, features, labels = problem()
  unlabelled = labels < 0
  other = features.copy()
  other[unlabelled] = 100.0  # anything at all in the rows without a label
  for a, b in zip(online_probe.loss_and_grads(params, features, labels),
                  online_probe.loss_and_grads(params, other, labels)):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_four_devices_equal_one_with_unequal_labelled_shares():
  """The mean is over the global batch's labelled rows: device 0's shard has none, the
  others different counts. Per-device means averaged (pmean) would weigh them equally and
  differ by far more than the tolerance."""
  params, features, labels = problem(n=64)
  labels[:16] = -1  # device 0's shard
  labels[16:24] = 1  # device 1: all 16 rows labelled
  one = online_probe.loss_and_grads(params, features, labels)
  mesh = Mesh(np.array(jax.devices()[:4]), ("batch",))
  mapped = jax.jit(jax.shard_map(
      functools.partial(online_probe.loss_and_grads, axis_name="batch"), mesh=mesh,
      in_specs=(P(), P("batch"), P("batch")), out_specs=P(),
      check_vma=False))  # as cl_jax.parallel maps the train step: per-device gradients
  four = mapped(params, features, labels)
  for a, b in zip(jax.tree.leaves(four), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def probe_step_inputs():
  config = mnist_seed.get_config()
  model = models.create_model(config)
  tx = train_step_lib.create_optimizer(config, 10, 10)
  with_probe = train_step_lib.create_train_state(model, tx, jax.random.key(0), (28, 28, 1),
                                                 config, num_classes=10)
  rng = np.random.default_rng(1)
  batch = {"image": (rng.random((16, 28, 28, 1)) * 255).astype(np.uint8),
           "index": np.arange(16, dtype=np.int32),
           "label": np.where(np.arange(16) < 4, -1, rng.integers(0, 10, 16)).astype(np.int32)}
  return config, with_probe, batch


def test_the_train_step_trains_the_probe_on_its_features_and_never_the_encoder(
    probe_step_inputs):
  config, with_probe, batch = probe_step_inputs
  step = jax.jit(functools.partial(train_step_lib.train_step, config=config))
  key = jax.random.key(3)
  trained, metrics = step(with_probe, batch, key)
  without, plain_metrics = step(with_probe.replace(probe=None), batch, key)
  # The encoder's update is the same with and without the probe (its loss is not the
  # method's); float32 rounding of one program against another only.
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(without.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(metrics["loss"]) == pytest.approx(float(plain_metrics["loss"]), rel=1e-6)
  assert "probe_loss" not in plain_metrics
  # The probe's loss is the cross-entropy of its (zero) parameters on the step's features:
  # log(10) whatever the features, and its parameters moved.
  assert float(metrics["probe_loss"]) == pytest.approx(np.log(10), rel=1e-6)
  assert np.abs(np.asarray(trained.probe["params"]["kernel"])).max() > 0
