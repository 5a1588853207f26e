"""DINO and SwAV (and the prototypes their heads end in): the losses against float64 NumPy
transcriptions of the papers' Algorithm 1 and solo-learn's code, finite-difference
gradients, DINO's teacher temperature schedule, the statistics that span the global batch
(DINO's centre, SwAV's Sinkhorn assignments) on 4 devices against 1 and far from their
per-device versions, each method's wiring from the model's outputs, and train steps on 4
devices against 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from cl_jax import evaluation
from cl_jax import losses
from cl_jax import methods
from cl_jax import models
from cl_jax import parallel
from cl_jax import train_step
from cl_jax.methods import dino
from tests.test_method_zoo import assert_four_devices_equal_one
from tests.test_method_zoo import fresh_state
from tests.test_method_zoo import method_loss
from tests.test_method_zoo import random_views
from tests.test_method_zoo import sgd_config
from tests.test_methods import numeric_grad
from tests.test_methods import unit_rows


def softmax_numpy(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def dino_numpy(student, teacher, centre, student_temperature, teacher_temperature):
  """solo-learn's DINOLoss.forward (the paper's Algorithm 1 for two views): for each
  teacher view iq and student view iv != iq, the batch mean of -sum q log p; averaged."""
  total, terms = 0.0, 0
  for iq, t in enumerate(teacher):
    q = softmax_numpy((t - centre) / teacher_temperature)
    for iv, s in enumerate(student):
      if iv == iq:
        continue
      log_p = np.log(softmax_numpy(s / student_temperature))
      total += np.mean(-np.sum(q * log_p, axis=1))
      terms += 1
  return total / terms


def score_problem(n=6, k=5, views=2, seed=0):
  """Scores in [-1, 1] as the prototypes give, with ties: two prototypes with equal scores
  for every example (a constant difference) and one example whose scores are all equal."""
  rng = np.random.default_rng(seed)
  student = np.tanh(rng.normal(size=(views, n, k)))
  teacher = np.tanh(rng.normal(size=(2, n, k)))
  student[:, :, 1] = student[:, :, 0]
  teacher[:, :, 1] = teacher[:, :, 0]
  student[:, 0] = teacher[:, 0] = 0.25
  centre = 0.1 * rng.normal(size=k)
  return student, teacher, centre


def test_dino_loss_matches_numpy():
  """Two views (Algorithm 1) and four student views of which the first two are the
  teacher's (the multi-crop shape: 2 x 3 pairs, the same-view pairs skipped)."""
  for views, temperatures in ((2, (0.1, 0.04)), (4, (0.1, 0.07)), (2, (1.0, 1.0))):
    student, teacher, centre = score_problem(views=views, seed=views)
    got = losses.dino_cross_entropy(jnp.float32(student), jnp.float32(teacher),
                                    jnp.float32(centre), *temperatures)
    # Logits up to 1 / 0.04 = 25 in float32: 1e-5 relative.
    np.testing.assert_allclose(got, dino_numpy(student, teacher, centre, *temperatures),
                               rtol=2e-5)


def test_dino_gradient_matches_finite_differences():
  student, teacher, centre = score_problem(seed=3)
  grad = jax.grad(losses.dino_cross_entropy)(jnp.float32(student), jnp.float32(teacher),
                                             jnp.float32(centre), 0.1, 0.04)
  expected = numeric_grad(lambda s: dino_numpy(s, teacher, centre, 0.1, 0.04), student)
  # float32 gradients against float64 central differences; the scale is the largest entry's.
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4 * np.max(np.abs(expected)))


def test_teacher_temperature_warms_up_linearly_then_holds():
  config = sgd_config("dino", dino_teacher_temperature=(0.04, 0.07),
                      dino_teacher_warmup_epochs=2.0)
  config.num_epochs = 4  # 2 of 4 epochs of a 100-step schedule: 50 steps of warm-up
  got = [float(dino.teacher_temperature(config, step, 100)) for step in (0, 25, 50, 99)]
  np.testing.assert_allclose(got, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  config.dino_teacher_warmup_epochs = 0.0
  assert float(dino.teacher_temperature(config, 0, 100)) == 0.07


def centres_on_four_devices(state, config, scores, statistics_axis):
  """DINO's after_step on 4 devices, each holding a quarter of the examples of `scores`
  [2, N, K]; returns each device's new centre [4, K]. `statistics_axis=None` computes the
  batch's mean per device instead."""
  method = dino.DINO()
  mesh = Mesh(np.array(jax.devices()[:4]), (parallel.AXIS,))

  def per_device(state, scores):
    axis = parallel.AXIS if statistics_axis else None
    new = method.after_step(state, 0, {"teacher_scores": scores}, config, 10, axis)
    return new.method_state["centre"][None]
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(None, parallel.AXIS)),
                         out_specs=P(parallel.AXIS), check_vma=False)
  return np.asarray(jax.jit(mapped)(state, jnp.float32(scores)))


def test_dino_centre_spans_the_global_batch():
  """C <- 0.9 C + 0.1 mean of the teacher's scores of both views over the global batch: the
  same on 4 devices as on 1 (float64 NumPy reference), and each device's own mean (shards
  shifted apart on purpose) far from it."""
  config = sgd_config("dino", dino_centre_momentum=0.9)
  _, state = fresh_state(config)
  rng = np.random.default_rng(4)
  width = state.method_state["centre"].shape[0]
  start = 0.1 * rng.normal(size=width)
  state = state.replace(method_state={**state.method_state, "centre": jnp.float32(start)})
  shift = np.repeat(np.arange(4), 4)[None, :, None]  # 16 examples, 4 per device
  scores = np.tanh(rng.normal(size=(2, 16, width)) * 0.3 + 0.4 * shift - 0.6)
  expected = 0.9 * start + 0.1 * scores.reshape(-1, width).mean(axis=0)
  centres = centres_on_four_devices(state, config, scores, statistics_axis=True)
  for centre in centres:
    np.testing.assert_allclose(centre, expected, rtol=1e-5, atol=1e-6)  # float32 sums
  local = centres_on_four_devices(state, config, scores, statistics_axis=False)
  assert np.min(np.max(np.abs(local - expected), axis=1)) > 0.01, local - expected


def test_dino_distils_each_views_teacher_into_the_other_views_student():
  """The method's loss from the model's outputs: the student's prototype scores of both
  views against the momentum network's (perturbed here, so that teacher != student), with
  the state's centre and the teacher's temperature at the state's step. Pairing each view
  with its own teacher gives another value."""
  config = sgd_config("dino", dino_teacher_warmup_epochs=5.0)  # 5 of 10 epochs: 5 steps
  model, state = fresh_state(config)
  rng = np.random.default_rng(8)
  momentum = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32),
                          state.method_state["momentum_params"])
  centre = 0.05 * rng.normal(size=state.method_state["centre"].shape)
  state = state.replace(step=3, method_state={**state.method_state, "momentum_params": momentum,
                                              "centre": jnp.float32(centre)})
  view1, view2 = random_views()
  student = np.stack([np.asarray(model.apply({"params": state.params}, v, predict=True)[1], np.float64)
                      for v in (view1, view2)])
  teacher = np.stack([np.asarray(model.apply({"params": momentum}, v, predict=True)[1], np.float64)
                      for v in (view1, view2)])
  temperature = 0.04 + 0.03 * 3 / 5
  expected = dino_numpy(student, teacher, centre, 0.1, temperature)
  got = method_loss("dino", config, state, view1, view2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 logits up to 1 / 0.046
  same_view = dino_numpy(student, teacher[::-1], centre, 0.1, temperature)
  assert abs(same_view - expected) > 1e-3
  at_start = dino_numpy(student, teacher, centre, 0.1, 0.04)
  assert abs(at_start - expected) > 1e-3


def test_multi_crop_local_views_are_student_views_only():
  """DINO and SwAV with two local views: the students' (or predictions') scores of the two
  global then the two local views against the targets of the global views only (NumPy
  over the model's outputs), and not what dropping the local views gives."""
  rng = np.random.default_rng(15)
  view1, view2 = random_views()
  local = jnp.float32(rng.random((2, 8, 28, 28, 1)))
  views = [view1, view2, local[0], local[1]]
  for name in ("dino", "swav"):
    config = sgd_config(name)
    config.augment.local_crops = 2
    model, state = fresh_state(config)
    scores = np.stack([np.asarray(model.apply({"params": state.params}, v, predict=True)[1], np.float64)
                       for v in views])
    if name == "dino":
      targets = scores[:2]  # the teacher starts equal to the student; centre 0
      expected = dino_numpy(scores, targets, 0.0, 0.1, config.dino_teacher_temperature[1])
      two_views = dino_numpy(scores[:2], targets, 0.0, 0.1, config.dino_teacher_temperature[1])
    else:
      assignments = np.stack([sinkhorn_numpy(s) for s in scores[:2]])
      expected = swav_numpy(scores, assignments, 0.1)
      two_views = swav_numpy(scores[:2], assignments, 0.1)
    got = method_loss(name, config, state, view1, view2, local_views=local)
    np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)
    assert abs(two_views - expected) > 1e-4, name


def test_prototype_scores_are_cosines_with_unit_prototypes():
  x = np.random.default_rng(9).normal(size=(5, 8))
  x[0] = 0.0  # a zero input scores 0 everywhere
  layer = models.Prototypes(7)
  params = layer.init(jax.random.key(0), jnp.float32(x))
  kernel = np.asarray(params["params"]["kernel"], np.float64)
  expected = np.zeros((5, 7))
  expected[1:] = unit_rows(x[1:]) @ unit_rows(kernel.T).T
  np.testing.assert_allclose(layer.apply(params, jnp.float32(x)), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_evaluation_reads_the_heads_projections_not_the_prototype_scores(name):
  """The monitor's and the evaluation's "projection" metrics embed with `predict=False`:
  that is the head's output (projection_dim wide), computed here from the head's own
  layers; the prototype scores (model.prototypes wide) are the loss's business only."""
  config = sgd_config(name)
  model, state = fresh_state(config)
  images = np.random.default_rng(4).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
  features, projections = evaluation.embed(model, {"params": state.params}, images, 12)
  head = lambda f: model.apply({"params": state.params}, f, method=lambda m, f: m.head(f))
  assert projections.shape == (12, config.model.projection_dim) != (12, config.model.prototypes)
  np.testing.assert_allclose(projections, head(jnp.float32(features)), rtol=1e-5, atol=1e-6)
  # Any initialisation makes the prototypes, whichever outputs it asks for.
  for predict in (False, True):
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), predict=predict)["params"]
    assert params["prototypes"]["kernel"].shape == state.params["prototypes"]["kernel"].shape


def test_dino_train_steps_on_four_devices_equal_one():
  """Three train steps with BatchNorm in the head: losses, parameters, the teacher and
  its BN averages, and the centre equal on 4 devices and on 1, through the warm-up of
  the teacher's temperature."""
  config = sgd_config("dino", dino_teacher_warmup_epochs=5.0)
  config.model.head_norm = "batch"
  one = assert_four_devices_equal_one(config)
  assert np.max(np.abs(one.method_state["centre"])) > 1e-3  # the centre moved


def sinkhorn_numpy(scores, epsilon=0.05, iterations=3):
  """solo-learn's SinkhornKnopp.forward on one process, in float64."""
  q = np.exp(scores / epsilon).T
  prototypes, count = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= prototypes
    q /= q.sum(axis=0, keepdims=True)
    q /= count
  return (q * count).T


def swav_numpy(scores, assignments, temperature):
  """solo-learn's swav_loss_func: each view's assignments against every other view's
  log-softmax of scores / T, averaged over the pairs."""
  total, terms = 0.0, 0
  for i, a in enumerate(assignments):
    for v, p in enumerate(scores):
      if v != i:
        total += -np.mean(np.sum(a * np.log(softmax_numpy(p / temperature)), axis=1))
        terms += 1
  return total / terms


def sharded_scores(n=16, k=6, seed=10):
  """Cosine scores of 16 examples whose 4 device shards favour different prototypes: a
  per-device equipartition is far from the global one."""
  rng = np.random.default_rng(seed)
  scores = np.tanh(rng.normal(size=(n, k)) * 0.5)
  shard = np.repeat(np.arange(4), n // 4)
  scores[np.arange(n), shard] += 0.6  # device d's examples lean to prototype d
  return np.clip(scores, -1, 1)


def test_sinkhorn_matches_numpy_and_assigns_each_example_once():
  scores = sharded_scores()
  queue = np.tanh(np.random.default_rng(11).normal(size=(20, 6)))
  got = losses.sinkhorn_knopp(jnp.float32(scores), 0.05, 3)
  expected = sinkhorn_numpy(scores)
  # exp(20)-scaled float32 through 3 scalings: 1e-5 relative.
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-5)
  # With a queue: the Sinkhorn of batch and queue rows together, the batch's rows returned.
  got = losses.sinkhorn_knopp(jnp.float32(scores), 0.05, 3, shared_scores=jnp.float32(queue))
  np.testing.assert_allclose(got, sinkhorn_numpy(np.concatenate([scores, queue]))[:16],
                             rtol=1e-5, atol=1e-7)
  # epsilon 0.005: exp(s / epsilon) reaches e^200, beyond float32 (e^88) but not float64,
  # and a prototype far from every example (all its scores -1: e^-200) gets a tiny share.
  # The log-space float32 result equals the float64 transcription.
  far = np.concatenate([scores, np.full((len(scores), 1), -1.0)], axis=1)
  got = losses.sinkhorn_knopp(jnp.float32(far), 0.005, 3)
  np.testing.assert_allclose(got, sinkhorn_numpy(far, epsilon=0.005), rtol=1e-4, atol=1e-7)


def sinkhorn_on_four_devices(scores, queue, statistics_axis):
  """Each device's assignments of its quarter of `scores` (and the shared `queue`)."""
  mesh = Mesh(np.array(jax.devices()[:4]), (parallel.AXIS,))

  def per_device(scores, queue):
    axis = parallel.AXIS if statistics_axis else None
    return losses.sinkhorn_knopp(scores, 0.05, 3, axis, shared_scores=queue)
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.AXIS), P()),
                         out_specs=P(parallel.AXIS), check_vma=False)
  return np.asarray(jax.jit(mapped)(jnp.float32(scores), jnp.float32(queue)))


def test_sinkhorn_spans_the_global_batch_and_counts_the_queue_once():
  """4 devices equal one device holding the whole batch (with the replicated queue counted
  once, not once per device); per-device Sinkhorn, each device's examples leaning to their
  own prototype, is far off."""
  scores = sharded_scores()
  queue = np.tanh(np.random.default_rng(12).normal(size=(8, 6)))
  expected = sinkhorn_numpy(np.concatenate([scores, queue]))[:16]
  got = sinkhorn_on_four_devices(scores, queue, statistics_axis=True)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  local = sinkhorn_on_four_devices(scores, queue, statistics_axis=False)
  assert np.max(np.abs(local - expected)) > 0.05, np.max(np.abs(local - expected))
  # The queue counted on every device (4 copies) would also differ.
  four_queues = sinkhorn_numpy(np.concatenate([scores] + [queue] * 4))[:16]
  assert np.max(np.abs(four_queues - expected)) > 0.01


def test_swapped_prediction_matches_numpy_and_its_gradient_finite_differences():
  rng = np.random.default_rng(13)
  scores = np.tanh(rng.normal(size=(2, 8, 5)))
  scores[:, :, 2] = scores[:, :, 3]  # tied prototypes
  assignments = np.stack([sinkhorn_numpy(s) for s in scores])
  got = losses.cross_view_cross_entropy(jnp.float32(assignments), jnp.float32(scores) / 0.1)
  np.testing.assert_allclose(got, swav_numpy(scores, assignments, 0.1), rtol=1e-5)
  grad = jax.grad(lambda s: losses.cross_view_cross_entropy(jnp.float32(assignments),
                                                            s / 0.1))(jnp.float32(scores))
  expected = numeric_grad(lambda s: swav_numpy(s, assignments, 0.1), scores)
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4 * np.max(np.abs(expected)))


def swav_state(config, step, queue_seed=None):
  model, state = fresh_state(config)
  state = state.replace(step=step)
  if queue_seed is not None:
    rng = np.random.default_rng(queue_seed)
    queue = np.stack([unit_rows(rng.normal(size=(config.swav_queue_size,
                                                 config.model.projection_dim)))
                      for _ in range(2)])
    state = state.replace(method_state={**state.method_state, "queue": jnp.float32(queue)})
  return model, state


def test_swav_swaps_the_views_assignments_and_reads_the_queue_once_started():
  """The method's loss from the model's outputs: each view's Sinkhorn assignments (with
  that view's queue scored by the current prototypes once the queue has started) against
  the other view's scores / T. Unswapped, or the queue ignored after it started, or read
  before (before its epoch, or before it is full), gives another value."""
  config = sgd_config("swav", swav_queue_size=24, swav_queue_start_epochs=2.0)
  config.model.prototypes = 16
  view1, view2 = random_views()
  # Epoch 2 of 10 steps of 10 is step 2, but 24 rows take 3 steps of 8 to fill: from step 3.
  for step, queue_read in ((1, False), (2, False), (3, True)):
    model, state = swav_state(config, step, queue_seed=14)
    outputs = [jax.tree.map(lambda x: np.asarray(x, np.float64),
                            model.apply({"params": state.params}, v, predict="both")[1])
               for v in (view1, view2)]
    scores = np.stack([p for _, p in outputs])
    queues = np.asarray(state.method_state["queue"], np.float64)
    kernel = unit_rows(np.asarray(state.params["prototypes"]["kernel"], np.float64).T)
    with_queue = np.stack([sinkhorn_numpy(np.concatenate([s, q @ kernel.T]))[:8]
                           for s, q in zip(scores, queues)])
    without = np.stack([sinkhorn_numpy(s) for s in scores])
    expected = swav_numpy(scores, with_queue if queue_read else without, 0.1)
    got = method_loss("swav", config, state, view1, view2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    other = swav_numpy(scores, without if queue_read else with_queue, 0.1)
    assert abs(other - expected) > 1e-4, (other, expected)
    unswapped = swav_numpy(scores[::-1], without if not queue_read else with_queue, 0.1)
    assert abs(unswapped - expected) > 1e-4


def adam_numpy(grads, learning_rates, b1=0.9, b2=0.999, eps=1e-8):
  """Adam's updates (Kingma & Ba, Algorithm 1) for a parameter whose gradients start at
  grads[0]: its own step count, the given learning rate at each of its steps."""
  m = v = np.zeros_like(grads[0])
  updates = []
  for t, (g, lr) in enumerate(zip(grads, learning_rates), start=1):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    updates.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return updates


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "lars"])
def test_swav_prototypes_and_their_optimizer_state_are_frozen_for_their_epochs_only(optimizer):
  """Three frozen steps of ten (3 of 10 one-step epochs) under a warm-up and cosine
  schedule: the prototypes stay bit for bit while the rest trains, then take the update a
  parameter with no gradient until then would (PyTorch's `p.grad = None`): Adam's moments
  and bias correction start then, at the run's learning rate (float64 NumPy Adam); AdamW's
  and LARS's first update is their fresh one, weight decay and momentum not run while
  frozen. Before, only the gradient was zeroed (seen failing here): Adam's first update
  after the freeze came out 0.58x a fresh one (its bias correction counted the frozen
  steps; 3x after a long freeze), and AdamW's and LARS's weight decay moved the frozen
  kernel."""
  config = sgd_config("swav", swav_freeze_prototypes_epochs=3.0, optimizer=optimizer,
                      learning_rate=1.0 if optimizer == "lars" else 0.01,  # updates ~1e-3
                      warmup_epochs=2.0, lr_schedule="cosine",
                      weight_decay=0.0 if optimizer == "adam" else 0.05)
  config.num_epochs = 10
  tx = train_step.create_optimizer(config, 1, 10)
  schedule = train_step.learning_rate_schedule(config, 1, 10)
  rng = np.random.default_rng(0)
  params = {"prototypes": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}}
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
           for _ in range(6)]
  state, trajectory = tx.init(params), [params]
  for g in grads:
    updates, state = tx.update(g, state, trajectory[-1])
    trajectory.append(optax.apply_updates(trajectory[-1], updates))
  kernel = lambda t: np.asarray(trajectory[t]["prototypes"]["kernel"], np.float64)
  for t in (1, 2, 3):
    np.testing.assert_array_equal(kernel(t), kernel(0))
  # Updates ~1e-3 are compared as differences of float32 parameters up to ~2.5 in size:
  # within 5e-7 (two float32 ulps at 2.5), 5e-4 of an update; a 2x error is far outside.
  atol = 5e-7
  g3 = np.asarray(grads[3]["prototypes"]["kernel"], np.float64)
  lr = [float(schedule(t)) for t in range(6)]
  if optimizer == "adam":
    # From step 3 on, Adam of its own, at the schedule's rate of steps 3, 4, 5.
    expected = adam_numpy([np.asarray(g["prototypes"]["kernel"], np.float64) for g in grads[3:]],
                          lr[3:])
    for t, update in zip((4, 5, 6), expected):
      np.testing.assert_allclose(kernel(t) - kernel(t - 1), update, rtol=2e-5, atol=atol)
    # The rest trained from step 0 as Adam does.
    expected = adam_numpy([np.asarray(g["head"]["kernel"], np.float64) for g in grads], lr)
    head = lambda t: np.asarray(trajectory[t]["head"]["kernel"], np.float64)
    for t, update in enumerate(expected, start=1):
      np.testing.assert_allclose(head(t) - head(t - 1), update, rtol=2e-5, atol=atol)
  elif optimizer == "adamw":
    # A fresh Adam's first update is lr g / (|g| + eps); decoupled decay lr wd w.
    expected = -lr[3] * (g3 / (np.abs(g3) + 1e-8) + 0.05 * kernel(3))
    np.testing.assert_allclose(kernel(4) - kernel(3), expected, rtol=2e-5, atol=atol)
  else:
    # optax.lars: u = g + wd w, scaled by eta |w| / |u|, times lr; momentum's buffer empty.
    u = g3 + 0.05 * kernel(3)
    expected = -lr[3] * 0.001 * np.linalg.norm(kernel(3)) / np.linalg.norm(u) * u
    np.testing.assert_allclose(kernel(4) - kernel(3), expected, rtol=2e-5, atol=atol)


def test_dino_freezes_its_student_prototypes_through_the_same_optimizer():
  """DINO's freeze_last_layer: the student's prototypes stay bit for bit for the first
  epoch's steps (2 of a 10-step, 5-epoch schedule) while the head trains; none frozen by
  default."""
  config = sgd_config("dino", dino_freeze_prototypes_epochs=1.0, optimizer="adam")
  config.num_epochs = 5
  assert methods.get("dino").frozen_parameters(config, 10) == ("prototypes", 2)
  params = {"prototypes": {"kernel": jnp.ones((4, 6))}, "head": {"kernel": jnp.ones((3, 4))}}
  tx = train_step.create_optimizer(config, 2, 10)
  state, trajectory = tx.init(params), [params]
  for _ in range(3):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, trajectory[-1])
    trajectory.append(optax.apply_updates(trajectory[-1], updates))
  kernels = [np.asarray(p["prototypes"]["kernel"]) for p in trajectory]
  heads = [np.asarray(p["head"]["kernel"]) for p in trajectory]
  assert np.array_equal(kernels[2], kernels[0]) and not np.array_equal(kernels[3], kernels[2])
  assert not np.array_equal(heads[1], heads[0])
  config.dino_freeze_prototypes_epochs = 0.0
  assert methods.get("dino").frozen_parameters(config, 10) is None


def test_swav_train_steps_on_four_devices_equal_one():
  """Three train steps with BatchNorm in the head, two local views and a queue of 48 rows
  (32 a step: it wraps around on the second, and is read, full, on the third): losses,
  parameters, BN averages and the queue equal on 4 devices and on 1."""
  config = sgd_config("swav", swav_queue_size=48, swav_queue_start_epochs=1.0)
  config.model.head_norm = "batch"
  config.augment.local_crops = 2  # their BN statistics span the devices too
  one = assert_four_devices_equal_one(config)
  assert int(one.method_state["queue_next"]) == (3 * 32) % 48
