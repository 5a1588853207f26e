"""Batch normalisation over the global batch: statistics against NumPy, the train step on 4
devices against 1 (forward, gradients, running averages; shard_map and pmap), bf16, and
the running averages in evaluation and checkpoints. (2 processes x 2 devices against
1 x 4: tests/test_multihost.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from cl_jax import checkpointing
from cl_jax import data
from cl_jax import evaluation
from cl_jax import models
from cl_jax import parallel
from cl_jax import train_step as train_step_lib
from cl_jax import trainer
from configs import mnist_seed
from tests.test_trainer import quick_config

EPSILON = 1e-5  # models.batch_norm's


def sparse_activations(rng, shards=4, n=8):
  """[shards * n, 5, 5, 3] activations shaped like MNIST's after a conv + ReLU: mostly exact
  zeros, channel 1 constant (its variance is 0), and each shard offset by its index so that
  statistics over one shard differ from the global batch's."""
  x = np.where(rng.random((shards * n, 5, 5, 3)) < 0.8, 0.0, rng.random((shards * n, 5, 5, 3)))
  x[..., 1] = 0.25
  x[..., 2] += np.repeat(np.arange(shards), n)[:, None, None]
  return x.astype(np.float32)


def numpy_batch_norm(x, momentum=0.9):
  """Training-mode BN at initialisation (scale 1, bias 0, averages 0 and 1), in float64:
  (output, running mean, running variance). The variance is the biased one, as Flax's."""
  x = np.asarray(x, np.float64)
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  return ((x - mean) / np.sqrt(var + EPSILON), (1 - momentum) * mean,
          momentum * 1.0 + (1 - momentum) * var)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_statistics_span_the_global_batch_and_match_numpy(dtype):
  x = sparse_activations(np.random.default_rng(0))
  variables = models.batch_norm(dtype, None, False, 0.9).init(jax.random.key(0), x[:1])
  mesh = Mesh(np.array(jax.devices()[:4]), (parallel.AXIS,))

  def per_device(variables, shard):
    y, updates = models.batch_norm(dtype, parallel.AXIS, True, 0.9).apply(
        variables, shard, mutable=["batch_stats"])
    return y, updates["batch_stats"]
  y, stats = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                                   out_specs=(P(parallel.AXIS), P()), check_vma=False))(
                                       variables, jnp.asarray(x, dtype))
  # The reference sees the input as the model does: rounded to `dtype` first.
  expected_y, expected_mean, expected_var = numpy_batch_norm(np.asarray(jnp.asarray(x, dtype),
                                                                        np.float32))
  assert stats["mean"].dtype == stats["var"].dtype == jnp.float32  # float32 under bf16 too
  # float32 statistics of 800 values per channel: 1e-6. The output is in `dtype`: bf16
  # keeps 8 bits (relative 4e-3 of values up to ~3 standard deviations).
  np.testing.assert_allclose(stats["mean"], expected_mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(stats["var"], expected_var, rtol=1e-6, atol=1e-7)
  atol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.asarray(y, np.float32), expected_y, rtol=0, atol=atol)
  assert np.all(np.asarray(y)[..., 1] == 0)  # a constant channel normalises to exactly 0
  # Per-shard statistics would be far from these (the shards are offset by 0..3).
  shard_mean = numpy_batch_norm(x[:8])[1]
  assert abs(shard_mean[2] - expected_mean[2]) > 0.1


def bn_config(method):
  config = mnist_seed.get_config()
  config.method = method
  config.model.norm = config.model.head_norm = config.model.predictor_norm = "batch"
  config.optimizer, config.learning_rate = "sgd", 0.05  # SGD: updates are -lr x gradient
  return config


@pytest.fixture(scope="module")
def mnist_images(mnist_data_dir):
  """96 real training images (mostly exact zeros) and their labels."""
  split = data.load_split("mnist", "train", mnist_data_dir, 96)
  return split.images, split.labels


def run_steps(config, images, labels, num_devices, mode="shard_map", num_steps=3):
  """`num_steps` steps of 32 images; returns the initial host state, the host state after
  each step, and the losses."""
  model = models.create_model(config)
  tx = train_step_lib.create_optimizer(config, steps_per_epoch=10, schedule_steps=10)
  initial = train_step_lib.create_train_state(model, tx, jax.random.key(0), images.shape[1:],
                                              config)
  step_fn = functools.partial(train_step_lib.train_step, config=config,
                              axis_name=parallel.AXIS, schedule_steps=10)
  dp = parallel.DataParallel(step_fn, mode, jax.devices()[:num_devices])
  state = dp.put_state(jax.device_get(initial))
  states, seen = [], []
  for step in range(num_steps):
    rows = slice(32 * step, 32 * (step + 1))
    batch = {"image": images[rows], "label": labels[rows],
             "index": np.arange(rows.start, rows.stop, dtype=np.int32)}
    state, metrics = dp.step(state, batch, jax.random.fold_in(jax.random.key(1), step))
    states.append(dp.get_state(state))
    seen.append(float(metrics["loss"]))
  return jax.device_get(initial), states, seen


def assert_trees_close(got, expected, name, rtol, atol):
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                               err_msg=f"{name}{jax.tree_util.keystr(path)}")


def assert_four_devices_equal_one(config, initial, one, losses_one, four, losses_four):
  """float32 sums in another order: 1e-5 relative on the losses; the gradient is
  -(params after step 1 - params before) / lr (SGD)."""
  np.testing.assert_allclose(losses_four, losses_one, rtol=1e-5)
  gradient = lambda state: jax.tree.map(lambda new, old: (old - new) / config.learning_rate,
                                        state.params, initial.params)
  assert_trees_close(gradient(four[0]), gradient(one[0]), "gradient", rtol=1e-3, atol=1e-5)
  assert_trees_close(four[-1].params, one[-1].params, "params", rtol=1e-4, atol=1e-6)
  assert_trees_close(four[-1].batch_stats, one[-1].batch_stats, "batch_stats", rtol=1e-4,
                     atol=1e-6)


@pytest.mark.parametrize("method,mode", [("simclr", "shard_map"), ("byol", "shard_map"),
                                         ("simclr", "pmap")])
def test_train_step_on_four_devices_equals_one(mnist_images, method, mode):
  """BN in the encoder, the head (and BYOL's predictor and target): the same global batch on
  4 devices and on 1 gives the same losses, first-step gradients, parameters and running
  averages (the target network's too). Statistics of each device's shard alone fail this."""
  config = bn_config(method)
  initial, one, losses_one = run_steps(config, *mnist_images, 1)
  _, four, losses_four = run_steps(config, *mnist_images, 4, mode)
  assert_four_devices_equal_one(config, initial, one, losses_one, four, losses_four)
  if method == "byol":
    assert_trees_close(four[-1].method_state, one[-1].method_state, "target", rtol=1e-4,
                       atol=1e-6)
    # The target's averages come from its own forward passes, not a copy of the online ones.
    online = jax.tree.leaves(four[-1].batch_stats)
    target = jax.tree.leaves(four[-1].method_state["momentum_batch_stats"])
    assert not all(np.array_equal(a, b) for a, b in zip(online, target))


def test_evaluation_uses_the_running_averages(mnist_images):
  """Embedding applies BN with the running averages: equal to a NumPy forward pass of the
  head's normalisation from the stored averages, and changed when they change."""
  config = bn_config("simclr")
  _, states, _ = run_steps(config, *mnist_images, 1, num_steps=2)
  variables = train_step_lib.eval_variables(states[-1])
  model = models.create_model(config)
  images = mnist_images[0][:40]
  features, projections = evaluation.embed(model, variables, images, batch_size=16,
                                           devices=jax.devices()[:2])
  # The head by hand from the features: Dense -> BN(running averages) -> ReLU -> Dense.
  head = variables["params"]["head"]
  stats = variables["batch_stats"]["head"]["BatchNorm_0"]
  scale_bias = head["BatchNorm_0"]
  hidden = np.asarray(features, np.float64) @ head["Dense_0"]["kernel"] + head["Dense_0"]["bias"]
  hidden = ((hidden - stats["mean"]) / np.sqrt(stats["var"] + EPSILON) * scale_bias["scale"]
            + scale_bias["bias"])
  expected = np.maximum(hidden, 0) @ head["Dense_1"]["kernel"] + head["Dense_1"]["bias"]
  # float32 forward pass against float64 from the same features: 1e-4 relative.
  np.testing.assert_allclose(projections, expected, rtol=1e-4, atol=1e-4)
  shifted = jax.tree.map(lambda v: v + 1.0, variables["batch_stats"])
  _, moved = evaluation.embed(model, {**variables, "batch_stats": shifted}, images,
                              batch_size=16, devices=jax.devices()[:2])
  assert np.max(np.abs(moved - projections)) > 1e-2


@pytest.mark.slow
def test_running_averages_are_checkpointed_and_resumed(mnist_data_dir, tmp_path):
  """A BN run stopped at step 8 and resumed ends with the parameters and running averages
  of an uninterrupted one, bit for bit, and the evaluation restores the averages."""
  overrides = dict(max_train_examples=1024, batch_size=64, num_epochs=1, log_every_steps=4,
                   checkpoint_every_steps=8, num_devices=2)
  config = quick_config(mnist_data_dir, **overrides)
  config.model.norm = config.model.head_norm = "batch"
  whole = trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  config.max_steps = 8
  trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.max_steps = -1
  resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == 8
  assert resumed["params_sha256"] == whole["params_sha256"]
  trees = [checkpointing.Checkpointer(str(tmp_path / name)).restore_tree(16)
           for name in ("whole", "resumed")]
  jax.tree.map(np.testing.assert_array_equal, trees[0]["batch_stats"], trees[1]["batch_stats"])
  # The averages moved from their initial values (0 and 1) during training.
  assert np.max(np.abs(trees[0]["batch_stats"]["encoder"]["BatchNorm_0"]["mean"])) > 1e-3
  from cl_jax import evaluator  # pylint: disable=g-import-not-at-top
  step, variables, _ = evaluator.restore_variables(str(tmp_path / "whole"))
  assert step == 16
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], trees[0]["batch_stats"])
